#!/usr/bin/env python3
"""Local servers for the curl live checks, on 127.0.0.1 and a unix socket only.

usage: servers.py DIR http=P http2=P proxy=P socks=P telnet=P https=P imap=P unix=PATH
  http, http2  HTTP/1.1: /redir -> 302 to http://127.0.0.1:<http2>/echo
                         /imapredir -> 302 to imap://user:secret@127.0.0.1:<imap>/INBOX
                         /echo -> the request's headers as the body
                         /cookie -> a cookie for the public suffix CO.UK, and a plain one
                         /trailer -> a chunked body with a trailer
                         anything else -> "hello"
  proxy        HTTP proxy: CONNECT tunnels
  socks, telnet  sinks: read what the client sends, close after 2 s / 1 s
  https, unix  the HTTP handler over TLS with DIR/wild.pem and DIR/wild.key
  imap         IMAP offering AUTH=OAUTHBEARER and AUTH=PLAIN (SASL-IR), accepting any
               login; a LIST answers with the mechanism the client authenticated with
Prints "ready" when all listen; runs until killed.
"""
import http.server
import os
import select
import socket
import socketserver
import ssl
import sys
import threading
import time

ARGS = dict(a.split("=", 1) for a in sys.argv[2:])
DIR = sys.argv[1]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, body, extra=()):
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/redir"):
            self.send(302, b"moved\n", [("Location", f"http://127.0.0.1:{ARGS['http2']}/echo")])
        elif self.path.startswith("/imapredir"):
            self.send(302, b"moved\n", [("Location", f"imap://user:secret@127.0.0.1:{ARGS['imap']}/INBOX")])
        elif self.path.startswith("/echo"):
            self.send(200, str(self.headers).encode())
        elif self.path.startswith("/cookie"):
            self.send(200, b"cookie set\n", [("Set-Cookie", "super=1; domain=CO.UK; path=/"),
                                             ("Set-Cookie", "normal=1; path=/")])
        elif self.path.startswith("/trailer"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-T")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\nX-T: " + b"x" * 200 + b"\r\n\r\n")
        else:
            self.send(200, b"hello\n")

    do_HEAD = do_GET


class TS(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class US(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class UH(H):
    def address_string(self):
        return "unix"


def pipe(a, b):
    try:
        while True:
            r, _, _ = select.select([a, b], [], [], 30)
            if not r:
                return
            for s in r:
                d = s.recv(65536)
                if not d:
                    return
                (b if s is a else a).sendall(d)
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def proxy_client(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            c.close()
            return
        while f.readline() not in (b"\r\n", b"\n", b""):
            pass
        req = line.decode().strip()
        if req.startswith("CONNECT"):
            host, port = req.split()[1].rsplit(":", 1)
            u = socket.create_connection((host, int(port)))
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            pipe(c, u)
            return
        body = b"via proxy\n"
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    return s


def serve(s, one):
    while True:
        c, _ = s.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def sink(hold):
    def one(c):
        c.settimeout(hold)
        try:
            while c.recv(4096):
                pass
        except (socket.timeout, OSError):
            pass
        c.close()
    return one


def imap(c):
    """One IMAP client: the mechanism of its AUTHENTICATE goes into the LIST answer."""
    f = c.makefile("rwb", buffering=0)
    mech = "none"
    try:
        f.write(b"* OK IMAP ready\r\n")
        while True:
            line = f.readline()
            if not line:
                break
            words = line.decode("latin-1").strip().split(" ")
            tag, cmd = words[0], (words[1].upper() if len(words) > 1 else "")
            if cmd == "CAPABILITY":
                f.write(b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=OAUTHBEARER AUTH=PLAIN\r\n")
            elif cmd == "AUTHENTICATE":
                mech = words[2].upper() if len(words) > 2 else "?"
                if len(words) < 4:  # no initial response: ask for it
                    f.write(b"+ \r\n")
                    f.readline()
            elif cmd == "LIST":
                f.write(f'* LIST () "/" "authenticated-with-{mech}"\r\n'.encode())
            elif cmd == "SELECT":
                f.write(b"* FLAGS ()\r\n* 0 EXISTS\r\n")
            elif cmd == "LOGOUT":
                f.write(b"* BYE\r\n" + tag.encode() + b" OK bye\r\n")
                break
            f.write(tag.encode() + b" OK done\r\n")
    except OSError:
        pass
    finally:
        c.close()


def main():
    for p in ("http", "http2"):
        srv = TS(("127.0.0.1", int(ARGS[p])), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(DIR, "wild.pem"), os.path.join(DIR, "wild.key"))
    tls = TS(("127.0.0.1", int(ARGS["https"])), H)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    if os.path.exists(ARGS["unix"]):
        os.unlink(ARGS["unix"])
    us = US(ARGS["unix"], UH)
    us.server_address = ("unix", 0)
    us.socket = ctx.wrap_socket(us.socket, server_side=True)
    threading.Thread(target=us.serve_forever, daemon=True).start()
    for name, one in (("proxy", proxy_client), ("socks", sink(2)), ("telnet", sink(1)),
                      ("imap", imap)):
        threading.Thread(target=serve, args=(listener(int(ARGS[name])), one),
                         daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
