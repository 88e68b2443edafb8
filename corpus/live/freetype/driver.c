/* freetype live-check driver: one command per line on stdin, one result line each on stdout;
 * each command runs in a forked child, which runs whatever code the process has now (a crash
 * or an abort is "CRASH signal N" and the driver goes on). The first line is "ready".
 *   svg FONT GID...   FT_New_Face, FT_Load_Glyph(GID, FT_LOAD_COLOR) for each GID in turn, FT_Done_Face;
 *                     prints error and glyph format per load (fix-wild-free-svg)
 *   paint FONT GID    FT_Get_Color_Glyph_Paint (get_colr_glyph_paint.patch, on a disable_COLRv1 base)
 *   var FONT GID W    FT_Set_Var_Design_Coordinates(axis 0 = W), FT_Load_Glyph(GID) (CVE-2025-27363);
 *                     prints the error and the outline's point count */
#include "driver.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_COLOR_H
#include FT_MULTIPLE_MASTERS_H

int main(void)
{
    char line[1024], cmd[32], font[512];
    FT_Library lib;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        int off = 0;
        if (sscanf(line, "%31s %511s %n", cmd, font, &off) < 2) continue;
        if (served_by_child())
            continue;
        FT_Init_FreeType(&lib);
        FT_Face face;
        FT_Error e = FT_New_Face(lib, font, 0, &face);
        if (e) { printf("FT_New_Face error %d\n", e); _exit(0); }
        char out[800] = ""; size_t n = 0;
        if (!strcmp(cmd, "svg")) {
            char *p = line + off; int gid, k;
            while (sscanf(p, "%d%n", &gid, &k) == 1) {
                p += k;
                e = FT_Load_Glyph(face, gid, FT_LOAD_COLOR);
                n += snprintf(out + n, sizeof out - n, " gid%d:err=%d,fmt=%c%c%c%c", gid, e,
                              (face->glyph->format >> 24) & 255, (face->glyph->format >> 16) & 255,
                              (face->glyph->format >> 8) & 255, face->glyph->format & 255);
            }
            FT_Done_Face(face);
            FT_Done_FreeType(lib);
            printf("svg:%s done\n", out);
        } else if (!strcmp(cmd, "paint")) {
            int gid = atoi(line + off);
            FT_OpaquePaint paint = { NULL, 0 };
            FT_Bool r = FT_Get_Color_Glyph_Paint(face, gid, FT_COLOR_INCLUDE_ROOT_TRANSFORM, &paint);
            printf("paint gid%d: ret=%d\n", gid, r);
        } else if (!strcmp(cmd, "var")) {
            int gid = 0, w = 0;
            sscanf(line + off, "%d %d", &gid, &w);
            FT_Fixed c = (FT_Fixed)w << 16;
            FT_Error ev = FT_Set_Var_Design_Coordinates(face, 1, &c);
            FT_Set_Char_Size(face, 0, 16 * 64, 72, 72);
            e = FT_Load_Glyph(face, gid, FT_LOAD_DEFAULT);
            printf("var gid%d wght=%d: setvar=%d load_err=%d points=%d\n", gid, w, ev, e,
                   e ? -1 : face->glyph->outline.n_points);
        } else
            printf("? %s", line);
        fflush(stdout);
        _exit(0);
    }
    return 0;
}
