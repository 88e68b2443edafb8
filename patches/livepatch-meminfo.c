/* livepatch-meminfo: a second patch for the livepatch-target fixture (the kernel
 * selftests' test_klp_atomic_replace). Replaces meminfo_show(). Built with -DREPLACE it
 * is an atomic-replace patch named livepatch-meminfo-replace. */
#include <rlivepatch.h>

static const char *livepatch_meminfo_show(void)
{
	return "this has been live patched";
}

RLIVEPATCH_FUNC(meminfo_show, livepatch_meminfo_show);
#ifdef REPLACE
RLIVEPATCH_REPLACE();
RLIVEPATCH_NAME("livepatch-meminfo-replace");
#else
RLIVEPATCH_NAME("livepatch-meminfo");
#endif
