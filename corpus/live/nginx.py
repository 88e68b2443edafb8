"""nginx: a master and two workers of objs/nginx (`daemon off`), with one http server,
an IMAP and an SMTP server (mail, built statically), and the Python upstreams of
nginx/backends.py (one process). Every pid is patched: the master (whose later workers
inherit the patch) and each worker. A request that kills a worker answers
"CRASH signal N" (from the master's `exited on signal N` line); the master starts a
new worker, which becomes the one to patch."""
import base64
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from common import Check, Process, free_ports

HERE = Path(__file__).resolve().parent / "nginx"
WORKERS = 2

CONF = """\
user root;
worker_processes {workers};
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log info;
worker_rlimit_core 0;
working_directory {work};
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    include {tree}/conf/win-utf;
    server {{
        listen 127.0.0.1:{http};
        large_client_header_buffers 4 4m;
        # CVE-2026-42945: a rewrite with arguments, then $1 escaped and cut short.
        location /r42945/ {{
            rewrite ^(.*) /new?c=1;
            set $myvar $1;
            return 200 "myvar=$myvar\\n";
        }}
        # CVE-2026-9256: overlapping captures overflow the redirect's buffer.
        location /r9256/ {{
            rewrite ^/r9256/((.*))$ http://127.0.0.1:8080/$1$2 redirect;
            return 200 foo;
        }}
        # CVE-2026-27654: COPY/MOVE with alias and a Destination shorter than the location.
        location /dav/ {{
            alias {davlink}/;
            dav_methods PUT DELETE MKCOL COPY MOVE;
        }}
        # CVE-2026-42934, CVE-2026-48142: utf-8 to windows-1251 over 1-byte buffers.
        location /cs/ {{
            proxy_pass http://127.0.0.1:{bytes};
            proxy_buffering off;
            charset windows-1251;
            source_charset utf-8;
            override_charset on;
        }}
        # CVE-2026-42946: a first line that is no status line, split across two reads.
        location /p42946/ {{
            proxy_pass http://127.0.0.1:{split};
            proxy_http_version 1.0;
        }}
        location /s42946/ {{
            scgi_pass 127.0.0.1:{split};
            scgi_param REQUEST_URI $request_uri;
        }}
        # CVE-2026-42055: a header longer than NGX_HTTP_V2_MAX_FIELD to a gRPC upstream
        # (nothing listens there: the request is only built).
        location /g42055/ {{
            grpc_pass grpc://127.0.0.1:{nothing};
        }}
    }}
}}
mail {{
    server_name localhost;
    auth_http 127.0.0.1:{auth}/auth;
    # CVE-2026-27651: CRAM-MD5 again after a refused login.
    imap_auth cram-md5;
    server {{ listen 127.0.0.1:{imap}; protocol imap; }}
    # CVE-2025-53859: a stale login after a malformed AUTH PLAIN goes to auth_http.
    server {{ listen 127.0.0.1:{smtp}; protocol smtp; smtp_auth plain none; xclient off; }}
}}
"""


def children(pid):
    """The pids whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d))
    return sorted(out)


class Context(Process):
    def start(self):
        w = self.work
        (w / "tmp").mkdir(parents=True, exist_ok=True)
        (w / "davroot").mkdir(exist_ok=True)
        (w / "davroot" / "file.txt").write_text("hello dav\n")
        # CVE-2026-27654 writes past the path it builds from the alias: with an alias of
        # 50 bytes or less the wild copy kills the worker at once (longer ones make a
        # garbage path): the alias is a short link to the work directory's davroot.
        self.davlink = Path(tempfile.mkdtemp(prefix="ngx", dir="/tmp")) / "dav"
        self.davlink.symlink_to(w / "davroot")
        names = ["http", "imap", "smtp", "split", "bytes", "auth", "nothing"]
        self.port = dict(zip(names, free_ports(len(names))))
        self.auth_log = w / "auth_http.log"
        self.auth_log.write_bytes(b"")
        b = self.spawn([sys.executable, HERE / "backends.py", self.auth_log,
                        f"split={self.port['split']}", f"bytes={self.port['bytes']}",
                        f"auth={self.port['auth']}"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if "ready" not in b.stdout.readline():
            raise RuntimeError("the backends did not start")
        self.backends = b
        conf = w / "nginx.conf"
        conf.write_text(CONF.format(workers=WORKERS, work=w, tree=self.tree, davlink=self.davlink,
                                     **self.port))
        self.log = w / "error.log"
        self.log.write_bytes(b"")

        def nocore():
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        (w / "nginx.pid").unlink(missing_ok=True)
        self.master = self.spawn([self.tree / "objs/nginx", "-p", f"{w}/", "-c", conf,
                                  "-e", self.log],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 preexec_fn=nocore)
        pidfile = w / "nginx.pid"
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.master.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.master.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-500:]}")
            if pidfile.exists() and pidfile.read_text().strip() and \
                    len(children(self.master.pid)) == WORKERS:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not start its workers")
        if int(pidfile.read_text()) != self.master.pid:
            raise RuntimeError("the pid file names another master")
        self.refresh()

    def refresh(self):
        """self.pids: the master and its workers, once all of them run."""
        deadline = time.time() + 10
        while time.time() < deadline:
            workers = children(self.master.pid)
            if len(workers) == WORKERS:
                self.pids = [self.master.pid] + workers
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx has {len(children(self.master.pid))} workers, "
                           f"not {WORKERS}")

    def apply(self, so):
        self.refresh()
        super().apply(so)

    def disable(self, name):
        self.refresh()
        super().disable(name)

    def stop(self):
        # The workers outlive a master killed with SIGKILL, and a running master starts
        # new ones for those killed: the master is stopped first, then its workers are
        # killed, then the master.
        master = getattr(self, "master", None)
        if master is not None and master.poll() is None:
            try:
                os.kill(master.pid, signal.SIGSTOP)
                for pid in children(master.pid):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        super().stop()
        self.master = None
        link = getattr(self, "davlink", None)
        if link is not None and link.is_symlink():
            link.unlink()
            link.parent.rmdir()

    def asking(self, fn):
        """Run one exchange; "CRASH signal N" when it killed a worker."""
        start = self.log.stat().st_size
        answer = fn()
        deadline = time.time() + (3 if answer in ("", "closed") else 0.3)
        sig = None
        while time.time() < deadline and sig is None:
            with open(self.log, "rb") as f:
                f.seek(start)
                m = re.search(rb"exited on signal (\d+)", f.read())
            sig = m and int(m.group(1))
            time.sleep(0.05)
        self.refresh()
        return f"CRASH signal {sig}" if sig else answer

    def logged(self, since, pattern):
        with open(self.log, "rb") as f:
            f.seek(since)
            return re.search(pattern, f.read()) is not None


def exchange(port, data, timeout=10):
    """Send `data`, read until the server closes; the raw bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def http(ctx, method, path, headers=()):
    """One HTTP/1.0 request: "STATUS body" (or the raw reply when it has no status)."""
    head = f"{method} {path} HTTP/1.0\r\nHost: x\r\n".encode()
    for h in headers:
        head += h + b"\r\n"
    raw = exchange(ctx.port["http"], head + b"\r\n")
    if not raw:
        return ""
    if not raw.startswith(b"HTTP/"):
        return repr(raw)
    status = raw.split(b" ", 2)[1].decode()
    body = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""
    return f"{status} {body.decode('latin-1')}"


def get(path, headers=()):
    return lambda ctx: ctx.asking(lambda: http(ctx, "GET", path, headers))


def raw_get(path):
    """The raw reply's body as nginx passed it through (repr)."""
    def ask(ctx):
        def one():
            raw = exchange(ctx.port["http"], f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            return repr(raw[:60])
        return ctx.asking(one)
    return ask


def charset(hexbody):
    """The body bytes (hex, spaced) nginx makes of a UTF-8 body sent a byte at a time."""
    def ask(ctx):
        def one():
            raw = exchange(ctx.port["http"], f"GET /cs/{hexbody} HTTP/1.0\r\n\r\n".encode())
            if b"\r\n\r\n" not in raw:
                return repr(raw)
            return raw.split(b"\r\n\r\n", 1)[1].hex(" ")
        return ctx.asking(one)
    return ask


def dav_copy(ctx):
    return ctx.asking(lambda: http(ctx, "COPY", "/dav/file.txt", [b"Destination: /d"]))


def grpc_long(ctx):
    since = ctx.log.stat().st_size
    ans = ctx.asking(lambda: http(ctx, "GET", "/g42055/",
                                  [b"X-Big: " + b"a" * 2200000]).split(" ")[0])
    if ctx.logged(since, rb"too long http2 header value"):
        ans += " (too long http2 header value)"
    return ans


def imap_cram(ctx):
    """AUTHENTICATE CRAM-MD5 with "user <hash>" (refused by auth_http), then again with a
    response that has no hash: the last reply, or "closed"."""
    def one():
        s = socket.create_connection(("127.0.0.1", ctx.port["imap"]), timeout=10)
        f = s.makefile("rwb", buffering=0)
        last = f.readline()
        try:
            for tag, resp in ((b"A1", b"user 0123456789abcdef0123456789abcdef"),
                              (b"A2", b"user")):
                f.write(tag + b" AUTHENTICATE CRAM-MD5\r\n")
                last = f.readline()
                if not last:
                    return "closed"
                f.write(base64.b64encode(resp) + b"\r\n")
                last = f.readline()
                if not last:
                    return "closed"
        except (socket.timeout, ConnectionResetError):
            return "closed"
        finally:
            s.close()
        return last.decode("latin-1").strip()
    return ctx.asking(one)


def smtp_login(ctx):
    """AUTH PLAIN with a 200-byte login (refused), a malformed AUTH PLAIN, then MAIL and
    RCPT: the Auth-User nginx sends auth_http for the RCPT."""
    def one():
        start = ctx.auth_log.stat().st_size
        s = socket.create_connection(("127.0.0.1", ctx.port["smtp"]), timeout=10)
        f = s.makefile("rwb", buffering=0)
        try:
            f.readline()
            f.write(b"EHLO x\r\n")
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    break
            for cmd in (b"AUTH PLAIN " + base64.b64encode(b"\0" + b"A" * 200 + b"\0pass"),
                        b"AUTH PLAIN " + base64.b64encode(b"\0x"),
                        b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>"):
                f.write(cmd + b"\r\n")
                if not f.readline():
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        finally:
            s.close()
        with open(ctx.auth_log, "rb") as lf:
            lf.seek(start)
            reqs = lf.read().split(b"----\n")
        users = [m.group(1) for r in reqs
                 for m in [re.search(rb"Auth-User: ([^\r\n]*)", r)] if m]
        if not users:
            return "no auth_http request"
        u = urllib.parse.unquote_to_bytes(users[-1])
        return f"Auth-User: {u[:16]!r}... ({len(u)} bytes)" if len(u) > 16 \
            else f"Auth-User: {u!r}"
    return ctx.asking(one)


A200 = "Auth-User: " + repr(b"A" * 16) + "... (200 bytes)"

CHECKS = {
    "rewrite-capture-escape": Check(
        get("/r42945/a%26b%3Dc%20d%22x"),
        lambda a: a.startswith("200 myvar=/r42945/a%26b"),
        lambda a: a == '200 myvar=/r42945/a&b=c d"x\n',
        "`$1` after a rewrite with arguments: escaped and cut short before, the plain capture after"),
    "rewrite-overlapping-captures": Check(
        get("/r9256/" + "+" * 2000),
        lambda a: a.startswith("CRASH"),
        lambda a: a.startswith("302 "),
        "a redirect built from overlapping captures: the worker aborts (heap overflow) before, 302 after"),
    "dav-short-destination": Check(
        dav_copy,
        lambda a: a.startswith("CRASH") or a.startswith("404 "),
        lambda a: a.startswith("400 "),
        "COPY with alias and `Destination: /d`: a heap overwrite kills the worker before "
        "(or, with a longer alias, makes a garbage path: 404), 400 after"),
    "proxy-split-status": Check(
        raw_get("/p42946/"),
        lambda a: a.startswith("b'xx broken status"),
        lambda a: a.startswith("b'HTTP/1.1 2xx broken status"),
        "an upstream's first line, split and no status line: its first bytes lost before, kept after"),
    "scgi-split-status": Check(
        get("/s42946/headers"),
        lambda a: a.startswith("502 "),
        lambda a: a == "200 body-line\n",
        "an scgi upstream's split first line that is no status line, then headers: parsed in "
        "a status-line state (502) before, as headers (200) after"),
    "charset-utf8-overread": Check(
        charset("41e282ac420a"),
        lambda a: a == "41 88 00 42 0a",
        lambda a: a == "41 88 42 0a",
        "utf-8 to windows-1251 a byte at a time: a NUL read past the buffer before, none after"),
    "charset-utf8-invalid": Check(
        charset("58f0414243440a"),
        lambda a: a == "58 3f 00 00 43 44 0a",
        lambda a: a == "58 3f 43 44 0a",
        "an invalid 4-byte utf-8 sequence a byte at a time: stray NULs before, `?` alone after"),
    "imap-cram-retry": Check(
        imap_cram,
        lambda a: a.startswith("CRASH"),
        lambda a: a.startswith("A2 BAD"),
        "CRAM-MD5 again, without a hash, after a refused login: the worker crashes before, BAD after"),
    "smtp-stale-login": Check(
        smtp_login,
        lambda a: a.startswith("Auth-User: b'x") and "(200 bytes)" in a,
        lambda a: a == A200,
        "a malformed AUTH PLAIN after a refused one: 200 bytes of worker heap go to auth_http "
        "before, the previous login after"),
    "grpc-long-header": Check(
        grpc_long,
        lambda a: a == "502",
        lambda a: a.startswith("500 (too long http2 header value)"),
        "a 2.2 MB header to a gRPC upstream: the oversized request built (502) before, 500 after"),
}
