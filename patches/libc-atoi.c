/* libc-atoi: replaces atoi() of the C library itself, in every thread of the process. */
#include <rlivepatch.h>
#include <stdlib.h>

static int doubled_atoi(const char *s)
{
	return 2 * (int)strtol(s, NULL, 10);
}

RLIVEPATCH_FUNC_IN("libc.so.6", atoi, doubled_atoi);
RLIVEPATCH_NAME("libc-atoi");
