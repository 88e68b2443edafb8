/* libssh live-check driver: one command per stdin line, one answer line each; every
 * command runs in a forked child of this long-running process (which is the one patched),
 * so a crash answers "CRASH signal N" and the driver goes on.
 *   host STR        ssh_options_set(SSH_OPTIONS_HOST, STR) on a new session: rc, host, user
 *   privkey FILE    the legacy privatekey_from_file() (CVE-2025-4878: FILE missing)
 *   sftphandle N    sftp_handle() of the SFTP server with handle value N, on a session
 *                   whose table has a marker just past its 256 slots (CVE-2025-5318) */
#include "driver.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <libssh/libssh.h>
#include <libssh/legacy.h>
#include <libssh/sftp.h>
#include <libssh/server.h>

#define SFTP_HANDLES 256 /* src/sftpserver.c */

static void one(const char *cmd, const char *arg, const char *line)
{
    ssh_session s = ssh_new();
    if (!strcmp(cmd, "host")) {
        int rc = ssh_options_set(s, SSH_OPTIONS_HOST, arg);
        char *h = NULL, *u = NULL;
        ssh_options_get(s, SSH_OPTIONS_HOST, &h);
        ssh_options_get(s, SSH_OPTIONS_USER, &u);
        printf("rc=%d host=%s user=%s\n", rc, h ? h : "(null)", u ? u : "(null)");
    } else if (!strcmp(cmd, "privkey")) {
        /* dirty the stack so the uninitialised key of the unfixed code is garbage */
        volatile char junk[8192];
        memset((char *)junk, 0x41, sizeof junk);
        ssh_private_key k = privatekey_from_file(s, arg, 0, NULL);
        printf("%s\n", k ? "returned a key" : "NULL");
    } else if (!strcmp(cmd, "sftphandle")) {
        static void *slots[SFTP_HANDLES + 1];
        struct sftp_session_struct sftp;
        uint32_t val = (uint32_t)strtoul(arg, NULL, 10);
        memset(&sftp, 0, sizeof sftp);
        for (int i = 0; i <= SFTP_HANDLES; i++)
            slots[i] = (void *)(uintptr_t)(0x1000 + i);
        sftp.handles = slots;
        ssh_string h = ssh_string_new(sizeof val);
        ssh_string_fill(h, &val, sizeof val);
        void *r = sftp_handle(&sftp, h);
        if (r == NULL)
            printf("NULL\n");
        else
            printf("slot %ld\n", (long)((uintptr_t)r - 0x1000));
    } else
        printf("? %s", line);
}

int main(void)
{
    char line[1024], cmd[32], arg[900];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s %899s", cmd, arg) != 2) {
            printf("? %s", line);
            continue;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            one(cmd, arg, line);
            fflush(stdout);
            _exit(0);
        }
        say_how_it_ended(pid);
    }
    return 0;
}
