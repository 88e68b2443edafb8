/* nghttp2 live-check driver: one command per stdin line, one answer line each; every
 * command runs in a forked child of this long-running process (the one patched), so an
 * assertion failure answers "CRASH signal 6" and the driver goes on. The first line is
 * "ready".
 *   feed SCENARIO   a new server session whose callback of SCENARIO calls
 *                   nghttp2_session_terminate_session(); fed the client preface, SETTINGS
 *                   and the scenario's frames in one nghttp2_session_mem_recv() call, then
 *                   an RST_STREAM frame header of length 0 (a FRAME_SIZE_ERROR) in a second
 *                   call (CVE-2026-27135, upstream test_nghttp2_session_verify_iframe_state).
 *                   Answers the two calls' results and the callback count.
 *     data      HEADERS (stream 1) and a 10-byte DATA frame; on_data_chunk_recv terminates
 *     ext       a user extension frame (type 111); on_frame_recv terminates
 *     extchunk  a user extension frame (type 111); on_extension_chunk_recv terminates */
#include "driver.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <nghttp2/nghttp2.h>

static int calls;

static void term(nghttp2_session *s) { calls++; nghttp2_session_terminate_session(s, NGHTTP2_NO_ERROR); }

static int on_chunk(nghttp2_session *s, uint8_t fl, int32_t id, const uint8_t *d, size_t l, void *u)
{ (void)fl; (void)id; (void)d; (void)l; (void)u; term(s); return 0; }

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *u)
{ (void)u; if (f->hd.type == 111) term(s); return 0; }

static int on_ext_chunk(nghttp2_session *s, const nghttp2_frame_hd *hd, const uint8_t *d, size_t l, void *u)
{ (void)hd; (void)d; (void)l; (void)u; term(s); return NGHTTP2_ERR_CANCEL; }

static int on_ext_chunk_keep(nghttp2_session *s, const nghttp2_frame_hd *hd, const uint8_t *d, size_t l, void *u)
{ (void)s; (void)hd; (void)d; (void)l; (void)u; return 0; }

static int unpack_ext(nghttp2_session *s, void **payload, const nghttp2_frame_hd *hd, void *u)
{ (void)s; (void)hd; (void)u; *payload = NULL; return 0; }

static size_t frame_hd(unsigned char *p, size_t len, int type, int flags, int stream)
{
    p[0] = (unsigned char)(len >> 16); p[1] = (unsigned char)(len >> 8); p[2] = (unsigned char)len;
    p[3] = (unsigned char)type; p[4] = (unsigned char)flags;
    p[5] = (unsigned char)(stream >> 24); p[6] = (unsigned char)(stream >> 16);
    p[7] = (unsigned char)(stream >> 8); p[8] = (unsigned char)stream;
    return 9;
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE }

static void feed(const char *scenario)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    nghttp2_session *s;
    unsigned char buf[4096];
    size_t n = 0;
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    nghttp2_session_callbacks_new(&cbs);
    nghttp2_option_new(&opt);
    nghttp2_option_set_user_recv_extension_type(opt, 111);
    memcpy(buf, preface, sizeof preface - 1);
    n = sizeof preface - 1;
    n += frame_hd(buf + n, 0, NGHTTP2_SETTINGS, 0, 0);

    if (!strcmp(scenario, "data")) {
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_chunk);
        nghttp2_nv nva[] = { NV(":method", "POST"), NV(":scheme", "https"),
                             NV(":path", "/"), NV(":authority", "example.org") };
        nghttp2_hd_deflater *def;
        nghttp2_hd_deflate_new(&def, 4096);
        size_t at = n;
        n += 9;
        ssize_t hl = nghttp2_hd_deflate_hd(def, buf + n, sizeof buf - n, nva, 4);
        nghttp2_hd_deflate_del(def);
        if (hl < 0) { printf("deflate failed\n"); return; }
        frame_hd(buf + at, (size_t)hl, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1);
        n += (size_t)hl;
        n += frame_hd(buf + n, 10, NGHTTP2_DATA, 0, 1);
        memset(buf + n, 'x', 10);
        n += 10;
    } else if (!strcmp(scenario, "ext") || !strcmp(scenario, "extchunk")) {
        nghttp2_session_callbacks_set_unpack_extension_callback(cbs, unpack_ext);
        if (!strcmp(scenario, "ext")) {
            nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
            nghttp2_session_callbacks_set_on_extension_chunk_recv_callback(cbs, on_ext_chunk_keep);
        } else
            nghttp2_session_callbacks_set_on_extension_chunk_recv_callback(cbs, on_ext_chunk);
        n += frame_hd(buf + n, 11, 111, 0xab, 1000000007);
        memcpy(buf + n, "hello world", 11);
        n += 11;
    } else {
        printf("? %s\n", scenario);
        return;
    }

    nghttp2_session_server_new2(&s, cbs, NULL, opt);
    ssize_t r1 = nghttp2_session_mem_recv(s, buf, n);
    unsigned char bad[9];
    frame_hd(bad, 0, NGHTTP2_RST_STREAM, 0, 1);   /* RST_STREAM must be 4 bytes long */
    ssize_t r2 = nghttp2_session_mem_recv(s, bad, sizeof bad);
    printf("recv %zd/%zu, %zd/%zu, callbacks %d\n", r1, n, r2, sizeof bad, calls);
    nghttp2_session_del(s);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
}

int main(void)
{
    char line[1024], cmd[32], arg[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s %63s", cmd, arg) != 2 || strcmp(cmd, "feed")) {
            printf("? %s", line);
            continue;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            feed(arg);
            fflush(stdout);
            _exit(0);
        }
        say_how_it_ended(pid);
    }
    return 0;
}
