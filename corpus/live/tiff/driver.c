/* libtiff live-check driver: one command per line on stdin, one result line each on stdout.
 *   close FILE        TIFFClose(TIFFOpen(FILE, "r")), even when the open failed (TIFFClose(NULL))
 *   strip FILE ROW    TIFFReadRGBAStrip at ROW into a buffer of width * rowsperstrip pixels
 *   image FILE H      TIFFReadRGBAImage with a raster of height H (less than the image's is
 *                     CVE-2025-9900), the raster between two guard zones: guard damage reported
 *   scan FILE N       TIFFReadScanline for rows 0..N-1: each row's result and error
 *   luv FILE          writes a 4x1 SGILOG24 (LogLuv, float XYZ) image whose pixels have a NaN X
 *                     (CVE-2023-26966), then reads it back: the encoded words
 * libtiff's errors are captured and printed on the result line. Each command runs in a forked
 * child, which runs whatever code the process has now (patched or not): a crash is
 * "CRASH signal N" and the driver goes on. The first line is "ready". */
#include "driver.h"
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <tiffio.h>
#include <unistd.h>

static char lasterr[512];
static void on_err(const char *mod, const char *fmt, va_list ap)
{
    int n = snprintf(lasterr, sizeof lasterr, "%s: ", mod ? mod : "");
    vsnprintf(lasterr + n, sizeof lasterr - n, fmt, ap);
}

static void cmd_luv(const char *file)
{
    TIFF *t = TIFFOpen(file, "w");
    if (!t) { printf("luv: open failed [%s]\n", lasterr); return; }
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 4);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 1);
    TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_SGILOG24);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_LOGLUV);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 32);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_IEEEFP);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 1);
    TIFFSetField(t, TIFFTAG_SGILOGDATAFMT, SGILOGDATAFMT_FLOAT);
    TIFFSetField(t, TIFFTAG_SGILOGENCODE, SGILOGENCODE_NODITHER);
    float px[12];
    for (int i = 0; i < 4; i++)
        px[3 * i] = __builtin_nanf(""), px[3 * i + 1] = 1.0f, px[3 * i + 2] = 1.0f;
    int r = TIFFWriteScanline(t, px, 0, 0);
    TIFFClose(t);
    t = TIFFOpen(file, "r");
    if (!t) { printf("luv: write=%d reopen failed [%s]\n", r, lasterr); return; }
    TIFFSetField(t, TIFFTAG_SGILOGDATAFMT, SGILOGDATAFMT_RAW);
    uint32_t raw[4] = {0};
    tmsize_t n = TIFFReadEncodedStrip(t, 0, raw, sizeof raw);
    printf("luv write=%d read=%ld words=%08x %08x %08x %08x err=[%s]\n", r, (long)n, raw[0],
           raw[1], raw[2], raw[3], lasterr);
    TIFFClose(t);
}

int main(void)
{
    char line[1024], cmd[32], file[900];
    long arg;
    TIFFSetErrorHandler(on_err);
    TIFFSetWarningHandler(NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        int n = sscanf(line, "%31s %899s %ld", cmd, file, &arg);
        lasterr[0] = 0;
        if (served_by_child())
            continue;
        if (n >= 2 && !strcmp(cmd, "close")) {
            TIFF *t = TIFFOpen(file, "r");
            TIFFClose(t);
            printf("close: opened=%d closed\n", t != NULL);
        } else if (n == 3 && !strcmp(cmd, "strip")) {
            TIFF *t = TIFFOpen(file, "r");
            if (!t) { printf("strip: open failed\n"); _exit(0); }
            uint32_t w = 0, rps = 0;
            TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
            TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &rps);
            uint32_t *buf = calloc((size_t)w * rps + 64, 4);
            int r = TIFFReadRGBAStrip(t, (uint32_t)arg, buf);
            printf("strip row=%ld ret=%d err=[%s]\n", arg, r, lasterr);
            free(buf);
            TIFFClose(t);
        } else if (n == 3 && !strcmp(cmd, "image")) {
            TIFF *t = TIFFOpen(file, "r");
            if (!t) { printf("image: open failed\n"); _exit(0); }
            uint32_t w = 0, h = (uint32_t)arg;
            TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
            size_t guard = 1 << 16, rs = (size_t)w * h * 4;
            unsigned char *mem = malloc(guard * 2 + rs);
            memset(mem, 0xAB, guard * 2 + rs);
            int r = TIFFReadRGBAImage(t, w, h, (uint32_t *)(mem + guard), 0);
            size_t before = 0, after = 0;
            for (size_t i = 0; i < guard; i++)
                before += mem[i] != 0xAB, after += mem[guard + rs + i] != 0xAB;
            printf("image h=%ld ret=%d clobbered before=%zu after=%zu err=[%s]\n", arg, r, before,
                   after, lasterr);
            free(mem);
            TIFFClose(t);
        } else if (n == 3 && !strcmp(cmd, "scan")) {
            TIFF *t = TIFFOpen(file, "r");
            if (!t) { printf("scan: open failed\n"); _exit(0); }
            unsigned char *buf = malloc(TIFFScanlineSize(t) + 64);
            printf("scan");
            for (long row = 0; row < arg; row++) {
                lasterr[0] = 0;
                int r = TIFFReadScanline(t, buf, (uint32_t)row, 0);
                printf(" row%ld=%d%s%s%s", row, r, lasterr[0] ? "[" : "", lasterr,
                       lasterr[0] ? "]" : "");
            }
            printf("\n");
            free(buf);
            TIFFClose(t);
        } else if (n >= 2 && !strcmp(cmd, "luv")) {
            cmd_luv(file);
        } else
            printf("? %s", line);
        fflush(stdout);
        _exit(0);
    }
    return 0;
}
