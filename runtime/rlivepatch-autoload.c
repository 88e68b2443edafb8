/* rlivepatch's autoload library, for LD_PRELOAD (a systemd drop-in, or
 * /etc/ld.so.preload): a process started after `rlivepatch persist` runs the persisted
 * patches that match its build from the first call of main on.
 *
 * Its constructor compares the build-ids of the objects the process has loaded with
 * the registry's index (a root-owned file, not writable by others); only on a match (or
 * when a patch persisted with --wait waits for libraries in every process) does
 * it start `rlivepatch autoload-apply --pid <self>` and wait for it: that process
 * applies the patches with every check of `rlivepatch apply`. It fails open: whatever
 * goes wrong is one line on stderr, and the program runs unpatched.
 * Kill switches: RLIVEPATCH_AUTOLOAD=0 in the environment, or a file named `disabled`
 * in the registry.
 *
 * In a process started in secure-execution mode (AT_SECURE: set-user-ID, set-group-ID,
 * file capabilities) the environment belongs to a less privileged caller: it is not
 * read at all (the registry is the default one, the kill switch its `disabled` file
 * only), and the helper, which runs with the process's privileges, gets a fixed
 * environment instead of the caller's, so no RLIVEPATCH_* variable reaches it. */
#define _GNU_SOURCE
#include <elf.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_REGISTRY "/var/lib/rlivepatch/persist"

static char index_text[65536];

/* Root-owned and not writable by group or others: nothing else is trusted. */
static int trusted(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && st.st_uid == 0 && !(st.st_mode & (S_IWGRP | S_IWOTH));
}

static int hex_of(const unsigned char *id, size_t n, char *out, size_t cap)
{
	static const char digits[] = "0123456789abcdef";
	if (2 * n + 1 > cap)
		return -1;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[id[i] >> 4];
		out[2 * i + 1] = digits[id[i] & 15];
	}
	out[2 * n] = 0;
	return 0;
}

/* Does an object of the process carry a build-id the index lists? */
static int match_one(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	int *found = data;
	for (int i = 0; i < info->dlpi_phnum && !*found; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_NOTE)
			continue;
		const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr);
		const char *end = p + ph->p_memsz;
		while (p + sizeof(ElfW(Nhdr)) <= end) {
			const ElfW(Nhdr) *n = (const ElfW(Nhdr) *)p;
			const char *name = p + sizeof(*n);
			const unsigned char *desc =
				(const unsigned char *)name + ((n->n_namesz + 3) & ~3u);
			if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && !memcmp(name, "GNU", 4)) {
				char hex[130];
				if (!hex_of(desc, n->n_descsz, hex, sizeof hex) && strstr(index_text, hex))
					*found = 1;
			}
			p = (const char *)desc + ((n->n_descsz + 3) & ~3u);
		}
	}
	return *found;
}

__attribute__((constructor)) static void rlivepatch_autoload(void)
{
	/* The loader's own test: what secure_getenv uses too. */
	int secure = getauxval(AT_SECURE) != 0;
	const char *off = secure ? NULL : getenv("RLIVEPATCH_AUTOLOAD");
	if (off && !strcmp(off, "0"))
		return;
	const char *reg = secure ? NULL : getenv("RLIVEPATCH_REGISTRY");
	if (!reg || !*reg)
		reg = DEFAULT_REGISTRY;
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/disabled", reg);
	if (access(path, F_OK) == 0)
		return;
	snprintf(path, sizeof path, "%s/index", reg);
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	if (!trusted(reg) || !trusted(path)) {
		fprintf(stderr, "rlivepatch autoload: %s is not owned by root or is writable by others; nothing loaded\n", path);
		fclose(f);
		return;
	}
	size_t n = fread(index_text, 1, sizeof index_text - 1, f);
	fclose(f);
	index_text[n] = 0;
	/* A patch persisted with --wait is for every process: it waits for its libraries. */
	int found = !strncmp(index_text, "wait ", 5) || strstr(index_text, "\nwait ");
	if (!found)
		dl_iterate_phdr(match_one, &found);
	if (!found)
		return;
	/* The tool, as `rlivepatch persist` recorded it. */
	char tool[PATH_MAX];
	snprintf(path, sizeof path, "%s/tool", reg);
	f = fopen(path, "re");
	if (!f || !trusted(path) || !fgets(tool, sizeof tool, f)) {
		fprintf(stderr, "rlivepatch autoload: %s is missing or not trusted; nothing loaded\n", path);
		if (f)
			fclose(f);
		return;
	}
	fclose(f);
	tool[strcspn(tool, "\n")] = 0;
	if (!trusted(tool)) {
		fprintf(stderr, "rlivepatch autoload: %s is not owned by root or is writable by others; nothing loaded\n", tool);
		return;
	}
	char self[32];
	snprintf(self, sizeof self, "%d", (int)getpid());
	pid_t child = fork();
	if (child < 0) {
		perror("rlivepatch autoload: fork");
		return;
	}
	if (child == 0) {
		char *argv[] = {tool, "autoload-apply", "--pid", self, "--registry", (char *)reg, NULL};
		if (secure) {
			char *fixed[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
					 "RLIVEPATCH_AUTOLOAD=0", NULL};
			execve(tool, argv, fixed);
			_exit(127);
		}
		setenv("RLIVEPATCH_AUTOLOAD", "0", 1);
		unsetenv("LD_PRELOAD");
		execv(tool, argv);
		_exit(127);
	}
	/* The helper may trace this process (Yama's ptrace_scope 1 lets only ancestors). */
	prctl(PR_SET_PTRACER, child, 0, 0, 0);
	int status = 0;
	while (waitpid(child, &status, 0) < 0)
		;
	prctl(PR_SET_PTRACER, 0, 0, 0, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, "rlivepatch autoload: %s autoload-apply --pid %s failed (status %d); running unpatched\n", tool, self, status);
}
