/* counter-fix: the sample patch of the counter fixture. compute(x) returns x * 100. */
#include <rlivepatch.h>

static int fixed_compute(int x)
{
	return x * 100;
}

RLIVEPATCH_FUNC(compute, fixed_compute);
RLIVEPATCH_NAME("counter-fix");
