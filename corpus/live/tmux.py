"""tmux: a private tmux server (`-S` socket in the work directory, `-f /dev/null`) with one
detached session; the server is the process patched. Commands are sent to it with the
tree's tmux client: the server runs them, so the client's own code does not matter."""
import os
import signal
import subprocess
import time
from pathlib import Path

from common import Check, Process


class Context(Process):
    def env(self):
        e = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        e["TERM"] = "xterm"
        return e

    def tmux(self, *args):
        r = subprocess.run([str(self.tree / "tmux"), "-S", str(self.sock), *args],
                           capture_output=True, text=True, env=self.env(), timeout=20)
        return r.returncode, (r.stdout + r.stderr).strip()

    def start(self):
        self.sock = self.work / "tmux.sock"
        # The client forks the server, which daemonizes: it is no child of ours.
        code, out = self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "live",
                              "sleep 100000")
        if code != 0:
            raise RuntimeError(f"tmux new-session: exit {code}: {out}")
        code, pid = self.tmux("display-message", "-p", "#{pid}")
        _, pane = self.tmux("display-message", "-p", "#{pane_pid}")
        if code != 0 or not pid.isdigit():
            raise RuntimeError(f"no tmux server: {pid}")
        self.server, self.pane = int(pid), int(pane) if pane.isdigit() else None
        self.pids = [self.server]

    def alive(self):
        try:
            state = Path(f"/proc/{self.server}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def stop(self):
        for pid in (getattr(self, "server", None), getattr(self, "pane", None)):
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while time.time() < deadline and getattr(self, "server", None) and self.alive():
            time.sleep(0.05)
        super().stop()


def buffers(ctx):
    _, out = ctx.tmux("list-buffers", "-F", "#{buffer_name}=#{buffer_sample}")
    return "[" + " ".join(out.split("\n")) + "]"


def unknown_buffer(ctx):
    """A buffer `keep`, then rename and delete buffers that do not exist."""
    ctx.tmux("set-buffer", "-b", "keep", "precious data")
    code, out = ctx.tmux("set-buffer", "-b", "nosuch2", "-n", "renamed")
    answer = f"rename nosuch2: exit {code} {out} {buffers(ctx)}; "
    code, out = ctx.tmux("delete-buffer", "-b", "nosuchbuffer")
    answer += f"delete nosuchbuffer: exit {code} {out} {buffers(ctx)}"
    ctx.tmux("delete-buffer", "-b", "renamed")
    ctx.tmux("delete-buffer", "-b", "keep")
    return " ".join(answer.split())


CHECKS = {
    "unknown-buffer": Check(
        unknown_buffer,
        lambda a: a == "rename nosuch2: exit 0 [renamed=precious data]; "
                       "delete nosuchbuffer: exit 0 []",
        lambda a: a == "rename nosuch2: exit 1 unknown buffer: nosuch2 [keep=precious data]; "
                       "delete nosuchbuffer: exit 1 unknown buffer: nosuchbuffer "
                       "[keep=precious data]",
        "renaming and deleting a buffer that does not exist: the top buffer renamed, then "
        "deleted, before; `unknown buffer` after"),
}
