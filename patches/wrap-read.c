/* A wrapper: raw_read of fixtures/wrap-target.c, then the byte read upper-cased. The
 * replacement calls the code it replaces through `orig`, which rlivepatch fills. */
#include <rlivepatch.h>

static long (*orig)(int, void *, unsigned long);

static long upper_read(int fd, void *buf, unsigned long n)
{
	long r = orig(fd, buf, n);
	if (r > 0) {
		char *c = buf;
		if (*c >= 'a' && *c <= 'z')
			*c -= 'a' - 'A';
	}
	return r;
}

RLIVEPATCH_FUNC_WRAP(raw_read, upper_read, orig);
