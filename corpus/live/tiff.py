"""libtiff: a driver (tiff/driver.c, linked to the tree's libtiff.so) reads one command per
line and answers one line; each command runs in a forked child of the driver, so a crash is
an answer ("CRASH signal N") and the children run whatever code the driver has (patched or
not). The TIFF files are made here, by Python."""
import struct
from common import Check, Driver
from common import ask as cmd


def rgb_tiff(path, w, h, rps):
    """A little-endian, uncompressed, 8-bit RGB (contiguous) TIFF in strips of `rps` rows."""
    nstrips = (h + rps - 1) // rps
    pix = bytes((x * 40 + y * 7 + c * 90) & 255 for y in range(h) for x in range(w)
                for c in range(3))
    rb = w * 3
    strips = [pix[i * rps * rb:(i + 1) * rps * rb] for i in range(nstrips)]
    data = b"".join(strips)
    data_off = 8
    bps_off = data_off + len(data)
    so_off = bps_off + 6
    sbc_off = so_off + 4 * nstrips
    ifd_off = sbc_off + 4 * nstrips
    offsets, pos = [], data_off
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bps_off), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, nstrips, so_off if nstrips > 1 else data_off),
            (277, 3, 1, 3), (278, 4, 1, rps),
            (279, 4, nstrips, sbc_off if nstrips > 1 else len(strips[0])), (284, 3, 1, 1)]
    write_tiff(path, ifd_off, data + struct.pack("<3H", 8, 8, 8)
               + struct.pack(f"<{nstrips}I", *offsets)
               + struct.pack(f"<{nstrips}I", *[len(s) for s in strips]), tags)


def write_tiff(path, ifd_off, body, tags):
    b = b"II*\x00" + struct.pack("<I", ifd_off) + body
    assert len(b) == ifd_off
    b += struct.pack("<H", len(tags))
    for t, typ, cnt, val in tags:
        v = struct.pack("<HH", val, 0) if (typ == 3 and cnt == 1) else struct.pack("<I", val)
        b += struct.pack("<HHI", t, typ, cnt) + v
    b += struct.pack("<I", 0)
    with open(path, "wb") as f:
        f.write(b)


def lzw_no_eoi_tiff(path, w, h, pixels):
    """An 8-bit grey LZW TIFF (one strip) whose data is a clear code and `pixels` literal
    codes, and no end-of-information code (libtiff #548, CVE-2023-2731)."""
    codes = [256] + [(i * 13) & 255 for i in range(pixels)]
    bits = "".join(format(c, "09b") for c in codes)  # under 511 entries: 9-bit codes
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    ifd_off = 8 + len(data)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 5), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(data))]
    write_tiff(path, ifd_off, data, tags)


class Context(Driver):
    def start(self):
        lib = self.tree / "build" / "libtiff"
        exe = self.cc(self.root / "corpus/live/tiff/driver.c", self.work / "driver",
                      f"-I{self.tree / 'libtiff'}", f"-I{lib}", f"-L{lib}", "-ltiff",
                      f"-Wl,-rpath,{lib}")
        rgb_tiff(self.work / "rgb16x64.tif", 16, 64, 8)
        lzw_no_eoi_tiff(self.work / "lzw-no-eoi.tif", 8, 4, 12)
        self.start_driver([exe])


CHECKS = {
    "close-null": Check(cmd("close {w}/nonexistent.tif"),
                        lambda a: a.startswith("CRASH"),
                        lambda a: a == "close: opened=0 closed",
                        "TIFFClose(NULL) after a failed open: a crash before, nothing after"),
    "rgba-strip-row": Check(cmd("strip {w}/rgb16x64.tif 64"),
                            lambda a: a == "strip row=64 ret=1 err=[]",
                            lambda a: a.startswith("strip row=64 ret=0")
                            and "Invalid row passed to TIFFReadRGBAStrip" in a,
                            "TIFFReadRGBAStrip at row 64 of a 64-row image: success before, "
                            "`Invalid row` after"),
    "rgba-image-height": Check(cmd("image {w}/rgb16x64.tif 32"),
                               lambda a: a.startswith("CRASH"),
                               lambda a: a.startswith("image h=32 ret=1 clobbered before=0 after=0"),
                               "TIFFReadRGBAImage of a 64-row image into a 32-row raster: a "
                               "wild write before, the raster filled after"),
    "lzw-no-eoi": Check(cmd("scan {w}/lzw-no-eoi.tif 3"),
                        lambda a: a.startswith("scan") and "previous error" not in a,
                        lambda a: a.startswith("scan") and "row2=-1[LZWDecode: LZWDecode: "
                        "Scanline 2 cannot be read due to previous error]" in a,
                        "reading on after an LZW strip without EOI: decoding goes on before, "
                        "`cannot be read due to previous error` after"),
    "luv-nan": Check(cmd("luv {w}/luv.tif"),
                     lambda a: a.startswith("CRASH"),
                     lambda a: a.startswith("luv write=1"),
                     "writing a LogLuv pixel with a NaN: a crash before, the neutral colour after"),
}
