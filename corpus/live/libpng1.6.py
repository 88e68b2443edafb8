"""libpng: a driver (libpng1.6/driver.c, linked to the tree's libpng16.so) reads one command
per line and answers one line; each command runs in a forked child of the driver, so a crash
is an answer and every png struct is made and destroyed inside one command: none is alive
across the patch's switch (the CVE-2026-33416 diffs change who frees png_ptr->trans_alpha
and ->palette, which a struct made by the old code and destroyed by the new would free
twice)."""
from common import Check, Driver
from common import ask as cmd


class Context(Driver):
    def start(self):
        lib = self.tree / ".libs"
        exe = self.cc(self.root / "corpus/live/libpng1.6/driver.c", self.work / "driver",
                      f"-I{self.tree}", f"-L{lib}", "-lpng16", f"-Wl,-rpath,{lib}")
        self.start_driver([exe])


CHECKS = {
    "large-stride": Check(cmd("swrite16 64 16 33000"),
                          lambda a: a.startswith("swrite16 64x16 extra=33000: rows differing")
                          and not a.endswith(" 0"),
                          lambda a: a == "swrite16 64x16 extra=33000: rows differing 0",
                          "writing a 16-bit image whose row stride is over 65535 bytes: rows "
                          "come back wrong before, right after"),
    "convert-8bit": Check(cmd("swrite8 16 16"),
                          lambda a: a.startswith("swrite8: write failed")
                          or a.startswith("CRASH")
                          or ("rows differing" in a and not a.endswith(" 0")),
                          lambda a: a == "swrite8 16x16 convert_to_8bit: rows differing 0",
                          "writing an 8-bit image with convert_to_8bit: it is read as 16-bit "
                          "(past its end) and the write fails before, it round-trips after"),
    "getter-setter": Check(cmd("plte"),
                           lambda a: a == "plte roundtrip: PLTE CORRUPTED, tRNS CORRUPTED, "
                           "hIST CORRUPTED",
                           lambda a: a == "plte roundtrip: PLTE ok, tRNS ok, hIST ok",
                           "png_set_PLTE/tRNS/hIST given the pointer their getter returned: the "
                           "freed buffer is read before, the data is kept after"),
    "getter-setter-text": Check(cmd("text"),
                                lambda a: a.startswith("text: libpng error") or a.startswith("CRASH"),
                                lambda a: a == "text roundtrip: 10 chunks, 10 as set",
                                "png_set_text given the array png_get_text returned, which must "
                                "grow: the freed array is read (an error) before, 10 chunks after"),
}
