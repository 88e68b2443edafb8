/* shadow-fix1: a port of the kernel's samples/livepatch/livepatch-shadow-fix1.c for the
 * shadow-target fixture. dummy_alloc() forgets the buffer it allocates; this fix keeps it
 * in a shadow variable (SV_LEAK) attached to the dummy, and the fixed dummy_free()
 * releases it. Dummies allocated before the fix have no shadow variable: their buffers
 * stay leaked. On disable, post_unpatch frees the buffers of the dummies still alive. */
#include <rlivepatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SV_LEAK 1

struct dummy {
	struct dummy *next;
	long expire_ms;
};

RLIVEPATCH_SYMBOL(void *(void), leak_alloc, "leak_alloc");
RLIVEPATCH_SYMBOL(void (void *), leak_free, "leak_free");
RLIVEPATCH_SYMBOL(long, expire_period, "expire_period");

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int shadow_leak_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	(void)obj;
	void **shadow_leak = shadow_data;
	*shadow_leak = ctor_data;
	return 0;
}

static struct dummy *livepatch_fix1_dummy_alloc(void)
{
	struct dummy *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->expire_ms = now_ms() + *expire_period;
	/* The fix: keep the buffer, attached to its dummy. */
	void *leak = leak_alloc();
	if (!rlp_shadow_alloc(d, SV_LEAK, sizeof(leak), shadow_leak_ctor, leak))
		leak_free(leak);
	return d;
}

static void livepatch_fix1_dummy_leak_dtor(void *obj, void *shadow_data)
{
	void **shadow_leak = shadow_data;
	printf("livepatch_fix1_dummy_leak_dtor: dummy @ %p, prevented leak @ %p\n", obj, *shadow_leak);
	leak_free(*shadow_leak);
}

static void livepatch_fix1_dummy_free(struct dummy *d)
{
	/* Dummies allocated before the fix have no shadow variable. */
	if (rlp_shadow_get(d, SV_LEAK))
		rlp_shadow_free(d, SV_LEAK, livepatch_fix1_dummy_leak_dtor);
	else
		printf("livepatch_fix1_dummy_free: dummy @ %p leaked!\n", (void *)d);
	free(d);
}

static void post_unpatch(void)
{
	/* Disabled: release what the fix still holds. */
	rlp_shadow_free_all(SV_LEAK, livepatch_fix1_dummy_leak_dtor);
}

RLIVEPATCH_FUNC(dummy_alloc, livepatch_fix1_dummy_alloc);
RLIVEPATCH_FUNC(dummy_free, livepatch_fix1_dummy_free);
RLIVEPATCH_CALLBACKS(NULL, NULL, NULL, post_unpatch);
RLIVEPATCH_NAME("shadow-fix1");
