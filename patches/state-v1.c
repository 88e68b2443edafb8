/* state-v1: a port of the kernel selftests' test_klp_state (lib/livepatch/): an atomic
 * replace patch that changes a system state, the fixture's console_loglevel, and records
 * what it changed in system state 1, version 1 (which does not support take-over). */
#include <rlivepatch.h>
#include <stdio.h>
#include <stdlib.h>

#define NAME "test_klp_state"
#define CONSOLE_LOGLEVEL_STATE 1
#define CONSOLE_LOGLEVEL_MOTORMOUTH 15

RLIVEPATCH_NAME(NAME);
RLIVEPATCH_REPLACE();
RLIVEPATCH_STATE(CONSOLE_LOGLEVEL_STATE, 1);
RLIVEPATCH_SYMBOL(int, console_loglevel, "console_loglevel");

static int pre_patch_callback(void)
{
	printf("%s: pre_patch_callback: main\n", NAME);
	struct rlp_state *st = rlp_get_state(CONSOLE_LOGLEVEL_STATE);
	if (!st)
		return -22;
	st->data = calloc(1, sizeof(int));
	if (!st->data)
		return -12;
	printf("%s: allocate_loglevel_state: allocating space to store console_loglevel\n", NAME);
	return 0;
}

static void post_patch_callback(void)
{
	printf("%s: post_patch_callback: main\n", NAME);
	struct rlp_state *st = rlp_get_state(CONSOLE_LOGLEVEL_STATE);
	printf("%s: fix_console_loglevel: fixing console_loglevel\n", NAME);
	*(int *)st->data = *console_loglevel;
	*console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void pre_unpatch_callback(void)
{
	printf("%s: pre_unpatch_callback: main\n", NAME);
	struct rlp_state *st = rlp_get_state(CONSOLE_LOGLEVEL_STATE);
	printf("%s: restore_console_loglevel: restoring console_loglevel\n", NAME);
	*console_loglevel = *(int *)st->data;
}

static void post_unpatch_callback(void)
{
	printf("%s: post_unpatch_callback: main\n", NAME);
	struct rlp_state *st = rlp_get_state(CONSOLE_LOGLEVEL_STATE);
	printf("%s: free_loglevel_state: freeing space for the stored console_loglevel\n", NAME);
	free(st->data);
}

RLIVEPATCH_CALLBACKS(pre_patch_callback, post_patch_callback, pre_unpatch_callback, post_unpatch_callback);
