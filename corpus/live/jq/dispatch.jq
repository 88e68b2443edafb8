# One long-running jq process applies this filter to every JSON document on stdin
# (jq --unbuffered -c -f dispatch.jq); each document names a probe.
def nest_obj(n): reduce range(n) as $_ ({}; {a: .});
def nest_arr(n): reduce range(n) as $_ (0; [.]);
if .op == "ping" then "ready"
elif .op == "getpath" then .n as $n | null | try (getpath([range($n) | 0]) | "ok: \(.)") catch "error: \(.)"   # CVE-2026-33947
elif .op == "setpath" then .n as $n | null | try (setpath([range($n) | 0]; 1) | "ok") catch "error: \(.)"   # CVE-2026-33947
elif .op == "delpaths" then .n as $n | null | try (delpaths([[range($n) | 0]]) | "ok: \(.)") catch "error: \(.)" # CVE-2026-33947
elif .op == "merge" then nest_obj(.n) as $x | try ($x * $x | "ok: merged") catch "error: \(.)"                # CVE-2026-43896
elif .op == "fromjson" then try (.s | fromjson | if isnan then "NaN" else . end) catch "error: \(.)"        # CVE-2026-54679-3
elif .op == "implode" then try (.a | implode | explode) catch "error: \(.)"                                  # CVE-2026-54679-1
elif .op == "dump" then nest_arr(.n) | tojson | [scan("<[a-z][^>]*>")] | unique                        # stack-exhaustion.patch: printer depth marker
elif .op == "equal" then nest_arr(.n) as $x | try ($x == $x | "ok: \(.)") catch "error: \(.)"                # CVE-2026-47770
elif .op == "strindices" then .b as $b | try (.a | _strindices($b)) catch "error: \(.)"                             # CVE-2026-39956 (pristine: assert abort)
else "unknown op" end
