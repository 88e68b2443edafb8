"""Lua: the interpreter runs a loop that compiles and runs one chunk per line."""
from common import Check, Driver


class Context(Driver):
    def start(self):
        self.start_driver([self.tree / "src/lua", self.root / "corpus/live/lua5.4/repl.lua"])


CHECKS = {
    "const-env": Check(
        lambda ctx: ctx.ask("local _ENV <const> = 42; local y = x"),
        lambda a: "needs too many registers" in a,
        lambda a: "attempt to index a number value" in a,
        "`local _ENV <const> = 42; local y = x` is miscompiled before, and raises the right "
        "error after",
    ),
}
