/* test-shadow-vars: a port of the kernel selftests' test_klp_shadow_vars: its pre_patch
 * callback exercises the shadow-variable API and prints every call, with pointers shown
 * as PTRn (numbered in order of first appearance; PTR0 is NULL) so that the output does
 * not depend on addresses. It then refuses to apply (returns 1): the test is the output. */
#include <rlivepatch.h>
#include <stdio.h>

#define NAME "test_klp_shadow_vars"

static const void *seen[64];
static int nseen = 1;

static int ptr_id(const void *p)
{
	if (!p)
		return 0;
	for (int i = 1; i < nseen; i++)
		if (seen[i] == p)
			return i;
	seen[nseen] = p;
	return nseen++;
}

static int shadow_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	(void)obj;
	int **var = shadow_data;
	*var = ctor_data;
	printf("%s: shadow_ctor: PTR%d -> PTR%d\n", NAME, ptr_id(var), ptr_id(ctor_data));
	return 0;
}

static void shadow_dtor(void *obj, void *shadow_data)
{
	printf("%s: shadow_dtor(obj=PTR%d, shadow_data=PTR%d)\n", NAME, ptr_id(obj), ptr_id(shadow_data));
}

static void *get(void *obj, unsigned long id)
{
	void *r = rlp_shadow_get(obj, id);
	printf("%s: rlp_shadow_get(obj=PTR%d, id=0x%lx) = PTR%d\n", NAME, ptr_id(obj), id, ptr_id(r));
	return r;
}

static void *alloc(void *obj, unsigned long id, void *data)
{
	void *r = rlp_shadow_alloc(obj, id, sizeof(int *), shadow_ctor, data);
	printf("%s: rlp_shadow_alloc(obj=PTR%d, id=0x%lx, size=%zu, ctor=PTR%d, ctor_data=PTR%d) = PTR%d\n", NAME,
	       ptr_id(obj), id, sizeof(int *), ptr_id((void *)shadow_ctor), ptr_id(data), ptr_id(r));
	return r;
}

static void *get_or_alloc(void *obj, unsigned long id, void *data)
{
	void *r = rlp_shadow_get_or_alloc(obj, id, sizeof(int *), shadow_ctor, data);
	printf("%s: rlp_shadow_get_or_alloc(obj=PTR%d, id=0x%lx, size=%zu, ctor=PTR%d, ctor_data=PTR%d) = PTR%d\n", NAME,
	       ptr_id(obj), id, sizeof(int *), ptr_id((void *)shadow_ctor), ptr_id(data), ptr_id(r));
	return r;
}

static void shadow_free(void *obj, unsigned long id)
{
	rlp_shadow_free(obj, id, shadow_dtor);
	printf("%s: rlp_shadow_free(obj=PTR%d, id=0x%lx, dtor=PTR%d)\n", NAME, ptr_id(obj), id, ptr_id((void *)shadow_dtor));
}

static void shadow_free_all(unsigned long id)
{
	rlp_shadow_free_all(id, NULL);
	printf("%s: rlp_shadow_free_all(id=0x%lx, dtor=PTR0)\n", NAME, id);
}

static void expect(int **sv, int *data)
{
	if (sv && *sv == data)
		printf("%s:   got expected PTR%d -> PTR%d result\n", NAME, ptr_id(sv), ptr_id(data));
	else if (!sv && !data)
		printf("%s:   got expected NULL result\n", NAME);
	else
		printf("%s:   unexpected result\n", NAME);
}

static int pre_patch_callback(void)
{
	int obj1, obj2, obj3;
	int d1, d2, d3, d4, d5, d6;
	void *o1 = &obj1, *o2 = &obj2, *o3 = &obj3;
	unsigned long id = 0x1234;
	int **sv1, **sv2, **sv3, **sv4, **sv5, **sv6;

	ptr_id(NULL);
	/* No variable yet. */
	expect(get(o1, id), NULL);
	/* Allocate a few, through both calls. */
	sv1 = get_or_alloc(o1, id, &d1);
	sv2 = alloc(o1, id + 1, &d2);
	sv3 = alloc(o2, id, &d3);
	sv4 = alloc(o2, id + 1, &d4);
	sv5 = get_or_alloc(o3, id, &d5);
	sv6 = alloc(o3, id + 1, &d6);
	/* Each is found again. */
	expect(get(o1, id), &d1);
	expect(get(o1, id + 1), &d2);
	expect(get(o2, id), &d3);
	expect(get(o2, id + 1), &d4);
	expect(get(o3, id), &d5);
	expect(get(o3, id + 1), &d6);
	/* get_or_alloc returns the existing ones without calling the constructor. */
	expect(get_or_alloc(o1, id, &d1), &d1);
	expect(get_or_alloc(o2, id, &d3), &d3);
	expect(get_or_alloc(o3, id, &d5), &d5);
	/* alloc of an existing pair fails. */
	expect(alloc(o1, id, &d1), NULL);
	/* Free the first id one by one. */
	shadow_free(o1, id);
	expect(get(o1, id), NULL);
	shadow_free(o2, id);
	expect(get(o2, id), NULL);
	shadow_free(o3, id);
	expect(get(o3, id), NULL);
	/* The second id is still there. */
	expect(get(o1, id + 1), &d2);
	expect(get(o2, id + 1), &d4);
	expect(get(o3, id + 1), &d6);
	/* Free all of it at once. */
	shadow_free_all(id + 1);
	expect(get(o1, id + 1), NULL);
	expect(get(o2, id + 1), NULL);
	expect(get(o3, id + 1), NULL);
	(void)sv1, (void)sv2, (void)sv3, (void)sv4, (void)sv5, (void)sv6;
	printf("%s: done\n", NAME);
	/* Nothing to patch: refuse, so the test leaves nothing behind. */
	return 1;
}

RLIVEPATCH_NAME(NAME);
RLIVEPATCH_CALLBACKS(pre_patch_callback, NULL, NULL, NULL);
