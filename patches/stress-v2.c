/* stress-v2: version 2 of work_a() and work_b() of the stress-target fixture. */
#include <rlivepatch.h>
static long work_a_v2(long x) { return x * 10 + 2; }
static long work_b_v2(long x) { return x * 10 + 2; }
RLIVEPATCH_FUNC(work_a, work_a_v2);
RLIVEPATCH_FUNC(work_b, work_b_v2);
RLIVEPATCH_NAME("stress-v2");
