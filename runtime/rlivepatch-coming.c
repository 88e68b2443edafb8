/*
 * Objects that come later (src/coming.rs): the kernel's klp_module_coming, in a process.
 *
 * A patch may change functions of an object the process has not loaded yet. rlivepatch
 * writes those functions into the table below and points glibc's debugger notification,
 * _dl_debug_state, at rlp_dl_hook. glibc calls it inside every dlopen (its own loads of
 * gconv and NSS modules included) with r_state = RT_CONSISTENT once the new objects are
 * mapped and before any is relocated, so before any of their code (IFUNC resolvers and
 * constructors included) can run. The hook then finds each new object by its build-id and
 * writes the jumps into it. The tracer may be long gone by then: all of it happens here.
 *
 * The hook runs under the loader's lock, so one at a time. It calls nothing in the C
 * library (the loader's lock is held and lazily bound calls would re-enter it) and
 * touches no vector register (the loader's callers of _dl_debug_state, built with
 * -fipa-ra, know it clobbers nothing; the stub saves every general register, the flags
 * and the SSE state, for the patches' callbacks): raw system calls only, through
 * /proc/self/mem, which writes read-only code without changing its protection.
 *
 * While rlivepatch works on the process it sets `frozen`: a hook that starts then waits
 * (without holding `busy`), so that rlivepatch reads a table no one changes under it.
 */
#include <stdint.h>
#include <sys/syscall.h>

#define HOOK __attribute__((section("rlp_hook_text"), target("general-regs-only"), noinline, used))
#define EXPORT __attribute__((visibility("default")))

#define RLP_COMING_OBJS 64
#define RLP_COMING_FUNCS 1024
#define RLP_COMING_COPIES 256

/* An object a patch changes: its build-id and where that lies in its image. */
struct rlp_coming_obj {
	uint8_t build_id[32];
	uint32_t build_id_len;
	uint32_t unused;
	uint64_t note_vaddr;
	char name[64];
};

/* One function of an active patch: rlivepatch writes them oldest patch first, so the last
 * entry for an (object, offset) is what runs. */
struct rlp_coming_func {
	uint32_t obj;
	uint32_t patch;
	uint64_t offset;
	uint8_t orig[8];
	uint64_t new_addr;
};

/* A copy of an object in the process: state 1 patched by the hook, 2 left unpatched
 * (see last_failure), 3 in another namespace (dlmopen), not patched. */
struct rlp_coming_copy {
	uint64_t l_addr;
	uint64_t link_map;
	uint32_t obj;
	uint32_t state;
	uint64_t ns;
};

/* The callbacks of an object (RLIVEPATCH_OBJECT_CALLBACKS) of an active patch, oldest
 * patch first; each gets the copy's load bias. */
struct rlp_coming_cb {
	uint32_t obj;
	uint32_t patch;
	int (*pre_patch)(void *);
	void (*post_patch)(void *);
	void (*pre_unpatch)(void *);
	void (*post_unpatch)(void *);
};
#define RLP_COMING_CBS 64

struct rlp_coming {
	uint64_t magic;
	uint64_t busy;
	uint64_t frozen;
	uint64_t frozen_tid;
	uint64_t generation;
	uint64_t r_debug;
	uint64_t hook_start;
	uint64_t hook_end;
	uint64_t events;
	uint64_t nobjs;
	uint64_t nfuncs;
	uint64_t ncopies;
	char last_failure[144];
	uint64_t waiting_delete;
	uint64_t ncbs;
	struct rlp_coming_obj objs[RLP_COMING_OBJS];
	struct rlp_coming_func funcs[RLP_COMING_FUNCS];
	struct rlp_coming_copy copies[RLP_COMING_COPIES];
	struct rlp_coming_cb cbs[RLP_COMING_CBS];
};

/* src/coming.rs reads and writes the table at these offsets. */
_Static_assert(sizeof(struct rlp_coming_obj) == 112, "obj");
_Static_assert(sizeof(struct rlp_coming_func) == 32, "func");
_Static_assert(sizeof(struct rlp_coming_copy) == 32, "copy");
_Static_assert(__builtin_offsetof(struct rlp_coming, last_failure) == 96, "last_failure");
_Static_assert(__builtin_offsetof(struct rlp_coming, objs) == 256, "objs");
_Static_assert(__builtin_offsetof(struct rlp_coming, funcs) == 7424, "funcs");
_Static_assert(__builtin_offsetof(struct rlp_coming, copies) == 40192, "copies");
_Static_assert(__builtin_offsetof(struct rlp_coming, waiting_delete) == 240, "waiting_delete");
_Static_assert(__builtin_offsetof(struct rlp_coming, ncbs) == 248, "ncbs");
_Static_assert(__builtin_offsetof(struct rlp_coming, cbs) == 48384, "cbs");
_Static_assert(sizeof(struct rlp_coming_cb) == 40, "cb");

extern char __start_rlp_hook_text[], __stop_rlp_hook_text[];
/* Zero-initialised, so in .bss: the runtime's image (copied into every process that
 * loads it) carries none of its 50 KiB. Its first fields are set at load, before
 * rlivepatch reads the table. */
EXPORT struct rlp_coming rlp_coming;

__attribute__((constructor)) static void rlp_coming_init(void)
{
	rlp_coming.magic = 0x524c50434f4d4931ull;
	rlp_coming.hook_start = (uint64_t)__start_rlp_hook_text;
	rlp_coming.hook_end = (uint64_t)__stop_rlp_hook_text;
}

/* glibc's r_debug and link_map, their public parts (<link.h>), spelled out so that the
 * layout read is the one documented, whatever the headers of the build machine. */
struct lm {
	uint64_t l_addr;
	char *l_name;
	void *l_ld;
	struct lm *l_next, *l_prev;
};
struct rdebug {
	int32_t r_version;
	struct lm *r_map;
	uint64_t r_brk;
	int32_t r_state;
	uint64_t r_ldbase;
	struct rdebug *r_next; /* r_version >= 2 (glibc 2.35): the next namespace */
};
#define RT_CONSISTENT 0

HOOK static long sys(long nr, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

HOOK static int same(const uint8_t *a, const uint8_t *b, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

HOOK static void fail(const char *why, const char *name)
{
	char *o = rlp_coming.last_failure;
	uint64_t n = 0, max = sizeof rlp_coming.last_failure - 1;
	for (; name && *name && n < max; name++)
		o[n++] = *name;
	if (n < max)
		o[n++] = ':';
	if (n < max)
		o[n++] = ' ';
	for (; *why && n < max; why++)
		o[n++] = *why;
	o[n] = 0;
}

HOOK static void add_copy(struct lm *l, uint32_t obj, uint32_t state, uint64_t ns)
{
	if (rlp_coming.ncopies >= RLP_COMING_COPIES) {
		fail("too many copies to keep track of", rlp_coming.objs[obj].name);
		return;
	}
	struct rlp_coming_copy *c = &rlp_coming.copies[rlp_coming.ncopies];
	c->l_addr = l->l_addr;
	c->link_map = (uint64_t)l;
	c->obj = obj;
	c->state = state;
	c->ns = ns;
	__atomic_store_n(&rlp_coming.ncopies, rlp_coming.ncopies + 1, __ATOMIC_RELEASE);
	rlp_coming.generation++;
}

HOOK static int known(struct lm *l)
{
	for (uint64_t i = 0; i < rlp_coming.ncopies; i++)
		if (rlp_coming.copies[i].link_map == (uint64_t)l && rlp_coming.copies[i].l_addr == l->l_addr)
			return 1;
	return 0;
}

/* The object whose build-id lies at its note: 0 none; else 1 + its index. */
HOOK static uint32_t recognise(long mem, struct lm *l)
{
	for (uint32_t o = 0; o < rlp_coming.nobjs && o < RLP_COMING_OBJS; o++) {
		struct rlp_coming_obj *obj = &rlp_coming.objs[o];
		int wanted = 0;
		for (uint64_t i = 0; i < rlp_coming.nfuncs && !wanted; i++)
			wanted = rlp_coming.funcs[i].obj == o;
		if (!wanted || obj->build_id_len == 0 || obj->build_id_len > 32)
			continue;
		uint8_t id[32];
		/* Through /proc/self/mem: an object of another layout fails the read (EIO)
		 * instead of faulting. */
		long n = sys(SYS_pread64, mem, (long)id, obj->build_id_len, (long)(l->l_addr + obj->note_vaddr));
		if (n == (long)obj->build_id_len && same(id, obj->build_id, n))
			return o + 1;
	}
	return 0;
}

/* The going callbacks of `obj` for the copy at `base`, newest patch first, from `from`
 * (exclusive) down: what a refused or failed coming undoes, and what a dlclose runs. */
HOOK static void unpatch_callbacks(uint32_t obj, uint64_t base, uint64_t from, int pre)
{
	for (uint64_t i = from; i-- > 0;) {
		struct rlp_coming_cb *c = &rlp_coming.cbs[i];
		if (c->obj != obj)
			continue;
		if (pre && c->pre_unpatch)
			c->pre_unpatch((void *)base);
		if (c->post_unpatch)
			c->post_unpatch((void *)base);
	}
}

/* Write the jumps of every function of `obj` into the copy at l_addr: all or none. */
HOOK static uint32_t write_jumps(long mem, struct lm *l, uint32_t obj, uint64_t n, const char *name)
{
	/* First check every entry, newest entry for each offset. */
	for (uint64_t i = n; i-- > 0;) {
		struct rlp_coming_func *f = &rlp_coming.funcs[i];
		if (f->obj != obj)
			continue;
		uint8_t now[5];
		uint64_t at = l->l_addr + f->offset;
		if (sys(SYS_pread64, mem, (long)now, 5, (long)at) != 5) {
			fail("cannot read a changed function's entry", name);
			return 2;
		}
		if (!same(now, f->orig, 5)) {
			fail("a changed function's entry does not hold the code the patch was made for", name);
			return 2;
		}
		int64_t rel = (int64_t)(f->new_addr - (at + 5));
		if (rel != (int32_t)rel) {
			fail("the patch is more than 2 GiB away from this copy", name);
			return 2;
		}
	}
	for (uint64_t i = n; i-- > 0;) {
		struct rlp_coming_func *f = &rlp_coming.funcs[i];
		if (f->obj != obj)
			continue;
		int newer = 0;
		for (uint64_t j = i + 1; j < n && !newer; j++)
			newer = rlp_coming.funcs[j].obj == obj && rlp_coming.funcs[j].offset == f->offset;
		if (newer)
			continue;
		uint64_t at = l->l_addr + f->offset;
		int32_t rel = (int32_t)(f->new_addr - (at + 5));
		uint8_t jmp[5] = { 0xe9, (uint8_t)rel, (uint8_t)(rel >> 8), (uint8_t)(rel >> 16), (uint8_t)(rel >> 24) };
		if (sys(SYS_pwrite64, mem, (long)jmp, 5, (long)at) != 5) {
			/* Nothing of the object ran yet: put back what was written. */
			for (uint64_t k = n; --k > i;)
				if (rlp_coming.funcs[k].obj == obj)
					sys(SYS_pwrite64, mem, (long)rlp_coming.funcs[k].orig, 5,
					    (long)(l->l_addr + rlp_coming.funcs[k].offset));
			fail("writing through /proc/self/mem failed", name);
			return 2;
		}
	}
	return 1;
}

/* A copy that comes: the pre_patch callbacks of its object, oldest patch first (one
 * that refuses leaves the copy unpatched, and those that ran get post_unpatch: the
 * kernel's cancelled transition), the jumps, then the post_patch callbacks. */
HOOK static uint32_t patch_copy(long mem, struct lm *l, uint32_t obj)
{
	uint64_t ncbs = rlp_coming.ncbs < RLP_COMING_CBS ? rlp_coming.ncbs : RLP_COMING_CBS;
	const char *name = rlp_coming.objs[obj].name;
	void *base = (void *)l->l_addr;
	for (uint64_t i = 0; i < ncbs; i++) {
		struct rlp_coming_cb *c = &rlp_coming.cbs[i];
		if (c->obj != obj || !c->pre_patch)
			continue;
		if (c->pre_patch(base)) {
			unpatch_callbacks(obj, l->l_addr, i, 0);
			fail("a pre_patch callback refused this copy", name);
			return 2;
		}
	}
	uint32_t state = write_jumps(mem, l, obj, rlp_coming.nfuncs, name);
	if (state != 1) {
		unpatch_callbacks(obj, l->l_addr, ncbs, 0);
		return state;
	}
	for (uint64_t i = 0; i < ncbs; i++) {
		struct rlp_coming_cb *c = &rlp_coming.cbs[i];
		if (c->obj == obj && c->post_patch)
			c->post_patch(base);
	}
	return 1;
}

/* Forget copies that are no longer in any namespace (dlclose unmapped them); a patched
 * one gets its going callbacks. */
HOOK static void forget_gone(struct rdebug *base)
{
	for (uint64_t i = 0; i < rlp_coming.ncopies;) {
		struct rlp_coming_copy *c = &rlp_coming.copies[i];
		int found = 0;
		for (struct rdebug *r = base; r && !found; r = r->r_version >= 2 ? r->r_next : 0)
			for (struct lm *l = r->r_map; l && !found; l = l->l_next)
				found = (uint64_t)l == c->link_map && l->l_addr == c->l_addr;
		if (found) {
			i++;
			continue;
		}
		if (c->state == 1 && c->ns == 0)
			unpatch_callbacks(c->obj, c->l_addr,
					  rlp_coming.ncbs < RLP_COMING_CBS ? rlp_coming.ncbs : RLP_COMING_CBS, 1);
		rlp_coming.copies[i] = rlp_coming.copies[rlp_coming.ncopies - 1];
		rlp_coming.ncopies--;
		rlp_coming.generation++;
	}
}

HOOK static void scan(struct rdebug *base)
{
	long mem = -1;
	uint64_t ns = 0;
	for (struct rdebug *r = base; r; r = r->r_version >= 2 ? r->r_next : 0, ns++) {
		if (r->r_state != RT_CONSISTENT)
			continue;
		for (struct lm *l = r->r_map; l; l = l->l_next) {
			if (known(l))
				continue;
			if (mem < 0) {
				mem = sys(SYS_open, (long)"/proc/self/mem", 02 | 02000000 /* O_RDWR|O_CLOEXEC */, 0, 0);
				if (mem < 0) {
					fail("cannot open /proc/self/mem", "rlivepatch");
					return;
				}
			}
			uint32_t o = recognise(mem, l);
			if (!o)
				continue;
			uint32_t state = ns == 0 ? patch_copy(mem, l, o - 1) : 3;
			add_copy(l, o - 1, state, ns);
		}
	}
	if (mem >= 0)
		sys(SYS_close, mem, 0, 0, 0);
}

/* Called by rlp_dl_hook with the caller's registers saved. */
HOOK void rlp_dl_event(void)
{
	struct rdebug *base = (struct rdebug *)rlp_coming.r_debug;
	if (!base)
		return;
	long tid = sys(SYS_gettid, 0, 0, 0, 0);
	/* A dlopen or dlclose that reached here (RT_ADD, RT_DELETE) has mapped or unmapped
	 * nothing yet; rlivepatch, which waits for one that is mapping or unmapping, must
	 * not wait for this one (see coming::freeze). */
	int deleting = 0;
	for (struct rdebug *r = base; r; r = r->r_version >= 2 ? r->r_next : 0)
		deleting |= r->r_state != RT_CONSISTENT;
	/* Wait while rlivepatch works: as long as it lives, at most a minute (a rlivepatch
	 * killed or stopped then must not hang every dlopen of the process). */
	for (int waited = 0;; waited++) {
		__atomic_exchange_n(&rlp_coming.busy, 1, __ATOMIC_SEQ_CST);
		uint64_t frozen = __atomic_load_n(&rlp_coming.frozen, __ATOMIC_SEQ_CST);
		if (!frozen || (long)rlp_coming.frozen_tid == tid || waited >= 60000)
			break;
		/* `frozen` is the pid of the rlivepatch at work: gone, it cannot thaw. */
		if (sys(SYS_kill, (long)frozen, 0, 0, 0) == -3 /* ESRCH */)
			break;
		__atomic_store_n(&rlp_coming.waiting_delete, deleting, __ATOMIC_SEQ_CST);
		__atomic_store_n(&rlp_coming.busy, 0, __ATOMIC_SEQ_CST);
		struct {
			long s, ns;
		} ms = { 0, 1000000 };
		sys(SYS_nanosleep, (long)&ms, 0, 0, 0);
	}
	/* Every event waits while rlivepatch works, RT_DELETE too: no copy it knows of goes
	 * away under it. Only a consistent list is read. */
	__atomic_store_n(&rlp_coming.waiting_delete, 0, __ATOMIC_SEQ_CST);
	rlp_coming.events++;
	/* Copies that went are forgotten even when no patch waits any more: a new copy may
	 * get the same link_map and address later. */
	if (base->r_state == RT_CONSISTENT) {
		forget_gone(base);
		if (rlp_coming.nfuncs)
			scan(base);
	}
	__atomic_store_n(&rlp_coming.busy, 0, __ATOMIC_SEQ_CST);
}

/* The entry _dl_debug_state jumps to: every register a caller may keep across the call
 * saved (flags too), then rlp_dl_event; the frame unwinds to _dl_debug_state's caller. */
__asm__(
	"	.section rlp_hook_text,\"ax\",@progbits\n"
	"	.globl rlp_dl_hook\n"
	"	.type rlp_dl_hook, @function\n"
	"	.p2align 4\n"
	"rlp_dl_hook:\n"
	"	.cfi_startproc\n"
	"	pushfq\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %rax\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %rcx\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %rdx\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %rsi\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %rdi\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %r8\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %r9\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %r10\n"
	"	.cfi_adjust_cfa_offset 8\n"
	"	pushq %r11\n"
	"	.cfi_adjust_cfa_offset 8\n"
	/* 8 (return address) + 80 pushed: 16-byte aligned after 8 more, and then the x87
	 * and SSE state, which the patches' callbacks may use (fxsave64, 512 bytes). */
	"	subq $520, %rsp\n"
	"	.cfi_adjust_cfa_offset 520\n"
	"	fxsave64 (%rsp)\n"
	"	cld\n"
	"	call rlp_dl_event\n"
	"	fxrstor64 (%rsp)\n"
	"	addq $520, %rsp\n"
	"	.cfi_adjust_cfa_offset -520\n"
	"	popq %r11\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %r10\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %r9\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %r8\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %rdi\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %rsi\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %rdx\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %rcx\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popq %rax\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	popfq\n"
	"	.cfi_adjust_cfa_offset -8\n"
	"	ret\n"
	"	.cfi_endproc\n"
	"	.size rlp_dl_hook, .-rlp_dl_hook\n"
	"	.text\n");
