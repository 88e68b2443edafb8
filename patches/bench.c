/* bench: the benchmarks' patch. Replaces the first FUNCS (1, 100 or 1000) functions of
 * libbench.so with nf000..: build with -DFUNCS=N. The replacements are exported so that
 * the gdb comparison can name them. */
#include <rlivepatch.h>

#ifndef FUNCS
#define FUNCS 1
#endif

#define ONE(n)                                                   \
	__attribute__((noinline)) int nf##n(int x)                   \
	{                                                            \
		return x * 3 + 0x##n##1002;                              \
	}                                                            \
	RLIVEPATCH_FUNC_IN("libbench.so", bf##n, nf##n);
#define H(M, a) M(a##0) M(a##1) M(a##2) M(a##3) M(a##4) M(a##5) M(a##6) M(a##7) M(a##8) M(a##9)
#define T(M, a) H(M, a##0) H(M, a##1) H(M, a##2) H(M, a##3) H(M, a##4) \
	H(M, a##5) H(M, a##6) H(M, a##7) H(M, a##8) H(M, a##9)

#if FUNCS == 1
ONE(000)
#elif FUNCS == 100
T(ONE, 0)
#elif FUNCS == 1000
T(ONE, 0) T(ONE, 1) T(ONE, 2) T(ONE, 3) T(ONE, 4)
T(ONE, 5) T(ONE, 6) T(ONE, 7) T(ONE, 8) T(ONE, 9)
#else
#error FUNCS must be 1, 100 or 1000
#endif

RLIVEPATCH_NAME("bench");

#ifdef ISLAND
/* mf of the (non-PIE) bench target: its replacement is too far for a direct jump. */
__attribute__((noinline)) int nmf(int x)
{
	return x * 3 + 0x12346;
}
RLIVEPATCH_FUNC(mf, nmf);
#endif
