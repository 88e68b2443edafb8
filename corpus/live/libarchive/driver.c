/* libarchive live-check driver: one command per stdin line, one answer line each; every
 * command runs in a forked child of this long-running process (the one patched): a crash
 * answers "CRASH signal N", and a child still reading after 5 s (an endless loop) is
 * stopped and answers "TIMEOUT". The first line is "ready".
 *   list PATH   every entry's header of the archive PATH (all formats and filters)
 *   read PATH   the same, and every entry's data (archive_read_data_block)
 * The answer: the entries ("name" size N [data: B bytes, rc R message]) and every non-OK
 * return with its error string, separated by "; ", then "EOF" or the last error. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <archive.h>
#include <archive_entry.h>

static char out[8192];
static size_t used;

static void say(const char *fmt, ...)
{
    va_list ap;
    if (used >= sizeof out - 1)
        return;
    if (used)
        used += snprintf(out + used, sizeof out - used, "; ");
    va_start(ap, fmt);
    used += vsnprintf(out + used, sizeof out - used, fmt, ap);
    va_end(ap);
    if (used > sizeof out - 1)
        used = sizeof out - 1;
}

static void one(int do_read, const char *path)
{
    struct archive *a = archive_read_new();
    struct archive_entry *ae;
    archive_read_support_filter_all(a);
    archive_read_support_format_all(a);
    int r = archive_read_open_filename(a, path, 10240);
    if (r != ARCHIVE_OK) {
        say("open: %d %s", r, archive_error_string(a));
        return;
    }
    for (int n = 0; n < 100; n++) {
        r = archive_read_next_header(a, &ae);
        if (r == ARCHIVE_EOF) {
            say("EOF");
            break;
        }
        if (r != ARCHIVE_OK)
            say("next_header: %d %s", r, archive_error_string(a));
        if (r < ARCHIVE_WARN)
            break;
        say("\"%s\" size %jd", archive_entry_pathname(ae), (intmax_t)archive_entry_size(ae));
        if (do_read) {
            const void *buf;
            size_t size;
            int64_t off;
            uint64_t total = 0;
            while ((r = archive_read_data_block(a, &buf, &size, &off)) == ARCHIVE_OK)
                total += size;
            if (r == ARCHIVE_EOF)
                say("data: %ju bytes", (uintmax_t)total);
            else
                say("data: %ju bytes, rc %d %s", (uintmax_t)total, r, archive_error_string(a));
            if (r == ARCHIVE_FATAL)
                break;
        }
    }
    archive_read_free(a);
}

int main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *path = strchr(line, ' ');
        if (!path || (strncmp(line, "list ", 5) && strncmp(line, "read ", 5))) {
            printf("? %s\n", line);
            continue;
        }
        *path++ = 0;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(5);
            one(!strcmp(line, "read"), path);
            printf("%s\n", out);
            fflush(stdout);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
            printf("TIMEOUT\n");
        else if (WIFSIGNALED(st))
            printf("CRASH signal %d\n", WTERMSIG(st));
        else if (WEXITSTATUS(st) != 0)
            printf("EXIT %d\n", WEXITSTATUS(st));
    }
    return 0;
}
