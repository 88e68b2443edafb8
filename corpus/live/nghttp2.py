"""nghttp2: a driver (nghttp2/driver.c) linked to the tree's libnghttp2.so feeds HTTP/2
frames to new server sessions, each in a forked child of the patched process (an
assertion failure answers "CRASH signal 6")."""
from common import Check, Driver
from common import ask as cmd


class Context(Driver):
    def start(self):
        b = self.tree / "build/lib"
        exe = self.cc(self.root / "corpus/live/nghttp2/driver.c", self.work / "driver",
                      f"-I{self.tree}/lib/includes", f"-I{b}/includes", f"-L{b}",
                      f"-Wl,-rpath,{b}", "-lnghttp2")
        self.start_driver([exe])


CHECKS = {
    "terminate-then-frame-size-error": Check(
        cmd("feed data"),
        lambda a: a == "CRASH signal 6",
        lambda a: a.startswith("recv ") and a.endswith(", 9/9, callbacks 1"),
        "the session terminated in on_data_chunk_recv, then a 0-byte RST_STREAM: an "
        "assertion aborts before, the frame is ignored after"),
}
