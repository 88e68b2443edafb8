/* gdb-xstate-shim: LD_PRELOAD for gdb 13 on CPUs with AMX, used by the gdb comparison of
 * scripts/bench.sh.
 *
 * gdb 13 writes a 2696-byte XSAVE area with PTRACE_SETREGSET, but the kernel takes only
 * the full area (11008 bytes with AMX tile data) and answers EFAULT: every inferior call
 * fails with "Couldn't write extended state status: Bad address". When (and only when)
 * that happens, this shim reads the thread's full area, lays gdb's bytes over its start,
 * keeps the state of the components gdb does not know, and writes the full area. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NT_X86_XSTATE 0x202
#define XSTATE_BV 512

long ptrace(enum __ptrace_request req, ...)
{
	static long (*real)(enum __ptrace_request, pid_t, void *, void *);
	if (!real)
		real = (long (*)(enum __ptrace_request, pid_t, void *, void *))dlsym(RTLD_NEXT, "ptrace");
	va_list ap;
	va_start(ap, req);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);
	long r = real(req, pid, addr, data);
	if (r == -1 && errno == EFAULT && req == PTRACE_SETREGSET &&
	    (uintptr_t)addr == NT_X86_XSTATE) {
		struct iovec *gdb = data;
		static unsigned char full[64 * 1024];
		struct iovec iov = { full, sizeof full };
		if (gdb->iov_len < XSTATE_BV + 8 || real(PTRACE_GETREGSET, pid, addr, &iov) == -1 ||
		    iov.iov_len <= gdb->iov_len) {
			errno = EFAULT;
			return -1;
		}
		uint64_t known = (1ull << 10) - 1; /* x87 .. PKRU: what gdb 13 knows */
		uint64_t bv;
		memcpy(&bv, full + XSTATE_BV, 8);
		memcpy(full, gdb->iov_base, gdb->iov_len);
		uint64_t gbv;
		memcpy(&gbv, full + XSTATE_BV, 8);
		gbv = (gbv & known) | (bv & ~known);
		memcpy(full + XSTATE_BV, &gbv, 8);
		r = real(PTRACE_SETREGSET, pid, addr, &iov);
	}
	return r;
}
