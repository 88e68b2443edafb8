//! The binary contract (issue: patches correct for the binary, not only the source):
//! callers built against what the compiler saw of the old function are never corrupted,
//! split-off parts count as the function, folded functions are patched together, clones
//! and inlined copies are named, and what cannot be made safe is refused with the reason.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The callers fixture at -O2 (`-fipa-ra`), with or without debug information.
fn callers(debug: bool) -> std::path::PathBuf {
    if debug {
        fixture("callers", "callers", &[])
    } else {
        cc("callers-g0", &["-O2", "-g0", "-Wall", "fixtures/callers.c"])
    }
}

/// The `bad=` count of a callers line.
fn bad(line: &str) -> i64 {
    line.rsplit("bad=").next().unwrap().parse().unwrap()
}

fn is_callers_line(l: &str) -> bool {
    l.starts_with("callers i=")
}

/// The functions of a patch as `list --json` shows them.
fn listed(pid: i32) -> Vec<serde_json::Value> {
    let v = json(&rlp_ok(&["list", &pid.to_string(), "--json"]));
    v["patches"][0]["functions"].as_array().unwrap().clone()
}

fn by_symbol<'a>(funcs: &'a [serde_json::Value], sym: &str) -> &'a serde_json::Value {
    funcs
        .iter()
        .find(|f| f["symbol"] == sym)
        .unwrap_or_else(|| panic!("{sym} not in {funcs:?}"))
}

/// 100 lines of the callers fixture, every result right.
fn assert_callers_right(t: &mut Target) {
    let before = bad(&t.wait_line(is_callers_line, Duration::from_secs(10)));
    for _ in 0..100 {
        let l = t.wait_line(is_callers_line, Duration::from_secs(10));
        for what in ["int=ok", "float=ok", "stack=ok", "varargs=ok"] {
            assert!(l.contains(what), "{l}");
        }
        assert_eq!(bad(&l), before, "{l}");
    }
}

#[test]
fn a_replacement_that_follows_the_abi_without_the_preserving_path_corrupts_callers() {
    // The hazard, reproduced: the same patch switched with the preserving path turned off
    // (a fault switch for this test) corrupts callers that GCC built with -fipa-ra.
    let exe = callers(true);
    let scramble = patch("callers-scramble");
    let mut t = Target::start(&exe, &["2"]);
    assert_eq!(
        bad(&t.wait_line(is_callers_line, Duration::from_secs(10))),
        0
    );
    let st = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &t.pid.to_string(), scramble.to_str().unwrap()])
        .env("RLIVEPATCH_FAULT", "no-preserve")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Either a wrong result or a crash: the fixture's own output shows which. Lines
    // printed while the apply ran come first (many, on a loaded machine); the count of
    // wrong results is cumulative, so every line after the switch shows it.
    let mut corrupted = false;
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < until {
        match t.lines_or_exit(Duration::from_secs(10)) {
            Some(l) if is_callers_line(&l) && bad(&l) > 0 => {
                corrupted = true;
                break;
            }
            Some(_) => {}
            None => {
                corrupted = true;
                break;
            }
        }
    }
    assert!(
        corrupted,
        "callers survived a scrambling replacement: {:?}",
        t.seen
    );
}

#[test]
fn callers_keep_the_registers_the_old_code_left_alone() {
    let exe = callers(true);
    let scramble = patch("callers-scramble");
    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    let before_maps = t.stable_maps();
    let entry = t.symbol_addr("callers", "callee");
    let orig = t.read_mem(entry, 5);

    // check tells what callers rely on before anything is touched.
    let check = json(&rlp_ok(&[
        "check",
        &pid,
        scramble.to_str().unwrap(),
        "--json",
    ]));
    let funcs = check["functions"].as_array().unwrap();
    let many = by_symbol(funcs, "many");
    assert_eq!(many["contract"]["stack_args"], 16, "two longs on the stack");
    assert_eq!(many["contract"]["stack_args_exact"], true);
    for f in funcs {
        let keeps = f["contract"]["keeps"].as_array().unwrap();
        assert!(!keeps.is_empty(), "{f}");
        assert!(
            f["notes"][0].as_str().unwrap().contains("preserves them")
                || f["notes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n.as_str().unwrap().contains("preserves them")),
            "{f}"
        );
    }
    let fcallee = by_symbol(funcs, "fcallee");
    assert!(
        fcallee["contract"]["relied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "rdi"),
        "a float leaf leaves the integer registers alone: {fcallee}"
    );

    rlp_ok(&["apply", &pid, scramble.to_str().unwrap()]);
    let funcs = listed(t.pid);
    assert_eq!(funcs.len(), 4);
    for f in &funcs {
        assert_eq!(f["via"], "preserving", "{f}");
        assert!(!f["keeps"].as_array().unwrap().is_empty());
    }
    assert_callers_right(&mut t);
    t.assert_running();

    rlp_ok(&["disable", &pid, "callers-scramble"]);
    assert_callers_right(&mut t);
    assert_eq!(t.read_mem(entry, 5), orig);
    assert_eq!(
        t.stable_maps(),
        before_maps,
        "the runtime goes with the last patch"
    );
    t.assert_running();
}

/// Apply `patch` to a callers process with the fault switch `fault` (or none), and return
/// the 50 lines that follow.
fn callers_after(t: &mut Target, patch: &std::path::Path, fault: &str) -> Vec<String> {
    let st = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &t.pid.to_string(), patch.to_str().unwrap()])
        .env("RLIVEPATCH_FAULT", fault)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    t.next_lines(1);
    (0..50)
        .map(|_| t.wait_line(is_callers_line, Duration::from_secs(10)))
        .collect()
}

#[test]
fn whole_vector_registers_are_kept_for_code_built_for_avx() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if !cpu.split_whitespace().any(|f| f == "avx2") {
        skip(
            "whole_vector_registers_are_kept_for_code_built_for_avx",
            "this CPU has no AVX2",
        );
        return;
    }
    // vcaller keeps a whole ymm register across its call of vleaf.
    let exe = cc(
        "callers-avx",
        &["-O2", "-g", "-mavx2", "-Wall", "fixtures/callers.c"],
    );
    let wide = patch_with("callers-scramble", "callers-scramble-wide", &["-DWIDE"]);
    // The hazard: the low halves kept, the upper ones lost.
    let mut t = Target::start(&exe, &["2"]);
    let lines = callers_after(&mut t, &wide, "narrow-vectors");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wide=") && !l.contains("wide=ok")),
        "the fixture shows the upper halves lost: {lines:?}"
    );
    drop(t);
    let mut t = Target::start(&exe, &["2"]);
    for l in callers_after(&mut t, &wide, "") {
        assert!(l.contains("wide=ok") && l.ends_with("bad=0"), "{l}");
    }
    t.assert_running();
}

#[test]
fn without_debug_information_the_stack_copy_is_a_safe_bound() {
    let exe = callers(false);
    let scramble = patch("callers-scramble");
    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    let check = json(&rlp_ok(&[
        "check",
        &pid,
        scramble.to_str().unwrap(),
        "--json",
    ]));
    let many = by_symbol(check["functions"].as_array().unwrap(), "many");
    assert_eq!(many["contract"]["stack_args"], 256);
    assert_eq!(many["contract"]["stack_args_exact"], false);
    rlp_ok(&["apply", &pid, scramble.to_str().unwrap()]);
    assert_callers_right(&mut t);
    rlp_ok(&["disable", &pid, "callers-scramble"]);
    assert_callers_right(&mut t);
    t.assert_running();
}

#[test]
fn a_replacement_that_leaves_the_registers_alone_takes_the_direct_path() {
    // The same callees replaced by leaves that write only what the old ones wrote: no
    // caller can tell, so no preserving path is needed.
    let exe = callers(true);
    let lean = patch_src(
        "callers-lean",
        r#"#include <rlivepatch.h>
static int new_callee(int x) { return x * 3 + 1; }
RLIVEPATCH_FUNC(callee, new_callee);
RLIVEPATCH_NAME("callers-lean");
"#,
    );
    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, lean.to_str().unwrap()]);
    let f = &listed(t.pid)[0];
    assert_ne!(f["via"], "preserving", "{f}");
    assert_callers_right(&mut t);
    rlp_ok(&["disable", &pid, "callers-lean"]);
    t.assert_running();
}

fn unwinds() -> (std::path::PathBuf, std::path::PathBuf) {
    let exe = compile(
        "c++",
        "unwinds",
        &["-O2", "-g", "-rdynamic", "-pthread", "fixtures/unwinds.cpp"],
    );
    let fix = compile(
        "c++",
        "unwinds-fix.so",
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
            "patches/include",
            "patches/unwinds-fix.cpp",
        ],
    );
    (exe, fix)
}

#[test]
fn exceptions_cancellation_and_backtraces_go_through_the_preserving_path() {
    require_tool("gdb");
    let (exe, fix) = unwinds();
    let mut t = Target::start_with_stdin(&exe, &[]);
    let pid = t.pid.to_string();
    let out = json(&rlp_ok(&["apply", &pid, fix.to_str().unwrap(), "--json"]));
    let f = &out["functions"][0];
    assert_eq!(f["via"], "preserving", "{f}");
    assert!(
        f["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("std::terminate")),
        "a C++ replacement of a function that cannot throw is warned of: {f}"
    );

    t.send("value 5");
    t.wait_line(|l| l.starts_with("value"), Duration::from_secs(10));
    assert_eq!(t.seen.last().unwrap(), "value 199");
    // Thrown in the replacement, caught two frames up, through the preserving frame.
    t.send("throw");
    let l = t.wait_line(
        |l| l.starts_with("caught") || l.starts_with("value"),
        Duration::from_secs(10),
    );
    assert_eq!(l, "caught thirteen");
    // backtrace() from the replacement reaches the callers.
    t.send("bt");
    let bt = t.wait_line(|l| l.starts_with("backtrace"), Duration::from_secs(10));
    let (g, o, m) = (
        bt.find("(_Z7guardediii").expect(&bt),
        bt.find("(_Z5outeri").expect(&bt),
        bt.find("(main").expect(&bt),
    );
    assert!(g < o && o < m, "{bt}");
    assert_eq!(
        t.wait_line(|l| l.starts_with("value"), Duration::from_secs(10)),
        "value 263",
        "the caller's registers survived the backtrace"
    );
    // gdb sees a thread blocked in the replacement with its callers and their arguments.
    t.send("block");
    t.wait_line(|l| l == "blocking", Duration::from_secs(10));
    wait_for("the thread to block in read", || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("wchan")).ok())
            .any(|w| w.contains("pipe_read"))
    });
    let gdb = Command::new("gdb")
        .args([
            "-p",
            &pid,
            "-batch",
            "-nx",
            "-iex",
            "set debuginfod enabled off",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&gdb.stdout);
    let frames: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    let at = |what: &str| {
        frames
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what} not in gdb's backtrace: {text}"))
    };
    let (nf, thunk, g, o, b) = (
        at("new_check_value"),
        at("rlp_preserve"),
        at("in guarded (x=x@entry=99, y=y@entry=106, z=z@entry=110)"),
        at("in outer (x=x@entry=99)"),
        at("in blocker"),
    );
    assert!(nf < thunk && thunk < g && g < o && o < b, "{text}");
    t.assert_running();
    // pthread_cancel unwinds from the replacement through to the thread's cleanup.
    t.send("cancel");
    assert_eq!(
        t.wait_line(|l| l.starts_with("cancelled"), Duration::from_secs(10)),
        "cancelled cleanup=1"
    );
    t.send("value 6");
    assert_eq!(
        t.wait_line(|l| l.starts_with("value"), Duration::from_secs(10)),
        format!("value {}", 13 + 13 * 17 + 13 - 17)
    );
    rlp_ok(&["disable", &pid, "unwinds-fix"]);
    t.send("throw");
    assert_eq!(
        t.wait_line(
            |l| l.starts_with("value") || l.starts_with("caught"),
            Duration::from_secs(10)
        ),
        format!("value {}", 27 + 20 * 24 + 20 - 24),
        "the old code does not throw"
    );
    t.assert_running();
}

fn shapes() -> std::path::PathBuf {
    fixture("shapes", "shapes", &[])
}

#[test]
fn a_thread_in_a_split_off_part_counts_as_inside_the_function() {
    let exe = shapes();
    let fix = patch_src(
        "shapes-work",
        r#"#include <rlivepatch.h>
static int new_work(int fd, int x) { (void)fd; return x + 100; }
RLIVEPATCH_FUNC(work, new_work);
RLIVEPATCH_NAME("shapes-work");
"#,
    );
    let mut t = Target::start_with_stdin(&exe, &["5"]);
    let pid = t.pid.to_string();
    t.send("cold");
    t.wait_line(|l| l == "entering the cold part", Duration::from_secs(10));
    wait_for("the worker to block in read", || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("wchan")).ok())
            .any(|w| w.contains("pipe_read"))
    });
    let entry = t.symbol_addr("shapes", "work");
    let before = t.snapshot(entry);

    let (code, out, err) = rlp_full(&["check", &pid, fix.to_str().unwrap(), "--json"]);
    assert_eq!(code, 6, "{err}");
    let v = json(&out);
    assert_eq!(v["safe"], false);
    let parts = v["functions"][0]["contract"]["parts"].as_array().unwrap();
    assert_eq!(parts[1]["name"], "work.cold", "{v}");
    let blockers = v["blockers"].to_string();
    assert!(blockers.contains("work.cold"), "{blockers}");
    assert!(err.contains("split off as work.cold"), "{err}");

    let e = rlp_fails(&["apply", &pid, fix.to_str().unwrap(), "--timeout", "1"], 6);
    assert!(e.contains("work"), "{e}");
    t.assert_untouched(&before, entry);

    t.send("release");
    let out = json(&rlp_ok(&["apply", &pid, fix.to_str().unwrap(), "--json"]));
    assert_eq!(out["functions"][0]["parts"][0]["name"], "work.cold");
    t.wait_line(|l| l.contains("work=100 "), Duration::from_secs(10));
    let f = &listed(t.pid)[0];
    assert_eq!(f["parts"][0]["name"], "work.cold", "{f}");
    rlp_ok(&["disable", &pid, "shapes-work"]);
    t.wait_line(|l| l.contains("work=1 "), Duration::from_secs(10));
    t.assert_running();
}

#[test]
fn folded_functions_are_patched_together_or_not_at_all() {
    let exe = shapes();
    let alone = patch_src(
        "shapes-twin-a",
        r#"#include <rlivepatch.h>
static int new_twin(int x) { return x * 7 + 5; }
RLIVEPATCH_FUNC(twin_a, new_twin);
RLIVEPATCH_NAME("shapes-twin-a");
"#,
    );
    let apart = patch_src(
        "shapes-twins-apart",
        r#"#include <rlivepatch.h>
static int new_a(int x) { return x * 7 + 5; }
static int new_b(int x) { return x * 7 + 6; }
RLIVEPATCH_FUNC(twin_a, new_a);
RLIVEPATCH_FUNC(twin_b, new_b);
RLIVEPATCH_NAME("shapes-twins-apart");
"#,
    );
    let both = patch_src(
        "shapes-twins",
        r#"#include <rlivepatch.h>
static int new_twin(int x) { return x * 7 + 5; }
RLIVEPATCH_FUNC(twin_a, new_twin);
RLIVEPATCH_FUNC(twin_b, new_twin);
RLIVEPATCH_NAME("shapes-twins");
"#,
    );
    let mut t = Target::start_with_stdin(&exe, &["5"]);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("shapes", "twin_a");
    assert_eq!(
        entry,
        t.symbol_addr("shapes", "twin_b"),
        "GCC folded the twins"
    );
    let before = t.snapshot(entry);

    let e = rlp_fails(&["apply", &pid, alone.to_str().unwrap()], 5);
    assert!(e.contains("twin_b") && e.contains("folded"), "{e}");
    t.assert_untouched(&before, entry);
    let e = rlp_fails(&["apply", &pid, apart.to_str().unwrap()], 5);
    assert!(e.contains("one function in this process"), "{e}");
    t.assert_untouched(&before, entry);

    rlp_ok(&["apply", &pid, both.to_str().unwrap()]);
    t.wait_line(|l| l.contains("twins=5,5 "), Duration::from_secs(10));
    let funcs = listed(t.pid);
    assert_eq!(funcs.len(), 1, "one redirect serves both: {funcs:?}");
    let mut names = vec![funcs[0]["symbol"].clone(), funcs[0]["aliases"][0].clone()];
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, ["twin_a", "twin_b"], "{funcs:?}");
    rlp_ok(&["disable", &pid, "shapes-twins"]);
    t.wait_line(|l| l.contains("twins=3,3 "), Duration::from_secs(10));
    t.assert_running();
}

#[test]
fn clones_inlined_copies_and_pure_functions_are_named() {
    let exe = shapes();
    let fix = patch_src(
        "shapes-notes",
        r#"#include <rlivepatch.h>
static int new_lookup(int x) { return x; }
static int new_ticks(void) { return 1; }
static int new_square(int x) { return x * x; }
RLIVEPATCH_FUNC(lookup, new_lookup);
RLIVEPATCH_FUNC(ticks, new_ticks);
RLIVEPATCH_FUNC(square, new_square);
RLIVEPATCH_NAME("shapes-notes");
"#,
    );
    let t = Target::start_with_stdin(&exe, &["5"]);
    let pid = t.pid.to_string();
    let v = json(&rlp_ok(&["check", &pid, fix.to_str().unwrap(), "--json"]));
    let funcs = v["functions"].as_array().unwrap();
    let notes = |sym: &str| by_symbol(funcs, sym)["notes"].to_string();

    let lookup = by_symbol(funcs, "lookup");
    assert_eq!(lookup["contract"]["clones"][0], "lookup.part.0", "{lookup}");
    assert_eq!(lookup["contract"]["reached"], false);
    assert!(notes("lookup").contains("lookup.part.0"));
    assert!(
        notes("lookup").contains("patch lookups instead"),
        "{}",
        notes("lookup")
    );

    let ticks = by_symbol(funcs, "ticks");
    assert_eq!(ticks["contract"]["inlined_into"][0], "main");
    assert!(notes("ticks").contains("nothing in the process reaches the entry"));

    assert_eq!(by_symbol(funcs, "square")["contract"]["pure"], true);
    assert!(notes("square").contains("ipa-pure-const"));

    // A static function kept only as its specialised copy is named, not "not found".
    let note = patch_src(
        "shapes-note",
        r#"#include <rlivepatch.h>
static void new_note(const char *w) { (void)w; }
RLIVEPATCH_FUNC(note, new_note);
RLIVEPATCH_NAME("shapes-note");
"#,
    );
    let e = rlp_fails(&["apply", &pid, note.to_str().unwrap()], 5);
    assert!(
        e.contains("only as the copies") && e.contains("note.constprop.0"),
        "{e}"
    );
    t.assert_running();

    // At -O3 (-fipa-cp-clone) the calls of mix go to mix.constprop.0: the operator is told
    // which calls keep the old code.
    let o3 = cc(
        "shapes-O3",
        &["-O3", "-g", "-Wall", "fixtures/shapes.c", "-pthread"],
    );
    let t3 = Target::start_with_stdin(&o3, &["5"]);
    let mix = patch_src(
        "shapes-mix",
        r#"#include <rlivepatch.h>
static int new_mix(int x, int k) { return x * k; }
RLIVEPATCH_FUNC(mix, new_mix);
RLIVEPATCH_NAME("shapes-mix");
"#,
    );
    let out = json(&rlp_ok(&[
        "apply",
        &t3.pid.to_string(),
        mix.to_str().unwrap(),
        "--json",
    ]));
    let f = &out["functions"][0];
    assert!(
        f["notes"]
            .to_string()
            .contains("specialised copies the compiler made (mix.constprop.0)"),
        "{f}"
    );
    t3.assert_running();
}

#[test]
fn a_calling_convention_the_compiler_changed_is_refused() {
    require_tool("clang");
    // clang dropped the constant argument of scale() from its calls.
    let exe = compile("clang", "llvm", &["-O2", "-g", "fixtures/llvm.c"]);
    let fix = patch_src(
        "llvm-scale",
        r#"#include <rlivepatch.h>
static int new_scale(int x, int factor) { return x * factor + 2; }
RLIVEPATCH_FUNC(scale, new_scale);
RLIVEPATCH_NAME("llvm-scale");
"#,
    );
    let plain = patch_src(
        "llvm-plain",
        r#"#include <rlivepatch.h>
static int new_plain(int x) { return x + 1000; }
RLIVEPATCH_FUNC(plain, new_plain);
RLIVEPATCH_NAME("llvm-plain");
"#,
    );
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("llvm", "scale");
    let before = t.snapshot(entry);
    let e = rlp_fails(&["apply", &pid, fix.to_str().unwrap()], 5);
    assert!(e.contains("parameter factor = 3"), "{e}");
    t.assert_untouched(&before, entry);
    // The function next to it, called normally, is patched.
    rlp_ok(&["apply", &pid, plain.to_str().unwrap()]);
    t.wait_line(
        |l| l.ends_with(&format!("plain={}", value_of(l, "i=") + 1000)),
        Duration::from_secs(10),
    );
    rlp_ok(&["disable", &pid, "llvm-plain"]);

    // Without debug information the change cannot be seen: the operator is warned.
    let bare = compile("clang", "llvm-g0", &["-O2", "-g0", "fixtures/llvm.c"]);
    let b = Target::start(&bare, &["5"]);
    let v = json(&rlp_ok(&[
        "check",
        &b.pid.to_string(),
        plain.to_str().unwrap(),
        "--json",
    ]));
    let f = &v["functions"][0];
    assert!(
        f["contract"]["convention_unverified"]
            .as_str()
            .unwrap()
            .contains("clang version"),
        "{f}"
    );
    assert!(
        f["notes"]
            .to_string()
            .contains("no debug information to tell"),
        "{f}"
    );

    // rustc (LLVM) dropped an unused argument and the return value of record().
    let rs = compile("rustc", "nocall", &["-O", "-g", "fixtures/nocall.rs"]);
    let r = Target::start(&rs, &["5"]);
    let rpid = r.pid.to_string();
    let sym = rlivepatch::elf::symbols::ElfFile::open(&rs)
        .unwrap()
        .symtab()
        .iter()
        .find(|s| s.name.contains("6nocall6record"))
        .expect("record in the symbol table")
        .name
        .clone();
    let fix = patch_src(
        "nocall-record",
        &format!(
            r#"#include <rlivepatch.h>
static unsigned long new_record(unsigned long x, unsigned long unused) {{ (void)unused; return x * 3; }}
RLIVEPATCH_FUNC_SYM("{sym}", new_record);
RLIVEPATCH_NAME("nocall-record");
"#
        ),
    );
    let entry = r.symbol_addr("nocall", &sym);
    let before = r.snapshot(entry);
    let e = rlp_fails(&["apply", &rpid, fix.to_str().unwrap()], 5);
    assert!(e.contains("DW_CC_nocall"), "{e}");
    r.assert_untouched(&before, entry);
}

/// The number after `key` in a line.
fn value_of(line: &str, key: &str) -> i64 {
    let s = &line[line.find(key).unwrap() + key.len()..];
    s.split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A function whose body GCC split off and inlined back into it (its DWARF holds an
/// inlined copy of itself, inside its own code: nginx's ngx_http_header_filter) is
/// patched whole; that copy is not reported as a copy in a caller that keeps old code.
#[test]
fn a_copy_of_a_function_inside_its_own_code_is_no_inlined_caller() {
    let exe = fixture("selfsplit", "selfsplit", &[]);
    // The shape under test, as the compiler made it here.
    let info = std::process::Command::new("readelf")
        .args(["--debug-dump=info"])
        .arg(&exe)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    if !info.contains("DW_TAG_inlined_subroutine") {
        println!("SKIPPED: this compiler did not inline header_filter's part back into it");
        return;
    }
    let mut t = Target::start(&exe, &[]);
    t.wait_line(|l| l.starts_with("filter "), Duration::from_secs(10));
    let p = patch_src(
        "selfsplit-fix",
        "#include <rlivepatch.h>\nstatic long f(void *r) { (void)r; return 7; }\nRLIVEPATCH_FUNC(header_filter, f);\n",
    );
    let pid = t.pid.to_string();
    let (code, out, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("is inlined into header_filter"), "{err}");
    assert!(!out.contains("\"inlined_into\": [\n"), "{out}");
    t.wait_line(|l| l == "filter 7", Duration::from_secs(10));
    rlp_ok(&["disable", &pid, "selfsplit-fix"]);
}

/// The analysis of the replacement (which registers it changes, deciding the preserving
/// path) reads the bytes that are loaded, never the file again: the file replaced by
/// something else right after it was read (rlivepatch stopped there) changes nothing.
#[test]
fn the_replacement_is_analysed_from_the_bytes_that_are_loaded() {
    let exe = callers(true);
    let scramble = patch("callers-scramble");
    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    let dir = fresh_dir("contract-swap");
    let file = dir.join("callers-scramble.so");
    std::fs::copy(&scramble, &file).unwrap();
    let run = StoppedRun::at("patch:read", &["apply", &pid, file.to_str().unwrap()], &[]);
    // Not a patch at all any more: read again, the analysis would fail.
    std::fs::write(dir.join("junk"), b"not an ELF file").unwrap();
    std::fs::rename(dir.join("junk"), &file).unwrap();
    run.finish();
    t.wait_line(|l| l.contains("ok"), std::time::Duration::from_secs(10));
    rlp_ok(&["disable", &pid, "callers-scramble"]);
}

/// The trace of `rlivepatch ARGS` run with the cache directory `cache`; it must succeed.
fn traced_in(cache: &std::path::Path, args: &[&str]) -> String {
    let o = rlp_env(
        args,
        &[("RLIVEPATCH_TRACE", "1"), ("RLIVEPATCH_CACHE", s(cache))],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {err}");
    err
}

/// The contracts kept in `cache` (among the other facts kept there).
fn kept_files(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(cache.join("kept"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        !p.file_name().unwrap().to_string_lossy().starts_with('.')
            && std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"parts\""))
    });
    v.sort();
    v
}

/// Apply the counter fix to `t` in `cache` and check it took; the trace. Then disable.
fn apply_counter_fix(t: &mut Target, cache: &std::path::Path) -> String {
    let pid = t.pid.to_string();
    let fix = patch("counter-fix");
    let trace = traced_in(cache, &["apply", &pid, s(&fix)]);
    t.wait_line(
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        Duration::from_secs(10),
    );
    rlp_ok(&["disable", &pid, "counter-fix"]);
    trace
}

#[test]
fn what_callers_rely_on_is_kept_for_one_version_of_the_file_and_only_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let analysed = |trace: &str| trace.contains("contract analysis of");
    let kept = |trace: &str| trace.contains("contract kept");
    let cache = fresh_dir("kept-contracts");
    let (mut t, _) = running_counter();
    // The first run analyses the program and keeps the answer; the next one reads it.
    let first = apply_counter_fix(&mut t, &cache);
    assert!(analysed(&first) && !kept(&first), "{first}");
    let files = kept_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let second = apply_counter_fix(&mut t, &cache);
    assert!(kept(&second) && !analysed(&second), "{second}");
    // A kept file others could have written is not used (and is replaced).
    std::fs::set_permissions(&files[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let open = apply_counter_fix(&mut t, &cache);
    assert!(
        analysed(&open) && open.contains("kept fact ignored"),
        "{open}"
    );
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Nor one that does not parse.
    std::fs::write(&files[0], b"{\"parts\":").unwrap();
    let garbled = apply_counter_fix(&mut t, &cache);
    assert!(analysed(&garbled) && !kept(&garbled), "{garbled}");
    assert!(kept(&apply_counter_fix(&mut t, &cache)));
    // Another file with the same bytes (a new inode: a reinstalled program) is
    // another key: analysed again, kept beside the first.
    let copy = cache.join("counter-copy");
    std::fs::copy(fixture("counter", "counter-pie", &["-fPIE", "-pie"]), &copy).unwrap();
    let mut other = Target::start(&copy, &["5"]);
    other.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
    let moved = apply_counter_fix(&mut other, &cache);
    assert!(analysed(&moved) && !kept(&moved), "{moved}");
    assert_eq!(kept_files(&cache).len(), 2);
}
