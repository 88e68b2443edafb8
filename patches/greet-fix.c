/* greet-fix: replaces greet_value() of the shared library libgreet.so.
 * greet_value(x) returns x * 1000 + 7. */
#include <rlivepatch.h>

static int fixed_greet_value(int x)
{
	return x * 1000 + 7;
}

RLIVEPATCH_FUNC_IN("libgreet.so", greet_value, fixed_greet_value);
RLIVEPATCH_NAME("greet-fix");
