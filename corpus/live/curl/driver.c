/*
 * curl live-check driver: reads one command per line on stdin, performs one transfer with
 * the tree's libcurl, and answers one line on stdout. One easy handle lives on between
 * commands (curl_easy_reset before each), so connections and their credentials persist
 * until `fresh`.
 *
 *   get URL [k=v ...]  one transfer; k: bearer= follow=1 netrc=FILE proxy= proxyuserpwd=
 *                      tunnel=1 resolve=H:P:A protocols= redirprotocols= user=
 *                      cookies=1 cacert=FILE
 *                      insecure=1 unix=SOCKETPATH body=N (bytes of the body shown)
 *                      answer: rc=N (text) http=C new_connections=N [err=...]
 *                      [setopt=N] [body=...] [cookies=...]
 *   fresh              drop the handle (its connections and cookies)
 *   hsts FILE URL      a new handle loads FILE (a copy of it) as its HSTS cache, does a
 *                      HEAD of URL, and answers the entries it saves at cleanup
 *   jar DIR            a new handle saves a cookie jar over an empty DIR/jar.txt: the
 *                      names of the files created in DIR meanwhile (inotify)
 *   leak N CMD...      CMD once (warm-up), then N times: the heap growth per run
 *   ping               "ready"
 */
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <curl/curl.h>

static CURL *h;
static char out[8192];
static size_t outn;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (outn < sizeof out - 1) {
        int n = vsnprintf(out + outn, sizeof out - outn, fmt, ap);
        if (n > 0)
            outn += (size_t)n;
        if (outn > sizeof out - 1)
            outn = sizeof out - 1;
    }
    va_end(ap);
}

struct buf {
    char *p;
    size_t n;
};

static size_t wr(char *d, size_t s, size_t n, void *u)
{
    struct buf *b = u;
    size_t t = s * n;
    b->p = realloc(b->p, b->n + t + 1);
    memcpy(b->p + b->n, d, t);
    b->n += t;
    b->p[b->n] = 0;
    return t;
}

static size_t no_input(char *b, size_t s, size_t n, void *u)
{
    (void)b;
    (void)s;
    (void)n;
    (void)u;
    return 0; /* never read the driver's stdin (telnet would) */
}

static void cmd_get(char *url, char *save)
{
    struct curl_slist *resolve = NULL;
    struct buf b = {0};
    int cookies = 0;
    long body_max = 200;
    char *kv;
    if (!url) {
        say("usage: get URL [k=v ...]");
        return;
    }
    if (!h)
        h = curl_easy_init();
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, wr);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, no_input);
    while ((kv = strtok_r(NULL, " ", &save))) {
        char *v = strchr(kv, '=');
        if (!v)
            continue;
        *v++ = 0;
        if (!strcmp(kv, "bearer")) {
            curl_easy_setopt(h, CURLOPT_XOAUTH2_BEARER, v);
            curl_easy_setopt(h, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
        } else if (!strcmp(kv, "follow"))
            curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, atol(v));
        else if (!strcmp(kv, "netrc")) {
            curl_easy_setopt(h, CURLOPT_NETRC, (long)CURL_NETRC_OPTIONAL);
            curl_easy_setopt(h, CURLOPT_NETRC_FILE, v);
        } else if (!strcmp(kv, "proxy"))
            curl_easy_setopt(h, CURLOPT_PROXY, v);
        else if (!strcmp(kv, "proxyuserpwd"))
            curl_easy_setopt(h, CURLOPT_PROXYUSERPWD, v);
        else if (!strcmp(kv, "tunnel"))
            curl_easy_setopt(h, CURLOPT_HTTPPROXYTUNNEL, atol(v));
        else if (!strcmp(kv, "resolve"))
            resolve = curl_slist_append(resolve, v);
        else if (!strcmp(kv, "protocols"))
            say("setopt=%d ", (int)curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, v));
        else if (!strcmp(kv, "redirprotocols"))
            curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, v);
        else if (!strcmp(kv, "user"))
            curl_easy_setopt(h, CURLOPT_USERPWD, v);
        else if (!strcmp(kv, "cookies")) {
            cookies = 1;
            curl_easy_setopt(h, CURLOPT_COOKIEFILE, "");
        } else if (!strcmp(kv, "cacert"))
            curl_easy_setopt(h, CURLOPT_CAINFO, v);
        else if (!strcmp(kv, "insecure")) {
            curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
            curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
        } else if (!strcmp(kv, "unix"))
            curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, v);
        else if (!strcmp(kv, "body"))
            body_max = atol(v);
    }
    if (resolve)
        curl_easy_setopt(h, CURLOPT_RESOLVE, resolve);
    char err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    CURLcode rc = curl_easy_perform(h);
    long code = 0, conns = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &conns);
    say("rc=%d (%s) http=%ld new_connections=%ld", (int)rc, curl_easy_strerror(rc), code,
        conns);
    if (err[0])
        say(" err=%s", err);
    if (b.n && body_max > 0)
        say(" body=%.*s", (int)(b.n < (size_t)body_max ? b.n : (size_t)body_max), b.p);
    if (cookies) {
        struct curl_slist *cl = NULL, *c;
        curl_easy_getinfo(h, CURLINFO_COOKIELIST, &cl);
        say(" cookies=");
        for (c = cl; c; c = c->next)
            say("%s%s", c->data, c->next ? "; " : "");
        if (!cl)
            say("(none)");
        curl_slist_free_all(cl);
    }
    free(b.p);
    curl_slist_free_all(resolve);
}

static CURLSTScode hsts_w(CURL *e, struct curl_hstsentry *s, struct curl_index *i, void *u)
{
    (void)e;
    (void)u;
    say("%s%s includeSubDomains=%d expire=%s", i->index ? "; " : "hsts: ", s->name,
        s->includeSubDomains, s->expire);
    return CURLSTS_OK;
}

static void cmd_hsts(char *file, char *url)
{
    char tmp[] = "/tmp/hsts-driver-XXXXXX", line[512];
    int fd = mkstemp(tmp);
    FILE *in = fopen(file, "r"), *o = fdopen(fd, "w");
    while (in && fgets(line, sizeof line, in))
        fputs(line, o);
    if (in)
        fclose(in);
    fclose(o);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_HSTS_CTRL, (long)CURLHSTS_ENABLE);
    curl_easy_setopt(e, CURLOPT_HSTS, tmp);
    curl_easy_setopt(e, CURLOPT_HSTSWRITEFUNCTION, hsts_w);
    /* the file is read when a transfer starts */
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 10L);
    curl_easy_perform(e);
    curl_easy_cleanup(e); /* saves: hsts_w for each entry */
    unlink(tmp);
}

static void cmd_jar(char *dir)
{
    char path[4096], ev[8192];
    snprintf(path, sizeof path, "%s/jar.txt", dir);
    /* an existing jar (a regular file) is replaced through a temporary file */
    FILE *f = fopen(path, "w");
    if (f)
        fclose(f);
    int in = inotify_init1(IN_NONBLOCK);
    inotify_add_watch(in, dir, IN_CREATE | IN_MOVED_TO);
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
    curl_easy_setopt(e, CURLOPT_COOKIEJAR, path);
    curl_easy_setopt(e, CURLOPT_COOKIELIST, "Set-Cookie: a=b; domain=example.com; path=/");
    curl_easy_cleanup(e); /* writes the jar through a temporary file */
    ssize_t n = read(in, ev, sizeof ev);
    say("jar:");
    for (char *p = ev; n > 0 && p < ev + n;) {
        struct inotify_event *ie = (struct inotify_event *)p;
        say(" %s %s", (ie->mask & IN_CREATE) ? "created" : "renamed-to",
            ie->len ? ie->name : "");
        p += sizeof *ie + ie->len;
    }
    close(in);
    unlink(path);
}

static void run(char *line);

static void cmd_leak(char *line)
{
    char *sp, tmp[4096];
    long n = strtol(line, &sp, 10);
    while (*sp == ' ')
        sp++;
    snprintf(tmp, sizeof tmp, "%s", sp);
    run(tmp);
    size_t heap0 = mallinfo2().uordblks;
    for (long i = 0; i < n; i++) {
        snprintf(tmp, sizeof tmp, "%s", sp);
        run(tmp);
    }
    long grown = (long)mallinfo2().uordblks - (long)heap0;
    outn = 0;
    out[0] = 0;
    say("heap grew %ld bytes per run over %ld runs", n > 0 ? grown / n : 0, n);
}

static void run(char *line)
{
    char *save, *cmd = strtok_r(line, " ", &save);
    outn = 0;
    out[0] = 0;
    if (!cmd)
        say("empty command");
    else if (!strcmp(cmd, "ping"))
        say("ready");
    else if (!strcmp(cmd, "get")) {
        char *u = strtok_r(NULL, " ", &save);
        cmd_get(u, save);
    } else if (!strcmp(cmd, "fresh")) {
        if (h)
            curl_easy_cleanup(h);
        h = NULL;
        say("handle dropped");
    } else if (!strcmp(cmd, "hsts")) {
        char *f = strtok_r(NULL, " ", &save), *u = strtok_r(NULL, " ", &save);
        if (f && u)
            cmd_hsts(f, u);
        else
            say("usage: hsts FILE URL");
    } else if (!strcmp(cmd, "jar")) {
        char *d = strtok_r(NULL, " ", &save);
        if (d)
            cmd_jar(d);
        else
            say("usage: jar DIR");
    } else if (!strcmp(cmd, "leak") && save && *save)
        cmd_leak(save);
    else
        say("unknown command %s", cmd);
}

int main(void)
{
    char line[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        run(line);
        for (char *p = out; *p; p++)
            if ((unsigned char)*p < 0x20)
                *p = ' ';
        printf("%s\n", out);
    }
    if (h)
        curl_easy_cleanup(h);
    curl_global_cleanup();
    return 0;
}
