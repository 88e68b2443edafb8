/* private-fix: replaces handle() of the private fixture, using the program's static
 * counter, its static helper and its thread-local variable, as the original does: the
 * counter goes on counting across apply and disable. The result gains 1000, and the
 * thread-local counter counts by 10, to show the patch runs. */
#include <rlivepatch.h>

RLIVEPATCH_SYMBOL(long, counter, "counter");
RLIVEPATCH_SYMBOL(int (int), helper, "helper");
RLIVEPATCH_TLS(long, tls_hits, "tls_hits");

static int fixed_handle(int x)
{
	(*counter)++;
	*tls_hits() += 10;
	return helper(x) + 1000;
}

RLIVEPATCH_FUNC(handle, fixed_handle);
RLIVEPATCH_NAME("private-fix");
