/* stress-v1: version 1 of work_a() of the stress-target fixture. */
#include <rlivepatch.h>
static long work_a_v1(long x) { return x * 10 + 1; }
RLIVEPATCH_FUNC(work_a, work_a_v1);
RLIVEPATCH_NAME("stress-v1");
