/* bench-preserve: the benchmarks' patch of pf in bench-target, whose caller keeps values
 * in caller-saved registers across its calls. Build with -DMODE=N:
 *   0  a replacement that writes only eax, as the old one: no caller can tell, so the
 *      entry jumps to it (through an island: the target is not PIE);
 *   1  one that changes the general registers the ABI lets it change: the preserving
 *      path keeps them;
 *   2  one that changes vector registers too (as any call of a library function may):
 *      the preserving path keeps the vector state as well (XSAVE/XRSTOR). */
#include <rlivepatch.h>

#ifndef MODE
#define MODE 0
#endif

static int new_pf(int x)
{
#if MODE >= 1
	__asm__ volatile("xor %%ecx, %%ecx\n xor %%edx, %%edx\n xor %%esi, %%esi\n xor %%edi, %%edi\n"
			 "xor %%r8d, %%r8d\n xor %%r9d, %%r9d\n xor %%r10d, %%r10d\n xor %%r11d, %%r11d\n"
			 ::: "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11");
#endif
#if MODE >= 2
	__asm__ volatile("pxor %%xmm2, %%xmm2\n pxor %%xmm3, %%xmm3\n" ::: "xmm2", "xmm3");
#endif
	return x * 3 + 0x777;
}

RLIVEPATCH_FUNC(pf, new_pf);
RLIVEPATCH_NAME("bench-preserve");
