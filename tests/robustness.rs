//! Robustness: whatever the target is doing and whatever rlivepatch is fed, it does the
//! job or leaves the process exactly as it was, with a one-line cause. Every test checks
//! the target from the outside afterwards: alive, threads running, entry bytes, maps and
//! open fds, and the fixture's own self-checks.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A patch of `tick()` (the fixtures' function for this), returning x + 2.
fn tick_patch() -> PathBuf {
    func_patch("tick", "tick", "static int f(int x) { return x + 2; }")
}

/// apply and disable `n` times, each must succeed, and the target shows tick=2 between.
fn cycles(t: &mut Target, prefix: &str, n: usize) {
    let pid = t.pid.to_string();
    let p = tick_patch();
    for _ in 0..n {
        rlp_ok(&["apply", &pid, s(&p)]);
        t.wait_line(|l| l.starts_with(prefix) && l.ends_with("tick=2"), T);
        rlp_ok(&["disable", &pid, "tick"]);
        t.wait_line(|l| l.starts_with(prefix) && l.ends_with("tick=1"), T);
    }
    t.assert_running();
}

#[test]
fn system_calls_in_progress_see_no_eintr_no_short_sleep_no_lost_data() {
    let exe = fixture("syscalls", "syscalls", &[]);
    let mut t = Target::start(&exe, &[]);
    let before = t.wait_line(
        |l| l.starts_with("syscalls") && field(l, "accepts") > 0 && field(l, "epolls") > 0,
        T,
    );
    cycles(&mut t, "syscalls", 5);
    // More of everything happened, and nothing went wrong.
    let after = t.wait_line(
        |l| l.starts_with("syscalls") && field(l, "sleeps") > field(&before, "sleeps") + 10,
        T,
    );
    for key in ["reads", "conds", "epolls", "accepts", "polls"] {
        assert!(field(&after, key) > field(&before, key), "{key}: {after}");
    }
    for key in ["short", "eintr", "lost"] {
        assert_eq!(field(&after, key), 0, "{key}: {after}");
    }
    // (Its sockets come and go and its threads' arenas grow: the fixture's own maps and
    // fds are not compared here; the other tests do.)
    assert!(t.rlivepatch_maps().is_empty());
}

#[test]
fn signals_are_handled_exactly_once() {
    let exe = fixture("signals", "signals", &[]);
    let mut t = Target::start(&exe, &[]);
    let pid = t.pid;
    let p = tick_patch();
    let first = t.wait_line(
        |l| l.starts_with("signals") && field(l, "chld") > 0 && field(l, "alrm") > 0,
        T,
    );
    let mut sent = 0;
    for _ in 0..5 {
        // Real-time signals queue: every one must arrive, once.
        for _ in 0..40 {
            // SAFETY: kill(2) on the process this test started.
            unsafe { libc::kill(pid, libc::SIGRTMIN()) };
            sent += 1;
        }
        rlp_ok(&["apply", &pid.to_string(), s(&p)]);
        for _ in 0..40 {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGRTMIN()) };
            sent += 1;
        }
        rlp_ok(&["disable", &pid.to_string(), "tick"]);
    }
    let last = t.wait_line(|l| l.starts_with("signals") && field(l, "rt") >= sent, T);
    assert_eq!(field(&last, "rt"), sent, "{last}");
    assert_eq!(field(&last, "lost"), 0, "{last}");
    assert_eq!(field(&last, "doubled"), 0, "{last}");
    for key in ["usr1", "chld", "alrm"] {
        assert!(field(&last, key) > field(&first, key), "{key}: {last}");
    }
    t.assert_running();
}

/// Run rlivepatch, failing the test if it does not finish (a hang detector, not a time
/// measurement: rlivepatch's own timeouts are far shorter).
fn rlp_bounded(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        if Instant::now() > limit {
            let _ = child.kill();
            panic!("rlivepatch {args:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_deadlock_with_threads_in_malloc_and_dlopen() {
    let lib = greeter().with_file_name("libgreet.so");
    let exe = fixture("hammer", "hammer", &["-ldl"]);
    let mut t = Target::start(&exe, &[s(&lib)]);
    t.wait_line(|l| l.starts_with("hammer") && field(l, "dlopens") > 0, T);
    let pid = t.pid.to_string();
    let p = tick_patch();
    for _ in 0..10 {
        let (code, err) = rlp_bounded(&["apply", &pid, s(&p)]);
        assert!(code == 0 || code == 6, "apply: {code} {err}");
        if code == 0 {
            let (code, err) = rlp_bounded(&["disable", &pid, "tick"]);
            assert_eq!(code, 0, "disable: {err}");
        }
    }
    let before = t.wait_line(|l| l.starts_with("hammer"), T);
    let after = t.wait_line(
        |l| l.starts_with("hammer") && field(l, "mallocs") > field(&before, "mallocs"),
        T,
    );
    assert!(
        field(&after, "dlopens") > field(&before, "dlopens"),
        "{after}"
    );
    t.assert_running();
}

#[test]
fn registers_and_the_whole_xsave_area_are_preserved() {
    let exe = fixture("vector", "vector", &["-mavx2"]);
    let mut t = Target::start(&exe, &[]);
    let before = t.wait_line(|l| l.starts_with("vector") && field(l, "checks") > 0, T);
    cycles(&mut t, "vector", 5);
    let after = t.wait_line(
        |l| l.starts_with("vector") && field(l, "checks") > field(&before, "checks"),
        T,
    );
    assert_eq!(field(&after, "bad"), 0, "{after}");
    t.assert_running();
}

// ---- target states ----

fn counter() -> (Target, u64, Snapshot) {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let t = Target::start(&exe, &["5"]);
    let entry = t.symbol_addr("counter-pie", "compute");
    let snap = t.snapshot(entry);
    (t, entry, snap)
}

fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn a_process_traced_by_another_tool_names_the_tracer() {
    require_tool("strace");
    let (t, entry, snap) = counter();
    let fix = patch("counter-fix");
    let mut strace = Command::new("strace")
        .args(["-p", &t.pid.to_string(), "-o", "/dev/null"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("strace to attach", || {
        status_field(t.pid, "TracerPid") == strace.id().to_string()
    });
    let e = rlp_fails(&["apply", &t.pid.to_string(), s(&fix)], 3);
    assert!(
        e.contains(&format!("already traced by strace (pid {})", strace.id())),
        "{e}"
    );
    let _ = strace.kill();
    let _ = strace.wait();
    wait_for("strace to detach", || {
        status_field(t.pid, "TracerPid") == "0"
    });
    t.assert_untouched(&snap, entry);
}

#[test]
fn a_stopped_process_is_refused_and_stays_stopped() {
    let (t, entry, snap) = counter();
    let pid = t.pid;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut st = 0;
    // SAFETY: waitpid(2) on our own child; consumes the stop we caused.
    unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
    assert!(libc::WIFSTOPPED(st));
    let e = rlp_fails(&["apply", &pid.to_string(), s(&patch("counter-fix"))], 3);
    assert!(e.contains("is stopped") && e.contains("kill -CONT"), "{e}");
    assert!(status_field(pid, "State").starts_with('T'), "still stopped");
    // The parent saw no other stop and no continue.
    // SAFETY: as above, without blocking.
    let r = unsafe {
        libc::waitpid(
            pid,
            &mut st,
            libc::WUNTRACED | libc::WCONTINUED | libc::WNOHANG,
        )
    };
    assert_eq!(r, 0, "no new job-control event for the parent");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for("the process to continue", || {
        !status_field(pid, "State").starts_with('T')
    });
    t.assert_untouched(&snap, entry);
}

#[test]
fn zombies_kernel_threads_32_bit_static_and_musl_processes_get_precise_messages() {
    let fix = patch("counter-fix");
    // A zombie: our child that exited and was not reaped.
    let mut z = Command::new("true").spawn().unwrap();
    wait_for("a zombie", || {
        status_field(z.id() as i32, "State").starts_with('Z')
    });
    let e = rlp_fails(&["apply", &z.id().to_string(), s(&fix)], 3);
    assert!(e.contains("is a zombie"), "{e}");
    let _ = z.wait();
    // A kernel thread.
    let e = rlp_fails(&["apply", "2", s(&fix)], 3);
    assert!(e.contains("kernel thread"), "{e}");
    // A 32-bit program: a minimal i386 executable that loops on pause().
    let elf32 = build_dir().join("pause32");
    std::fs::write(&elf32, i386_pause_program()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&elf32, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Ok(mut c) = Command::new(&elf32).spawn() {
        wait_for("the 32-bit program to run", || {
            status_field(c.id() as i32, "State").starts_with('S')
        });
        let e = rlp_fails(&["apply", &c.id().to_string(), s(&fix)], 3);
        assert!(e.contains("is a 32-bit program"), "{e}");
        let _ = c.kill();
        let _ = c.wait();
    }
    // Statically linked: no dynamic loader.
    let stat = fixture("counter", "counter-static", &["-static"]);
    let t = Target::start(&stat, &["5"]);
    let e = rlp_fails(&["apply", &t.pid.to_string(), s(&fix)], 3);
    assert!(
        e.contains("statically linked") && e.contains("no dynamic loader"),
        "{e}"
    );
    t.assert_running();
    drop(t);
    // musl.
    require_tool("musl-gcc");
    let dir = build_dir();
    let musl = dir.join("counter-musl");
    let st = Command::new("musl-gcc")
        .args(["-O2", "-o", s(&musl), "fixtures/counter.c"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(st.success());
    let t = Target::start(&musl, &["5"]);
    let e = rlp_fails(&["apply", &t.pid.to_string(), s(&fix)], 3);
    assert!(e.contains("uses musl libc"), "{e}");
    t.assert_running();
}

/// An i386 ELF executable: `1: mov $29,%eax; int $0x80; jmp 1b` (pause forever).
fn i386_pause_program() -> Vec<u8> {
    let code: [u8; 9] = [0xb8, 29, 0, 0, 0, 0xcd, 0x80, 0xeb, 0xf7];
    let base: u32 = 0x0804_8000;
    let total = (52 + 32 + code.len()) as u32;
    let mut b = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let h16 = |b: &mut Vec<u8>, v: u16| b.extend(v.to_le_bytes());
    let h32 = |b: &mut Vec<u8>, v: u32| b.extend(v.to_le_bytes());
    h16(&mut b, 2); // ET_EXEC
    h16(&mut b, 3); // EM_386
    h32(&mut b, 1);
    h32(&mut b, base + 84); // entry
    h32(&mut b, 52); // phoff
    h32(&mut b, 0);
    h32(&mut b, 0);
    h16(&mut b, 52);
    h16(&mut b, 32);
    h16(&mut b, 1);
    h16(&mut b, 0);
    h16(&mut b, 0);
    h16(&mut b, 0);
    for v in [1, 0, base, base, total, total, 5, 0x1000] {
        h32(&mut b, v);
    }
    b.extend(code);
    b
}

#[test]
fn a_target_exiting_midway_is_a_clear_error() {
    let cons = fixture("consistency", "consistency", &[]);
    let p = patch_src(
        "exit-spin",
        "#include <rlivepatch.h>\nstatic int f(void) { return 2; }\nRLIVEPATCH_FUNC(spin_forever, f);\n",
    );
    let mut t = Target::start(&cons, &["spin"]);
    t.wait_seen(|l| l == "spinning", T);
    let (mut child, rx) = rlp_spawn(&["apply", &t.pid.to_string(), s(&p), "--timeout", "60"]);
    wait_stderr(&rx, |l| l.contains("waiting for a safe moment"));
    let _ = t.child.kill();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(3));
    let e = wait_stderr(&rx, |l| l.starts_with("rlivepatch: error:"));
    assert!(e.contains("exited"), "{e}");
}

// ---- the tool killed at any moment ----

/// Kill rlivepatch at `point` (a fault-injection point), then check that the target is
/// alive, that `list` tells, and that `repair` leaves it consistent: the patch either
/// fully applied or not at all, and after disabling it the maps and fds are as before.
fn killed_at(
    t: &mut Target,
    before: &(Vec<String>, usize),
    args: &[&str],
    point: &str,
    patched: impl Fn(&str) -> bool,
    original: impl Fn(&str) -> bool,
    name: &str,
) {
    let pid = t.pid.to_string();
    let st = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .env("RLIVEPATCH_FAULT", point)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{point}: rlivepatch should have been killed"
    );
    wait_for("the tracer to go", || {
        status_field(t.pid, "TracerPid") == "0"
    });
    t.assert_running();
    let listed = rlp_ok(&["list", &pid]);
    let repaired = rlp_ok(&["repair", &pid]);
    // Consistent: the record says applied or not, and the code agrees.
    let applied = json(&rlp_ok(&["list", &pid, "--json"]))["patches"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == name);
    if applied {
        t.assert_settled(2, patched, "patched, as the record says");
        rlp_ok(&["disable", &pid, name]);
    }
    t.assert_settled(2, original, "original, as the record says");
    assert!(
        rlp_ok(&["list", &pid]).contains("no patches applied"),
        "{point}: {listed} {repaired}"
    );
    assert_eq!(
        (t.stable_maps(), t.fd_count()),
        *before,
        "{point}: left something behind; list said {listed}, repair said {repaired}"
    );
    t.assert_running();
}

#[test]
fn sigkill_at_any_step_of_apply_and_disable_is_repaired() {
    let (mut t, pid, fix) = counter_pie("5");
    let base = (t.stable_maps(), t.fd_count());
    let patched = |l: &str| l.contains(" = ") && value(l).1 == value(l).0 * 100;
    let original = |l: &str| l.contains(" = ") && value(l).1 == value(l).0 + 1;
    for point in [
        "apply:attached",
        "inject:in_call",
        "apply:pending",
        "apply:loaded",
        "apply:planned",
        "apply:pre_patched",
        "switch:written",
        "apply:switched",
        "apply:post_patched",
        "apply:committed",
        "close",
    ] {
        killed_at(
            &mut t,
            &base,
            &["apply", &pid, s(&fix)],
            point,
            patched,
            original,
            "counter-fix",
        );
    }
    for point in [
        "disable:pending",
        "disable:pre_unpatched",
        "switch:written",
        "disable:switched",
        "disable:committed",
        "close",
    ] {
        rlp_ok(&["apply", &pid, s(&fix)]);
        killed_at(
            &mut t,
            &base,
            &["disable", &pid, "counter-fix"],
            point,
            patched,
            original,
            "counter-fix",
        );
    }
}

#[test]
fn sigkill_while_a_return_trampoline_is_planted_is_repaired() {
    let cons = fixture("consistency", "consistency", &[]);
    let p = func_patch(
        "kill-handler",
        "handler",
        "#include <time.h>\nstatic int f(long ms) { struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L }; nanosleep(&ts, 0); return 2; }",
    );
    let mut t = Target::start(&cons, &["loop", "300"]);
    t.wait_line(|l| l == "handled v=1", T);
    let pid = t.pid.to_string();
    let base = (t.stable_maps(), t.fd_count());
    killed_at(
        &mut t,
        &base,
        &["apply", &pid, s(&p)],
        "switch:planted",
        |l| l == "handled v=2",
        |l| l == "handled v=1",
        "kill-handler",
    );
    // The worker went on through the trampoline, or had it taken off by repair.
    t.wait_line(|l| l == "handled v=1", T);
}

// ---- entries owned by someone else ----

#[test]
fn entries_owned_by_someone_else_are_refused_and_page_crossing_entries_work() {
    let exe = fixture("entries", "entries", &[]);
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("entries", "never_called");
    let orig = t.read_mem(entry, 5);
    let write = |t: &Target, b: &[u8]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", t.pid))
            .unwrap();
        f.write_all_at(b, entry).unwrap();
    };
    let p = patch_src(
        "never",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(never_called, f);\n",
    );
    // A debugger's breakpoint.
    write(&t, &[0xcc]);
    let snap = t.snapshot(entry);
    let e = rlp_fails(&["apply", &pid, s(&p)], 5);
    assert!(e.contains("breakpoint (int3)"), "{e}");
    t.assert_untouched(&snap, entry);
    // Another tool's jump.
    write(&t, &[0xe9, 0, 0, 0, 0]);
    let snap = t.snapshot(entry);
    let e = rlp_fails(&["apply", &pid, s(&p)], 5);
    assert!(e.contains("code that rlivepatch did not write"), "{e}");
    t.assert_untouched(&snap, entry);
    write(&t, &orig);
    // A branch into bytes 1..4 of the entry.
    let b = patch_src(
        "branchy",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(branchy, f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&b)], 5);
    assert!(e.contains("branch at +0x9 into byte 2 of its entry"), "{e}");
    // An entry whose 5 bytes cross a page boundary.
    let straddle = t.symbol_addr("entries", "straddle");
    assert_eq!(straddle % 4096, 4093);
    let sp = patch_src(
        "straddle",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x * 10; }\nRLIVEPATCH_FUNC(straddle, f);\n",
    );
    rlp_ok(&["apply", &pid, s(&sp)]);
    t.wait_line(
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 10 && value(l).0 > 0,
        T,
    );
    rlp_ok(&["disable", &pid, "straddle"]);
    t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 + 1, T);
    t.assert_running();
}

// ---- bad patch files ----

#[test]
fn every_bad_patch_file_gets_a_one_line_cause() {
    let (mut t, entry, snap) = counter();
    let pid = t.pid.to_string();
    let dir = build_dir().join("bad2");
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(patch("counter-fix")).unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (put("empty.so", b""), "is empty"),
        (
            put("truncated.so", &good[..good.len() / 2]),
            "not a valid ELF shared object",
        ),
        (put("i386.so", &i386_pause_program()), "32-bit ELF file"),
        (
            {
                let f = rlivepatch::elf::symbols::ElfFile::from_bytes("x", good.clone()).unwrap();
                let off = f.section(".rlivepatch").unwrap().offset as usize;
                let mut bad = good.clone();
                bad[off] ^= 0xff;
                put("corrupt.so", &bad)
            },
            "corrupt metadata",
        ),
        (
            patch_src(
                "not-in-patch",
                "#include <rlivepatch.h>\n#include <stdio.h>\nRLIVEPATCH_FUNC(compute, printf);\n",
            ),
            "points to printf, which is not defined in the patch",
        ),
    ];
    for (path, want) in &cases {
        let e = rlp_fails(&["apply", &pid, s(path)], 4);
        assert!(e.contains(want), "{}: {e}", path.display());
    }
    // A patch whose dlopen fails: a library it needs is missing. dlerror's text is shown,
    // and nothing stays loaded.
    let lib = cc(
        "libmissing.so",
        &["-shared", "-fPIC", "-O2", "-x", "c", "/dev/null"],
    );
    let src = build_dir().join("needs-missing.c");
    std::fs::write(&src, "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(compute, f);\n").unwrap();
    let so = dir.join("needs-missing.so");
    let d = build_dir().display().to_string();
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
            "patches/include",
            s(&src),
            "-o",
            s(&so),
            "-L",
            &d,
            "-Wl,--no-as-needed",
            "-lmissing",
        ])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(st.success());
    let hidden = dir.join("moved-away.so");
    std::fs::rename(&lib, &hidden).unwrap();
    let e = rlp_fails(&["apply", &pid, s(&so)], 4);
    std::fs::rename(&hidden, &lib).unwrap();
    assert!(
        e.contains("could not load the patch")
            && e.contains("libmissing.so: cannot open shared object file"),
        "{e}"
    );
    t.assert_untouched(&snap, entry);
    for l in t.next_lines(2) {
        assert_eq!(value(&l).1, value(&l).0 + 1);
    }
}

// ---- two runs at once ----

#[test]
fn a_second_run_waits_for_the_first() {
    let cons = fixture("consistency", "consistency", &[]);
    let spin = patch_src(
        "two-spin",
        "#include <rlivepatch.h>\nstatic int f(void) { return 2; }\nRLIVEPATCH_FUNC(spin_forever, f);\n",
    );
    let other = patch_src(
        "two-other",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(churn_fn, f);\n",
    );
    let mut t = Target::start(&cons, &["spin"]);
    t.wait_seen(|l| l == "spinning", T);
    let pid = t.pid.to_string();
    let (mut first, rx1) = rlp_spawn(&["apply", &pid, s(&spin), "--timeout", "2"]);
    wait_stderr(&rx1, |l| l.contains("waiting for a safe moment"));
    let (mut second, rx2) = rlp_spawn(&["apply", &pid, s(&other)]);
    let w = wait_stderr(&rx2, |l| l.contains("waiting for rlivepatch pid"));
    assert!(w.contains(&first.id().to_string()), "{w}");
    assert_eq!(first.wait().unwrap().code(), Some(6), "the first times out");
    assert_eq!(
        second.wait().unwrap().code(),
        Some(0),
        "the second goes on after it"
    );
    assert!(rlp_ok(&["list", &pid]).contains("two-other"));
    rlp_ok(&["disable", &pid, "two-other"]);
    t.assert_running();
}

#[test]
fn sigint_at_any_moment_finishes_or_undoes() {
    let (mut t, pid, fix) = counter_pie("5");
    let base = (t.stable_maps(), t.fd_count());
    // Moments spread over the whole run (attach, load, switch, record, detach).
    for (i, delay_us) in [
        0u64, 500, 1500, 3000, 5000, 8000, 12000, 20000, 30000, 45000,
    ]
    .into_iter()
    .enumerate()
    {
        let sig = if i % 2 == 0 {
            libc::SIGINT
        } else {
            libc::SIGTERM
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(["apply", &pid, s(&fix)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay_us));
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let code = child.wait().unwrap().code();
        // Exit 0: it finished; 7: it undid what it had begun. (None: the signal came before
        // rlivepatch's main ran, and it was killed having done nothing.)
        assert!(
            matches!(code, Some(0) | Some(7) | None),
            "delay {delay_us}: exit {code:?}"
        );
        wait_for("the tracer to go", || {
            status_field(t.pid, "TracerPid") == "0"
        });
        t.assert_running();
        let applied = rlp_ok(&["list", &pid]).contains("counter-fix");
        assert_eq!(
            applied,
            code == Some(0),
            "delay {delay_us}: applied only when it finished"
        );
        if applied {
            t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 * 100, T);
            rlp_ok(&["disable", &pid, "counter-fix"]);
        }
        t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 + 1, T);
        assert_eq!((t.stable_maps(), t.fd_count()), base, "delay {delay_us}");
    }
}

/// A process under seccomp: its filter is run on the calls loading a patch makes before
/// the first one; a filter that would kill the process refuses the apply with the target
/// untouched, a filter that allows them lets it through, and a thread in strict mode is
/// never the one borrowed.
#[test]
fn seccomp_filters_are_checked_before_any_injected_call() {
    let exe = fixture("seccomp-counter", "seccomp-counter", &[]);
    let fix = patch("counter-fix");
    let fix = fix.to_str().unwrap();
    let start = |mode: &str| {
        let t = Target::start(&exe, &["5", mode]);
        let entry = t.symbol_addr("seccomp-counter", "compute");
        let snap = t.snapshot(entry);
        (t, entry, snap)
    };
    let printed_values = |t: &mut Target, patched: bool| {
        for l in t.next_lines(2) {
            let (i, v) = value(&l);
            assert_eq!(v, if patched { i * 100 } else { i + 1 }, "{l}");
        }
    };
    let patch_and_unpatch = |t: &mut Target| {
        let pid = t.pid.to_string();
        rlp_ok(&["apply", &pid, fix]);
        printed_values(t, true);
        rlp_ok(&["disable", &pid, "counter-fix"]);
        printed_values(t, false);
    };

    // memfd_create would kill the process: refused, and the process lives on unpatched.
    let (mut t, entry, snap) = start("kill-memfd");
    let e = rlp_fails(&["apply", &t.pid.to_string(), fix], 3);
    assert!(e.contains("does not allow memfd_create"), "{e}");
    assert!(e.contains("kill the process"), "{e}");
    t.assert_untouched(&snap, entry);
    printed_values(&mut t, false);
    drop(t);

    // gettid, which a borrowed thread leaving the gate on its own makes (to give back
    // the arena lent to it): refused likewise.
    let (mut t, entry, snap) = start("kill-gettid");
    let e = rlp_fails(&["apply", &t.pid.to_string(), fix], 3);
    assert!(e.contains("does not allow gettid"), "{e}");
    t.assert_untouched(&snap, entry);
    printed_values(&mut t, false);
    drop(t);

    // A filter that allows what loading needs: patched and unpatched as usual.
    let (mut t, entry, snap) = start("allow-most");
    patch_and_unpatch(&mut t);
    assert_eq!(t.read_mem(entry, 16), snap.code);
    drop(t);

    // A filter that would kill the process for futex_waitv: the borrowed thread waits
    // between calls where the filter lets it, and the process lives on, patched.
    let (mut t, entry, snap) = start("kill-waitv");
    patch_and_unpatch(&mut t);
    assert_eq!(t.read_mem(entry, 16), snap.code);
    drop(t);

    // The main thread in strict mode is passed over for the printing thread.
    let (mut t, _, _) = start("strict-main");
    patch_and_unpatch(&mut t);
    drop(t);

    // Its only thread in strict mode: refused at once, untouched.
    let (t, entry, snap) = start("strict");
    let e = rlp_fails(&["apply", &t.pid.to_string(), fix], 3);
    assert!(e.contains("seccomp strict mode"), "{e}");
    t.assert_untouched(&snap, entry);
}

/// The only thread at a safe point for the loader is a worker that never allocated (the
/// main thread sorts in the C library): the loader's allocations on it come from the main
/// arena, and no malloc arena of its own is left behind.
#[test]
fn a_borrowed_thread_without_an_arena_leaves_no_arena() {
    let exe = fixture("arena", "arena", &[]);
    let fix = func_patch(
        "arena-fix",
        "value",
        "static int f(int x) { return x + 1000; }",
    );
    let mut t = Target::start(&exe, &[]);
    let pid = t.pid.to_string();
    let arenas = |t: &Target| {
        t.maps()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (a, b) = f[0].split_once('-').unwrap();
                let size =
                    u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
                f.len() == 5 && size >= 16 << 20
            })
            .count()
    };
    let before = arenas(&t);
    for _ in 0..3 {
        rlp_ok(&["apply", &pid, s(&fix)]);
        t.assert_settled(1, |l| field(l, "value") == field(l, "k") + 1000, "patched");
        rlp_ok(&["disable", &pid, "arena-fix"]);
        t.assert_settled(1, |l| field(l, "value") == field(l, "k") + 1, "original");
    }
    assert_eq!(
        arenas(&t),
        before,
        "a malloc arena was left behind:\n{}",
        t.maps()
    );
}
