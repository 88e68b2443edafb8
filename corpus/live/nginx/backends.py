#!/usr/bin/env python3
"""The upstream servers of the nginx live checks, one thread per connection, in one process.

usage: backends.py AUTH_LOG split=PORT bytes=PORT auth=PORT

split: answers any request with a first line that is no status line, split across two
       writes ("HTTP/1.1 2", a pause, "xx broken status\\r\\n..."; for a path with
       "/headers", the second write is header lines): CVE-2026-42946.
bytes: `GET /<prefix>/<hex>`: an HTTP/1.0 response whose UTF-8 body (the hex bytes) is
       written one byte per send, so that nginx's charset filter gets 1-byte buffers:
       CVE-2026-42934, CVE-2026-48142.
auth:  a mail auth_http server that refuses every login (Auth-Wait: 1, so the client may
       try again) and appends each request it gets to AUTH_LOG: CVE-2026-27651,
       CVE-2025-53859.
Prints "ready" once every port listens; lives until killed (at most an hour).
"""
import os
import socket
import sys
import threading
import time


def read_head(c):
    """The request up to the end of its header (or what came within a short wait)."""
    c.settimeout(1.0)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except OSError:
        pass
    return data


def split(c):
    head = read_head(c)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"HTTP/1.1 2")
    time.sleep(0.3)
    if b"/headers" in head:
        c.sendall(b"X-Rest: headers\r\nContent-Type: text/plain\r\n\r\nbody-line\n")
    else:
        c.sendall(b"xx broken status\r\nContent-Type: text/plain\r\n\r\nbody-line\n")


def onebyte(c):
    head = read_head(c)
    path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
    body = bytes.fromhex(path.rsplit(b"/", 1)[-1].decode())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n")
    time.sleep(0.1)
    for b in body:
        c.sendall(bytes([b]))
        time.sleep(0.1)


LOCK = threading.Lock()


def auth(c, log):
    head = read_head(c)
    with LOCK, open(log, "ab") as f:
        f.write(head + b"----\n")
    c.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\n"
              b"Auth-Wait: 1\r\n\r\n")


def serve(sock, handler, *args):
    while True:
        c, _ = sock.accept()

        def one(c=c):
            try:
                handler(c, *args)
            except OSError:
                pass
            finally:
                c.close()
        threading.Thread(target=one, daemon=True).start()


def main():
    log = sys.argv[1]
    handlers = {"split": (split,), "bytes": (onebyte,), "auth": (auth, log)}
    for spec in sys.argv[2:]:
        name, port = spec.split("=")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port)))
        s.listen(16)
        h = handlers[name]
        threading.Thread(target=serve, args=(s, *h), daemon=True).start()
    print("ready", flush=True)
    time.sleep(3600)
    os._exit(0)


if __name__ == "__main__":
    main()
