/* libpng live-check driver: one command per line on stdin, one result line each on stdout;
 * each command runs in a forked child, which runs whatever code the process has now (a
 * crash is "CRASH signal N" and the driver goes on). Every png struct lives only inside
 * one command's child: none is alive in the driver when a patch is applied or disabled.
 *   swrite16 W H EXTRA   png_image_write_to_memory of a 16-bit linear RGBA WxH image whose
 *                        row_stride has EXTRA more components than the row, then read back
 *                        and compare (CVE-2026-22801)
 *   swrite8 W H          png_image_write_to_memory of an 8-bit RGBA WxH image with
 *                        convert_to_8bit set, then read back and compare (CVE-2025-64506)
 *   plte                 getter-to-setter round trip: png_get_PLTE, then png_set_PLTE with
 *                        the pointer it returned, and compare (likewise tRNS and hIST;
 *                        CVE-2026-34757)
 *   text                 the same for text chunks: png_get_text, then png_set_text with
 *                        the array it returned, which must grow (CVE-2026-34757 part 2)
 * The first line is "ready". */
#include "driver.h"
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void swrite16(int w, int h, int extra)
{
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = w;
    im.height = h;
    im.format = PNG_FORMAT_LINEAR_RGB_ALPHA;
    png_int_32 stride = w * 4 + extra;
    png_uint_16 *pix = calloc((size_t)stride * h, 2);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w * 4; x++)
            pix[(size_t)y * stride + x] = (x % 4 == 3) ? 65535 : (png_uint_16)(y * 4000 + x * 50);
    png_alloc_size_t len = 0;
    if (!png_image_write_to_memory(&im, NULL, &len, 0, pix, stride, NULL)) {
        printf("swrite16: size failed: %s\n", im.message);
        return;
    }
    void *mem = malloc(len);
    if (!png_image_write_to_memory(&im, mem, &len, 0, pix, stride, NULL)) {
        printf("swrite16: write failed: %s\n", im.message);
        return;
    }
    png_image in;
    memset(&in, 0, sizeof in);
    in.version = PNG_IMAGE_VERSION;
    png_image_begin_read_from_memory(&in, mem, len);
    in.format = PNG_FORMAT_LINEAR_RGB_ALPHA;
    png_uint_16 *back = calloc((size_t)w * 4 * h, 2);
    png_image_finish_read(&in, NULL, back, 0, NULL);
    int bad = 0;
    for (int y = 0; y < h; y++)
        bad += memcmp(back + (size_t)y * w * 4, pix + (size_t)y * stride, (size_t)w * 8) != 0;
    printf("swrite16 %dx%d extra=%d: rows differing %d\n", w, h, extra, bad);
}

static void swrite8(int w, int h)
{
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = w;
    im.height = h;
    im.format = PNG_FORMAT_RGBA;
    png_byte *pix = malloc((size_t)w * 4 * h);
    for (size_t i = 0; i < (size_t)w * 4 * h; i++)
        pix[i] = (png_byte)(i * 7 + i / 13);
    png_alloc_size_t len = 0;
    if (!png_image_write_to_memory(&im, NULL, &len, 1, pix, 0, NULL)) {
        printf("swrite8: size failed: %s\n", im.message);
        return;
    }
    void *mem = malloc(len);
    if (!png_image_write_to_memory(&im, mem, &len, 1, pix, 0, NULL)) {
        printf("swrite8: write failed (warning_or_error=%u) [%s]\n", im.warning_or_error,
               im.message);
        return;
    }
    png_image in;
    memset(&in, 0, sizeof in);
    in.version = PNG_IMAGE_VERSION;
    png_image_begin_read_from_memory(&in, mem, len);
    in.format = PNG_FORMAT_RGBA;
    png_byte *back = calloc((size_t)w * 4 * h, 1);
    png_image_finish_read(&in, NULL, back, 0, NULL);
    int bad = 0;
    for (int y = 0; y < h; y++)
        bad += memcmp(back + (size_t)y * w * 4, pix + (size_t)y * w * 4, (size_t)w * 4) != 0;
    printf("swrite8 %dx%d convert_to_8bit: rows differing %d\n", w, h, bad);
}

static void plte(void)
{
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    if (setjmp(png_jmpbuf(p))) {
        printf("plte: libpng error\n");
        return;
    }
    png_set_IHDR(p, info, 4, 4, 8, PNG_COLOR_TYPE_PALETTE, 0, 0, 0);
    png_color pal[16];
    png_byte tr[16];
    png_uint_16 hist[16];
    for (int i = 0; i < 16; i++) {
        pal[i].red = i * 10, pal[i].green = i * 10 + 1, pal[i].blue = i * 10 + 2;
        tr[i] = 200 + i;
        hist[i] = 1000 + i;
    }
    png_set_PLTE(p, info, pal, 16);
    png_set_tRNS(p, info, tr, 16, NULL);
    png_set_hIST(p, info, hist);
    png_colorp gp;
    int n, nt;
    png_bytep gt;
    png_color_16p tc;
    png_uint_16p gh;
    png_get_PLTE(p, info, &gp, &n);
    png_set_PLTE(p, info, gp, n);
    png_get_tRNS(p, info, &gt, &nt, &tc);
    png_set_tRNS(p, info, gt, nt, NULL);
    png_get_hIST(p, info, &gh);
    png_set_hIST(p, info, gh);
    png_get_PLTE(p, info, &gp, &n);
    png_get_tRNS(p, info, &gt, &nt, &tc);
    png_get_hIST(p, info, &gh);
    printf("plte roundtrip: PLTE %s, tRNS %s, hIST %s\n",
           memcmp(gp, pal, sizeof pal) ? "CORRUPTED" : "ok",
           memcmp(gt, tr, sizeof tr) ? "CORRUPTED" : "ok",
           memcmp(gh, hist, sizeof hist) ? "CORRUPTED" : "ok");
    png_destroy_write_struct(&p, &info);
}

static char lasterr[256];
static void on_error(png_structp p, png_const_charp msg)
{
    snprintf(lasterr, sizeof lasterr, "%s", msg);
    png_longjmp(p, 1);
}

static void text(void)
{
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, on_error, NULL);
    png_infop info = png_create_info_struct(p);
    if (setjmp(png_jmpbuf(p))) {
        printf("text: libpng error: %s\n", lasterr);
        return;
    }
    png_text t[5];
    char keys[5][16], vals[5][32];
    memset(t, 0, sizeof t);
    for (int i = 0; i < 5; i++) {
        snprintf(keys[i], sizeof keys[i], "Key%d", i);
        snprintf(vals[i], sizeof vals[i], "value number %d", i);
        t[i].compression = PNG_TEXT_COMPRESSION_NONE;
        t[i].key = keys[i];
        t[i].text = vals[i];
    }
    png_set_text(p, info, t, 5);
    png_textp got;
    int n = png_get_text(p, info, &got, NULL);
    png_set_text(p, info, got, n);
    n = png_get_text(p, info, &got, NULL);
    int good = 0;
    for (int i = 0; i < n; i++)
        good += !strcmp(got[i].key, keys[i % 5]) && !strcmp(got[i].text, vals[i % 5]);
    printf("text roundtrip: %d chunks, %d as set\n", n, good);
    png_destroy_write_struct(&p, &info);
}

int main(void)
{
    char line[1024], cmd[32];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%31s", cmd) < 1)
            continue;
        if (served_by_child())
            continue;
        int w = 0, h = 0, e = 0;
        if (!strcmp(cmd, "swrite16") && sscanf(line, "%*s %d %d %d", &w, &h, &e) == 3)
            swrite16(w, h, e);
        else if (!strcmp(cmd, "swrite8") && sscanf(line, "%*s %d %d", &w, &h) == 2)
            swrite8(w, h);
        else if (!strcmp(cmd, "plte"))
            plte();
        else if (!strcmp(cmd, "text"))
            text();
        else
            printf("? %s", line);
        fflush(stdout);
        _exit(0);
    }
    return 0;
}
