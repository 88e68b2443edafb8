/* What the live drivers share: each request runs in a child, so that the bug a fix is
 * for (a crash, an abort of fortify) ends the request, not the driver; the checks read
 * how it ended. */
#ifndef RLP_LIVE_DRIVER_H
#define RLP_LIVE_DRIVER_H
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Wait for the child `pid` and say how it ended, when not well: "CRASH signal N" or
 * "EXIT N" (a request that ended well printed its own answer). */
static void say_how_it_ended(pid_t pid)
{
	int st;
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		printf("CRASH signal %d\n", WTERMSIG(st));
	else if (WEXITSTATUS(st) != 0)
		printf("EXIT %d\n", WEXITSTATUS(st));
}

/* Fork for one request: 1 in the driver once the child ended (and how it ended was
 * said), 0 in the child, which serves the request (also when fork fails). */
static int served_by_child(void)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid > 0) {
		say_how_it_ended(pid);
		return 1;
	}
	return 0;
}
#endif
