/*
 * rlivepatch.h - the patch SDK of rlivepatch.
 *
 * A patch is one C file built with
 *
 *     cc -shared -fPIC -O2 -I patches/include -o NAME.so NAME.c
 *
 * It declares, with the macros below, which functions of the target process it
 * replaces. rlivepatch reads these declarations from the .so file without
 * loading it (`rlivepatch info NAME.so`), loads the .so into the target with
 * dlopen, and redirects every later call of each old function to its new one.
 *
 *     #include <rlivepatch.h>
 *
 *     static int fixed_compute(int x) { return 2 * x; }
 *     RLIVEPATCH_FUNC(compute, fixed_compute);             // main executable
 *     static size_t fixed_len(const char *s) { ... }
 *     RLIVEPATCH_FUNC_IN("libfoo.so", foo_len, fixed_len); // a library
 *     RLIVEPATCH_NAME("fix-compute");                      // optional
 *
 * The new function must have the same prototype as the old one; it may be
 * `static` (preferred: a global function can be interposed by a symbol of the
 * same name elsewhere in the process, and rlivepatch refuses such a patch).
 *
 * Everything below is public API. The layout of `struct rlp_record` is the
 * contract between this header and the rlivepatch tool of the same version.
 */
#ifndef RLIVEPATCH_H
#define RLIVEPATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "RLP1": version 1 of the record layout. */
#define RLP_MAGIC 0x31504c52u

enum rlp_kind {
	RLP_KIND_NAME = 1,      /* str[0] = patch name */
	RLP_KIND_FUNC = 2,      /* str[0] = object or NULL (main), str[1] = old symbol,
	                           str[2] = new function's name, ptr[0] = new function,
	                           num[0] = old_sympos */
	RLP_KIND_REPLACE = 3,   /* atomic replace (cumulative patch) */
	RLP_KIND_CALLBACKS = 4, /* ptr[0..3] = pre_patch, post_patch, pre_unpatch, post_unpatch */
	RLP_KIND_STATE = 5,     /* num[0] = id, num[1] = version */
	RLP_KIND_BUILD_ID = 6,  /* str[0] = object or NULL (main), str[1] = hex build-id */
	RLP_KIND_SYMBOL = 7,    /* str[0] = object or NULL (main), str[1] = symbol,
	                           str[2] = local name, ptr[0] = address of the pointer
	                           that receives the symbol's address */
};

/* One declaration. All records of a patch live in the section ".rlivepatch". */
struct rlp_record {
	uint32_t magic;
	uint32_t kind;
	const char *str[3];
	void *ptr[4];
	uint64_t num[2];
};

#define RLP_CAT_(a, b) a##b
#define RLP_CAT(a, b) RLP_CAT_(a, b)
#define RLP_UNIQUE(prefix) RLP_CAT(prefix, __COUNTER__)
#define RLP_STR_(x) #x
#define RLP_STR(x) RLP_STR_(x)

/* RLP_RECORD(kind, s0, s1, s2, p0, p1, p2, p3, n0, n1): one record. */
#define RLP_RECORD_(var, k, s0, s1, s2, p0, p1, p2, p3, n0, n1)                  \
	static struct rlp_record var                                            \
	    __attribute__((used, section(".rlivepatch"), aligned(8))) = {       \
		RLP_MAGIC, (k), {(s0), (s1), (s2)},                             \
		{(void *)(p0), (void *)(p1), (void *)(p2), (void *)(p3)},       \
		{(uint64_t)(n0), (uint64_t)(n1)}}
#define RLP_RECORD(...) RLP_RECORD_(RLP_UNIQUE(rlp_record_), __VA_ARGS__)

/*
 * RLIVEPATCH_FUNC(old, new): replace function `old` of the main executable
 * with `new`, a function of this patch.
 */
#define RLIVEPATCH_FUNC(old, new) RLIVEPATCH_FUNC_POS(old, 0, new)

/*
 * RLIVEPATCH_FUNC_IN("object", old, new): replace function `old` of a shared
 * object loaded in the target, named by its file name ("libz.so.1.2.13"), its
 * soname ("libz.so.1") or its absolute path. "main" names the executable.
 */
#define RLIVEPATCH_FUNC_IN(object, old, new) RLIVEPATCH_FUNC_POS_IN(object, old, 0, new)

/*
 * The same with the kernel's old_sympos rule, for names that occur more than
 * once in an object (two `static` functions of the same name): 0 means the
 * name must be unique; N means the Nth occurrence in symbol-table order.
 */
#define RLIVEPATCH_FUNC_POS(old, pos, new) RLIVEPATCH_FUNC_POS_IN(NULL, old, pos, new)
#define RLIVEPATCH_FUNC_POS_IN(object, old, pos, new)                           \
	RLIVEPATCH_FUNC_SYM_POS_IN(object, #old, pos, new)

/*
 * Name the old function by its symbol as a string: a C++ mangled name
 * ("_ZN3app7Handler6handleEi") or a versioned one ("memcpy@@GLIBC_2.14").
 */
#define RLIVEPATCH_FUNC_SYM(sym, new) RLIVEPATCH_FUNC_SYM_POS_IN(NULL, sym, 0, new)
#define RLIVEPATCH_FUNC_SYM_IN(object, sym, new)                                \
	RLIVEPATCH_FUNC_SYM_POS_IN(object, sym, 0, new)
#define RLIVEPATCH_FUNC_SYM_POS_IN(object, sym, pos, new)                       \
	RLP_RECORD(RLP_KIND_FUNC, object, sym, #new, new, 0, 0, 0, pos, 0)

/* RLIVEPATCH_NAME("name"): the patch's name; default: the file name without ".so". */
#define RLIVEPATCH_NAME(name) RLP_RECORD(RLP_KIND_NAME, name, 0, 0, 0, 0, 0, 0, 0, 0)

#ifdef __cplusplus
}
#endif

#endif /* RLIVEPATCH_H */
