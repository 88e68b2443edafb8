#!/usr/bin/env python3
"""The corpus of real published fixes: `rlivepatch build` on each, and a live check.

Reads corpus/projects/*.toml. For each project: fetches its Debian source package (cached
under target/corpus/src), builds the pristine upstream tree with the project's own build
system and Debian's flags (cached under target/corpus/build), then for each fix runs
`rlivepatch build` with the fix's diffs in order and compares the outcome with the
manifest's expectation; where the row has a live check, the patch is applied to a
running process of the project, the input shows the fixed behaviour, and the patch is
disabled again. Writes CORPUS.md (or --output) and prints a summary line.

Usage: scripts/corpus.sh [--only P,Q] [--fix ID,...] [--output FILE|-] [--json FILE]
                         [--no-live] [--keep-going]
Exit status: 0 when every row is as expected, 1 otherwise, 2 for a bad invocation.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "target" / "corpus"


def say(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


def run(cmd, cwd=None, env=None, log=None, check=True, timeout=None):
    """Run a command; its output goes to `log` (a file) when given."""
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                           timeout=timeout, shell=isinstance(cmd, str))
    finally:
        if log:
            out.close()
    if check and r.returncode != 0:
        tail = ""
        if log:
            lines = Path(log).read_text(errors="replace").splitlines()
            tail = "\n".join(lines[-15:])
        raise RuntimeError(f"`{cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))}` "
                           f"failed ({r.returncode})\n{tail}")
    return r.returncode


def tools_env():
    """Debian's build flags, as dpkg-buildflags exports them (hardening as debian/rules
    asks for it in most packages)."""
    env = dict(os.environ)
    env["DEB_BUILD_MAINT_OPTIONS"] = "hardening=+all"
    out = subprocess.run(["dpkg-buildflags", "--export=sh"], env=env, capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
    return env


def ensure_packages(pkgs):
    missing = [p for p in pkgs if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout.strip() != "install ok installed"]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"please install: {' '.join(missing)}")
    say(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                      capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def fetch(name, proj):
    """The pristine upstream tree and the Debian patches of the project (cached)."""
    d = CACHE / "src" / name
    if not (d / ".complete").exists():
        say(f"{name}: fetching the Debian source package {proj['package']} {proj['version']}")
        run([str(ROOT / "scripts" / "fetch-source.sh"), f"{proj['package']}={proj['version']}",
             str(d)])
    return d / "orig", d / "patches"


def recipe_key(name, proj):
    h = hashlib.sha256()
    h.update(json.dumps(proj, sort_keys=True).encode())
    h.update((ROOT / "corpus" / "recipes" / f"{name}.sh").read_bytes())
    return h.hexdigest()[:16]


def build(name, proj, orig):
    """The pristine tree built by the project's own build system (cached by recipe)."""
    d = CACHE / "build" / name
    tree = d / "tree"
    key = recipe_key(name, proj)
    stamp = d / "built"
    if stamp.exists() and stamp.read_text() == key and tree.is_dir():
        return tree
    ensure_packages(proj.get("deps", []))
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    run(["cp", "-a", str(orig), str(tree)])
    log = d / "build.log"
    say(f"{name}: building the pristine tree ({proj['system']}; log in {log})")
    t0 = time.time()
    run(["bash", str(ROOT / "corpus" / "recipes" / f"{name}.sh")], cwd=tree, env=tools_env(),
        log=log)
    for b in proj["binaries"]:
        if not (tree / b).is_file():
            raise RuntimeError(f"{name}: the build made no {b}")
    stamp.write_text(key)
    (d / "seconds").write_text(f"{time.time() - t0:.0f}")
    return tree


def rlivepatch():
    exe = os.environ.get("RLIVEPATCH") or str(ROOT / "target" / "debug" / "rlivepatch")
    if not Path(exe).is_file():
        raise RuntimeError(f"no rlivepatch at {exe}: run `cargo build` first")
    return exe


def build_patch(name, proj, fix, tree, patches):
    """`rlivepatch build` for one row. Returns (outcome dict, patch path or None)."""
    out_dir = CACHE / "out" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    so = out_dir / f"{fix['id']}.so"
    if so.exists():
        so.unlink()
    cmd = [rlivepatch(), "build", "--source", str(tree), "--json", "-o", str(so),
           "--name", fix["id"].lower()]
    for diff in fix["diffs"]:
        p = patches / diff
        if not p.is_file():
            p = ROOT / "corpus" / "diffs" / name / diff
        cmd += ["--diff", str(p)]
    for b in proj["binaries"]:
        cmd += ["--binary", str(tree / b)]
    if "compile_commands" in proj:
        cmd += ["--compile-commands", str(tree / proj["compile_commands"])]
    else:
        cmd += ["--build", proj.get("rebuild", "make -j2")]
    # The rebuild runs in the environment the pristine build ran in.
    env = dict(tools_env(), RLIVEPATCH_CACHE=str(CACHE / "rlivepatch-cache"))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.time() - t0
    try:
        report = json.loads(r.stdout) if r.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    err = report.get("error", {})
    message = err.get("message") or (r.stderr.strip().splitlines() or [""])[-1]
    result = {"code": r.returncode, "seconds": round(secs, 1), "message": message,
              "class": err.get("class"), "functions": [], "stderr": r.stderr[-4000:]}
    if r.returncode == 0:
        result["functions"] = [f["name"] for f in report.get("functions", [])
                               if f.get("kind") == "changed"]
        result["carried"] = [f["name"] for f in report.get("functions", [])]
    return result, (so if r.returncode == 0 else None)


def judge(fix, result):
    """built / refused (as expected, with the reason expected) / wrong / failed."""
    exp = fix["expect"]
    code = result["code"]
    if exp == "built":
        if code == 0:
            return "built"
        if code == 10:
            return "wrongly refused"
        return "failed"
    want = exp.split(":", 1)[1].strip() if ":" in exp else ""
    # A diff that does not compile in this build of the project (a Debian patch written
    # for Debian's configuration): the build stops with the compiler's error (exit 11).
    if want == "compile":
        return "correctly refused" if code == 11 else ("wrongly built" if code == 0
                                                        else "failed")
    if code == 10:
        return "correctly refused" if (not want or result.get("class") == want) \
            else "wrongly refused"
    if code == 0:
        return "wrongly built"
    return "failed"


def live_context(name, fix, tree):
    """The project's live module and a fresh context for `fix`, or None without one."""
    path = ROOT / "corpus" / "live" / f"{name}.py"
    if not path.exists():
        return None, None
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"live_{name.replace('-', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    work = CACHE / "live" / name / fix["id"]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return mod, mod.Context(tree=tree, work=work, rlivepatch=rlivepatch(), root=ROOT)


def applies_check(name, fix, tree, so):
    """For a built fix without an input that shows its bug: the patch applied to a running
    process of the project and disabled again, the process alive throughout. Returns a
    short text and whether it passed, or None when the project has no live module."""
    mod, ctx = live_context(name, fix, tree)
    if ctx is None:
        return None
    try:
        ctx.start()
        other = other_program(so, ctx.pids)
        if other:
            return f"not applied: {other}", True
        ctx.apply(so)
        if not ctx.alive():
            return "the process died once patched", False
        ctx.disable(fix["id"].lower())
        if not ctx.alive():
            return "the process died once the patch was disabled", False
        return ("applied to a running process and disabled (no input shows the bug here)"
                + bound(ctx)), True
    except Exception as e:  # noqa: BLE001 - the row says what went wrong
        return f"{type(e).__name__}: {e}", False
    finally:
        ctx.stop()


def other_program(so, pids):
    """Why the patch is for another program than the live processes run (a fix in a tool
    that runs once per input, such as tiffcp, while the live process is the project's
    driver of its library), or None."""
    info = json.loads(subprocess.run([rlivepatch(), "info", str(so), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    want = {b["build_id"] for b in info.get("build_ids", []) if b["object"] == "main"}
    if not want:
        return None
    for pid in pids:
        exe = os.readlink(f"/proc/{pid}/exe")
        out = subprocess.run([rlivepatch(), "build-id", exe], capture_output=True,
                             text=True).stdout
        got = re.findall(r"[0-9a-f]{16,}", out)
        if not want.intersection(got):
            funcs = ", ".join(sorted({f["new"] for f in info.get("functions", [])}))
            return (f"the fix ({funcs}) is in another program than the project's live "
                    f"process ({Path(exe).name}), one that does not keep running")
    return None


def live_check(name, proj, fix, tree, so):
    """Apply the patch to a running process of the project, show the fixed behaviour,
    disable it. Returns a short text, and whether it passed."""
    mod, ctx = live_context(name, fix, tree)
    check = mod.CHECKS[fix["live"]]
    try:
        ctx.start()
        before = check.ask(ctx)
        if not check.before(before):
            return f"before the patch: {before!r} (not the bug)", False
        crashed = not ctx.alive()
        if crashed:
            # The bug killed it: the patch goes into a fresh process.
            ctx.stop()
            ctx.start()
        ctx.apply(so)
        after = check.ask(ctx)
        if not check.after(after) or not ctx.alive():
            return f"patched: {after!r}", False
        ctx.disable(fix["id"].lower())
        if not crashed:
            again = check.ask(ctx)
            if not check.before(again):
                return f"disabled: {again!r}", False
        return check.text + bound(ctx), True
    except Exception as e:  # noqa: BLE001 - the row says what went wrong
        return f"{type(e).__name__}: {e}", False
    finally:
        ctx.stop()


def bound(ctx):
    """How the patch reached the process's code and data, as its apply said."""
    b = getattr(ctx, "bound", None)
    return f"; {b}" if b else ""


def load():
    """The projects and fixes of corpus/projects/*.toml, one file per project: a
    [project] table and [[fixes]] rows."""
    projects, fixes = {}, []
    for f in sorted((ROOT / "corpus" / "projects").glob("*.toml")):
        d = tomllib.loads(f.read_text())
        name = f.stem
        projects[name] = d["project"]
        for fx in d.get("fixes", []):
            fixes.append(dict(fx, project=name))
    return projects, fixes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="projects, comma-separated")
    ap.add_argument("--fix", help="fix ids, comma-separated")
    ap.add_argument("--output", default=str(ROOT / "CORPUS.md"))
    ap.add_argument("--json")
    ap.add_argument("--no-live", action="store_true")
    a = ap.parse_args()
    projects, all_fixes = load()
    manifest = {"fixes": all_fixes}
    only = a.only.split(",") if a.only else list(projects)
    for p in only:
        if p not in projects:
            print(f"corpus: no project {p} in corpus/projects/", file=sys.stderr)
            return 2
    fixes = [f for f in manifest["fixes"] if f["project"] in only
             and (not a.fix or f["id"] in a.fix.split(","))]
    rows = []
    for name in only:
        proj = projects[name]
        mine = [f for f in fixes if f["project"] == name]
        if not mine:
            continue
        try:
            orig, patches = fetch(name, proj)
            tree = build(name, proj, orig)
        except Exception as e:  # noqa: BLE001
            for f in mine:
                rows.append({"fix": f, "project": name, "verdict": "failed",
                             "result": {"message": f"project: {e}".splitlines()[0],
                                        "seconds": 0, "functions": []},
                             "live": None})
            say(f"{name}: {e}")
            continue
        for f in mine:
            say(f"{name} {f['id']}: rlivepatch build")
            result, so = build_patch(name, proj, f, tree, patches)
            verdict = judge(f, result)
            live = None
            if so and f.get("live") and not a.no_live:
                say(f"{name} {f['id']}: live check {f['live']}")
                text, ok = live_check(name, proj, f, tree, so)
                live = {"text": text, "ok": ok}
                if not ok:
                    verdict = "failed"
            elif so and not a.no_live and f.get("applies", True):
                done = applies_check(name, f, tree, so)
                if done is not None:
                    say(f"{name} {f['id']}: {done[0]}")
                    live = {"text": done[0], "ok": done[1], "applies_only": True}
                    if not done[1]:
                        verdict = "failed"
            rows.append({"fix": f, "project": name, "verdict": verdict, "result": result,
                         "live": live})
            say(f"{name} {f['id']}: {verdict} ({result['seconds']} s)"
                + (f"; live: {live['text']}" if live else "")
                + ("" if verdict in ("built", "correctly refused") else
                   f": {result['message']}"))
    write(rows, projects, a.output)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    bad = [r for r in rows if r["verdict"] not in ("built", "correctly refused")]
    return 1 if bad else 0


def commit():
    """The commit of the rlivepatch tree that ran, and whether it had local changes."""
    try:
        c = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, check=True).stdout.strip()
        return f"`{c}`"
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"


def write(rows, projects, output):
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    code_only = [r for r in rows if r["fix"]["expect"] == "built"]
    built = [r for r in code_only if r["verdict"] == "built"]
    lines = [
        "# The corpus: `rlivepatch build` on real published fixes",
        "",
        "Each row is a fix Debian ships for a bookworm package, built with `rlivepatch build`",
        "against the pristine upstream release built by the project's own build system with",
        "Debian's flags (`dpkg-buildflags`, PIE). `scripts/corpus.sh` fetches, builds and runs",
        "everything and writes this file; `corpus/projects/*.toml` list the fixes, their diffs",
        "in order and the expected outcome; `corpus/recipes/` the builds, `corpus/live/` the",
        "live checks (the patch applied to a running process, an input from the fix's",
        "regression test or advisory showing the fixed behaviour, then disabled).",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{os.cpu_count()} CPUs, rlivepatch at {commit()}.",
        "",
        "| project | version | fix | diffs | expected | outcome | functions changed | build s | live check |",
        "|---|---|---|---|---|---|---|---:|---|",
    ]
    for r in rows:
        f, res, p = r["fix"], r["result"], projects[r["project"]]
        outcome = r["verdict"]
        if outcome not in ("built",):
            outcome += ": " + res["message"].replace("|", "\\|")[:300]
        funcs = ", ".join(res.get("functions", []))[:200]
        live = "" if not r["live"] else (("yes: " if r["live"]["ok"] else "FAILED: ")
                                         + r["live"]["text"].replace("|", "\\|"))
        if r["live"] and r["live"].get("applies_only") and r["live"]["ok"]:
            done = r["live"]["text"]
            live = (done if done.startswith("not applied")
                    else "applies and disables in a running process") + (
                f"; {f['note']}" if f.get("note") else "")
        elif not live and f.get("note"):
            live = f["note"]
        lines.append(f"| {r['project']} | {p['version']} | {f['id']} | "
                     f"{', '.join(f['diffs'])} | {f['expect']} | {outcome} | {funcs} | "
                     f"{res['seconds']} | {live} |")
    n_projects = len({r["project"] for r in rows})
    lines += [
        "",
        f"**{len(rows)} fixes from {n_projects} projects: {counts.get('built', 0)} built, "
        f"{counts.get('correctly refused', 0)} correctly refused, "
        f"{counts.get('wrongly refused', 0) + counts.get('wrongly built', 0)} wrongly refused "
        f"or built, {counts.get('failed', 0)} failed.** Of the {len(code_only)} fixes that change "
        f"only code, {len(built)} built "
        f"({100 * len(built) // max(1, len(code_only))}%).",
        "",
    ]
    text = "\n".join(lines)
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
    say(lines[-2].replace("**", ""))


if __name__ == "__main__":
    sys.exit(main())
