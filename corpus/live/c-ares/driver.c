/* c-ares live-check driver: one command per stdin line, one result line each; each command runs
 * in a forked child of this long-running process (the one patched): a crash or abort answers
 * "CRASH signal N" and the driver goes on. The first line is "ready".
 *   sortlist STR   ares_set_sortlist(channel, STR)                          (CVE-2022-4904)
 *                  prints the result and the parsed entries (ares_save_options)
 *   pton6 STR      ares_inet_pton(AF_INET6, STR) (pristine relays to glibc's inet_pton)
 *                  (CVE-2023-31130: ares_inet_net_pton is reached through IPv6 sortlist entries)
 *   udp0 NAME      query NAME (type A) against a fake DNS server on 127.0.0.1 (a thread of this
 *                  process) that first sends a 0-length datagram, then the answer (CVE-2023-32067) */
#include "driver.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/wait.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <ares.h>

/* as in src/lib/ares_private.h (opaque in ares.h) */
struct apattern {
    union { struct in_addr addr4; struct ares_in6_addr addr6; } addr;
    union { struct in_addr addr4; struct ares_in6_addr addr6; unsigned short bits; } mask;
    int family;
    unsigned short type;
};

static int srv_fd;
static void *fake_dns(void *arg)
{
    (void)arg;
    unsigned char q[512];
    struct sockaddr_in from; socklen_t fl = sizeof from;
    ssize_t n = recvfrom(srv_fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
    if (n < 12) return NULL;
    sendto(srv_fd, "", 0, 0, (struct sockaddr *)&from, fl);          /* the 0-length datagram */
    usleep(100000);
    unsigned char r[600];
    memcpy(r, q, n);
    r[2] = 0x81; r[3] = 0x80;                                           /* QR, RD, RA, NOERROR */
    r[6] = 0; r[7] = 1;                                                 /* ANCOUNT = 1 */
    unsigned char ans[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3};
    memcpy(r + n, ans, sizeof ans);
    sendto(srv_fd, r, n + sizeof ans, 0, (struct sockaddr *)&from, fl);
    return NULL;
}

static void host_cb(void *arg, int status, int timeouts, struct hostent *h)
{
    (void)timeouts;
    char a[64] = "-";
    if (status == ARES_SUCCESS && h && h->h_addr_list[0]) inet_ntop(AF_INET, h->h_addr_list[0], a, sizeof a);
    snprintf((char *)arg, 200, "status=%s addr=%s", ares_strerror(status), a);
}

int main(void)
{
    char line[1024], cmd[32], arg[900];
    setvbuf(stdout, NULL, _IOLBF, 0);
    ares_library_init(ARES_LIB_INIT_ALL);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s %899s", cmd, arg) != 2) {
            printf("? %s", line);
            continue;
        }
        if (served_by_child())
            continue;
        ares_channel ch;
        struct ares_options o; memset(&o, 0, sizeof o);
        o.timeout = 1500; o.tries = 1;
        ares_init_options(&ch, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
        if (!strcmp(cmd, "sortlist")) {
            int rc = ares_set_sortlist(ch, arg);
            struct ares_options so; int mask = 0; char ent[300] = ""; size_t k = 0;
            if (ares_save_options(ch, &so, &mask) == ARES_SUCCESS) {
                for (int i = 0; i < so.nsort && k < 250; i++) {
                    char a[64] = "?";
                    inet_ntop(so.sortlist[i].family, &so.sortlist[i].addr, a, sizeof a);
                    k += snprintf(ent + k, sizeof ent - k, " %s/%u", a,
                                  so.sortlist[i].type == 2 ? so.sortlist[i].mask.bits : 0);
                }
                ares_destroy_options(&so);
            }
            printf("%s entries:%s\n", ares_strerror(rc), ent);
        } else if (!strcmp(cmd, "pton6")) {
            unsigned char c[16]; char a[64] = "-";
            int p = ares_inet_pton(AF_INET6, arg, c);
            if (p == 1) inet_ntop(AF_INET6, c, a, sizeof a);
            printf("ret=%d addr=%s\n", p, a);
        } else if (!strcmp(cmd, "udp0")) {
            srv_fd = socket(AF_INET, SOCK_DGRAM, 0);
            struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
            bind(srv_fd, (struct sockaddr *)&sa, sizeof sa);
            socklen_t sl = sizeof sa; getsockname(srv_fd, (struct sockaddr *)&sa, &sl);
            char csv[64]; snprintf(csv, sizeof csv, "127.0.0.1:%d", ntohs(sa.sin_port));
            ares_set_servers_ports_csv(ch, csv);
            pthread_t t; pthread_create(&t, NULL, fake_dns, NULL);
            char res[200] = "no callback";
            ares_gethostbyname(ch, arg, AF_INET, host_cb, res);
            for (;;) {
                fd_set r, w; FD_ZERO(&r); FD_ZERO(&w);
                int n = ares_fds(ch, &r, &w);
                if (n == 0) break;
                struct timeval tv, *tvp = ares_timeout(ch, NULL, &tv);
                select(n, &r, &w, NULL, tvp);
                ares_process(ch, &r, &w);
            }
            printf("%s\n", res);
        } else
            printf("? %s", line);
        fflush(stdout);
        _exit(0);
    }
    return 0;
}
