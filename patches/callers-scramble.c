/* callers-scramble: replaces the callees of fixtures/callers.c with functions that give the
 * same results, follow the ABI, and change every register the ABI lets them change (a
 * call of snprintf, then junk in rax, rcx, rdx, rsi, rdi, r8-r11 and every vector
 * register). Callers built with -fipa-ra that kept values in those registers across the
 * call are corrupted unless rlivepatch keeps them. */
#include <rlivepatch.h>
#include <stdarg.h>
#include <stdio.h>

static char sink[64];

static void scramble(void)
{
	snprintf(sink, sizeof sink, "%d %f", 42, 1.5);
	__asm__ volatile("mov $0x5a5a5a5a5a5a5a5a, %%rax\n"
			 "mov %%rax, %%rcx\n mov %%rax, %%rdx\n mov %%rax, %%rsi\n mov %%rax, %%rdi\n"
			 "mov %%rax, %%r8\n mov %%rax, %%r9\n mov %%rax, %%r10\n mov %%rax, %%r11\n"
			 "movq %%rax, %%xmm0\n pshufd $0, %%xmm0, %%xmm0\n"
			 "movdqa %%xmm0, %%xmm1\n movdqa %%xmm0, %%xmm2\n movdqa %%xmm0, %%xmm3\n"
			 "movdqa %%xmm0, %%xmm4\n movdqa %%xmm0, %%xmm5\n movdqa %%xmm0, %%xmm6\n"
			 "movdqa %%xmm0, %%xmm7\n movdqa %%xmm0, %%xmm8\n movdqa %%xmm0, %%xmm9\n"
			 "movdqa %%xmm0, %%xmm10\n movdqa %%xmm0, %%xmm11\n movdqa %%xmm0, %%xmm12\n"
			 "movdqa %%xmm0, %%xmm13\n movdqa %%xmm0, %%xmm14\n movdqa %%xmm0, %%xmm15\n"
			 ::: "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1",
			 "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
			 "xmm12", "xmm13", "xmm14", "xmm15", "memory");
	if (__builtin_cpu_supports("avx"))
		__asm__ volatile("vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n vmovdqa %%ymm0, %%ymm1\n"
				 "vmovdqa %%ymm0, %%ymm2\n vmovdqa %%ymm0, %%ymm3\n vzeroupper\n"
				 ::: "xmm0", "xmm1", "xmm2", "xmm3");
}

static int new_callee(int x)
{
	scramble();
	return x * 3 + 1;
}

static double new_fcallee(double x)
{
	scramble();
	return x * 2.0;
}

static long new_many(long a, long b, long c, long d, long e, long f, long g, long h)
{
	scramble();
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h;
}

static long new_vsum(int n, ...)
{
	va_list ap;
	long s = 0;
	scramble();
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		s += va_arg(ap, long) * (i + 1);
	va_end(ap);
	return s;
}

static double new_vleaf(double x)
{
	scramble();
	return x * 2.5;
}

RLIVEPATCH_FUNC(callee, new_callee);
RLIVEPATCH_FUNC(fcallee, new_fcallee);
RLIVEPATCH_FUNC(many, new_many);
RLIVEPATCH_FUNC(vsum, new_vsum);
#ifdef WIDE
RLIVEPATCH_FUNC(vleaf, new_vleaf);
RLIVEPATCH_NAME("callers-scramble-wide");
#else
RLIVEPATCH_NAME("callers-scramble");
#endif
