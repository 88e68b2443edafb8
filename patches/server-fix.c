/* server-fix: fixes answer() of the server fixture (it added 1 for multiples of 7). */
#include <rlivepatch.h>

static long fixed_answer(long n)
{
	return 2 * n;
}

RLIVEPATCH_FUNC(answer, fixed_answer);
RLIVEPATCH_NAME("server-fix");
