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

/*
 * The preserving path (src/preserve.rs). GCC's interprocedural register allocation lets a
 * caller keep values in caller-saved registers across a call of a function that never
 * writes them; a replacement that follows the ABI may. Calls of such a function come
 * here through a stub in an island page ("push $index; jmp *rlp_preserve"): the caller's
 * registers are saved, its stack arguments copied below so that the replacement finds
 * them where it expects them, the replacement is called, and what the old function left
 * alone goes back before returning to the caller. The frame is a normal one with unwind
 * information, so C++ exceptions, pthread_cancel, backtrace() and debuggers go through
 * it to the caller.
 *
 * rlivepatch fills entry [index] of the table before the switch:
 *   target       the new function
 *   stack_bytes  the caller's stack arguments to copy (a multiple of 8)
 *   mask         bits 0-8: rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11 to keep (the old
 *                function leaves them alone); bits 9 and 10: xmm0 and xmm1 to keep
 *                (otherwise the replacement's return values stay); bit 16: the vector
 *                state (xmm/ymm/zmm, mask registers) to keep.
 * The entry is read only before the call: after it, the thunk reads its own frame.
 */
#define RLP_PRESERVE_MAX 4096
struct rlp_preserve_entry {
	uint64_t target;
	uint64_t stack_bytes;
	uint64_t mask;
	uint64_t unused;
};
struct rlp_preserve_entry rlp_table[RLP_PRESERVE_MAX];
EXPORT extern struct rlp_preserve_entry rlp_preserve_table[RLP_PRESERVE_MAX] __attribute__((alias("rlp_table")));

/* The XSAVE components kept (SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM, as the CPU and kernel
 * enable them) and the bytes of a standard-format area that holds them; 0 when the CPU
 * has no XSAVE, and then rlivepatch does not use the path for vector state. */
uint64_t rlp_xsave_components;
uint64_t rlp_xsave_bytes;
EXPORT extern uint64_t rlp_xsave_mask __attribute__((alias("rlp_xsave_components")));
EXPORT extern uint64_t rlp_xsave_size __attribute__((alias("rlp_xsave_bytes")));

__attribute__((constructor)) static void rlp_preserve_init(void)
{
	unsigned a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (!(c & (1u << 27))) /* OSXSAVE */
		return;
	unsigned lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
	uint64_t want = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7);
	uint64_t mask = xcr0 & want;
	uint64_t end = 576; /* the legacy area and the header */
	for (unsigned i = 2; i < 8; i++) {
		if (!(mask & (1u << i)))
			continue;
		__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0xd), "c"(i));
		if ((uint64_t)a + b > end)
			end = (uint64_t)a + b;
	}
	rlp_xsave_components = mask;
	rlp_xsave_bytes = (end + 63) & ~63ull;
}

__asm__(
	"	.text\n"
	"	.globl rlp_preserve\n"
	"	.type rlp_preserve, @function\n"
	"	.p2align 4\n"
	"rlp_preserve:\n"
	"	.cfi_startproc\n"
	/* From a stub: (%rsp) = the index, 8(%rsp) = the caller's return address. */
	"	.cfi_def_cfa_offset 16\n"
	"	pushq %rbp\n"
	"	.cfi_def_cfa_offset 24\n"
	"	.cfi_offset %rbp, -24\n"
	"	movq %rsp, %rbp\n"
	"	.cfi_def_cfa_register %rbp\n"
	/* The caller's registers: -8(%rbp) rax ... -72(%rbp) r11. */
	"	pushq %rax\n"
	"	pushq %rcx\n"
	"	pushq %rdx\n"
	"	pushq %rsi\n"
	"	pushq %rdi\n"
	"	pushq %r8\n"
	"	pushq %r9\n"
	"	pushq %r10\n"
	"	pushq %r11\n"
	/* Where the caller's values are, for a debugger looking at its frame. */
	"	.cfi_offset %rax, -32\n"
	"	.cfi_offset %rcx, -40\n"
	"	.cfi_offset %rdx, -48\n"
	"	.cfi_offset %rsi, -56\n"
	"	.cfi_offset %rdi, -64\n"
	"	.cfi_offset %r8, -72\n"
	"	.cfi_offset %r9, -80\n"
	"	.cfi_offset %r10, -88\n"
	"	.cfi_offset %r11, -96\n"
	/* Callee-saved registers the thunk uses: rbx the entry, r12 its mask, r13 the XSAVE area. */
	"	pushq %rbx\n"
	"	.cfi_offset %rbx, -104\n"
	"	pushq %r12\n"
	"	.cfi_offset %r12, -112\n"
	"	pushq %r13\n"
	"	.cfi_offset %r13, -120\n"
	"	movq 8(%rbp), %rbx\n"
	"	shlq $5, %rbx\n"
	"	leaq rlp_table(%rip), %r11\n"
	"	addq %r11, %rbx\n"
	"	movq 16(%rbx), %r12\n"
	"	xorl %r13d, %r13d\n"
	"	btq $16, %r12\n"
	"	jnc 1f\n"
	/* The vector state, in a 64-byte aligned XSAVE area whose header starts zeroed. */
	"	subq rlp_xsave_bytes(%rip), %rsp\n"
	"	andq $-64, %rsp\n"
	"	movq $0, 512(%rsp)\n"
	"	movq $0, 520(%rsp)\n"
	"	movq $0, 528(%rsp)\n"
	"	movq $0, 536(%rsp)\n"
	"	movq $0, 544(%rsp)\n"
	"	movq $0, 552(%rsp)\n"
	"	movq $0, 560(%rsp)\n"
	"	movq $0, 568(%rsp)\n"
	"	movl rlp_xsave_components(%rip), %eax\n"
	"	movl rlp_xsave_components+4(%rip), %edx\n"
	"	xsave (%rsp)\n"
	"	movq %rsp, %r13\n"
	"1:\n"
	/* The caller's stack arguments, copied where the replacement expects them. */
	"	movq 8(%rbx), %rcx\n"
	"	subq %rcx, %rsp\n"
	"	andq $-16, %rsp\n"
	"	leaq 24(%rbp), %rsi\n"
	"	movq %rsp, %rdi\n"
	"	shrq $3, %rcx\n"
	"	rep movsq\n"
	/* The arguments in registers as the caller left them (al counts a variadic call's
	 * vector registers; the vector registers themselves were not touched). */
	"	movq -8(%rbp), %rax\n"
	"	movq -16(%rbp), %rcx\n"
	"	movq -24(%rbp), %rdx\n"
	"	movq -32(%rbp), %rsi\n"
	"	movq -40(%rbp), %rdi\n"
	"	movq -48(%rbp), %r8\n"
	"	movq -56(%rbp), %r9\n"
	"	movq -64(%rbp), %r10\n"
	"	call *(%rbx)\n"
	"	.globl rlp_preserve_returned\n"
	"rlp_preserve_returned:\n"
	/* What the old function left alone goes back; the rest keeps the replacement's
	 * values (its return values among them). */
	"	btq $0, %r12\n	jnc 2f\n	movq -8(%rbp), %rax\n2:\n"
	"	btq $1, %r12\n	jnc 2f\n	movq -16(%rbp), %rcx\n2:\n"
	"	btq $2, %r12\n	jnc 2f\n	movq -24(%rbp), %rdx\n2:\n"
	"	btq $3, %r12\n	jnc 2f\n	movq -32(%rbp), %rsi\n2:\n"
	"	btq $4, %r12\n	jnc 2f\n	movq -40(%rbp), %rdi\n2:\n"
	"	btq $5, %r12\n	jnc 2f\n	movq -48(%rbp), %r8\n2:\n"
	"	btq $6, %r12\n	jnc 2f\n	movq -56(%rbp), %r9\n2:\n"
	"	btq $7, %r12\n	jnc 2f\n	movq -64(%rbp), %r10\n2:\n"
	"	btq $8, %r12\n	jnc 2f\n	movq -72(%rbp), %r11\n2:\n"
	"	testq %r13, %r13\n"
	"	jz 3f\n"
	/* The vector state back, but for the replacement's xmm0/xmm1 (return values) unless
	 * kept, and its MXCSR (the ABI has it keep the control bits; its status flags stay). */
	"	subq $64, %rsp\n"
	"	movdqu %xmm0, (%rsp)\n"
	"	movdqu %xmm1, 16(%rsp)\n"
	"	stmxcsr 32(%rsp)\n"
	"	movq %rax, 40(%rsp)\n"
	"	movq %rdx, 48(%rsp)\n"
	"	movl rlp_xsave_components(%rip), %eax\n"
	"	movl rlp_xsave_components+4(%rip), %edx\n"
	"	xrstor (%r13)\n"
	"	btq $9, %r12\n	jc 4f\n	movdqu (%rsp), %xmm0\n4:\n"
	"	btq $10, %r12\n	jc 4f\n	movdqu 16(%rsp), %xmm1\n4:\n"
	"	ldmxcsr 32(%rsp)\n"
	"	movq 40(%rsp), %rax\n"
	"	movq 48(%rsp), %rdx\n"
	"3:\n"
	"	movq -80(%rbp), %rbx\n"
	"	.cfi_restore %rbx\n"
	"	movq -88(%rbp), %r12\n"
	"	.cfi_restore %r12\n"
	"	movq -96(%rbp), %r13\n"
	"	.cfi_restore %r13\n"
	"	movq %rbp, %rsp\n"
	"	popq %rbp\n"
	"	.cfi_def_cfa %rsp, 16\n"
	"	.cfi_restore %rbp\n"
	"	addq $8, %rsp\n"
	"	.cfi_def_cfa_offset 8\n"
	"	ret\n"
	"	.cfi_endproc\n"
	"	.size rlp_preserve, .-rlp_preserve\n");
