// unwinds-fix: replaces the static check_value of fixtures/unwinds.cpp with C++ that
// unwinds through the path rlivepatch puts between caller and replacement: for 13 it
// throws (the caller catches), for 7 it prints a backtrace, for 99 it blocks in read()
// where pthread_cancel finds it; otherwise it changes every caller-saved register (a
// call of snprintf) and returns what the old one did.
#include <rlivepatch.h>
#include <cstdio>
#include <cstdlib>
#include <execinfo.h>
#include <stdexcept>
#include <unistd.h>

RLIVEPATCH_SYMBOL(int, block_fd, "block_fd");

static char sink[64];

__attribute__((noinline)) static void backtrace_here()
{
	void *frames[32];
	int n = backtrace(frames, 32);
	char **names = backtrace_symbols(frames, n);
	std::printf("backtrace");
	for (int i = 0; i < n; i++)
		std::printf(" %s", names ? names[i] : "?");
	std::printf("\n");
	std::free(names);
}

static int new_check_value(int x)
{
	if (x == 13)
		throw std::runtime_error("thirteen");
	if (x == 7)
		backtrace_here();
	if (x == 99) {
		char c;
		// A cancellation point: the thread is cancelled here, inside the replacement.
		(void)!read(*block_fd, &c, 1);
	}
	std::snprintf(sink, sizeof sink, "%d %f", x, 1.5);
	return x * 2 + 1;
}

RLIVEPATCH_FUNC_SYM("_ZL11check_valuei", new_check_value);
RLIVEPATCH_NAME("unwinds-fix");
