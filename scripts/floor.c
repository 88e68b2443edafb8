/*
 * floor.c -- "the floor program": the least work any ptrace livepatcher must do
 * to load a shared object into a running x86_64 Linux process.  The benchmark
 * reports rlivepatch/floor ratios against it.
 *
 *   usage: floor PID /abs/path/LIB.so
 *   stdout: "floor: <microseconds> us, <threads> threads"   (exit 0)
 *   stderr: one line on failure                             (exit 1)
 *
 * Timed with CLOCK_MONOTONIC from before step 1 to after step 5:
 *   1. list the threads from /proc/PID/task (one getdents pass);
 *   2. PTRACE_SEIZE every thread, PTRACE_INTERRUPT every thread, then reap each
 *      thread's stop report with waitpid(tid, __WALL) (not waitpid(-1), which makes
 *      the kernel walk every tracee per report: quadratic at 1000 threads);
 *   3. PTRACE_GETREGS of every thread (what a consistency check would need);
 *   4. on one thread (the leader if it is in an interrupt stop, else the first
 *      thread that is) one injected call of dlopen(LIB, RTLD_NOW) in the target's
 *      libc, then one injected call of dlclose(handle); registers and the full
 *      extended FP state (XSAVE area) restored exactly afterwards;
 *   5. PTRACE_DETACH every thread.
 *
 * How an injected call traps: the return address pushed for the callee is 0.
 * When the callee returns, the instruction fetch at address 0 faults and the
 * thread reports a SIGSEGV signal-delivery-stop with rip == 0; rax then holds the
 * return value.  The SIGSEGV is suppressed by resuming/detaching with signal 0.
 *
 * Build: gcc -O2 -o target/floor/floor scripts/floor.c    (glibc only)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

enum { T_NEW, T_RUNNING, T_STOPPED, T_SIGSTOP, T_GONE };

struct th {
	pid_t tid;
	int state;    /* T_* */
	int sig;      /* T_SIGSTOP: the signal to deliver again at detach */
	struct user_regs_struct regs;
};

static pid_t pid;
static struct th *ths;
static int nth;
static struct th *inj;          /* thread used for the injected calls */
static int inj_dirty;           /* its registers are not the saved ones */
static int inj_running;         /* it is running an injected call */
static struct user_regs_struct saved_regs;
static unsigned char *xstate;   /* saved XSAVE area (or FXSAVE, see below) */
static size_t xstate_len;
static int xstate_is_fx;        /* fell back to PTRACE_GETFPREGS */
static volatile sig_atomic_t timed_out;

static void restore_inj(void);

/* One line on stderr; detach what can be detached (best effort); exit 1.
 * Seized threads that are not in a ptrace-stop are detached by the kernel
 * when this process exits. */
static void die(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	for (char *p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	if (inj_running)
		fprintf(stderr, "floor: %s (thread %d left inside an injected call)\n", buf,
			inj ? inj->tid : -1);
	else
		fprintf(stderr, "floor: %s\n", buf);
	if (inj && inj_dirty && !inj_running)
		restore_inj();
	for (int i = 0; i < nth; i++)
		if (ths[i].state == T_STOPPED || ths[i].state == T_SIGSTOP)
			ptrace(PTRACE_DETACH, ths[i].tid, 0, (void *)(long)ths[i].sig);
	exit(1);
}

static void on_alarm(int s) { (void)s; timed_out = 1; }

static int cmp_tid(const void *a, const void *b)
{
	pid_t x = ((const struct th *)a)->tid, y = ((const struct th *)b)->tid;
	return (x > y) - (x < y);
}

/* Is /proc/PID/task/TID a zombie (or dead) thread? */
static int thread_dead(pid_t tid)
{
	char path[64], buf[256];
	snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 1;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

/* ---- step 1 ------------------------------------------------------------- */

struct linux_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static void list_threads(void)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", pid);
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	static char buf[1 << 18];   /* one syscall holds ~8000 entries */
	int cap = 1024;
	ths = calloc(cap, sizeof *ths);
	for (;;) {
		long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
		if (n < 0)
			die("getdents64 %s: %s", path, strerror(errno));
		if (n == 0)
			break;
		for (long off = 0; off < n;) {
			struct linux_dirent64 *d = (void *)(buf + off);
			off += d->d_reclen;
			if (d->d_name[0] < '0' || d->d_name[0] > '9')
				continue;
			if (nth == cap) {
				cap *= 2;
				ths = realloc(ths, cap * sizeof *ths);
				if (!ths)
					die("out of memory");
			}
			memset(&ths[nth], 0, sizeof ths[nth]);
			ths[nth++].tid = atoi(d->d_name);
		}
	}
	close(fd);
	if (nth == 0)
		die("no threads in %s", path);
	qsort(ths, nth, sizeof *ths, cmp_tid);
}

/* ---- step 2 ------------------------------------------------------------- */

static void stop_all(void)
{
	/* Threads created after the listing are not seen: a real tool must list
	 * again (or use PTRACE_O_TRACECLONE) until no new thread appears. */
	for (int i = 0; i < nth; i++) {
		struct th *t = &ths[i];
		if (ptrace(PTRACE_SEIZE, t->tid, 0, 0) == 0) {
			t->state = T_RUNNING;
			continue;
		}
		if (errno == ESRCH || (errno == EPERM && thread_dead(t->tid)))
			t->state = T_GONE;   /* exited since the listing, or a zombie */
		else
			die("PTRACE_SEIZE %d: %s", t->tid, strerror(errno));
	}
	for (int i = 0; i < nth; i++) {
		struct th *t = &ths[i];
		if (t->state != T_RUNNING)
			continue;
		if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) != 0) {
			if (errno != ESRCH)
				die("PTRACE_INTERRUPT %d: %s", t->tid, strerror(errno));
			/* gone: its exit is still reported to waitpid below */
		}
	}
	for (int i = 0; i < nth; i++) {
		struct th *t = &ths[i];
		while (t->state == T_RUNNING) {
			int st;
			pid_t w = waitpid(t->tid, &st, __WALL);
			if (w < 0) {
				if (errno == EINTR && !timed_out)
					continue;
				if (errno == ECHILD) {   /* already reaped/untraced */
					t->state = T_GONE;
					break;
				}
				die("waitpid %d: %s", t->tid, timed_out ? "timed out" : strerror(errno));
			}
			if (WIFEXITED(st) || WIFSIGNALED(st)) {
				t->state = T_GONE;
			} else if (WIFSTOPPED(st)) {
				if ((st >> 16) == PTRACE_EVENT_STOP) {
					/* the interrupt stop, or a group-stop (WSTOPSIG = SIGSTOP...):
					 * detaching leaves a group-stopped thread stopped */
					t->state = T_STOPPED;
				} else {
					/* a signal-delivery-stop won the race against the interrupt
					 * trap (which stays pending and is dropped at detach): hold
					 * the signal, deliver it again at detach */
					t->state = T_SIGSTOP;
					t->sig = WSTOPSIG(st);
				}
			}
		}
	}
}

/* ---- step 3 ------------------------------------------------------------- */

static int get_all_regs(void)
{
	int n = 0;
	for (int i = 0; i < nth; i++) {
		struct th *t = &ths[i];
		if (t->state != T_STOPPED && t->state != T_SIGSTOP)
			continue;
		if (ptrace(PTRACE_GETREGS, t->tid, 0, &t->regs) != 0) {
			if (errno == ESRCH) {   /* killed (SIGKILL) while stopped */
				t->state = T_GONE;
				continue;
			}
			die("PTRACE_GETREGS %d: %s", t->tid, strerror(errno));
		}
		n++;
	}
	if (n == 0)
		die("no thread of %d could be stopped", pid);
	return n;
}

/* ---- step 4: find dlopen/dlclose in the target ------------------------------ */

struct libc_map {
	unsigned long base;   /* start of the mapping at file offset 0 */
	unsigned long ino;
	unsigned int dmaj, dmin;
	char path[512];
};

/* In /proc/<who>/maps, find the file mapped at `addr` (when m->path is empty) or
 * the mapping of m->path at file offset 0.  Fills m; returns 0 on success.
 * With 1000 threads the target's maps has ~2000 lines (two per thread stack):
 * read it in one go and look for the path with memmem rather than parsing every
 * line (the kernel's text generation alone is ~0.5 ms there). */
static int parse_line(const char *line, unsigned long *s, unsigned long *e, unsigned long *off,
		      struct libc_map *m, const char **path)
{
	int pos = 0;
	if (sscanf(line, "%lx-%lx %*s %lx %x:%x %lu %n", s, e, off, &m->dmaj, &m->dmin, &m->ino,
		   &pos) < 6 || pos == 0)
		return -1;
	*path = line + pos;
	return 0;
}

static int scan_maps(const char *who, unsigned long addr, struct libc_map *m)
{
	char fn[64];
	snprintf(fn, sizeof fn, "/proc/%s/maps", who);
	int fd = open(fn, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", fn, strerror(errno));
	size_t cap = 1 << 18, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		die("out of memory");
	for (;;) {
		if (cap - len < 4096 && !(buf = realloc(buf, cap *= 2)))
			die("out of memory");
		ssize_t n = read(fd, buf + len, cap - len - 1);
		if (n < 0)
			die("read %s: %s", fn, strerror(errno));
		if (n == 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = 0;
	for (char *l = buf; l < buf + len; l++)   /* one string per line */
		if (*l == '\n')
			*l = 0;
	int found = -1;
	unsigned long s, e, off;
	const char *path;
	if (!m->path[0]) {
		for (char *l = buf; l < buf + len; l += strlen(l) + 1)
			if (parse_line(l, &s, &e, &off, m, &path) == 0 && addr >= s && addr < e &&
			    *path == '/') {
				snprintf(m->path, sizeof m->path, "%s", path);
				break;
			}
		if (!m->path[0])
			goto out;
	}
	/* the lines of m->path, at their end: " <path>\0" */
	size_t plen = strlen(m->path);
	for (char *hit = buf; (hit = memmem(hit, buf + len - hit, m->path, plen)); hit += plen) {
		if (hit == buf || hit[-1] != ' ' || hit[plen] != 0)
			continue;
		char *l = hit;
		while (l > buf && l[-1] != 0)
			l--;
		if (parse_line(l, &s, &e, &off, m, &path) == 0 && path == hit && off == 0) {
			m->base = s;
			found = 0;
			break;
		}
	}
out:
	free(buf);
	return found;
}

/* ---- step 4: the injected calls ---------------------------------------------- */

static void write_mem(unsigned long addr, const void *data, size_t len)
{
	struct iovec l = { (void *)data, len }, r = { (void *)addr, len };
	ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
	if (n == (ssize_t)len)
		return;
	/* fall back to /proc/PID/mem */
	char fn[64];
	snprintf(fn, sizeof fn, "/proc/%d/mem", pid);
	int fd = open(fn, O_RDWR | O_CLOEXEC);
	if (fd < 0 || pwrite(fd, data, len, (off_t)addr) != (ssize_t)len)
		die("write %zu bytes at %#lx in %d: %s", len, addr, pid, strerror(errno));
	close(fd);
}

static void save_fp(pid_t tid)
{
	/* The full XSAVE area: PTRACE_GETFPREGS (FXSAVE, 512 bytes) would miss the
	 * upper halves of ymm/zmm, zmm16-31 and the AVX-512 mask registers, which
	 * glibc's string functions inside dlopen clobber.  Ask with a buffer larger
	 * than any XSAVE area (AMX included) and keep the size the kernel reports:
	 * PTRACE_SETREGSET with a shorter area fails with EFAULT on AMX CPUs. */
	static unsigned char buf[1 << 16];
	struct iovec iov = { buf, sizeof buf };
	if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov) == 0) {
		xstate = buf;
		xstate_len = iov.iov_len;
		return;
	}
	if (ptrace(PTRACE_GETFPREGS, tid, 0, buf) != 0)
		die("PTRACE_GETFPREGS %d: %s", tid, strerror(errno));
	xstate = buf;
	xstate_len = sizeof(struct user_fpregs_struct);
	xstate_is_fx = 1;
}

static void restore_inj(void)
{
	pid_t tid = inj->tid;
	/* The saved registers, orig_rax included.  If the thread was interrupted in a
	 * syscall (orig_rax >= 0 at the interrupt stop, rax = -ERESTARTSYS etc.), the
	 * kernel applies the usual restart (rip -= 2, rax = orig_rax) when the thread
	 * leaves this stop, exactly as if it had never run the injected calls; a
	 * completed syscall (rax = its result) is not restarted.  During the calls
	 * orig_rax was -1 so that no restart could touch them. */
	if (ptrace(PTRACE_SETREGS, tid, 0, &saved_regs) != 0) {
		inj_dirty = 0;
		die("PTRACE_SETREGS %d (restore): %s", tid, strerror(errno));
	}
	int r;
	if (xstate_is_fx) {
		r = ptrace(PTRACE_SETFPREGS, tid, 0, xstate);
	} else {
		struct iovec iov = { xstate, xstate_len };
		r = ptrace(PTRACE_SETREGSET, tid, (void *)NT_X86_XSTATE, &iov);
	}
	inj_dirty = 0;
	if (r != 0)
		die("restore FP state of %d: %s", tid, strerror(errno));
}

/* Call fn(a1, a2) in thread inj with rsp = sp (the return address 0 is at sp).
 * Returns rax at the trap. */
static unsigned long inject_call(unsigned long fn, unsigned long a1, unsigned long a2,
				 unsigned long sp)
{
	pid_t tid = inj->tid;
	struct user_regs_struct r = saved_regs;
	r.rip = fn;
	r.rdi = a1;
	r.rsi = a2;
	r.rax = 0;
	r.orig_rax = (unsigned long)-1;   /* no syscall restart on the way out */
	r.rsp = sp;                       /* sp + 8 is 16-byte aligned: as after a call */
	inj_dirty = 1;
	if (ptrace(PTRACE_SETREGS, tid, 0, &r) != 0)
		die("PTRACE_SETREGS %d: %s", tid, strerror(errno));
	int sig = 0;
	for (;;) {
		if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig) != 0)
			die("PTRACE_CONT %d: %s", tid, strerror(errno));
		inj_running = 1;
		int st;
		pid_t w;
		while ((w = waitpid(tid, &st, __WALL)) < 0 && errno == EINTR && !timed_out)
			;
		if (w < 0)
			die("waitpid %d (injected call): %s", tid,
			    timed_out ? "timed out" : strerror(errno));
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			inj->state = T_GONE;
			inj_running = 0;
			inj_dirty = 0;
			die("thread %d exited during the injected call", tid);
		}
		inj_running = 0;
		sig = WSTOPSIG(st);
		if ((st >> 16) == 0 && sig == SIGSEGV) {
			if (ptrace(PTRACE_GETREGS, tid, 0, &r) != 0)
				die("PTRACE_GETREGS %d: %s", tid, strerror(errno));
			if (r.rip == 0)
				return r.rax;   /* our trap; SIGSEGV suppressed on resume */
			die("SIGSEGV in thread %d at %#llx during the injected call", tid, r.rip);
		}
		if ((st >> 16) != 0)
			sig = 0;   /* a late interrupt trap or a group-stop: just go on */
		/* else: another signal for this thread; deliver it (its handler runs
		 * on top of the injected call, as it would on top of any code) */
	}
}

static void read_mem(unsigned long addr, void *buf, size_t len)
{
	struct iovec l = { buf, len }, r = { (void *)addr, len };
	if (process_vm_readv(pid, &l, 1, &r, 1, 0) <= 0)
		((char *)buf)[0] = 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 || argv[2][0] != '/') {
		fprintf(stderr, "usage: floor PID /abs/path/LIB.so\n");
		return 1;
	}
	char *end;
	long lp = strtol(argv[1], &end, 10);
	if (*end || lp <= 0) {
		fprintf(stderr, "floor: bad pid %s\n", argv[1]);
		return 1;
	}
	pid = (pid_t)lp;
	const char *lib = argv[2];

	/* A deadlock inside the injected dlopen (the chosen thread stopped while
	 * holding the loader or malloc lock) would hang us: give up after 20 s. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;   /* no SA_RESTART: waitpid returns EINTR */
	sigaction(SIGALRM, &sa, NULL);
	alarm(20);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);

	list_threads();                 /* 1 */
	stop_all();                     /* 2 */
	int nstopped = get_all_regs();  /* 3 */

	/* 4: the thread for the calls: the leader, else the first in an interrupt stop
	 * (not one held in a signal-delivery-stop: its interrupt trap is pending) */
	for (int i = 0; i < nth; i++)
		if (ths[i].state == T_STOPPED && (ths[i].tid == pid || !inj))
			inj = &ths[i];
	if (!inj)
		die("no thread of %d in an interrupt stop", pid);

	/* dlopen/dlclose in the target = target libc base + (ours - our libc base);
	 * the same libc file on both sides (same path and same device:inode). */
	struct libc_map mine = { 0 }, theirs = { 0 };
	unsigned long my_dlopen = (unsigned long)(void *)&dlopen;
	unsigned long my_dlclose = (unsigned long)(void *)&dlclose;
	if (scan_maps("self", my_dlopen, &mine) != 0)
		die("dlopen at %#lx not found in our own maps", my_dlopen);
	snprintf(theirs.path, sizeof theirs.path, "%s", mine.path);
	char who[32];
	snprintf(who, sizeof who, "%d", pid);
	if (scan_maps(who, 0, &theirs) != 0)
		die("%s (our libc) is not mapped in %d (another libc, or upgraded since: "
		    "\"(deleted)\")", mine.path, pid);
	if (theirs.ino != mine.ino || theirs.dmaj != mine.dmaj || theirs.dmin != mine.dmin)
		die("%s in %d is not our file (inode %lu vs %lu)", mine.path, pid, theirs.ino,
		    mine.ino);
	unsigned long t_dlopen = theirs.base + (my_dlopen - mine.base);
	unsigned long t_dlclose = theirs.base + (my_dlclose - mine.base);

	/* save the full state of the thread: its registers are the ones read in step 3
	 * (it has not run since), plus the FP/vector state */
	saved_regs = inj->regs;
	save_fp(inj->tid);

	/* [rsp-8 of the call] = return address 0, then the path string, all below the
	 * 128-byte red zone.  The string is 16-byte aligned and the return slot right
	 * below it, so at the callee's entry rsp + 8 is 16-byte aligned, as after a
	 * `call` from an aligned rsp. */
	size_t len = strlen(lib) + 1;
	unsigned long str = (saved_regs.rsp - 128 - len) & ~15UL;
	unsigned long sp = str - 8;
	char *blob = calloc(1, 8 + len);
	if (!blob)
		die("out of memory");
	memcpy(blob + 8, lib, len);
	write_mem(sp, blob, 8 + len);
	free(blob);

	unsigned long handle = inject_call(t_dlopen, str, RTLD_NOW, sp);
	if (handle == 0) {
		/* failure path only: ask the target's dlerror() why */
		char msg[256] = "";
		unsigned long my_dlerror = (unsigned long)(void *)&dlerror;
		unsigned long e = inject_call(theirs.base + (my_dlerror - mine.base), 0, 0, sp);
		if (e)
			read_mem(e, msg, sizeof msg - 1);
		msg[sizeof msg - 1] = 0;
		die("dlopen(%s) in %d returned NULL: %s", lib, pid, msg);
	}
	/* the return slot at sp still holds 0: `ret` pops it without writing it, and
	 * the callee's frames are all below sp */
	long rc = (int)inject_call(t_dlclose, handle, 0, sp);
	if (rc != 0)
		die("dlclose in %d returned %ld", pid, rc);
	restore_inj();

	/* 5: detach; the thread of the calls is in the SIGSEGV signal-delivery-stop
	 * and detaching with signal 0 suppresses it */
	for (int i = 0; i < nth; i++) {
		struct th *t = &ths[i];
		if (t->state != T_STOPPED && t->state != T_SIGSTOP)
			continue;
		if (ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->sig) != 0 && errno != ESRCH)
			die("PTRACE_DETACH %d: %s", t->tid, strerror(errno));
		t->state = T_NEW;
	}

	clock_gettime(CLOCK_MONOTONIC, &t1);
	long us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
	printf("floor: %ld us, %d threads\n", us, nstopped);
	return 0;
}
