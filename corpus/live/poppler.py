"""poppler: one probe process (poppler/probe.cc, C++, compiled against the tree's headers and
linked to its libpoppler.so) reads a request per line: a PDF's path (open it, walk its pages,
annotations, outline, structure tree and Type 4 functions, read its PDF/A conformance), or
`save PATH` (the same, then pdfseparate's savePageAs of page 1), or `sig PATH` (the same,
then every signature validated). It answers one line, with the errors poppler reported. The
PDFs are written by hand by poppler/mkinputs.py (the signed ones with openssl). HOME is the
work directory, so that NSS finds no certificate database and runs without one."""
import os
import subprocess
import sys
from pathlib import Path

from common import Check, Driver

HERE = Path(__file__).resolve().parent / "poppler"


class Context(Driver):
    def probe_binary(self) -> Path:
        """The probe, compiled once per pristine build (kept beside the rows' work
        directories, remade when its source or the library is newer)."""
        out = self.work.parent / "probe"
        src = HERE / "probe.cc"
        lib = self.tree / "build" / "libpoppler.so.126.0.0"
        if out.exists() and out.stat().st_mtime > max(src.stat().st_mtime, lib.stat().st_mtime):
            return out
        t = self.tree
        inc = [t, t / "poppler", t / "goo", t / "splash", t / "build", t / "build" / "poppler",
               Path("/usr/include/freetype2")]
        tmp = out.with_suffix(".tmp")
        cmd = ["c++", "-std=c++17", "-O1", "-g", *[f"-I{d}" for d in inc], "-o", str(tmp),
               str(src), f"-L{t / 'build'}", "-lpoppler", f"-Wl,-rpath,{t / 'build'}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the probe: {r.stderr[-500:]}")
        os.replace(tmp, out)
        return out

    def start(self):
        self.inputs = self.work / "inputs"
        if not (self.inputs / "ok.pdf").exists():
            subprocess.run([sys.executable, str(HERE / "mkinputs.py"), str(self.inputs)],
                           check=True, capture_output=True)
        env = dict(os.environ, HOME=str(self.work))
        self.start_driver([self.probe_binary()], env=env)
        base = self.ask(str(self.inputs / "ok.pdf"))
        if not base.startswith("pages=1 annots=[1] outline=2"):
            raise RuntimeError(f"the probe's baseline answer is {base!r}")


def probe(name, mode=""):
    return lambda ctx: ctx.ask((mode + " " if mode else "") + str(ctx.inputs / name),
                               timeout=120)


CHECKS = {
    "outline-reconstructed": Check(
        probe("outline-reconstruct.pdf"),
        lambda a: a == "CRASH signal 6",
        lambda a: " outline=2 " in a and "errors=1" in a,
        "an outline item that turns into an integer when the xref is reconstructed: "
        "abort() before, the item has no children after"),
    "psroll-int-min": Check(
        probe("psroll.pdf"),
        lambda a: a == "CRASH signal 8",
        lambda a: " fn=[0] " in a,
        "a PostScript function `-1 -2147483648 roll`: SIGFPE before, evaluated after"),
    "conformance-regex": Check(
        probe("regex.pdf"),
        lambda a: a == "CRASH signal 11",
        lambda a: " conf=none " in a,
        "a 400000-character /GTS_PDFA1Version: std::regex overflows the stack before, "
        "no conformance after"),
    "parent-tree-duplicate": Check(
        probe("struct-dup.pdf"),
        lambda a: a.startswith("pages=1 ") and a.endswith("errors=0"),
        lambda a: "duplicate entry for key 0" in a,
        "a structure ParentTree with key 0 twice: a silent use after free before, "
        "`duplicate entry for key 0` after"),
    "save-recursive-annots": Check(
        probe("annots-recursive.pdf", "save"),
        lambda a: a == "CRASH signal 11",
        lambda a: " save=0 " in a,
        "saving a page whose /Annots refers back to itself through a plain dict: unbounded "
        "recursion before, saved after"),
    "forged-signature": Check(
        probe("signed-forged.pdf", "sig"),
        lambda a: " sig=[VALID] " in a,
        lambda a: " sig=[INVALID] " in a,
        "an adbe.pkcs7.sha1 signature whose RSA signature is corrupt but whose encapsulated "
        "digest matches: VALID before, INVALID after"),
    "annots-limit": Check(
        probe("annots-many.pdf"),
        lambda a: a.startswith("pages=1 annots=[10001] "),
        lambda a: "annots=[nopage]" in a and "Too big: (10001)" in a,
        "a page with 10001 annotations (the fix's new limit, against reference-count "
        "overflow): loaded before, the page refused after"),
}
