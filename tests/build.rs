//! `rlivepatch build`: patches made from a source diff of fixtures/project (a PIE program,
//! the same program without PIE, a shared library, built by make in separate compile
//! and link steps), applied to the programs running, checked from their output; and the
//! refusals, each with its reason and nothing written.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// A copy of the project for one test, built with `make` (and `make_args`): the tree and
/// its binaries, as an operator has them.
fn project(name: &str, make_args: &[&str]) -> PathBuf {
    require_tool("make");
    require_tool("patch");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("project-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(root().join("fixtures/project")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let st = Command::new("make")
        .args(make_args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "make in {}", dir.display());
    dir
}

fn diff(name: &str) -> String {
    root()
        .join(format!("fixtures/project/diffs/{name}.diff"))
        .display()
        .to_string()
}

/// `rlivepatch build` with a cache of the test's own; returns (code, stdout, stderr).
fn build(src: &Path, args: &[&str]) -> (i32, String, String) {
    let cache = src.with_extension("cache");
    let o = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .arg("build")
        .arg("--source")
        .arg(src)
        .args(args)
        .env("RLIVEPATCH_CACHE", &cache)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Build and require success; returns the JSON report.
fn build_ok(src: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = build(src, &a);
    assert_eq!(code, 0, "build {args:?} failed: {err}");
    json(&out)
}

/// A patch built in `src` from the fixture diffs `diffs` for `binary` (a file of
/// `src`), into `src`.so; returns it and the JSON report.
fn made(src: &Path, diffs: &[&str], binary: &str) -> (PathBuf, serde_json::Value) {
    made_with(src, diffs, binary, &[])
}

/// [`made`] with more options of `rlivepatch build`.
fn made_with(
    src: &Path,
    diffs: &[&str],
    binary: &str,
    extra: &[&str],
) -> (PathBuf, serde_json::Value) {
    let out = src.with_extension("so");
    let bin = src.join(binary).display().to_string();
    let ds: Vec<String> = diffs.iter().map(|d| diff(d)).collect();
    let mut args: Vec<&str> = Vec::new();
    for d in &ds {
        args.extend(["--diff", d.as_str()]);
    }
    args.extend(["--binary", &bin, "-o", out.to_str().unwrap()]);
    args.extend(extra);
    let report = build_ok(src, &args);
    (out, report)
}

/// The reason the report gives for function `name`.
fn why(report: &serde_json::Value, name: &str) -> String {
    report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report}"))["why"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Ask the program and return its answer.
fn ask(t: &mut Target, cmd: &str) -> String {
    t.send(cmd);
    let head = format!("{} ", cmd.split_whitespace().next().unwrap());
    t.wait_line(|l| l.starts_with(&head), T)
}

/// Names, sizes and modification times of the files of `dir`.
fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_fix_becomes_a_patch_the_running_program_runs() {
    let src = project("fix", &[]);
    let before = listing(&src);
    let (out, report) = made(&src, &["handle"], "app");
    assert_eq!(why(&report, "handle"), "the diff changed it");
    // Without --name, the patch is named after its file (-o project-fix.so), which is
    // what an operator types to disable it; not after the diff.
    assert_eq!(report["name"], "project-fix", "{report}");
    assert_eq!(listing(&src), before, "the source tree was modified");
    let info = rlp_ok(&["info", out.to_str().unwrap()]);
    assert!(info.contains("handle"), "{info}");

    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = 0");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    // The fix; the program's own data (a PIE's, out of the patch's reach) counted.
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = -1");
    assert_eq!(ask(&mut t, "stats"), "stats calls 2 over 1 limit 100");
    // The unchanged path: the program's own static function, called from the patch.
    assert_eq!(ask(&mut t, "handle 3"), "handle 3 = 6");
    assert_eq!(ask(&mut t, "handle 500"), "handle 500 = -1");
    assert_eq!(ask(&mut t, "stats"), "stats calls 4 over 2 limit 100");
    rlp_ok(&["disable", &t.pid.to_string(), "project-fix"]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = 0");
    assert!(t.rlivepatch_maps().is_empty());

    // The same fix for the program built without PIE (its data within reach).
    let out2 = src.with_extension("nopie.so");
    let nopie = src.join("app-nopie").display().to_string();
    build_ok(
        &src,
        &[
            "--diff",
            &diff("handle"),
            "--binary",
            &nopie,
            "-o",
            out2.to_str().unwrap(),
        ],
    );
    let mut t = Target::start_with_stdin(&src.join("app-nopie"), &[]);
    rlp_ok(&["apply", &t.pid.to_string(), out2.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = -1");
    assert_eq!(ask(&mut t, "stats"), "stats calls 1 over 1 limit 100");
    // The PIE build's patch does not fit this program.
    let err = rlp_fails(&["check", &t.pid.to_string(), out.to_str().unwrap()], 5);
    assert!(err.contains("another build"), "{err}");
}

/// The lowest and highest address of the maps lines of `t` that contain `what`.
fn extent(t: &Target, what: &str) -> (u64, u64) {
    let ranges = t.ranges_of(what);
    assert!(!ranges.is_empty(), "no {what} in the maps");
    (
        ranges.iter().map(|r| r.0).min().unwrap(),
        ranges.iter().map(|r| r.1).max().unwrap(),
    )
}

/// The forms an apply report gives the patch's references, as (kind, via) pairs.
fn bound(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["bindings"]
        .as_array()
        .unwrap_or_else(|| panic!("no bindings in {report}"))
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap().to_string(),
                b["via"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Apply the generated patch `out` to `t` and return the report with the forms its
/// references got, as (kind, via) pairs.
fn apply_bound(t: &Target, out: &Path) -> (serde_json::Value, Vec<(String, String)>) {
    let r = json(&rlp_ok(&[
        "apply",
        &t.pid.to_string(),
        out.to_str().unwrap(),
        "--json",
    ]));
    let b = bound(&r);
    (r, b)
}

/// The fix of `handle` runs, the program's own counters count (its data reached from
/// the patch) and its static clamp is called; disabled, nothing is left.
fn fixed_then_disabled(t: &mut Target, name: &str) {
    assert_eq!(ask(t, "handle -5"), "handle -5 = -1");
    assert_eq!(ask(t, "handle 3"), "handle 3 = 6");
    assert_eq!(ask(t, "stats"), "stats calls 2 over 1 limit 100");
    rlp_ok(&["disable", &t.pid.to_string(), name]);
    assert_eq!(ask(t, "handle -5"), "handle -5 = 0");
    assert!(t.rlivepatch_maps().is_empty());
}

fn pair(kind: &str, via: &str) -> (String, String) {
    (kind.to_string(), via.to_string())
}

#[test]
fn a_generated_patch_lands_next_to_the_program_it_reaches() {
    let src = project("near", &[]);
    let (out, _) = made(&src, &["handle"], "app");
    let app = src.join("app");
    let patch_map = "/memfd:rlp:project-near";
    let mut t = Target::start_with_stdin(&app, &[]);
    let (r, forms) = apply_bound(&t, &out);
    // The program's variables and its static clamp, reached by the compiler's own
    // instructions: the patch was loaded within 2 GiB of the program.
    assert_eq!(
        forms,
        [pair("call", "direct"), pair("data", "direct")],
        "{r}"
    );
    let (p0, p1) = extent(&t, patch_map);
    let (a0, a1) = extent(&t, app.to_str().unwrap());
    assert!(
        p1.max(a1) - p0.min(a0) < 1 << 31,
        "patch {p0:#x}-{p1:#x}, program {a0:#x}-{a1:#x}"
    );
    fixed_then_disabled(&mut t, "project-near");

    // A program that reserved the address space around it (holes of 3 pages only): the
    // patch lands far away, each access takes a thunk next to the data and each call
    // the patch's stub, and the report says why.
    let mut t = Target::start_with_stdin(&app, &[]);
    t.send("crowd");
    let crowded = t.wait_line(|l| l.starts_with("crowded "), T);
    let mib: u64 = crowded.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(mib > 4096, "{crowded}");
    let (r, forms) = apply_bound(&t, &out);
    assert_eq!(forms, [pair("call", "stub"), pair("data", "thunk")], "{r}");
    let why = r["bindings"][0]["why"].as_str().unwrap_or_default();
    assert!(why.contains("no free range"), "{r}");
    let (p0, _) = extent(&t, patch_map);
    let (a0, _) = extent(&t, app.to_str().unwrap());
    assert!(p0.abs_diff(a0) > 1 << 31, "patch {p0:#x}, program {a0:#x}");
    fixed_then_disabled(&mut t, "project-near");
}

#[test]
fn a_change_reaches_every_caller_that_inlined_it() {
    let src = project("inlined", &[]);
    let (out, report) = made(&src, &["twice"], "app");
    // `twice` has no code of its own: the functions that inlined it come out changed.
    assert_eq!(
        why(&report, "handle"),
        "it inlines twice, which the diff changed"
    );
    assert_eq!(
        why(&report, "classify"),
        "it inlines twice, which the diff changed"
    );
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "classify 7"), "classify 7 = 15");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "classify 7"), "classify 7 = 22");
    // The switch's table travels with classify.
    assert_eq!(ask(&mut t, "classify 3"), "classify 3 = 43");
    assert_eq!(ask(&mut t, "handle 3"), "handle 3 = 9");
}

#[test]
fn a_library_is_patched_in_the_program_that_loaded_it() {
    let src = project("library", &[]);
    let (out, report) = made(&src, &["calc"], "libcalc.so");
    assert_eq!(why(&report, "calc"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "calc -5"), "calc -5 = -54 total -5");
    let (code, _, err) = rlp_full(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // Called through the program's PLT: reached, so no warning.
    assert!(!err.contains("nothing in the process calls"), "{err}");
    assert_eq!(ask(&mut t, "calc -5"), "calc -5 = -54 total -5");
    assert_eq!(ask(&mut t, "calc 5"), "calc 5 = 26 total 0");
}

#[test]
fn constants_and_static_locals_from_two_diffs() {
    let src = project("constants", &[]);
    let (out, report) = made_with(&src, &["scale", "counted"], "app", &["--name", "two-fixes"]);
    // Only the constants of `scale` changed; its code is the same bytes.
    assert_eq!(why(&report, "scale"), "the diff changed it");
    assert_eq!(why(&report, "counted"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "scale 2"), "scale 2 = 3.25");
    assert_eq!(ask(&mut t, "counted"), "counted = 1");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "scale 2"), "scale 2 = 5.125");
    // The static local keeps counting where the program left it.
    assert_eq!(ask(&mut t, "counted"), "counted = 3");
    let list = rlp_ok(&["list", &t.pid.to_string()]);
    assert!(list.contains("two-fixes"), "{list}");
}

#[test]
fn refusals_name_the_reason_and_write_nothing() {
    let src = project("refusals", &[]);
    let app = src.join("app").display().to_string();
    let out = src.with_extension("so");
    let cases = [
        ("limit-value", "limit", "initial value"),
        ("stats-layout", "struct stats", "layout"),
        // A bit-field inserted first in a structure known only by its typedef: the
        // others move by one bit, within the same byte.
        ("verdict-bit", "verdict_t", "layout"),
        // A new file the build does not compile: the patch would not load.
        ("new-file", "extra_weight", "configured again"),
        // A file the build compiles to nothing (all of it under an #ifdef).
        (
            "ifdef-out",
            "tls.c (compiles to nothing",
            "no file compiled into",
        ),
        ("main", "main()", "stays on the stack"),
    ];
    for (d, what, reason) in cases {
        let (code, _, err) = build(
            &src,
            &[
                "--diff",
                &diff(d),
                "--binary",
                &app,
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 10, "{d}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("rlivepatch: error:"))
            .unwrap();
        assert!(line.contains(what) && line.contains(reason), "{d}: {line}");
        assert!(!out.exists(), "{d}: a patch was written");
    }
    // Diffs written here: (name, text, exit code, what the message says).
    let cases = [
        (
            // Does not apply to this tree.
            "stale",
            "--- a/util.c\n+++ b/util.c\n@@ -1,3 +1,3 @@\n-no such line\n+another\n context\n context\n",
            11,
            "does not apply",
        ),
        (
            // Changes a file no binary is built from.
            "docs",
            "--- /dev/null\n+++ b/NOTES\n@@ -0,0 +1 @@\n+a note\n",
            10,
            "NOTES",
        ),
    ];
    for (name, text, want, says) in cases {
        let d = src.with_extension(format!("{name}.diff"));
        std::fs::write(&d, text).unwrap();
        let (code, _, err) = build(&src, &["--diff", d.to_str().unwrap(), "--binary", &app]);
        assert_eq!(code, want, "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[test]
fn a_binary_built_otherwise_than_the_tree_builds_is_refused() {
    // The binary was built with -O1; the tree's build (`make`) uses -O2.
    let src = project("flags", &["CFLAGS=-O1 -g"]);
    let app = src.join("app").display().to_string();
    for f in ["main.o", "util.o", "main-nopie.o", "util-nopie.o", "calc.o"] {
        std::fs::remove_file(src.join(f)).unwrap();
    }
    let (code, _, err) = build(
        &src,
        &["--diff", &diff("handle"), "--binary", &app, "--dry-run"],
    );
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("handle") && err.contains("flags"), "{err}");
    // The options each side used, from the binary's debug information.
    assert!(
        err.contains("compiled with `-O1`, the rebuild with `-O2`"),
        "{err}"
    );
    // A binary built by another compiler.
    require_tool("clang");
    let src = project("compiler", &["CC=clang"]);
    let app = src.join("app").display().to_string();
    let (code, _, err) = build(
        &src,
        &["--diff", &diff("handle"), "--binary", &app, "--dry-run"],
    );
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("clang version"), "{err}");
}

#[test]
fn a_dry_run_reports_and_writes_nothing() {
    let src = project("dry", &[]);
    let app = src.join("app").display().to_string();
    let out = src.with_extension("so");
    let (code, _, err) = build(
        &src,
        &[
            "--diff",
            &diff("twice"),
            "--binary",
            &app,
            "-o",
            out.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("handle") && err.contains("classify"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_stripped_binary_with_its_debug_file() {
    let src = project("stripped", &[]);
    let app = src.join("app");
    let run = |args: &[&str]| {
        let st = Command::new(args[0])
            .args(&args[1..])
            .current_dir(&src)
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    run(&["objcopy", "--only-keep-debug", "app", "app.debug"]);
    run(&["strip", "--strip-all", "app"]);
    run(&["objcopy", "--add-gnu-debuglink=app.debug", "app"]);
    let out = src.with_extension("so");
    let app_s = app.display().to_string();
    let report = build_ok(
        &src,
        &[
            "--diff",
            &diff("handle"),
            "--binary",
            &app_s,
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(why(&report, "handle"), "the diff changed it");
    let mut t = Target::start_with_stdin(&app, &[]);
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = -1");
    assert_eq!(ask(&mut t, "stats"), "stats calls 1 over 1 limit 100");

    // Without the debug file, the static functions and variables cannot be found.
    std::fs::rename(src.join("app.debug"), src.with_extension("debug")).unwrap();
    let out2 = src.with_extension("nodebug.so");
    let (code, _, err) = build(
        &src,
        &[
            "--diff",
            &diff("handle"),
            "--binary",
            &app_s,
            "-o",
            out2.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains("no debug file was found") && err.contains("--debug-dir"),
        "{err}"
    );
    assert!(!out2.exists());
    // Given with --debug-dir, in the build-id layout debuggers use.
    let id = rlp_ok(&["build-id", &app_s]);
    let hex = id.split('"').nth(3).unwrap().to_string();
    let dbg = src.with_extension("dbgdir");
    let dir = dbg.join(".build-id").join(&hex[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(
        src.with_extension("debug"),
        dir.join(format!("{}.debug", &hex[2..])),
    )
    .unwrap();
    let (code, _, err) = build(
        &src,
        &[
            "--diff",
            &diff("handle"),
            "--binary",
            &app_s,
            "--debug-dir",
            dbg.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn functions_called_through_a_table_a_new_function_and_new_data() {
    let src = project("table", &[]);
    let (out, report) = made(&src, &["ops"], "app");
    assert_eq!(why(&report, "op_add"), "the diff changed it");
    assert_eq!(why(&report, "tally"), "new");
    assert!(
        report["notes"]
            .to_string()
            .contains("new variable op_calls"),
        "{report}"
    );
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "op 0 5"), "op 0 5 = 6");
    assert_eq!(ask(&mut t, "op 1 5"), "op 1 5 = -5");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    // op_add and op_neg are static and only called through the program's own table of
    // pointers, which keeps naming the original entries.
    assert_eq!(ask(&mut t, "op 0 5"), "op 0 5 = 1006");
    assert_eq!(ask(&mut t, "op 0 5"), "op 0 5 = 2006");
    assert_eq!(ask(&mut t, "op 1 5"), "op 1 5 = -6");
    rlp_ok(&["disable", &t.pid.to_string(), "project-table"]);
    assert_eq!(ask(&mut t, "op 0 5"), "op 0 5 = 6");
}

/// A changed function with a switch the compiler made into a jump table (in its own
/// `.rodata.route` with `-fdata-sections`, entries relative to its code): the table goes
/// with the patch's copy of the function, for the PIE program and the one without PIE.
#[test]
fn a_jump_table_goes_with_its_function() {
    let src = project("jump-table", &[]);
    for (binary, name) in [("app", "jump-table"), ("app-nopie", "jump-table-nopie")] {
        let (out, report) = made_with(&src, &["jump-table"], binary, &["--name", name]);
        assert_eq!(why(&report, "route"), "the diff changed it");
        let mut t = Target::start_with_stdin(&src.join(binary), &[]);
        assert_eq!(ask(&mut t, "route 2 5"), "route 2 5 = 6");
        rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
        assert_eq!(ask(&mut t, "route 2 5"), "route 2 5 = 105");
        // Every other case lands where it did, through the patch's table.
        assert_eq!(ask(&mut t, "route 0 5"), "route 0 5 = 15");
        assert_eq!(ask(&mut t, "route 4 5"), "route 4 5 = 10");
        assert_eq!(ask(&mut t, "route 6 5"), "route 6 5 = 50");
        assert_eq!(ask(&mut t, "route 9 5"), "route 9 5 = -1000");
        rlp_ok(&["disable", &t.pid.to_string(), name]);
        assert_eq!(ask(&mut t, "route 2 5"), "route 2 5 = 6");
    }
}

/// A series of diffs is applied in order, as `patch` would: the second needs the first.
/// Alone, the second does not apply, and the message names the diff and the tree as the
/// operator gave them, not rlivepatch's copies.
#[test]
fn a_series_of_diffs_applies_in_order() {
    let src = project("series", &[]);
    let (out, _) = made_with(
        &src,
        &["jump-table", "jump-table-2"],
        "app",
        &["--name", "series"],
    );
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "route 2 5"), "route 2 5 = 205");
    let app = src.join("app").display().to_string();
    let second = diff("jump-table-2");
    let (code, _, err) = build(&src, &["--diff", &second, "--binary", &app]);
    assert_eq!(code, 11, "{err}");
    let line = err.lines().find(|l| l.contains("error:")).unwrap();
    assert!(
        line.contains(&second) && line.contains(&src.display().to_string()),
        "{line}"
    );
    assert!(!line.contains(".cache"), "{line}");
}

/// A fix that adds a variable with a string: the strings of the unit's initializers move
/// in the merged string section, which changes no variable's initial value (compared by
/// what they point to, as code references are).
#[test]
fn a_new_string_changes_no_initializer() {
    let src = project("new-string", &[]);
    let (out, report) = made(&src, &["new-string"], "app");
    assert_eq!(why(&report, "reason"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "reason 410"), "reason 410 = ok");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "reason 410"), "reason 410 = gone for good");
    assert_eq!(ask(&mut t, "reason 503"), "reason 503 = busy, try later");
}

/// Hunks of a file that is no code (a test, notes) that do not apply are left out and
/// listed; code that does not apply is an error.
#[test]
fn hunks_of_files_no_build_reads_may_not_apply() {
    let src = project("notes", &[]);
    std::fs::write(src.join("NOTES"), "the notes\n").unwrap();
    let app = src.join("app").display().to_string();
    let fix =
        std::fs::read_to_string(root().join("fixtures/project/diffs/jump-table.diff")).unwrap();
    let d = src.with_extension("with-notes.diff");
    // A test the fix adds, in a directory of its own.
    std::fs::write(
        &d,
        format!(
            "{fix}--- a/NOTES\n+++ b/NOTES\n@@ -1 +1 @@\n-other notes\n+new notes\n--- /dev/null\n+++ b/tests/cases/route.test\n@@ -0,0 +1 @@\n+route 2 5 = 105\n"
        ),
    )
    .unwrap();
    let out = src.with_extension("so");
    let report = build_ok(
        &src,
        &[
            "--diff",
            d.to_str().unwrap(),
            "--binary",
            &app,
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let ignored = report["ignored"].to_string();
    assert!(ignored.contains("NOTES"), "{report}");
    assert_eq!(why(&report, "route"), "the diff changed it");
}

/// A --source that is no project is refused before anything is copied (a cache directory
/// such as cargo's target/ is never copied either), and a build that fails says how, with
/// its last lines; nothing is left in the cache.
#[test]
fn a_wrong_source_or_a_failing_build_leaves_nothing() {
    let src = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-a-project");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("target")).unwrap();
    std::fs::write(
        src.join("target/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(src.join("target/big"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(src.join("x.c"), "int x;\n").unwrap();
    let cache = src.with_extension("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let d = src.with_extension("diff");
    std::fs::write(
        &d,
        "--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-int x;\n+int x = 1;\n",
    )
    .unwrap();
    let proj = project("failing-build", &[]);
    let app = proj.join("app").display().to_string();
    let (code, _, err) = build(&src, &["--diff", d.to_str().unwrap(), "--binary", &app]);
    assert_eq!(code, 11, "{err}");
    assert!(
        err.contains("no entry point") && err.contains("Makefile"),
        "{err}"
    );
    let builds = cache.join("builds");
    let left: Vec<_> = std::fs::read_dir(&builds)
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "copies left in the cache: {left:?}");
    // A build that fails: its last lines; one that fails silently: "no output".
    for (cmd, says) in [
        (
            "echo compiling; echo 'x.c:1: broken on purpose' >&2; false",
            "broken on purpose",
        ),
        ("false", "no output"),
    ] {
        let (code, _, err) = build(
            &proj,
            &["--diff", &diff("handle"), "--binary", &app, "--build", cmd],
        );
        assert_eq!(code, 11, "{err}");
        assert!(err.contains(says), "{cmd}: {err}");
        let builds = proj.with_extension("cache").join("builds");
        let left: Vec<_> = std::fs::read_dir(&builds)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{cmd}: copies left in the cache: {left:?}");
    }
}

/// A recursive global function of a library: GCC calls it through a local alias at the
/// same address (`depth.localalias`), so the diff finds two changed names for one entry;
/// one redirect covers both.
#[test]
fn a_function_and_its_local_alias_are_one_redirect() {
    let src = project("localalias", &[]);
    let (out, report) = made(&src, &["depth"], "libcalc.so");
    assert_eq!(why(&report, "depth"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "depth 3"), "depth 3 = 7");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "depth 3"), "depth 3 = 2");
    let list = rlp_ok(&["list", &t.pid.to_string(), "--json"]);
    let funcs = json(&list)["patches"][0]["functions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(funcs, 1, "{list}");
}

/// A fix whose code is the same as before (a cast that changes nothing on x86_64): the
/// refusal says which functions the diff changed and that their code is the same.
#[test]
fn a_fix_that_compiles_to_the_same_code_says_so() {
    let src = project("same-code", &[]);
    let lib = src.join("libcalc.so").display().to_string();
    let (code, _, err) = build(&src, &["--diff", &diff("same-code"), "--binary", &lib]);
    assert_eq!(code, 10, "{err}");
    let line = err.lines().find(|l| l.contains("error:")).unwrap();
    assert!(
        line.contains("the source of weigh") && line.contains("same code"),
        "{line}"
    );
}

/// A changed function that calls another changed one of the library through the GOT (a
/// build with -fno-plt): the call reaches the patch's new code, as a direct call does.
#[test]
fn a_call_through_the_got_to_a_changed_function_reaches_its_new_code() {
    let src = project("got-call", &["CFLAGS=-O2 -g -Wall -fno-plt"]);
    let (out, report) = made_with(
        &src,
        &["calls-calc"],
        "libcalc.so",
        &["--build", "make CFLAGS='-O2 -g -Wall -fno-plt'"],
    );
    assert_eq!(why(&report, "calc_twice"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "twice 1"), "twice 1 = 21");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "twice 1"), "twice 1 = 42");
}

/// A changed function that hands the address of another changed function to a callee (a
/// callback, as `png_safe_execute` takes): the address is the original entry, which the
/// patch redirects, so the callback runs the new code while the patch is applied and the
/// old code after it is disabled; apply does not take it for a wrapper calling itself.
#[test]
fn the_address_of_a_changed_function_runs_its_new_code() {
    let src = project("hands-calc", &[]);
    let (out, _) = made_with(&src, &["hands-calc"], "libcalc.so", &[]);
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "handed 1"), "handed 1 = 6");
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "handed 1"), "handed 1 = 16");
    rlp_ok(&["disable", &pid, "project-hands-calc"]);
    assert_eq!(ask(&mut t, "handed 1"), "handed 1 = 6");
}

/// A change inside a function GCC specialised for its callers (`scaled.constprop.0`, its
/// constant parameter gone): the patch replaces the specialised copy with the same copy
/// of the new code, which apply accepts; a change that makes the compiler specialise it
/// differently (another constant) is refused at build, since the old copy's callers
/// pass what the old specialisation expects.
#[test]
fn a_specialised_copy_is_replaced_by_the_same_copy_of_the_new_code() {
    let src = project("constprop", &[]);
    let (out, report) = made_with(&src, &["constprop"], "libcalc.so", &[]);
    assert_eq!(why(&report, "scaled.constprop.0"), "the diff changed it");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    assert_eq!(ask(&mut t, "scaled 16"), "scaled 16 = 235");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "scaled 16"), "scaled 16 = 239");
    let lib = src.join("libcalc.so").display().to_string();
    let (code, _, err) = build(&src, &["--diff", &diff("constprop-k"), "--binary", &lib]);
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains("specialised the new code differently"),
        "{err}"
    );
}

/// `build --sign-key` signs what it writes: `info` names the signer, and it is accepted
/// where signatures are required.
#[test]
fn a_built_patch_is_signed_with_the_key_given() {
    let src = project("signed", &[]);
    let keys = src.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    rlp_ok(&["keygen", keys.join("builder").to_str().unwrap()]);
    let key = keys.join("builder.key");
    let (out, _) = made_with(
        &src,
        &["handle"],
        "app",
        &["--sign-key", key.to_str().unwrap()],
    );
    let info = rlp_ok(&[
        "info",
        out.to_str().unwrap(),
        "--keyring",
        keys.to_str().unwrap(),
    ]);
    assert!(info.contains("signed: yes, by builder"), "{info}");
    let mut t = Target::start_with_stdin(&src.join("app"), &[]);
    let pid = t.pid.to_string();
    rlp_ok(&[
        "apply",
        &pid,
        out.to_str().unwrap(),
        "--require-signature",
        "--keyring",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = -1");
    rlp_ok(&["disable", &pid, out.to_str().unwrap()]);
    assert_eq!(ask(&mut t, "handle -5"), "handle -5 = 0");
}
