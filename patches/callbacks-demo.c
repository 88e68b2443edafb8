/* callbacks-demo: the kernel's samples/livepatch/livepatch-callbacks-demo.c and the
 * selftests' test_klp_callbacks_demo, for a process. Each callback prints a line into the
 * target's output. Like the kernel module's pre_patch_ret parameter, the target's
 * environment variable PRE_PATCH_RET makes pre_patch fail.
 *
 * It replaces busymod_work_func() of the livepatch-target fixture, so a worker sleeping
 * in it keeps the switch from happening (the "busy target" case). Built with -DDEMO2 it
 * is test_klp_callbacks_demo2; with -DDEMO2 -DREPLACE, an atomic-replace patch. */
#include <rlivepatch.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef DEMO2
#ifdef REPLACE
#define NAME "test_klp_callbacks_demo2_replace"
#else
#define NAME "test_klp_callbacks_demo2"
#endif
#else
#define NAME "test_klp_callbacks_demo"
#endif

static int pre_patch_callback(void)
{
	const char *ret = getenv("PRE_PATCH_RET");
	printf("%s: pre_patch_callback: main\n", NAME);
	return ret ? atoi(ret) : 0;
}

static void post_patch_callback(void)
{
	printf("%s: post_patch_callback: main\n", NAME);
}

static void pre_unpatch_callback(void)
{
	printf("%s: pre_unpatch_callback: main\n", NAME);
}

static void post_unpatch_callback(void)
{
	printf("%s: post_unpatch_callback: main\n", NAME);
}

static void patched_work_func(void)
{
	printf("%s: busymod_work_func\n", NAME);
}

RLIVEPATCH_FUNC(busymod_work_func, patched_work_func);
RLIVEPATCH_CALLBACKS(pre_patch_callback, post_patch_callback, pre_unpatch_callback, post_unpatch_callback);
RLIVEPATCH_NAME(NAME);
#ifdef REPLACE
RLIVEPATCH_REPLACE();
#endif
