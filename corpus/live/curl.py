"""curl: a driver (curl/driver.c) linked to the tree's libcurl.so performs one transfer per
command line and answers one line, with one easy handle kept between commands; the local
servers of curl/servers.py (HTTP, an HTTP proxy, SOCKS and telnet sinks, HTTPS on a port and
on a unix socket, with a certificate for `a*.example.test` made here by the openssl
command) run in a second process, which is not patched."""
import re
import subprocess
import sys
from pathlib import Path

from common import Check, Driver, free_ports

HERE = Path(__file__).resolve().parent / "curl"
PORTS = ["http", "http2", "proxy", "socks", "telnet", "https", "imap"]


class Context(Driver):
    def start(self):
        w = self.work
        # CVE-2023-28321: a certificate whose only name is the wildcard a*.example.test.
        if not (w / "wild.pem").exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", w / "wild.key", "-out", w / "wild.pem", "-days", "30",
                            "-subj", "/CN=a*.example.test",
                            "-addext", "subjectAltName=DNS:a*.example.test"],
                           check=True, capture_output=True)
        # CVE-2026-3783: credentials for the first host, which a redirect leaves.
        (w / "netrc").write_text("machine 127.0.0.1 login netrcuser password netrcpass\n")
        # CVE-2024-9681: a parent domain, then a subdomain that expires later.
        (w / "hsts.txt").write_text('.example.test "20980101 00:00:00"\n'
                                    '.sub.example.test "20991231 00:00:00"\n')
        (w / "jar").mkdir(exist_ok=True)
        self.port = dict(zip(PORTS, free_ports(len(PORTS))))
        self.sock = w / "https.sock"
        srv = self.spawn([sys.executable, HERE / "servers.py", w,
                          *[f"{k}={v}" for k, v in self.port.items()], f"unix={self.sock}"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if "ready" not in srv.stdout.readline():
            raise RuntimeError("the servers did not start")
        lib = self.tree / "lib/.libs"
        exe = self.cc(HERE / "driver.c", w / "driver", f"-I{self.tree}/include", f"-L{lib}",
                      f"-Wl,-rpath,{lib}", "-lcurl")
        self.start_driver([exe])


def get(fmt, fresh=True):
    """A transfer on a fresh handle (no connection to reuse), the URL and options from
    `fmt` with the context's ports and paths."""
    def ask(ctx):
        if fresh:
            ctx.ask("fresh")
        return ctx.ask(fmt.format(w=ctx.work, sock=ctx.sock, **ctx.port), timeout=90)
    return ask


def proxy_two_users(ctx):
    """Two transfers through the same tunnelling proxy, alice's then bob's credentials:
    the second transfer's new connections."""
    ctx.ask("fresh")
    url = f"get http://127.0.0.1:{ctx.port['http']}/ proxy=http://127.0.0.1:{ctx.port['proxy']} tunnel=1"
    first = ctx.ask(url + " proxyuserpwd=alice:one")
    if not first.startswith("rc=0 "):
        return f"first: {first}"
    return ctx.ask(url + " proxyuserpwd=bob:two")


def grew(answer):
    m = re.search(r"heap grew (-?\d+) bytes per run", answer)
    return int(m.group(1)) if m else None


LONG_HOST = "a" * 300 + ".test"

CHECKS = {
    "redirect-bearer-netrc": Check(
        get("get http://127.0.0.1:{http}/redir bearer=SECRET-TOKEN follow=1 netrc={w}/netrc"),
        lambda a: a.startswith("rc=0 ") and "Authorization: Bearer SECRET-TOKEN" in a,
        lambda a: a.startswith("rc=0 ") and "/echo" not in a and "Authorization" not in a,
        "a redirect to another port with a bearer token and a .netrc: the token sent to the "
        "second server before, not after"),
    "socks5h-long-hostname": Check(
        get("get http://" + LONG_HOST + "/ proxy=socks5h://127.0.0.1:{socks}"),
        lambda a: a.startswith("rc=97 ") and "hostname is too long" not in a,
        lambda a: a.startswith("rc=97 ") and "the destination hostname is too long" in a,
        "a 305-character host name through a socks5h proxy: local resolving and a handshake "
        "before, refused at once after"),
    "hsts-subdomain-expiry": Check(
        get("hsts {w}/hsts.txt http://127.0.0.1:{http}/", fresh=False),
        lambda a: a == 'hsts: example.test includeSubDomains=1 expire=20991231 00:00:00',
        lambda a: a == 'hsts: example.test includeSubDomains=1 expire=20980101 00:00:00',
        "an HSTS file with a parent domain, then a subdomain expiring later: the parent's "
        "expiry overwritten before, kept after"),
    "psl-uppercase-cookie-domain": Check(
        get("get http://WWW.EXAMPLE.CO.UK:{http}/cookie "
            "resolve=www.example.co.uk:{http}:127.0.0.1 cookies=1"),
        lambda a: a.startswith("rc=0 ") and ".CO.UK TRUE / FALSE 0 super 1" in a,
        lambda a: a.startswith("rc=0 ") and "super" not in a.split("cookies=")[-1]
        and "normal 1" in a,
        "a cookie for the public suffix CO.UK from an upper-case host: stored before, "
        "dropped after"),
    "empty-protocols-string": Check(
        get("get http://127.0.0.1:{http}/ protocols="),
        lambda a: a.startswith("setopt=43 rc=0 "),
        lambda a: a.startswith("setopt=43 rc=1 "),
        "CURLOPT_PROTOCOLS_STR set to \"\": the transfer still done before, every protocol "
        "disabled after"),
    "cookie-jar-temp-name": Check(
        get("jar {w}/jar", fresh=False),
        lambda a: re.match(r"jar: created jar\.txt\.[0-9a-f]+\.tmp renamed-to jar\.txt$", a)
        is not None,
        lambda a: re.match(r"jar: created [0-9a-f]{40}\.tmp renamed-to jar\.txt$", a)
        is not None,
        "saving a cookie jar: the temporary file is named after the jar before, a random "
        "name after"),
    "proxy-tunnel-credentials": Check(
        proxy_two_users,
        lambda a: a.startswith("rc=0 ") and "new_connections=0" in a,
        lambda a: a.startswith("rc=0 ") and "new_connections=1" in a,
        "two transfers through one proxy tunnel as alice, then bob: bob reuses alice's "
        "tunnel before, gets his own after"),
    "wildcard-certificate-name": Check(
        get("get https://abc.example.test:{https}/ resolve=abc.example.test:{https}:127.0.0.1 "
            "cacert={w}/wild.pem"),
        lambda a: a.startswith("rc=0 ") and "http=200" in a,
        lambda a: a.startswith("rc=60 "),
        "a certificate for a*.example.test and the host abc.example.test: accepted before, "
        "refused after (a wildcard is a whole label)"),
    "telnet-non-ascii-option": Check(
        get("get telnet://127.0.0.1:{telnet} user=\xe9ve:pw"),
        lambda a: a.startswith("rc=0 "),
        lambda a: a.startswith("rc=43 "),
        "a telnet user name with a non-ASCII byte: sent in the USER option before, refused "
        "after"),
    "chunked-trailer-leak": Check(
        get("leak 150 get http://127.0.0.1:{http}/trailer"),
        lambda a: (grew(a) or 0) > 150,
        lambda a: grew(a) is not None and grew(a) < 80,
        "chunked responses with a trailer on one connection: about 270 bytes leaked per "
        "transfer before, none after"),
    "imap-redirect-bearer": Check(
        get("get http://127.0.0.1:{http}/imapredir follow=1 redirprotocols=http,imap "
            "bearer=SECRET-TOKEN"),
        lambda a: a.startswith("rc=0 ") and "authenticated-with-OAUTHBEARER" in a,
        lambda a: a.startswith("rc=67 ") and "OAUTHBEARER" not in a,
        "a redirect to imap://user:secret@... with only bearer authentication allowed, the "
        "IMAP server offering OAUTHBEARER: the token sent to it before, no login (the "
        "token withheld) after"),
    "https-unix-socket": Check(
        get("get https://localhost/ unix={sock} insecure=1"),
        lambda a: a.startswith("rc=7 "),
        lambda a: a.startswith("rc=0 ") and "http=200" in a,
        "HTTPS over a unix domain socket: a TCP connection to localhost:443 tried (and "
        "failed) before, the socket used after"),
}
