/*
 * The rlivepatch runtime: loaded once into a patched process (RTLD_GLOBAL) when a patch
 * uses shadow variables or system states, and kept while anything needs it. It holds
 * what must outlive any one patch: the shadow-variable store, and the registry of
 * system states that rlivepatch fills in before it runs a patch's callbacks.
 */
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

struct rlp_state {
	unsigned long id;
	unsigned int version;
	void *data;
};

/* Written by rlivepatch (through /proc/pid/mem) around a patch's callbacks: the states of
 * the patch being applied or disabled, and those of the patches installed before it,
 * oldest first. */
#define RLP_MAX_STATES 256
struct rlp_registry {
	uint64_t magic;
	uint64_t ncurrent;
	struct rlp_state *current[RLP_MAX_STATES];
	uint64_t nprev;
	struct rlp_state *prev[RLP_MAX_STATES];
};
EXPORT struct rlp_registry rlp_registry = { 0x524c505245474931ull, 0, { 0 }, 0, { 0 } };

EXPORT struct rlp_state *rlp_get_state(unsigned long id)
{
	for (uint64_t i = 0; i < rlp_registry.ncurrent && i < RLP_MAX_STATES; i++)
		if (rlp_registry.current[i] && rlp_registry.current[i]->id == id)
			return rlp_registry.current[i];
	return NULL;
}

EXPORT struct rlp_state *rlp_get_prev_state(unsigned long id)
{
	/* The newest installed patch with this state. */
	for (uint64_t i = rlp_registry.nprev; i-- > 0;)
		if (i < RLP_MAX_STATES && rlp_registry.prev[i] && rlp_registry.prev[i]->id == id)
			return rlp_registry.prev[i];
	return NULL;
}

/* Shadow variables. A spinlock: the store is used by patched code in any thread, and the
 * runtime must not depend on a libpthread that older glibcs keep separate. */
typedef int (*rlp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*rlp_shadow_dtor_t)(void *obj, void *shadow_data);

struct shadow {
	struct shadow *next;
	void *obj;
	unsigned long id;
	_Alignas(16) unsigned char data[];
};

#define NBUCKETS 4096
static struct shadow *buckets[NBUCKETS];
static int lock_word;
EXPORT uint64_t rlp_shadow_count;

static void lock(void)
{
	while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&lock_word, __ATOMIC_RELAXED))
			sched_yield();
}

static void unlock(void)
{
	__atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE);
}

static unsigned bucket(void *obj)
{
	uintptr_t p = (uintptr_t)obj;
	return (unsigned)((p >> 4) ^ (p >> 16)) % NBUCKETS;
}

static struct shadow *find(void *obj, unsigned long id)
{
	for (struct shadow *s = buckets[bucket(obj)]; s; s = s->next)
		if (s->obj == obj && s->id == id)
			return s;
	return NULL;
}

EXPORT void *rlp_shadow_get(void *obj, unsigned long id)
{
	lock();
	struct shadow *s = find(obj, id);
	unlock();
	return s ? s->data : NULL;
}

static void *get_or_alloc(void *obj, unsigned long id, size_t size, rlp_shadow_ctor_t ctor, void *ctor_data, int fail_if_exists)
{
	struct shadow *s = calloc(1, sizeof(*s) + size);
	lock();
	struct shadow *old = find(obj, id);
	if (old) {
		unlock();
		free(s);
		return fail_if_exists ? NULL : old->data;
	}
	if (!s) {
		unlock();
		return NULL;
	}
	s->obj = obj;
	s->id = id;
	if (ctor && ctor(obj, s->data, ctor_data)) {
		unlock();
		free(s);
		return NULL;
	}
	unsigned b = bucket(obj);
	s->next = buckets[b];
	buckets[b] = s;
	rlp_shadow_count++;
	unlock();
	return s->data;
}

EXPORT void *rlp_shadow_alloc(void *obj, unsigned long id, size_t size, rlp_shadow_ctor_t ctor, void *ctor_data)
{
	return get_or_alloc(obj, id, size, ctor, ctor_data, 1);
}

EXPORT void *rlp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, rlp_shadow_ctor_t ctor, void *ctor_data)
{
	return get_or_alloc(obj, id, size, ctor, ctor_data, 0);
}

EXPORT void rlp_shadow_free(void *obj, unsigned long id, rlp_shadow_dtor_t dtor)
{
	lock();
	for (struct shadow **p = &buckets[bucket(obj)]; *p; p = &(*p)->next) {
		struct shadow *s = *p;
		if (s->obj == obj && s->id == id) {
			*p = s->next;
			rlp_shadow_count--;
			if (dtor)
				dtor(obj, s->data);
			free(s);
			break;
		}
	}
	unlock();
}

EXPORT void rlp_shadow_free_all(unsigned long id, rlp_shadow_dtor_t dtor)
{
	lock();
	for (unsigned b = 0; b < NBUCKETS; b++) {
		for (struct shadow **p = &buckets[b]; *p;) {
			struct shadow *s = *p;
			if (s->id == id) {
				*p = s->next;
				rlp_shadow_count--;
				if (dtor)
					dtor(s->obj, s->data);
				free(s);
			} else {
				p = &s->next;
			}
		}
	}
	unlock();
}
