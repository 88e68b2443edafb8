"""FreeType: a driver (freetype/driver.c, linked to the tree's libfreetype.so) reads one
command per line and answers one line; each command runs in a forked child of the driver,
so a crash is an answer. The fonts are TrueType files written here with struct: a few
boxes, an 'SVG ' table, or a variation font (fvar, empty gvar) with a huge composite."""
import gzip
import struct
from common import Check, Driver
from common import ask as cmd

BOX = struct.pack(">hhhhhHH4B4h4h", 1, 100, 0, 500, 700, 3, 0, 1, 1, 1, 1,
                  100, 0, 400, 0, 0, 700, 0, -700)  # one contour, 4 on-curve points


def pad4(b):
    return b + b"\0" * (-len(b) % 4)


def sfnt(tables):
    """An sfnt file of `tables` ({tag: bytes}); checksums are not checked by FreeType."""
    tags = sorted(tables)
    n = len(tags)
    es = max(i for i in range(16) if 1 << i <= n)
    head = struct.pack(">IHHHH", 0x00010000, n, 16 << es, es, n * 16 - (16 << es))
    off = 12 + 16 * n
    dirs, body = b"", b""
    for t in tags:
        data = tables[t]
        dirs += struct.pack(">4sIII", t.encode(), 0, off + len(body), len(data))
        body += pad4(data)
    return head + dirs + body


def truetype(glyphs, extra=None, max_components=0):
    """A TrueType font of `glyphs` (their glyf data), each 600 units wide, long loca."""
    n = len(glyphs)
    glyf, loca = b"", []
    for g in glyphs:
        loca.append(len(glyf))
        glyf += pad4(g)
    loca.append(len(glyf))
    t = {
        "head": struct.pack(">IIIIHHqqhhhhHHhhh", 0x00010000, 0x00010000, 0, 0x5F0F3CF5, 3,
                            1000, 0, 0, 0, 0, 600, 800, 0, 8, 2, 1, 0),
        "hhea": struct.pack(">Ihhh H hhh hhh hhhh h H".replace(" ", ""), 0x00010000, 800,
                            -200, 0, 600, 100, 100, 500, 1, 0, 0, 0, 0, 0, 0, 0, n),
        "maxp": struct.pack(">I14H", 0x00010000, n, 4, 1, 65535 if max_components else 4,
                            65535 if max_components else 1, 2, 0, 0, 0, 0, 0, 0,
                            max_components, 1 if max_components else 0),
        "hmtx": struct.pack(f">{2 * n}h", *[600, 100] * n),
        "loca": struct.pack(f">{n + 1}I", *loca),
        "glyf": glyf,
        "post": struct.pack(">IIhhIIIII", 0x00030000, 0, -100, 50, 0, 0, 0, 0, 0),
        "cmap": struct.pack(">HH", 0, 0),
    }
    t.update(extra or {})
    return sfnt(t)


def svg_table(docs):
    """An 'SVG ' table: docs = [(glyph id, document bytes)]."""
    rec, data = b"", b""
    base = 2 + 12 * len(docs)
    for gid, d in docs:
        rec += struct.pack(">HHII", gid, gid, base + len(data), len(d))
        data += d
    return struct.pack(">HII", 0, 10, 0) + struct.pack(">H", len(docs)) + rec + data


def svg_font():
    """Glyphs 0-3 boxes; glyph 1's SVG document gzip-compressed (FreeType decompresses it
    into a buffer of its own, FT_GLYPH_OWN_GZIP_SVG), glyph 2's plain (a pointer into the
    table), glyph 3 none (freetype #1162)."""
    doc = b'<svg xmlns="http://www.w3.org/2000/svg"><rect id="glyph%d" width="500" height="700"/></svg>'
    return truetype([BOX] * 4, {"SVG ": svg_table([(1, gzip.compress(doc % 1, mtime=0)),
                                                   (2, doc % 2)])})


def var_font(ncomp):
    """A variation font (axis wght 100-900, a gvar without data) whose glyph 2 is a
    composite of `ncomp` references to glyph 1 (CVE-2025-27363: 65532 of them make FreeType
    2.12.1's short point count wrap to 0)."""
    comp = struct.pack(">hhhhh", -1, 100, 0, 500, 700)
    comp += struct.pack(">HHbb", 0x0022, 1, 0, 0) * (ncomp - 1)  # ARGS_ARE_XY, MORE
    comp += struct.pack(">HHbb", 0x0002, 1, 0, 0)
    fvar = struct.pack(">HHHHHHHH", 1, 0, 16, 2, 1, 20, 0, 8)
    fvar += struct.pack(">4siiiHH", b"wght", 100 << 16, 400 << 16, 900 << 16, 0, 256)
    nglyphs = 3
    gvar = struct.pack(">HHHHIHHI", 1, 0, 1, 0, 20 + 2 * (nglyphs + 1), nglyphs, 0,
                       20 + 2 * (nglyphs + 1)) + b"\0\0" * (nglyphs + 1)
    return truetype([BOX, BOX, comp], {"fvar": fvar, "gvar": gvar},
                    max_components=min(ncomp, 65535))


class Context(Driver):
    def start(self):
        lib = self.tree / "objs" / ".libs"
        exe = self.cc(self.root / "corpus/live/freetype/driver.c", self.work / "driver",
                      f"-I{self.tree / 'include'}", f"-L{lib}", "-lfreetype",
                      f"-Wl,-rpath,{lib}")
        (self.work / "svg.ttf").write_bytes(svg_font())
        (self.work / "plain.ttf").write_bytes(truetype([BOX] * 4))
        (self.work / "var-100.ttf").write_bytes(var_font(100))
        (self.work / "var-65532.ttf").write_bytes(var_font(65532))
        self.start_driver([exe])


CHECKS = {
    "svg-wild-free": Check(cmd("svg {w}/svg.ttf 1 2 3"),
                           lambda a: a.startswith("CRASH"),
                           lambda a: a == "svg: gid1:err=0,fmt=SVG  gid2:err=0,fmt=SVG  "
                           "gid3:err=0,fmt=outl done",
                           "loading a gzip-compressed SVG glyph, a plain one, then an outline: "
                           "a free of a pointer into the SVG table before, all three after"),
    "composite-65532": Check(cmd("var {w}/var-65532.ttf 2 400"),
                             lambda a: a.startswith("CRASH"),
                             lambda a: a.startswith("var gid2 wght=400: setvar=0 load_err=6 "),
                             "a variation instance's glyph of 65532 components: a write through "
                             "NULL before, `Invalid_Argument` after"),
}
