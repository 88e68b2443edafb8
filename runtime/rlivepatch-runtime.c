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
 *                function leaves them alone); bit 32 + n: vector register n to keep
 *                (xmm0 and xmm1 unkept: the replacement's return values stay); bit 18:
 *                the low halves of xmm0-15 (callers in code that uses nothing wider);
 *                bit 16 instead: whole vector registers, as wide as the CPU has them
 *                (ymm0-15 with AVX; zmm0-31 with AVX-512, and bit 19 the mask
 *                registers k0-7).
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

/* How wide the vector registers are that the kernel lets this process use: 0 SSE (xmm),
 * 1 AVX (ymm), 2 AVX-512 (zmm0-31 and the mask registers). */
uint64_t rlp_width;
EXPORT extern uint64_t rlp_vector_width __attribute__((alias("rlp_width")));

__attribute__((constructor)) static void rlp_preserve_init(void)
{
	unsigned a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if (!(c & (1u << 27))) /* OSXSAVE */
		return;
	unsigned lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 0xe6) == 0xe6) /* SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM */
		rlp_width = 2;
	else if ((lo & 0x6) == 0x6)
		rlp_width = 1;
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
	/* The low halves of xmm0-15, in a 16-byte aligned area. */
	"	btq $18, %r12\n"
	"	jnc 6f\n"
	"	subq $256, %rsp\n"
	"	andq $-16, %rsp\n"
	"	movdqa %xmm0, 0(%rsp)\n	movdqa %xmm1, 16(%rsp)\n"
	"	movdqa %xmm2, 32(%rsp)\n	movdqa %xmm3, 48(%rsp)\n"
	"	movdqa %xmm4, 64(%rsp)\n	movdqa %xmm5, 80(%rsp)\n"
	"	movdqa %xmm6, 96(%rsp)\n	movdqa %xmm7, 112(%rsp)\n"
	"	movdqa %xmm8, 128(%rsp)\n	movdqa %xmm9, 144(%rsp)\n"
	"	movdqa %xmm10, 160(%rsp)\n	movdqa %xmm11, 176(%rsp)\n"
	"	movdqa %xmm12, 192(%rsp)\n	movdqa %xmm13, 208(%rsp)\n"
	"	movdqa %xmm14, 224(%rsp)\n	movdqa %xmm15, 240(%rsp)\n"
	"	movq %rsp, %r13\n"
	"	jmp 1f\n"
	"6:\n"
	"	btq $16, %r12\n"
	"	jnc 1f\n"
	/* Whole vector registers: zmm0-31 and k0-7, or ymm0-15. */
	"	subq $2112, %rsp\n"
	"	andq $-64, %rsp\n"
	"	movq %rsp, %r13\n"
	"	cmpq $2, rlp_width(%rip)\n"
	"	jne 10f\n"
	"	vmovdqu64 %zmm0, 0(%rsp)\n"
	"	vmovdqu64 %zmm1, 64(%rsp)\n"
	"	vmovdqu64 %zmm2, 128(%rsp)\n"
	"	vmovdqu64 %zmm3, 192(%rsp)\n"
	"	vmovdqu64 %zmm4, 256(%rsp)\n"
	"	vmovdqu64 %zmm5, 320(%rsp)\n"
	"	vmovdqu64 %zmm6, 384(%rsp)\n"
	"	vmovdqu64 %zmm7, 448(%rsp)\n"
	"	vmovdqu64 %zmm8, 512(%rsp)\n"
	"	vmovdqu64 %zmm9, 576(%rsp)\n"
	"	vmovdqu64 %zmm10, 640(%rsp)\n"
	"	vmovdqu64 %zmm11, 704(%rsp)\n"
	"	vmovdqu64 %zmm12, 768(%rsp)\n"
	"	vmovdqu64 %zmm13, 832(%rsp)\n"
	"	vmovdqu64 %zmm14, 896(%rsp)\n"
	"	vmovdqu64 %zmm15, 960(%rsp)\n"
	"	vmovdqu64 %zmm16, 1024(%rsp)\n"
	"	vmovdqu64 %zmm17, 1088(%rsp)\n"
	"	vmovdqu64 %zmm18, 1152(%rsp)\n"
	"	vmovdqu64 %zmm19, 1216(%rsp)\n"
	"	vmovdqu64 %zmm20, 1280(%rsp)\n"
	"	vmovdqu64 %zmm21, 1344(%rsp)\n"
	"	vmovdqu64 %zmm22, 1408(%rsp)\n"
	"	vmovdqu64 %zmm23, 1472(%rsp)\n"
	"	vmovdqu64 %zmm24, 1536(%rsp)\n"
	"	vmovdqu64 %zmm25, 1600(%rsp)\n"
	"	vmovdqu64 %zmm26, 1664(%rsp)\n"
	"	vmovdqu64 %zmm27, 1728(%rsp)\n"
	"	vmovdqu64 %zmm28, 1792(%rsp)\n"
	"	vmovdqu64 %zmm29, 1856(%rsp)\n"
	"	vmovdqu64 %zmm30, 1920(%rsp)\n"
	"	vmovdqu64 %zmm31, 1984(%rsp)\n"
	"	kmovq %k0, 2048(%rsp)\n"
	"	kmovq %k1, 2056(%rsp)\n"
	"	kmovq %k2, 2064(%rsp)\n"
	"	kmovq %k3, 2072(%rsp)\n"
	"	kmovq %k4, 2080(%rsp)\n"
	"	kmovq %k5, 2088(%rsp)\n"
	"	kmovq %k6, 2096(%rsp)\n"
	"	kmovq %k7, 2104(%rsp)\n"
	"	jmp 1f\n"
	"10:\n"
	"	vmovdqu %ymm0, 0(%rsp)\n"
	"	vmovdqu %ymm1, 32(%rsp)\n"
	"	vmovdqu %ymm2, 64(%rsp)\n"
	"	vmovdqu %ymm3, 96(%rsp)\n"
	"	vmovdqu %ymm4, 128(%rsp)\n"
	"	vmovdqu %ymm5, 160(%rsp)\n"
	"	vmovdqu %ymm6, 192(%rsp)\n"
	"	vmovdqu %ymm7, 224(%rsp)\n"
	"	vmovdqu %ymm8, 256(%rsp)\n"
	"	vmovdqu %ymm9, 288(%rsp)\n"
	"	vmovdqu %ymm10, 320(%rsp)\n"
	"	vmovdqu %ymm11, 352(%rsp)\n"
	"	vmovdqu %ymm12, 384(%rsp)\n"
	"	vmovdqu %ymm13, 416(%rsp)\n"
	"	vmovdqu %ymm14, 448(%rsp)\n"
	"	vmovdqu %ymm15, 480(%rsp)\n"
	"1:\n"
	/* The caller's stack arguments, copied where the replacement expects them. */
	"	movq 8(%rbx), %rcx\n"
	"	subq %rcx, %rsp\n"
	"	andq $-16, %rsp\n"
	"	leaq 24(%rbp), %rsi\n"
	"	movq %rsp, %rdi\n"
	"	shrq $3, %rcx\n"
	"	jz 9f\n" /* rep movs costs dozens of cycles even for nothing */
	"	rep movsq\n"
	"9:\n"
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
	/* The kept low halves of xmm0-15 back. */
	"	btq $18, %r12\n"
	"	jnc 7f\n"
	"	btq $32, %r12\n	jnc 8f\n	movdqa 0(%r13), %xmm0\n8:\n"
	"	btq $33, %r12\n	jnc 8f\n	movdqa 16(%r13), %xmm1\n8:\n"
	"	btq $34, %r12\n	jnc 8f\n	movdqa 32(%r13), %xmm2\n8:\n"
	"	btq $35, %r12\n	jnc 8f\n	movdqa 48(%r13), %xmm3\n8:\n"
	"	btq $36, %r12\n	jnc 8f\n	movdqa 64(%r13), %xmm4\n8:\n"
	"	btq $37, %r12\n	jnc 8f\n	movdqa 80(%r13), %xmm5\n8:\n"
	"	btq $38, %r12\n	jnc 8f\n	movdqa 96(%r13), %xmm6\n8:\n"
	"	btq $39, %r12\n	jnc 8f\n	movdqa 112(%r13), %xmm7\n8:\n"
	"	btq $40, %r12\n	jnc 8f\n	movdqa 128(%r13), %xmm8\n8:\n"
	"	btq $41, %r12\n	jnc 8f\n	movdqa 144(%r13), %xmm9\n8:\n"
	"	btq $42, %r12\n	jnc 8f\n	movdqa 160(%r13), %xmm10\n8:\n"
	"	btq $43, %r12\n	jnc 8f\n	movdqa 176(%r13), %xmm11\n8:\n"
	"	btq $44, %r12\n	jnc 8f\n	movdqa 192(%r13), %xmm12\n8:\n"
	"	btq $45, %r12\n	jnc 8f\n	movdqa 208(%r13), %xmm13\n8:\n"
	"	btq $46, %r12\n	jnc 8f\n	movdqa 224(%r13), %xmm14\n8:\n"
	"	btq $47, %r12\n	jnc 8f\n	movdqa 240(%r13), %xmm15\n8:\n"
	"	jmp 3f\n"
	"7:\n"
	"	cmpq $2, rlp_width(%rip)\n"
	"	jne 11f\n"
	"	btq $32, %r12\n	jnc 8f\n	vmovdqu64 0(%r13), %zmm0\n8:\n"
	"	btq $33, %r12\n	jnc 8f\n	vmovdqu64 64(%r13), %zmm1\n8:\n"
	"	btq $34, %r12\n	jnc 8f\n	vmovdqu64 128(%r13), %zmm2\n8:\n"
	"	btq $35, %r12\n	jnc 8f\n	vmovdqu64 192(%r13), %zmm3\n8:\n"
	"	btq $36, %r12\n	jnc 8f\n	vmovdqu64 256(%r13), %zmm4\n8:\n"
	"	btq $37, %r12\n	jnc 8f\n	vmovdqu64 320(%r13), %zmm5\n8:\n"
	"	btq $38, %r12\n	jnc 8f\n	vmovdqu64 384(%r13), %zmm6\n8:\n"
	"	btq $39, %r12\n	jnc 8f\n	vmovdqu64 448(%r13), %zmm7\n8:\n"
	"	btq $40, %r12\n	jnc 8f\n	vmovdqu64 512(%r13), %zmm8\n8:\n"
	"	btq $41, %r12\n	jnc 8f\n	vmovdqu64 576(%r13), %zmm9\n8:\n"
	"	btq $42, %r12\n	jnc 8f\n	vmovdqu64 640(%r13), %zmm10\n8:\n"
	"	btq $43, %r12\n	jnc 8f\n	vmovdqu64 704(%r13), %zmm11\n8:\n"
	"	btq $44, %r12\n	jnc 8f\n	vmovdqu64 768(%r13), %zmm12\n8:\n"
	"	btq $45, %r12\n	jnc 8f\n	vmovdqu64 832(%r13), %zmm13\n8:\n"
	"	btq $46, %r12\n	jnc 8f\n	vmovdqu64 896(%r13), %zmm14\n8:\n"
	"	btq $47, %r12\n	jnc 8f\n	vmovdqu64 960(%r13), %zmm15\n8:\n"
	"	btq $48, %r12\n	jnc 8f\n	vmovdqu64 1024(%r13), %zmm16\n8:\n"
	"	btq $49, %r12\n	jnc 8f\n	vmovdqu64 1088(%r13), %zmm17\n8:\n"
	"	btq $50, %r12\n	jnc 8f\n	vmovdqu64 1152(%r13), %zmm18\n8:\n"
	"	btq $51, %r12\n	jnc 8f\n	vmovdqu64 1216(%r13), %zmm19\n8:\n"
	"	btq $52, %r12\n	jnc 8f\n	vmovdqu64 1280(%r13), %zmm20\n8:\n"
	"	btq $53, %r12\n	jnc 8f\n	vmovdqu64 1344(%r13), %zmm21\n8:\n"
	"	btq $54, %r12\n	jnc 8f\n	vmovdqu64 1408(%r13), %zmm22\n8:\n"
	"	btq $55, %r12\n	jnc 8f\n	vmovdqu64 1472(%r13), %zmm23\n8:\n"
	"	btq $56, %r12\n	jnc 8f\n	vmovdqu64 1536(%r13), %zmm24\n8:\n"
	"	btq $57, %r12\n	jnc 8f\n	vmovdqu64 1600(%r13), %zmm25\n8:\n"
	"	btq $58, %r12\n	jnc 8f\n	vmovdqu64 1664(%r13), %zmm26\n8:\n"
	"	btq $59, %r12\n	jnc 8f\n	vmovdqu64 1728(%r13), %zmm27\n8:\n"
	"	btq $60, %r12\n	jnc 8f\n	vmovdqu64 1792(%r13), %zmm28\n8:\n"
	"	btq $61, %r12\n	jnc 8f\n	vmovdqu64 1856(%r13), %zmm29\n8:\n"
	"	btq $62, %r12\n	jnc 8f\n	vmovdqu64 1920(%r13), %zmm30\n8:\n"
	"	btq $63, %r12\n	jnc 8f\n	vmovdqu64 1984(%r13), %zmm31\n8:\n"
	"	btq $19, %r12\n"
	"	jnc 3f\n"
	"	kmovq 2048(%r13), %k0\n"
	"	kmovq 2056(%r13), %k1\n"
	"	kmovq 2064(%r13), %k2\n"
	"	kmovq 2072(%r13), %k3\n"
	"	kmovq 2080(%r13), %k4\n"
	"	kmovq 2088(%r13), %k5\n"
	"	kmovq 2096(%r13), %k6\n"
	"	kmovq 2104(%r13), %k7\n"
	"	jmp 3f\n"
	"11:\n"
	"	btq $32, %r12\n	jnc 8f\n	vmovdqu 0(%r13), %ymm0\n8:\n"
	"	btq $33, %r12\n	jnc 8f\n	vmovdqu 32(%r13), %ymm1\n8:\n"
	"	btq $34, %r12\n	jnc 8f\n	vmovdqu 64(%r13), %ymm2\n8:\n"
	"	btq $35, %r12\n	jnc 8f\n	vmovdqu 96(%r13), %ymm3\n8:\n"
	"	btq $36, %r12\n	jnc 8f\n	vmovdqu 128(%r13), %ymm4\n8:\n"
	"	btq $37, %r12\n	jnc 8f\n	vmovdqu 160(%r13), %ymm5\n8:\n"
	"	btq $38, %r12\n	jnc 8f\n	vmovdqu 192(%r13), %ymm6\n8:\n"
	"	btq $39, %r12\n	jnc 8f\n	vmovdqu 224(%r13), %ymm7\n8:\n"
	"	btq $40, %r12\n	jnc 8f\n	vmovdqu 256(%r13), %ymm8\n8:\n"
	"	btq $41, %r12\n	jnc 8f\n	vmovdqu 288(%r13), %ymm9\n8:\n"
	"	btq $42, %r12\n	jnc 8f\n	vmovdqu 320(%r13), %ymm10\n8:\n"
	"	btq $43, %r12\n	jnc 8f\n	vmovdqu 352(%r13), %ymm11\n8:\n"
	"	btq $44, %r12\n	jnc 8f\n	vmovdqu 384(%r13), %ymm12\n8:\n"
	"	btq $45, %r12\n	jnc 8f\n	vmovdqu 416(%r13), %ymm13\n8:\n"
	"	btq $46, %r12\n	jnc 8f\n	vmovdqu 448(%r13), %ymm14\n8:\n"
	"	btq $47, %r12\n	jnc 8f\n	vmovdqu 480(%r13), %ymm15\n8:\n"
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
