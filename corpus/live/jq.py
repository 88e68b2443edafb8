"""jq: one jq process (the executable, linked to the tree's libjq.so) reads a stream of
JSON documents on stdin and answers each with the filter of jq/dispatch.jq, which runs
the probe the document names."""
import json
from common import Check, Driver


class Context(Driver):
    def start(self):
        self.start_driver([self.tree / "jq", "--unbuffered", "-c", "-f",
                           self.root / "corpus/live/jq/dispatch.jq"], ready='{"op":"ping"}')


def probe(doc):
    return lambda ctx: ctx.ask(json.dumps(doc))


CHECKS = {
    "getpath-depth": Check(probe({"op": "getpath", "n": 10001}),
                           lambda a: a == '"ok: null"',
                           lambda a: a == '"error: Path too deep"',
                           "getpath of a 10001-deep path: null before, `Path too deep` after"),
    "merge-depth": Check(probe({"op": "merge", "n": 10001}),
                         lambda a: a == '"ok: merged"',
                         lambda a: a == '"error: Object merge too deep"',
                         "merging 10001-deep objects: merged before, `Object merge too deep` after"),
    "nan-literal": Check(probe({"op": "fromjson", "s": "[1,nan]"}),
                         lambda a: a.startswith('"error: Invalid literal'),
                         lambda a: a == "[1,null]",
                         "`[1,nan]` parsed: an error before, [1,null] after"),
    "implode-surrogates": Check(probe({"op": "implode", "a": [65, 55296, 57343, 1114112]}),
                                lambda a: a == "[65,-1,-1,65533]",
                                lambda a: a == "[65,65533,65533,65533]",
                                "imploding surrogates: invalid UTF-8 before, U+FFFD after"),
    "strindices-kind": Check(probe({"op": "strindices", "a": 123, "b": "x"}),
                             lambda a: a.startswith("CRASH"),
                             lambda a: "cannot be searched" in a,
                             "_strindices on a number: an assertion kills jq before, an error after"),
    "dump-depth": Check(probe({"op": "dump", "n": 300}),
                        lambda a: a == '["<skipped: too deep>"]',
                        lambda a: a == '["<stripped: exceeds max depth>"]',
                        "printing a 300-deep array: the old depth marker before, the new one after"),
}
