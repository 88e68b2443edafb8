/* shadow-fix2: a port of the kernel's samples/livepatch/livepatch-shadow-fix2.c for the
 * shadow-target fixture, as a cumulative patch: it replaces shadow-fix1 (atomic
 * replace), carries its leak fix, takes over the SV_LEAK shadow variables fix1 created
 * (the store is shared and outlives fix1), and counts how often each dummy is checked
 * in a second shadow variable (SV_COUNTER). */
#include <rlivepatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SV_LEAK 1
#define SV_COUNTER 2

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

static struct dummy *livepatch_fix2_dummy_alloc(void)
{
	struct dummy *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->expire_ms = now_ms() + *expire_period;
	void *leak = leak_alloc();
	if (!rlp_shadow_alloc(d, SV_LEAK, sizeof(leak), shadow_leak_ctor, leak))
		leak_free(leak);
	return d;
}

static int livepatch_fix2_dummy_check(struct dummy *d, long now)
{
	/* Dummies in flight get a counter the first time they are checked. */
	int *count = rlp_shadow_get_or_alloc(d, SV_COUNTER, sizeof(*count), NULL, NULL);
	if (count)
		*count += 1;
	return now > d->expire_ms;
}

static void livepatch_fix2_dummy_leak_dtor(void *obj, void *shadow_data)
{
	void **shadow_leak = shadow_data;
	printf("livepatch_fix2_dummy_leak_dtor: dummy @ %p, prevented leak @ %p\n", obj, *shadow_leak);
	leak_free(*shadow_leak);
}

static void livepatch_fix2_dummy_free(struct dummy *d)
{
	if (rlp_shadow_get(d, SV_LEAK))
		rlp_shadow_free(d, SV_LEAK, livepatch_fix2_dummy_leak_dtor);
	else
		printf("livepatch_fix2_dummy_free: dummy @ %p leaked!\n", (void *)d);
	int *count = rlp_shadow_get(d, SV_COUNTER);
	if (count) {
		printf("livepatch_fix2_dummy_free: dummy @ %p, check counter = %d\n", (void *)d, *count);
		rlp_shadow_free(d, SV_COUNTER, NULL);
	}
	free(d);
}

static void post_unpatch(void)
{
	rlp_shadow_free_all(SV_COUNTER, NULL);
	rlp_shadow_free_all(SV_LEAK, livepatch_fix2_dummy_leak_dtor);
}

RLIVEPATCH_FUNC(dummy_alloc, livepatch_fix2_dummy_alloc);
RLIVEPATCH_FUNC(dummy_check, livepatch_fix2_dummy_check);
RLIVEPATCH_FUNC(dummy_free, livepatch_fix2_dummy_free);
RLIVEPATCH_CALLBACKS(NULL, NULL, NULL, post_unpatch);
RLIVEPATCH_REPLACE();
RLIVEPATCH_NAME("shadow-fix2");
