/* counter-fix2: a second fix of the counter fixture, to stack on counter-fix.
 * compute(x) returns x * 1000. */
#include <rlivepatch.h>

static int compute_v2(int x)
{
	return x * 1000;
}

RLIVEPATCH_FUNC(compute, compute_v2);
RLIVEPATCH_NAME("counter-fix2");
