"""libarchive: a driver (libarchive/driver.c) linked to the tree's libarchive.so lists or
reads one archive per line, each in a forked child of the patched process. The archives
are the fixes' own regression inputs, uudecoded in start() from the .uu test files the
Debian patches add."""
import binascii
from pathlib import Path

from common import Check, Driver

# input name -> the Debian patch that adds libarchive/test/<name>.uu
INPUTS = {
    "test_read_format_warc_incomplete.warc": "CVE-2025-5916.patch",
    "test_read_format_rar_overflow.rar": "CVE-2025-5915.patch",
    "test_read_format_rar5_loop_bug.rar": "CVE-2026-4111-1.patch",
    "test_read_format_iso_zisofs_overflow.iso": "CVE-2026-4426_CVE-2026-5121.patch",
}


def uu_from_patch(patch: Path, name: str) -> bytes:
    """The file that `patch` adds as libarchive/test/NAME.uu, uudecoded."""
    lines, inside = [], False
    for line in patch.read_text(errors="replace").splitlines():
        if line.startswith("+++ "):
            inside = line.split()[1].endswith(f"/test/{name}.uu")
            continue
        if not inside:
            continue
        if not line.startswith("+"):
            if line.startswith(("@@", " ")):
                continue
            inside = False
            continue
        lines.append(line[1:])
    data, started = bytearray(), False
    for line in lines:
        if line.startswith("begin "):
            started = True
            continue
        if not started:
            continue
        if line.strip() == "end":
            return bytes(data)
        if line.strip() in ("", "`"):
            continue
        try:
            data += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders pad short lines: decode the length the line declares.
            n = (ord(line[0]) - 32) & 63
            data += binascii.a2b_uu(line[:1 + (n + 2) // 3 * 4])
    raise RuntimeError(f"{patch.name}: no uuencoded {name}")


class Context(Driver):
    def start(self):
        patches = self.root / "target/corpus/src/libarchive/patches"
        for name, patch in INPUTS.items():
            (self.work / name).write_bytes(uu_from_patch(patches / patch, name))
        lib = self.tree / ".libs"
        exe = self.cc(self.root / "corpus/live/libarchive/driver.c", self.work / "driver",
                      f"-I{self.tree}/libarchive", f"-L{lib}", f"-Wl,-rpath,{lib}",
                      "-larchive")
        self.start_driver([exe])


def cmd(verb, name):
    return lambda ctx: ctx.ask(f"{verb} {ctx.work / name}")


CHECKS = {
    "warc-incomplete": Check(cmd("list", "test_read_format_warc_incomplete.warc"),
                             lambda a: a.startswith('"readme.txt" size 38'),
                             lambda a: "Truncated input file" in a and "readme.txt" not in a,
                             "a WARC file cut short: a bogus entry before, `Truncated input "
                             "file` after"),
    "rar-overflow": Check(cmd("read", "test_read_format_rar_overflow.rar"),
                          lambda a: "No support for RAR VM program filter" in a,
                          lambda a: "Bad RAR file data" in a,
                          "the RAR of the regression test: the overflowing copy goes on to a "
                          "filter error before, `Bad RAR file data` after"),
    "rar5-loop": Check(cmd("read", "test_read_format_rar5_loop_bug.rar"),
                       lambda a: a == "TIMEOUT",
                       lambda a: "Invalid filter encountered" in a,
                       "the RAR5 of the regression test: reading never ends before, "
                       "`Invalid filter encountered` after"),
    "iso-zisofs-size": Check(cmd("list", "test_read_format_iso_zisofs_overflow.iso"),
                             lambda a: "size 4294966265" in a,
                             lambda a: "size 2064" in a,
                             "a zisofs entry whose header claims 4 GiB: that size before, "
                             "the real 2064 bytes after"),
}
