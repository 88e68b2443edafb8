"""libssh: a driver (libssh/driver.c) linked to the tree's libssh.so answers one command
per line, each in a forked child of the patched process: host names for
ssh_options_set, the legacy private-key loader, the SFTP server's handle lookup."""
from common import Check, Driver
from common import ask as cmd


class Context(Driver):
    def start(self):
        b = self.tree / "build"
        exe = self.cc(self.root / "corpus/live/libssh/driver.c", self.work / "driver",
                      "-Wno-deprecated-declarations", f"-I{self.tree}/include",
                      f"-I{b}/include", f"-L{b}/lib", f"-Wl,-rpath,{b}/lib", "-lssh")
        self.start_driver([exe])


CHECKS = {
    "ipv6-host": Check(cmd("host bob@fe80::1"),
                       lambda a: a.startswith("rc=-1 host=(null)"),
                       lambda a: a == "rc=0 host=fe80::1 user=bob",
                       "`bob@fe80::1` as the host: refused before, host fe80::1 user bob after"),
    "privkey-missing": Check(cmd("privkey /nonexistent/id_rsa"),
                             lambda a: a == "returned a key" or a.startswith("CRASH"),
                             lambda a: a == "NULL",
                             "the legacy loader on a missing key file: a key made of an "
                             "uninitialised pointer before, NULL after"),
    "sftp-handle-256": Check(cmd("sftphandle 256"),
                             lambda a: a == "slot 256",
                             lambda a: a == "NULL",
                             "SFTP handle 256: the slot past the 256-entry table before, "
                             "no handle after"),
}
