/* cpp-handle: replaces the C++ member function app::Handler::handle(int) of the cpp-app
 * fixture, named by its mangled symbol. A member function takes `this` first. */
#include <rlivepatch.h>

struct handler {
	int base;
};

static int fixed_handle(struct handler *self, int x)
{
	return (x + self->base) * 10;
}

RLIVEPATCH_FUNC_SYM("_ZN3app7Handler6handleEi", fixed_handle);
RLIVEPATCH_NAME("cpp-handle");
