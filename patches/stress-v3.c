/* stress-v3: a cumulative (atomic replace) patch of the stress-target fixture: version 3
 * of work_b(); work_a() goes back to the original. */
#include <rlivepatch.h>
static long work_b_v3(long x) { return x * 10 + 3; }
RLIVEPATCH_FUNC(work_b, work_b_v3);
RLIVEPATCH_REPLACE();
RLIVEPATCH_NAME("stress-v3");
