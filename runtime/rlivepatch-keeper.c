/*
 * The keeper: a thread started while the process is at a safe point, that waits, parked,
 * for rlivepatch's later operations. It holds no lock of the C library or the loader,
 * runs no signal handler (it blocks every signal), and never returns to the program, so
 * rlivepatch can always borrow it to run dlopen, dlclose and callbacks, however busy the
 * program's own threads are.
 *
 * It runs no code of the runtime: its start routine is the C library's sem_wait, on a
 * semaphore in its own mapping. So the runtime can be unloaded on it (the last dlclose,
 * when every thread of the program is unfit for the loader), and then it is ended by a
 * sem_post: sem_wait returns, and glibc ends it as any detached thread, with no
 * unwinding. Its stack is that same mapping (not one of glibc's cached thread stacks), so
 * that once the kernel has reaped it rlivepatch unmaps it and the process keeps no trace.
 *
 * Layout of the mapping: a guard page, a page whose start holds the semaphore and, at
 * RLP_KEEPER_MARK, a mark (a magic string and the mapping's own address), the stack. The
 * mark lets a later run tell the mapping from memory the program mapped at the same
 * address after a killed run unmapped it: only a marked mapping is ever unmapped.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>

#define EXPORT __attribute__((visibility("default")))

/* The mapping and its size, for rlivepatch to unmap once the keeper is gone; the
 * semaphore it waits on, for rlivepatch to post. 0 until it is started. */
EXPORT uint64_t rlp_keeper_mapping;
EXPORT uint64_t rlp_keeper_mapping_size;
EXPORT uint64_t rlp_keeper_sem;
/* What starting it returned: 0, or the error of mmap (-1) or pthread_create. */
EXPORT int64_t rlp_keeper_error;
/* 1 in the image: the runtime's constructor starts the keeper, so that the dlopen that
 * loads the runtime starts it too (one hand-over to the process fewer than a call of its
 * own). rlivepatch clears it in its copy of the image only to load a runtime without a
 * keeper (the tests that show what the keeper prevents). In .data, so that it is in the
 * file, at the offset rlivepatch finds from the symbol. */
EXPORT volatile uint64_t rlp_keeper_wanted = 1;

#define PAGE 4096
#define STACK_SIZE (64 * 1024)
#define SIZE (PAGE + PAGE + STACK_SIZE)
#define RLP_KEEPER_MARK 128
static const char MAGIC[16] = "rlivepatch-keepr";

/* Start the keeper (from the runtime's constructor, on the thread rlivepatch borrowed to
 * load it: a thread at a safe point). Returns 0, or the error of mmap or pthread_create
 * (a seccomp filter may refuse clone: then there is no keeper, and rlivepatch borrows the
 * program's threads as before). */
static int keeper_start(void)
{
	if (rlp_keeper_mapping)
		return 0;
	char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
	if (m == MAP_FAILED)
		return -1;
	if (mprotect(m, PAGE, PROT_NONE)) {
		munmap(m, SIZE);
		return -1;
	}
	sem_t *sem = (sem_t *)(m + PAGE);
	sem_init(sem, 0, 0);
	char *mark = m + PAGE + RLP_KEEPER_MARK;
	__builtin_memcpy(mark, MAGIC, sizeof MAGIC);
	*(uint64_t *)(mark + sizeof MAGIC) = (uint64_t)m;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstack(&a, m + 2 * PAGE, STACK_SIZE);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	/* The keeper starts with every signal blocked: process-directed signals go to the
	 * program's threads, as before it existed. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t t;
	/* sem_wait as the start routine: on x86-64 its int result in a void * return is
	 * harmless (nobody joins a detached thread), and the thread runs only the C
	 * library's code. */
	int r = pthread_create(&t, &a, (void *(*)(void *))(void (*)(void))sem_wait, sem);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&a);
	if (r) {
		munmap(m, SIZE);
		return r;
	}
	rlp_keeper_sem = (uint64_t)sem;
	rlp_keeper_mapping_size = SIZE;
	rlp_keeper_mapping = (uint64_t)m;
	return 0;
}

/* glibc runs it with the loader's lock held, on the thread that called dlopen: the new
 * thread needs neither the lock nor anything the constructor holds (its start routine is
 * sem_wait), so it is created and parks as when rlivepatch called keeper_start itself. */
__attribute__((constructor)) static void rlp_keeper_init(void)
{
	if (rlp_keeper_wanted)
		rlp_keeper_error = keeper_start();
}
