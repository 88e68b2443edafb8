/* livepatch-uptime: a third patch for the livepatch-target fixture. Replaces
 * uptime_show(). Built with -DREPLACE it is an atomic-replace patch named
 * livepatch-uptime-replace. */
#include <rlivepatch.h>

static const char *livepatch_uptime_show(void)
{
	return "this has been live patched";
}

RLIVEPATCH_FUNC(uptime_show, livepatch_uptime_show);
#ifdef REPLACE
RLIVEPATCH_REPLACE();
RLIVEPATCH_NAME("livepatch-uptime-replace");
#else
RLIVEPATCH_NAME("livepatch-uptime");
#endif
