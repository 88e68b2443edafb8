"""What every live check of the corpus shares: a long-running process of the project,
started from the pristine build, that answers one input at a time; rlivepatch applied to
it and disabled again; everything it started killed by pid.

An answer of "CRASH signal N" says the input killed the process: the runner then starts a
fresh one to apply the patch to, and does not ask again once the patch is disabled.

A project's module (corpus/live/PROJECT.py) defines `Context`, a subclass of `Process`
(or `Driver`) that starts the process, and `CHECKS`, a dict from a check's name to a
`Check`: how to ask (a function of the context returning the answer as text), what the
answer is before the fix, and after it.
"""
import os
import select
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def free_ports(n):
    """`n` TCP ports on 127.0.0.1 that nothing listens on now (bound together, so that
    they differ, then released for the servers of a check)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ask(line, timeout=30):
    """A check's input: `line` sent to the driver, `{w}` standing for the work
    directory."""
    return lambda ctx: ctx.ask(line.replace("{w}", str(ctx.work)), timeout=timeout)


@dataclass
class Check:
    """One live check: `ask(ctx)` returns the process's answer to the fix's input;
    `before` and `after` tell the unfixed and the fixed answer apart."""
    ask: Callable
    before: Callable[[str], bool]
    after: Callable[[str], bool]
    text: str


class Process:
    """A process of the project under test, and rlivepatch on it."""

    def __init__(self, tree: Path, work: Path, rlivepatch: str, root: Path):
        self.tree, self.work, self.rlp, self.root = Path(tree), Path(work), rlivepatch, root
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []

    def start(self):
        raise NotImplementedError

    def spawn(self, args, **kw) -> subprocess.Popen:
        p = subprocess.Popen([str(a) for a in args], **kw)
        self.procs.append(p)
        return p

    def rlivepatch(self, *args):
        r = subprocess.run([self.rlp, *map(str, args)], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"rlivepatch {' '.join(map(str, args))}: exit {r.returncode}: "
                               f"{r.stderr.strip().splitlines()[-1:]}")
        return r.stdout

    def apply(self, so: Path):
        sel = [x for p in self.pids for x in ("--pid", p)]
        if len(self.pids) == 1:
            out = self.rlivepatch("apply", self.pids[0], so)
        else:
            out = self.rlivepatch("apply", *sel, so)
        # How the patch's code reaches the process (its summary line, single process).
        self.bound = next((l.strip() for l in out.splitlines()
                           if "data accesses:" in l or "calls into the process:" in l), None)

    def disable(self, name: str):
        if len(self.pids) == 1:
            self.rlivepatch("disable", self.pids[0], name)
        else:
            self.rlivepatch("disable", *[x for p in self.pids for x in ("--pid", p)], name)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []
        self.pids = []

    def cc(self, src: Path, out: Path, *args) -> Path:
        """Compile a driver (C) against the tree."""
        # corpus/live/driver.h: what the drivers share.
        here = Path(__file__).resolve().parent
        cmd = ["cc", "-O2", "-g", f"-I{here}", "-o", str(out), str(src), *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)}: {r.stderr[-500:]}")
        return out


class Driver(Process):
    """A driver that reads one request per line on stdin and answers one line on
    stdout: `ask(line)`. Its first line is "ready"."""

    def start_driver(self, args, env=None, ready=None):
        """Start the driver; it is ready when it prints "ready" first, or (`ready`) when
        it answers that request with "ready"."""
        p = self.spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        self.pids = [p.pid]
        self.driver = p
        first = self.ask(ready) if ready else self.read_line(p, 30)
        if "ready" not in first:
            raise RuntimeError(f"the driver said {first!r}, not ready")

    @staticmethod
    def read_line(p, timeout) -> str:
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no answer from the driver")
            r, _, _ = select.select([p.stdout], [], [], left)
            if r:
                line = p.stdout.readline()
                if line == "":
                    # The input killed it (the bug a fix is for, often): say how.
                    code = p.wait(timeout=10)
                    return f"CRASH signal {-code}" if code < 0 else f"EXIT {code}"
                return line.rstrip("\n")

    def ask(self, request: str, timeout=30) -> str:
        self.driver.stdin.write(request + "\n")
        self.driver.stdin.flush()
        return self.read_line(self.driver, timeout)
