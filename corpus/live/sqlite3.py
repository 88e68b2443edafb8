"""sqlite3: one driver process (sqlite3/sqldrv.c, linked to the tree's libsqlite3.so) holds
one in-memory database and answers a line of SQL, or `.changeset HEX` (the sessions
extension iterating a changeset), with one line."""
from pathlib import Path

from common import Check, Driver

HERE = Path(__file__).resolve().parent / "sqlite3"


class Context(Driver):
    def start(self):
        t = self.tree
        exe = self.cc(HERE / "sqldrv.c", self.work / "sqldrv", "-DSQLITE_ENABLE_SESSION",
                      "-DSQLITE_ENABLE_PREUPDATE_HOOK", f"-I{t}", f"-I{t / 'ext/session'}",
                      t / ".libs/libsqlite3.so", f"-Wl,-rpath,{t / '.libs'}")
        self.start_driver([exe])


def ask(line):
    return lambda ctx: ctx.ask(line)


# 41 (the NOT NULL/IS NULL optimization): a column tested IS NOT NULL by a CHECK, whose value
# lies on an overflow page; the UPDATE rewrites the row with what OP_Column read for the test
# only (its type, not its content).
NOTNULL = ("DROP TABLE IF EXISTS t; CREATE TABLE t(a, b, CHECK(b IS NOT NULL AND a>0)); "
           "INSERT INTO t VALUES(1, printf('%.*c', 5000, 'x')); UPDATE t SET a=2; "
           "SELECT a, length(b), b = printf('%.*c', 5000, 'x'), hex(substr(b, 1, 8)) FROM t;")

CHECKS = {
    # CVE-2023-7104: an INSERT change whose INTEGER value has 3 of its 8 bytes.
    "changeset-overread": Check(
        ask(".changeset 540101740012000101020304"),
        lambda a: a.startswith("op=18 table=t new[0]=") and a.endswith("next rc=101 (no more rows available)"),
        lambda a: a == "next rc=11 (database disk image is malformed)",
        "a changeset whose integer is cut short: read past the buffer before, "
        "`database disk image is malformed` after"),
    "notnull-overflow": Check(
        ask(NOTNULL),
        lambda a: a.startswith("2|") and not a.startswith("2|5000|1|"),
        lambda a: a == "2|5000|1|7878787878787878",
        "UPDATE of a row whose overflowing column a CHECK tests with IS NOT NULL: the "
        "column corrupted before, intact after"),
    # test/windowE.test 2.1 of the fix.
    "window-self-reference": Check(
        ask("CREATE TABLE IF NOT EXISTS t1(x); SELECT min(x) OVER w1 FROM t1 "
            "WINDOW w1 AS (PARTITION BY x_count(x) OVER w1);"),
        lambda a: a.startswith("CRASH signal"),
        lambda a: a == "Error: x_count() may not be used as a window function",
        "a window whose PARTITION BY uses itself: unbounded recursion kills the process "
        "before, an error after"),
}
