/* livepatch-sample: the kernel's samples/livepatch/livepatch-sample.c, for a process.
 * Replaces cmdline_show() of the livepatch-target fixture. */
#include <rlivepatch.h>

static const char *livepatch_cmdline_show(void)
{
	return "this has been live patched";
}

RLIVEPATCH_FUNC(cmdline_show, livepatch_cmdline_show);
RLIVEPATCH_NAME("livepatch-sample");
