"""expat: fixtures/xml-server.c, four threads parsing without a pause, answering commands
on stdin (the library patched under load)."""
from common import Check, Driver


class Context(Driver):
    def start(self):
        exe = self.cc(self.root / "fixtures/xml-server.c", self.work / "xml-server",
                      "-I", self.tree / "expat/lib", "-I", self.tree / "build",
                      "-L", self.tree / "build", "-lexpat", "-lpthread",
                      f"-Wl,-rpath,{self.tree / 'build'}")
        self.start_driver([exe])


def neg(ctx):
    """The answer to the exploit's call, and whether every parse of the workers so far
    succeeded."""
    answer = ctx.ask("neg")
    failed = ctx.ask("stats").split()[-1]
    return f"{answer}; failed {failed}"


CHECKS = {
    "negative-length": Check(
        neg,
        lambda a: a == "neg status 1 error 0; failed 0",
        lambda a: a == "neg status 0 error 41; failed 0",
        "XML_ParseBuffer with a negative length: accepted before, XML_ERROR_INVALID_ARGUMENT "
        "after; four threads parse meanwhile, none fails",
    ),
}
