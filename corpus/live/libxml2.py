"""libxml2: a driver (libxml2/driver.c) linked to the tree's libxml2.so answers one command
per line, each in a forked child of the patched process (a crash answers "CRASH signal N"),
with the inputs of libxml2/inputs (most of them the fixes' own test files) and a long name
made here. An `xmllint --shell --htmlout` of the tree waits on its stdin beside it: a patch
for the xmllint executable goes into that process, a patch for the library into the
driver (the build-ids a patch names say which)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

from common import Check, Driver, ask


class Context(Driver):
    def start(self):
        lib = self.tree / ".libs"
        exe = self.cc(self.root / "corpus/live/libxml2/driver.c", self.work / "driver",
                      f"-I{self.tree}/include", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lxml2")
        inputs = self.work / "inputs"
        if not inputs.exists():
            shutil.copytree(self.root / "corpus/live/libxml2/inputs", inputs)
            # CVE-2022-40303: a name over XML_MAX_HUGE_LENGTH (10,000,000) characters.
            (inputs / "hugename.xml").write_text("<" + "a" * 10_000_100 + "/>\n")
        # Driver.start_driver, run in the inputs (catalogs name files relative to it).
        p = self.spawn([exe], cwd=inputs, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.pids = [p.pid]
        self.driver = p
        first = self.read_line(p, 30)
        if "ready" not in first:
            raise RuntimeError(f"the driver said {first!r}, not ready")
        # The xmllint executable, long-running: its shell reads commands from stdin.
        self.xmllint = self.spawn([lib / "xmllint", "--shell", "--htmlout", "r.xml"],
                                  cwd=inputs, env=dict(os.environ, LD_LIBRARY_PATH=str(lib)),
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self.build_ids = {self.build_id(lib / "libxml2.so.2.9.14"): p.pid,
                          self.build_id(lib / "xmllint"): self.xmllint.pid}

    def build_id(self, path):
        m = re.search(r'"([0-9a-f]{40})"', self.rlivepatch("build-id", path))
        if not m:
            raise RuntimeError(f"no build-id for {path}")
        return m.group(1)

    def targets(self, so):
        """The processes of the binaries the patch names (by build-id)."""
        data = Path(so).read_bytes()
        pids = [pid for bid, pid in self.build_ids.items() if bid.encode() in data]
        if not pids:
            raise RuntimeError(f"{so} names neither libxml2.so nor xmllint")
        return pids

    def apply(self, so):
        self.pids = self.targets(so)
        super().apply(so)

    def disable(self, name):
        super().disable(name)
        self.pids = [self.driver.pid]


def cmd(line):
    return ask(line, timeout=60)


def grew(answer):
    """The heap growth per run of a `leak` command (None if the answer has none)."""
    m = re.search(r"heap grew (-?\d+) bytes per run", answer)
    return int(m.group(1)) if m else None


def crash(a):
    return a.startswith("CRASH")


CHECKS = {
    "huge-name": Check(
        cmd("parse hugename.xml HUGE"),
        lambda a: a == "document, root of 10000100 chars",
        lambda a: "Name too long" in a and a.endswith("no document"),
        "a 10,000,100-character name with XML_PARSE_HUGE: parsed before, `Name too long` after"),
    "xsd-substitution-group-loop": Check(
        cmd("xsd schemas/oss-fuzz-51295_0.xsd schemas/oss-fuzz-51295_0.xml"),
        crash,
        lambda a: a.endswith("schema failed to compile"),
        "the schema of oss-fuzz 51295 (an element its own substitution group): a NULL "
        "dereference before, the schema refused after"),
    "xsd-simple-content-extension": Check(
        cmd("xsd schemas/issue491_0.xsd schemas/issue491_0.xml"),
        crash,
        lambda a: "must either 'mixed' or 'element-only'" in a
        and a.endswith("schema failed to compile"),
        "a complex content extension of a simple content type (issue 491): a NULL "
        "dereference before, the schema refused after"),
    "dict-empty-strings": Check(
        cmd("dict"),
        lambda a: a.startswith("empty strings: DIFFERENT entries"),
        lambda a: a.startswith("empty strings: SAME entry"),
        "two zero-length lookups of different strings: two dictionary entries before, one after"),
    "ctxt-reset-namespaces": Check(
        cmd("nsreset"),
        lambda a: a.startswith("nsNr after xmlCtxtReset=2"),
        lambda a: a.startswith("nsNr after xmlCtxtReset=0"),
        "a parser context reset after a truncated document with a namespace: the stale "
        "namespaces kept before, dropped after"),
    "dtd-valid-long-names": Check(
        cmd("parse valid24928-overflow.xml DTDVALID"),
        lambda a: a == "CRASH signal 6",
        lambda a: "does not follow the DTD" in a and a.endswith("document, root of 1 chars"),
        "DTD validation of a child with a 3000+3000-character name: the message buffer "
        "overflows (fortify aborts) before, the name is cut short after"),
    "pattern-child-axis": Check(
        cmd("pattern pattern.xml child::a"),
        lambda a: a == "match r | match b | of 4 elements",
        lambda a: a == "match a | match a | of 4 elements",
        "the pattern `child::a`: the parents match before, the a elements after"),
    "sax1-custom-handler": Check(
        cmd("sax1 sax1.xml"),
        lambda a: a.startswith("custom startElement ran 0 times"),
        lambda a: a.startswith("custom startElement ran 3 times"),
        "a custom SAX1 startElement with XML_PARSE_SAX1: replaced by the default handlers "
        "before, called after"),
    "build-qname-negative-length": Check(
        cmd("qname p n -1"),
        lambda a: a == "qname=p:n",
        lambda a: a == "qname=(null)",
        "xmlBuildQName with a buffer length of -1: written to before, refused after"),
    "shell-long-command": Check(
        cmd("shell scripts/long_command.xml scripts/long_command.script"),
        lambda a: "_please_dofoo" in a,
        lambda a: "stores_the_comm |" in a and "dofoo" not in a,
        "a 120-character xmlShell command: it overflows into the argument buffer before, "
        "it is cut at 99 characters after"),
    "schematron-name-root": Check(
        cmd("sct schematron/cve-2025-49796.sct schematron/cve-2025-49796_0.xml"),
        crash,
        lambda a: a.endswith("validate=1"),
        "a Schematron report with `<sch:name path=\"/\"/>`: the document node read as an "
        "element kills the process before, the report is made after"),
    "id-attribute-high-bits": Check(
        cmd("atype"),
        lambda a: a.endswith("=STILL FOUND"),
        lambda a: a.endswith("=none"),
        "removing an ID attribute whose atype has libxslt's high bit: the ID stays "
        "registered (dangling) before, it goes with the attribute after"),
    "xpath-recursion": Check(
        cmd("xpathrec xpathrec.xml ev(string(/r))"),
        lambda a: a.endswith("value, deepest ev() nesting 3000"),
        lambda a: "Recursion limit exceeded" in a and "nesting 3000" not in a,
        "XPath re-evaluated from an extension function, as dyn:evaluate does: no depth "
        "limit before, `Recursion limit exceeded` after"),
    "shell-blank-lines-leak": Check(
        cmd("leak 100 shell r.xml blank.script"),
        lambda a: (grew(a) or 0) > 30000,
        lambda a: grew(a) is not None and grew(a) < 10000,
        "xmlShell reading 1000 blank lines: about 37 kB leaked per run before, the blank "
        "lines freed after"),
    "sgml-catalog-recursion": Check(
        cmd("catalog catalogs/recursive.sgml"),
        crash,
        lambda a: a.endswith("catalog loaded"),
        "an SGML catalog that names itself: unbounded recursion (stack overflow) before, "
        "loaded after"),
    "xml-catalog-recursion": Check(
        cmd("gcatalog catalogs/catalog-recursive.xml /foo.ent"),
        crash,
        lambda a: "Detected recursion in catalog" in a and a.endswith("/foo.ent -> (null)"),
        "an XML catalog delegating to itself: unbounded recursion before, `Detected "
        "recursion in catalog` after"),
    "schematron-bad-test-leak": Check(
        cmd("leak 1000 sct badtest.sct r.xml"),
        lambda a: (grew(a) or 0) >= 100,
        lambda a: grew(a) is not None and grew(a) < 50,
        "a Schematron schema with invalid test expressions: about 160 bytes leaked per "
        "compilation before, none after"),
    "sgml-catalog-self-reference": Check(
        cmd("catalog catalogs/selfref3.sgml"),
        crash,
        lambda a: a.endswith("catalog loaded"),
        "an SGML catalog naming itself three times: a stack overflow before, loaded after"),
}
