"""libsoup3: a driver (libsoup3/driver.c) linked to the tree's libsoup-3.0.so answers one
command per line, each in a forked child of the patched process: header parsing
(soup_headers_parse_request/_response), Content-Disposition and quality-list parsing,
Digest challenges (soup_auth_new), content sniffing, and a SoupSession following a
cross-origin redirect from a SoupServer (a thread of the child on 127.0.0.1)."""
import subprocess
from common import Check, Driver
from common import ask as cmd


class Context(Driver):
    def start(self):
        b = self.tree / "build/libsoup"
        inc = [f"-I{b}", f"-I{self.tree}/libsoup"] + [
            f"-I{self.tree}/libsoup/{d}" for d in
            ("auth", "cache", "content-decoder", "content-sniffer", "cookies", "hsts",
             "server", "websocket")]
        gio = subprocess.run(["pkg-config", "--cflags", "--libs", "gio-2.0"],
                             capture_output=True, text=True, check=True).stdout.split()
        exe = self.cc(self.root / "corpus/live/libsoup3/driver.c", self.work / "driver",
                      *inc, f"-L{b}", f"-Wl,-rpath,{b}", "-lsoup-3.0", *gio)
        self.start_driver([exe])


CHECKS = {
    "header-nul": Check(cmd(r"req GET / HTTP/1.1\r\nHost: example.com\0.evil.net\r\n\r\n"),
                        lambda a: a.startswith("status=200") and "[Host: example.com.evil.net]" in a,
                        lambda a: a == "status=400",
                        "a request whose Host header holds a NUL byte: the NUL dropped "
                        "(Host example.com.evil.net) before, 400 Bad Request after"),
    "request-line-end": Check(cmd(r"req GET / HTTP/1000."),
                              lambda a: a.startswith("CRASH"),
                              lambda a: a == "status=400",
                              "the request line `GET / HTTP/1000.` ending at a page boundary: "
                              "read past the buffer (SIGSEGV) before, 400 after"),
    "cdisp-no-value": Check(cmd("cdisp attachment; filename"),
                            lambda a: a.startswith("CRASH"),
                            lambda a: a.startswith('ok=1 disposition="attachment"'),
                            "`Content-Disposition: attachment; filename` (no value): a NULL "
                            "dereference before, parsed after"),
    "cdisp-path": Check(cmd('cdisp attachment; filename="/tmp/x/report.pdf"'),
                        lambda a: a.startswith("CRASH"),
                        lambda a: 'filename="report.pdf" (params freed)' in a,
                        "a filename with a path: the parameter table's string freed and "
                        "replaced by a pointer into it, an invalid free (abort) before, "
                        "filename report.pdf after"),
    "qlist-leak": Check(cmd("qlist gzip;q=0, identity;q=0.5, br"),
                        lambda a: a.startswith("list: br identity") and
                        "heap-growth-per-call=0 bytes" not in a,
                        lambda a: a == "list: br identity heap-growth-per-call=0 bytes",
                        "a quality list with a q=0 item and no list for unacceptable ones: "
                        "the item leaked on every call before, no heap growth after"),
    "digest-opaque-leak": Check(
        cmd('digest Digest realm="r", nonce="n", opaque="0123456789abcdef0123456789abcdef", '
            'qop="auth"'),
        lambda a: a.startswith('auth=Digest realm="r" heap-growth-per-auth=')
        and "heap-growth-per-auth=0 bytes" not in a,
        lambda a: a.startswith('auth=Digest realm="r" heap-growth-per-auth=0 bytes'),
        "a Digest challenge with an opaque value: the opaque string leaked by every auth "
        "object before, no heap growth after"),
    "digest-no-realm": Check(cmd('digest Digest nonce="abc", qop="auth"'),
                             lambda a: a.startswith("CRASH"),
                             lambda a: a == "auth=NULL (challenge rejected)",
                             "a Digest challenge without a realm: a NULL dereference when "
                             "answering it before, the challenge rejected after"),
    "digest-no-nonce": Check(cmd('digest Digest realm="r", qop="auth"'),
                             lambda a: a.startswith("CRASH"),
                             lambda a: a == "auth=NULL (challenge rejected)",
                             "a Digest challenge without a nonce: a NULL dereference when "
                             "answering it before, the challenge rejected after"),
    "digest-null-nonce": Check(cmd('digest Digest realm="r", nonce'),
                               lambda a: a.startswith("CRASH"),
                               lambda a: a == "auth=NULL (challenge rejected)",
                               "a Digest challenge with `nonce` and no value: a NULL "
                               "dereference before, the challenge rejected after"),
    "sniff-html-end": Check(cmd("sniff text/html <!x>"),
                            lambda a: a.startswith("CRASH"),
                            lambda a: a == "declared=text/html body-len=4 sniffed=text/html",
                            "sniffing the 4-byte body `<!x>` ending at a page boundary: a "
                            "read past it (SIGSEGV) before, text/html after"),
    "sniff-mp4-short": Check(cmd("sniff video/mp4 ab"),
                             lambda a: a.startswith("CRASH"),
                             lambda a: a == "declared=video/mp4 body-len=2 sniffed=video/mp4",
                             "sniffing a 2-byte video/mp4 body: a 4-byte read past it "
                             "(SIGSEGV) before, video/mp4 after"),
    "redirect-credentials": Check(
        cmd("redirect Basic dXNlcjpzZWNyZXQ="),
        lambda a: a.endswith("/echo got Authorization=Basic dXNlcjpzZWNyZXQ="),
        lambda a: a.startswith("final=http://localhost:PORT/echo status=200")
        and a.endswith("/echo got Authorization=(none)"),
        "a redirect from 127.0.0.1 to localhost: the Authorization header sent to the "
        "other origin before, stripped after"),
}
