"""c-ares: a driver (c-ares/driver.c) linked to the tree's libcares.so answers one command
per line, each in a forked child of the patched process: sortlists for
ares_set_sortlist, and a query to a fake DNS server (a thread of the driver on 127.0.0.1)
that sends an empty datagram before its answer."""
from common import Check, Driver
from common import ask as cmd


class Context(Driver):
    def start(self):
        lib = self.tree / "src/lib/.libs"
        exe = self.cc(self.root / "corpus/live/c-ares/driver.c", self.work / "driver",
                      f"-I{self.tree}/include", f"-L{lib}", f"-Wl,-rpath,{lib}",
                      "-lcares", "-lpthread")
        self.start_driver([exe])


CHECKS = {
    "sortlist-overflow": Check(cmd("sortlist 111.11.11.11111111111111111111111111111/8"),
                               lambda a: a == "CRASH signal 6",
                               lambda a: a.startswith("Misformatted string"),
                               "a sortlist address of 39 characters: the copy into a 16-byte "
                               "buffer aborts (fortify) before, `Misformatted string` after"),
    "sortlist-ipv6-prefix": Check(cmd("sortlist 1:2::3:4/32"),
                                  lambda a: a == "Successful completion entries: 3:4::/32",
                                  lambda a: a == "Successful completion entries: 1:2::/32",
                                  "the IPv6 sortlist entry 1:2::3:4/32: the `::` expanded "
                                  "below the stack buffer, network 3:4:: before, 1:2:: after"),
    "udp-zero-length": Check(cmd("udp0 test.example"),
                             lambda a: a.startswith("status=Could not contact DNS servers"),
                             lambda a: a == "status=Successful completion addr=10.1.2.3",
                             "an empty UDP datagram before the answer: the server dropped "
                             "before, the answer read after"),
}
