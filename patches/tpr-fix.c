/* The fix for libtpr's respond(): answers "v2 N". */
#include <stdio.h>
#include <rlivepatch.h>

static int fixed_respond(long n, char *out, int len)
{
	return snprintf(out, len, "v2 %ld\n", n);
}

RLIVEPATCH_FUNC_IN("libtpr.so", respond, fixed_respond);
RLIVEPATCH_NAME("tpr-fix");
