/* libsoup3 live-check driver: prints "ready", then answers one stdin line with one stdout
 * line. Each command runs in a forked child of this (patched) process whose output comes
 * back through a pipe; a child killed by a signal is answered "CRASH signal N", and the
 * driver goes on. ARG is the rest of the line after "CMD ", C-escaped: \r \n \t \0 \\ \xHH.
 * Buffers handed to libsoup end flush against a PROT_NONE page, so a read even one byte
 * past the end crashes (as it may in a server whose read buffer ends at a page boundary).
 *   req ARG            soup_headers_parse_request(ARG, len)  -> status, method, path, version, headers
 *   resp ARG           soup_headers_parse_response(ARG, len) -> ok, version, status, reason, headers
 *   cdisp ARG          Content-Disposition: ARG; soup_message_headers_get_content_disposition()
 *   qlist ARG          soup_header_parse_quality_list(ARG, NULL) x1000 -> list, heap growth (leak) per call
 *   digest ARG         soup_auth_new(SOUP_TYPE_AUTH_DIGEST, GET http://example.com/, ARG);
 *                      heap growth per soup_auth_new()+unref over 1000 calls (leak);
 *                      then authenticate(user, pass) and get_authorization()
 *   sniff CTYPE ARG    response Content-Type: CTYPE; soup_content_sniffer_sniff(body = ARG)
 *   redirect ARG       a SoupServer on 127.0.0.1 (own thread) answers /start with a 302 to
 *                      http://localhost:PORT/echo, which echoes the Authorization header it got;
 *                      a SoupSession GETs http://127.0.0.1:PORT/start with "Authorization: ARG"
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <soup.h>  /* from TREE/libsoup (build-driver.sh) */

static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    while (*s) {
        if (*s == '\\' && s[1]) {
            s++;
            switch (*s) {
            case 'r': out[n++] = '\r'; s++; break;
            case 'n': out[n++] = '\n'; s++; break;
            case 't': out[n++] = '\t'; s++; break;
            case '0': out[n++] = '\0'; s++; break;
            case 'x': { unsigned v; sscanf(s + 1, "%2x", &v); out[n++] = (char)v; s += 3; break; }
            default: out[n++] = *s++; break;
            }
        } else
            out[n++] = *s++;
    }
    return n;
}

static void pr(const char *s, size_t n)   /* print bytes escaped */
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\r') fputs("\\r", stdout);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\\') fputs("\\\\", stdout);
        else if (c < 32 || c >= 127) printf("\\x%02x", c);
        else putchar(c);
    }
}
static void prs(const char *s) { if (s) { putchar('"'); pr(s, strlen(s)); putchar('"'); } else fputs("NULL", stdout); }

/* copy n bytes so that they end right before an inaccessible page */
static char *guarded(const char *src, size_t n)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t span = ((n + pg - 1) / pg + 1) * pg;
    char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(m + span - pg, pg, PROT_NONE);
    char *p = m + span - pg - n;
    memcpy(p, src, n);
    return p;
}

static void hdr_cb(const char *name, const char *value, gpointer u)
{
    (void)u; printf(" [%s: ", name); pr(value, strlen(value)); putchar(']');
}

static void prparams(GHashTable *params)
{
    GList *keys = g_list_sort(g_hash_table_get_keys(params), (GCompareFunc)g_ascii_strcasecmp);
    for (GList *k = keys; k; k = k->next) { printf(" %s=", (char *)k->data); prs(g_hash_table_lookup(params, k->data)); }
    g_list_free(keys);
}

static int srv_port;
static GMutex srv_lock; static GCond srv_cond;

static void srv_handler(SoupServer *server, SoupServerMessage *msg, const char *path,
                        GHashTable *query, gpointer data)
{
    (void)server; (void)query; (void)data;
    if (!strcmp(path, "/start")) {
        char *loc = g_strdup_printf("http://localhost:%d/echo", srv_port);
        soup_server_message_set_redirect(msg, 302, loc);
        g_free(loc);
    } else {
        const char *a = soup_message_headers_get_one(soup_server_message_get_request_headers(msg), "Authorization");
        char *body = g_strdup_printf("/echo got Authorization=%s", a ? a : "(none)");
        soup_server_message_set_status(msg, 200, NULL);
        soup_server_message_set_response(msg, "text/plain", SOUP_MEMORY_TAKE, body, strlen(body));
    }
}

static gpointer srv_thread(gpointer data)
{
    (void)data;
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    SoupServer *srv = soup_server_new(NULL, NULL);
    soup_server_add_handler(srv, NULL, srv_handler, NULL, NULL);
    GError *err = NULL;
    if (!soup_server_listen_local(srv, 0, SOUP_SERVER_LISTEN_IPV4_ONLY, &err)) { printf("listen: %s", err->message); fflush(stdout); _exit(1); }
    GSList *uris = soup_server_get_uris(srv);
    g_mutex_lock(&srv_lock); srv_port = g_uri_get_port(uris->data); g_cond_signal(&srv_cond); g_mutex_unlock(&srv_lock);
    g_main_loop_run(g_main_loop_new(ctx, FALSE));
    return NULL;
}

static void run(const char *cmd, char *arg, size_t len)
{
    if (!strcmp(cmd, "req")) {
        SoupMessageHeaders *h = soup_message_headers_new(SOUP_MESSAGE_HEADERS_REQUEST);
        char *method = NULL, *path = NULL; SoupHTTPVersion ver = 0;
        guint st = soup_headers_parse_request(guarded(arg, len), (int)len, h, &method, &path, &ver);
        printf("status=%u", st);
        if (st == SOUP_STATUS_OK) { printf(" method=%s path=", method); prs(path); printf(" ver=1.%d", ver); soup_message_headers_foreach(h, hdr_cb, NULL); }
    } else if (!strcmp(cmd, "resp")) {
        SoupMessageHeaders *h = soup_message_headers_new(SOUP_MESSAGE_HEADERS_RESPONSE);
        SoupHTTPVersion ver = 0; guint code = 0; char *reason = NULL;
        gboolean ok = soup_headers_parse_response(guarded(arg, len), (int)len, h, &ver, &code, &reason);
        printf("ok=%d", ok);
        if (ok) { printf(" ver=1.%d code=%u reason=", ver, code); prs(reason); soup_message_headers_foreach(h, hdr_cb, NULL); }
    } else if (!strcmp(cmd, "cdisp")) {
        SoupMessageHeaders *h = soup_message_headers_new(SOUP_MESSAGE_HEADERS_RESPONSE);
        soup_message_headers_append(h, "Content-Disposition", arg);
        char *disp = NULL; GHashTable *params = NULL;
        gboolean ok = soup_message_headers_get_content_disposition(h, &disp, &params);
        printf("ok=%d disposition=", ok); prs(disp);
        if (ok) { prparams(params); fflush(stdout); g_hash_table_destroy(params); printf(" (params freed)"); }
    } else if (!strcmp(cmd, "qlist")) {
        GSList *l = soup_header_parse_quality_list(arg, NULL);
        printf("list:");
        for (GSList *i = l; i; i = i->next) printf(" %s", (char *)i->data);
        soup_header_free_list(l);
        for (int i = 0; i < 100; i++) soup_header_free_list(soup_header_parse_quality_list(arg, NULL)); /* warm up */
        size_t before = mallinfo2().uordblks;
        for (int i = 0; i < 1000; i++) soup_header_free_list(soup_header_parse_quality_list(arg, NULL));
        size_t after = mallinfo2().uordblks;
        printf(" heap-growth-per-call=%ld bytes", (long)(after - before) / 1000);
    } else if (!strcmp(cmd, "digest")) {
        SoupMessage *msg = soup_message_new("GET", "http://example.com/dir/index.html");
        SoupAuth *a = soup_auth_new(SOUP_TYPE_AUTH_DIGEST, msg, arg);
        if (!a) { printf("auth=NULL (challenge rejected)"); }
        else {
            printf("auth=%s realm=", soup_auth_get_scheme_name(a)); prs(soup_auth_get_realm(a));
            for (int i = 0; i < 100; i++) g_object_unref(soup_auth_new(SOUP_TYPE_AUTH_DIGEST, msg, arg)); /* warm up */
            size_t before = mallinfo2().uordblks;
            for (int i = 0; i < 1000; i++) g_object_unref(soup_auth_new(SOUP_TYPE_AUTH_DIGEST, msg, arg));
            printf(" heap-growth-per-auth=%ld bytes", (long)(mallinfo2().uordblks - before) / 1000); fflush(stdout);
            soup_auth_authenticate(a, "user", "pass");
            char *z = soup_auth_get_authorization(a, msg);
            if (z && strstr(z, ", response=")) *strstr(z, ", response=") = '\0';   /* cnonce/response are random */
            printf(" authorization="); prs(z); if (z) printf("...");
        }
    } else if (!strcmp(cmd, "sniff")) {
        char *sp = strchr(arg, ' ');
        if (!sp) { printf("usage: sniff CTYPE BODY"); return; }
        *sp = '\0'; char *body = sp + 1; size_t blen = len - (size_t)(body - arg);
        SoupMessage *msg = soup_message_new("GET", "http://example.com/");
        soup_message_headers_replace(soup_message_get_response_headers(msg), "Content-Type", arg);
        SoupContentSniffer *s = soup_content_sniffer_new();
        GBytes *b = g_bytes_new_static(guarded(body, blen), blen);
        char *t = soup_content_sniffer_sniff(s, msg, b, NULL);
        printf("declared=%s body-len=%zu sniffed=%s", arg, blen, t);
    } else if (!strcmp(cmd, "redirect")) {
        g_mutex_lock(&srv_lock);
        g_thread_new("server", srv_thread, NULL);
        while (!srv_port) g_cond_wait(&srv_cond, &srv_lock);
        g_mutex_unlock(&srv_lock);
        SoupSession *sess = soup_session_new_with_options("timeout", 5, NULL);
        char *url = g_strdup_printf("http://127.0.0.1:%d/start", srv_port);
        SoupMessage *msg = soup_message_new("GET", url);
        soup_message_headers_replace(soup_message_get_request_headers(msg), "Authorization", arg);
        GError *err = NULL;
        GBytes *b = soup_session_send_and_read(sess, msg, NULL, &err);
        if (!b) printf("error: %s", err->message);
        else {
            GUri *u = soup_message_get_uri(msg);
            printf("final=http://%s:PORT%s status=%u body=", g_uri_get_host(u), g_uri_get_path(u), soup_message_get_status(msg));
            gsize n; const char *d = g_bytes_get_data(b, &n); pr(d, n);
        }
    } else
        printf("unknown command %s", cmd);
}

int main(void)
{
    static char line[65536], arg[65536], out[65536];
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_log_set_always_fatal(0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        if (!line[0] || line[0] == '#') { printf("\n"); continue; }
        char *sp = strchr(line, ' ');
        const char *a = sp ? sp + 1 : "";
        if (sp) *sp = '\0';
        size_t len = unescape(a, arg);
        arg[len] = '\0';
        int fd[2];
        if (pipe(fd) != 0) { printf("pipe failed\n"); continue; }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(fd[0]);
            dup2(fd[1], 1); close(fd[1]);
            alarm(20);   /* a hang answers as CRASH signal 14 */
            run(line, arg, len);
            fflush(stdout); _exit(0);
        }
        close(fd[1]);
        size_t n = 0; ssize_t r;
        while ((r = read(fd[0], out + n, sizeof out - 1 - n)) > 0 && n < sizeof out - 1) n += r;
        if (r > 0) { char junk[4096]; while (read(fd[0], junk, sizeof junk) > 0) ; }
        close(fd[0]);
        out[n] = '\0';
        for (size_t i = 0; i < n; i++) if (out[i] == '\n' || out[i] == '\r') out[i] = ' ';
        int st = 0; waitpid(pid, &st, 0);
        if (WIFSIGNALED(st)) printf("CRASH signal %d\n", WTERMSIG(st));
        else printf("%s\n", out);
    }
    return 0;
}
