/* libc-strlen: replaces strlen(), an IFUNC in glibc: rlivepatch patches the
 * implementation the resolver picked in the process (e.g. __strlen_avx2), not the
 * resolver. The replacement is a correct strlen, except that it adds 1000 for strings
 * starting with "@rlp", to show it runs. */
#include <rlivepatch.h>
#include <stddef.h>

static size_t marked_strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	if (n >= 4 && s[0] == '@' && s[1] == 'r' && s[2] == 'l' && s[3] == 'p')
		n += 1000;
	return n;
}

RLIVEPATCH_FUNC_IN("libc.so.6", strlen, marked_strlen);
RLIVEPATCH_NAME("libc-strlen");
