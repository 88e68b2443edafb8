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
	RLP_KIND_TLS = 8,       /* like SYMBOL, for a thread-local variable: ptr[0] =
	                           address of a struct rlp_tls_index to fill */
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

/*
 * RLIVEPATCH_REPLACE(): an atomic-replace (cumulative) patch. It replaces every patch
 * applied before it in one switch: functions it does not change go back to the
 * original; the replaced patches are unloaded without running their unpatch callbacks.
 */
#define RLIVEPATCH_REPLACE() RLP_RECORD(RLP_KIND_REPLACE, 0, 0, 0, 0, 0, 0, 0, 0, 0)

/*
 * RLIVEPATCH_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch), with the
 * kernel's semantics; any may be NULL. They run inside the target on one thread while the
 * others run:
 *   int pre_patch(void)     before the switch; nonzero cancels the apply (the patch is
 *                           unloaded, no other callback runs);
 *   void post_patch(void)   after the switch;
 *   void pre_unpatch(void)  before a disable's switch;
 *   void post_unpatch(void) after a disable's switch, and after an apply whose switch
 *                           timed out once pre_patch had succeeded.
 * A patch's constructors run at load time, before target symbols are filled in: do set-up
 * work in pre_patch.
 */
#define RLIVEPATCH_CALLBACKS(pre_patch, post_patch, pre_unpatch, post_unpatch)         \
	RLP_RECORD(RLP_KIND_CALLBACKS, 0, 0, 0, RLP_AS(int (*)(void), pre_patch),      \
		   RLP_AS(void (*)(void), post_patch), RLP_AS(void (*)(void), pre_unpatch), \
		   RLP_AS(void (*)(void), post_unpatch), 0, 0)
/* `f` as a pointer, with a warning at compile time if it is not of type `type`. */
#define RLP_AS(type, f) (0 ? (type)0 : (f))

/*
 * System states (the kernel's klp_state). RLIVEPATCH_STATE(id, version) declares that the
 * patch handles system state `id` at `version`. A replace patch must carry every state
 * already installed, at the same or a higher version, or apply refuses it; any patch that
 * carries an installed state must not lower its version.
 *
 * In callbacks, rlp_get_state(id) is this patch's state (the kernel's klp_get_state) and
 * rlp_get_prev_state(id) the same state of the patches installed before it
 * (klp_get_prev_state); `data` is free for the patches' use, to hand over what they set up.
 */
struct rlp_state {
	unsigned long id;
	unsigned int version;
	void *data;
};

#define RLIVEPATCH_STATE(id, version) RLP_STATE_(RLP_UNIQUE(rlp_state_), id, version)
#define RLP_STATE_(var, id, version)                                                   \
	static struct rlp_state var = {(id), (version), 0};                            \
	RLP_RECORD(RLP_KIND_STATE, 0, 0, 0, &var, 0, 0, 0, (id), (version))

struct rlp_state *rlp_get_state(unsigned long id);
struct rlp_state *rlp_get_prev_state(unsigned long id);

/*
 * Target symbols: the patch's code reaches the target's static and global variables and
 * its static functions through pointers that rlivepatch fills in at apply time, before
 * anything is switched (the role of the kernel's klp relocations):
 *
 *     RLIVEPATCH_SYMBOL(int, counter, "counter");                  // int *counter
 *     RLIVEPATCH_SYMBOL(int (int), helper, "helper");              // int (*helper)(int)
 *     RLIVEPATCH_SYMBOL(long, hits, "hits", "libfoo.so.1");        // in a library
 *
 *     (*counter)++; helper(3);
 *
 * An unresolvable symbol is an error before anything is loaded.
 */
#define RLIVEPATCH_SYMBOL(type, local, ...)                                            \
	static __typeof__(type) *local;                                                \
	RLP_SYMBOL_(local, __VA_ARGS__, 0)
#define RLP_SYMBOL_(local, sym, object, ...)                                           \
	RLP_RECORD(RLP_KIND_SYMBOL, object, sym, #local, &local, 0, 0, 0, 0, 0)

/*
 * Thread-local variables of the target (`__thread`/`thread_local`):
 *
 *     RLIVEPATCH_TLS(int, hits, "hits");                 // int *hits(void)
 *     (*hits())++;                                       // this thread's copy
 *
 * `local()` returns the calling thread's copy; rlivepatch fills in the module and offset
 * at apply time.
 */
struct rlp_tls_index {
	unsigned long module;
	unsigned long offset;
};
void *__tls_get_addr(struct rlp_tls_index *);

#define RLIVEPATCH_TLS(type, local, ...) RLP_TLS_(type, local, RLP_CAT(rlp_tls_, local), __VA_ARGS__, 0)
#define RLP_TLS_(type, local, index, sym, object, ...)                                 \
	static struct rlp_tls_index index;                                             \
	static inline __attribute__((unused)) __typeof__(type) *local(void)            \
	{                                                                              \
		return (__typeof__(type) *)__tls_get_addr(&index);                     \
	}                                                                              \
	RLP_RECORD(RLP_KIND_TLS, object, sym, #local, &index, 0, 0, 0, 0, 0)

/*
 * RLIVEPATCH_BUILD_ID("object", "hex"): the patch was built for the object with this
 * GNU build-id ("main" for the executable); apply refuses a process whose object has
 * another one, before touching it. `rlivepatch build-id FILE` prints this line.
 */
#define RLIVEPATCH_BUILD_ID(object, hex) RLP_RECORD(RLP_KIND_BUILD_ID, object, hex, 0, 0, 0, 0, 0, 0, 0)

/*
 * Shadow variables (the kernel's klp_shadow_*): data attached to an existing object,
 * keyed by (object pointer, id). One store per process, shared by every patch; it
 * survives atomic replace and the unloading of the patch that made a variable. Thread-safe.
 *
 *   rlp_shadow_get(obj, id): the data, or NULL.
 *   rlp_shadow_alloc(obj, id, size, ctor, ctor_data): a new zeroed variable; NULL if
 *       <obj, id> exists already or the constructor fails (nonzero). ctor runs once, under
 *       the store's lock.
 *   rlp_shadow_get_or_alloc(...): the existing one (no ctor call), or a new one.
 *   rlp_shadow_free(obj, id, dtor): remove <obj, id>; dtor (may be NULL) runs first.
 *   rlp_shadow_free_all(id, dtor): remove every variable with this id.
 */
typedef int (*rlp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*rlp_shadow_dtor_t)(void *obj, void *shadow_data);

void *rlp_shadow_get(void *obj, unsigned long id);
void *rlp_shadow_alloc(void *obj, unsigned long id, size_t size, rlp_shadow_ctor_t ctor, void *ctor_data);
void *rlp_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, rlp_shadow_ctor_t ctor, void *ctor_data);
void rlp_shadow_free(void *obj, unsigned long id, rlp_shadow_dtor_t dtor);
void rlp_shadow_free_all(unsigned long id, rlp_shadow_dtor_t dtor);

#ifdef __cplusplus
}
#endif

#endif /* RLIVEPATCH_H */
