//! The consistency model: a switch happens only when no thread is inside, or will return
//! into, a function whose implementation changes. Fixtures are built -O2
//! -fomit-frame-pointer, so only DWARF CFI unwinding sees their frames.

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn cons() -> std::path::PathBuf {
    fixture("consistency", "consistency", &[])
}

/// A patch replacing `func` (a fixture function returning `one`) with one returning 2.
fn fix(func: &str, proto: &str, body: &str) -> std::path::PathBuf {
    patch_src(
        &format!("cons-{func}"),
        &format!(
            "#include <rlivepatch.h>\n#include <time.h>\n#include <unistd.h>\nstatic int new_{func}({proto}) {{ {body} }}\nRLIVEPATCH_FUNC({func}, new_{func});\nRLIVEPATCH_NAME(\"fix-{func}\");\n"
        ),
    )
}

fn sleep_body() -> &'static str {
    "struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L }; nanosleep(&ts, 0); return 2;"
}

#[test]
fn many_threads_busy_in_the_function() {
    let p = fix("busy_work", "int x", "(void)x; return 2;");
    let mut t = Target::start(&cons(), &["busy", "8"]);
    let pid = t.pid.to_string();
    for _ in 0..3 {
        let r = json(&rlp_ok(&["apply", &pid, p.to_str().unwrap(), "--json"]));
        // Switched with the check, not forced, and the new code runs from then on.
        assert_eq!(r["switch"]["forced"], false, "{r}");
        // (A thread that returned from the old code just before the switch may store
        // its value a moment after it: the new value comes, not at once.)
        t.next_lines(1);
        t.wait_line(|l| l == "busy v=2", T);
        rlp_ok(&["disable", &pid, "fix-busy_work"]);
        t.next_lines(1);
        t.wait_line(|l| l == "busy v=1", T);
        t.assert_running();
    }
}

#[test]
fn waits_for_a_sleeping_thread_without_cutting_its_sleep() {
    let p = fix("sleeper", "long ms", sleep_body());
    let mut t = Target::start_with_stdin(&cons(), &["sleeper", "2000"]);
    t.send("go");
    t.wait_line(|l| l == "entered", T);
    let r = json(&rlp_ok(&[
        "apply",
        &t.pid.to_string(),
        p.to_str().unwrap(),
        "--json",
        "--timeout",
        "15",
    ]));
    assert!(
        r["switch"]["caught_returns"].as_u64().unwrap() >= 1,
        "caught at the return: {r}"
    );
    // The call that was running finished in the old code, and slept its full time.
    let line = t.wait_line(|l| l.starts_with("slept"), T);
    let parts: Vec<&str> = line.split_whitespace().collect();
    let slept: i64 = parts[1].parse().unwrap();
    assert!(slept >= 2000, "nanosleep was cut short: {line}");
    assert!(line.ends_with("v=1"), "{line}");
    t.assert_running();
}

/// After a switch of the worker's function: the call in flight (if any) finishes in the
/// code it started in (`old`), and every call after it runs the code switched to (`new`).
fn in_flight_then(t: &mut Target, old: &str, new: &str) {
    let lines = t.next_lines(2);
    let ok = match lines[0].as_str() {
        l if l == old => lines[1] == new,
        l => l == new && lines[1] == new,
    };
    assert!(ok, "after the switch to {new:?}: {lines:?}");
}

#[test]
fn a_worker_loop_is_caught_at_a_return_every_time() {
    let p = fix("handler", "long ms", sleep_body());
    let mut t = Target::start(&cons(), &["loop", "1000"]);
    let pid = t.pid.to_string();
    t.wait_line(|l| l == "handled v=1", T);
    for _ in 0..3 {
        let r = json(&rlp_ok(&[
            "apply",
            &pid,
            p.to_str().unwrap(),
            "--json",
            "--timeout",
            "10",
        ]));
        assert_eq!(r["switch"]["forced"], false, "{r}");
        in_flight_then(&mut t, "handled v=1", "handled v=2");
        let r = json(&rlp_ok(&[
            "disable",
            &pid,
            "fix-handler",
            "--json",
            "--timeout",
            "10",
        ]));
        assert_eq!(r["switch"]["forced"], false, "{r}");
        in_flight_then(&mut t, "handled v=2", "handled v=1");
    }
    t.assert_running();
}

#[test]
fn a_function_several_frames_up_is_unsafe_until_it_returns() {
    let p = fix("outer", "void", "return 2;");
    let mut t = Target::start_with_stdin(&cons(), &["pipe"]);
    t.wait_seen(|l| l == "blocked", T);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("consistency", "outer");
    let before = t.snapshot(entry);
    // check: unsafe, naming the thread and the function, changing nothing.
    let (code, out, _) = rlp_full(&["check", &pid, p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 6);
    let r = json(&out);
    assert_eq!(r["safe"], false);
    let b = &r["blockers"][0];
    assert!(b["function"].as_str().unwrap().starts_with("outer"), "{r}");
    assert!(
        b["depth"].as_u64().unwrap() >= 2,
        "outer is frames up the stack of read: {r}"
    );
    assert!(b["comm"].is_string() && b["tid"].as_i64().unwrap() > 0);
    t.assert_untouched(&before, entry);
    // apply gives up at the timeout and leaves the target as it was.
    let (code, _, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("waiting for a safe moment to switch"),
        "progress on stderr: {err}"
    );
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("no safe moment to switch within 1s")
            && last.contains("will return into outer"),
        "{last}"
    );
    assert!(last.contains("--force"), "{last}");
    t.assert_untouched(&before, entry);
    // Once the read returns, outer returns, and the switch happens.
    t.send("write");
    t.wait_line(|l| l == "outer returned v=1", T);
    rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
    t.assert_running();
}

#[test]
fn a_thread_that_never_leaves_times_out_then_force() {
    let p = fix("spin_forever", "void", "return 2;");
    let mut t = Target::start(&cons(), &["spin"]);
    t.wait_seen(|l| l == "spinning", T);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("consistency", "spin_forever");
    let before = t.snapshot(entry);
    let (code, _, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("is executing spin_forever"), "{err}");
    assert!(
        err.contains("spin_forever+0x"),
        "the frame is symbolized: {err}"
    );
    t.assert_untouched(&before, entry);

    let (code, _, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --force"), "{err}");
    let l = json(&rlp_ok(&["list", &pid, "--json"]));
    assert_eq!(l["patches"][0]["forced"], true);
    assert!(rlp_ok(&["list", &pid]).contains("forced"));
    // A forced patch is never unloaded: disable restores the entry, the code stays.
    let (code, out, err) = rlp_full(&["disable", &pid, "fix-spin_forever"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("stays loaded") || err.contains("stays loaded"),
        "{out}{err}"
    );
    assert_eq!(t.read_mem(entry, 16), before.code);
    assert!(t.maps().contains("rlp:fix-spin_forever"));
    let l = json(&rlp_ok(&["list", &pid, "--json"]));
    assert_eq!(l["patches"][0]["state"], "disabled");
    t.assert_running();
}

#[test]
fn a_signal_handler_over_the_function_is_unsafe() {
    let p = fix("interrupted", "void", "return 2;");
    let mut t = Target::start_with_stdin(&cons(), &["signal"]);
    t.wait_seen(|l| l == "in handler", T);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("consistency", "interrupted");
    let before = t.snapshot(entry);
    let (code, out, _) = rlp_full(&["check", &pid, p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 6, "{out}");
    let r = json(&out);
    assert!(
        r["blockers"][0]["function"]
            .as_str()
            .unwrap()
            .starts_with("interrupted"),
        "{r}"
    );
    let (code, _, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("interrupted"), "{err}");
    t.assert_untouched(&before, entry);
    t.send("release");
    t.wait_line(|l| l == "interrupted returned v=1", T);
    let (code, out, _) = rlp_full(&["check", &pid, p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["safe"], true);
    rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
    t.assert_running();
}

#[test]
fn disable_waits_for_a_thread_inside_the_new_function() {
    let p = fix(
        "worker_step",
        "int x",
        "(void)x; for (;;) sleep(1000); return 2;",
    );
    let mut t = Target::start(&cons(), &["worker"]);
    let pid = t.pid.to_string();
    t.wait_line(|l| l == "step v=1", T);
    rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
    let entry = t.symbol_addr("consistency", "worker_step");
    // The worker enters the new function and stays there.
    let before = t.snapshot(entry);
    assert_eq!(before.code[0], 0xe9);
    let (code, _, err) = rlp_full(&["disable", &pid, "fix-worker_step", "--timeout", "1"]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("new_worker_step (new function of patch fix-worker_step)"),
        "{err}"
    );
    t.assert_running();
    assert_eq!(t.snapshot(entry), before, "still patched, nothing changed");
    assert!(rlp_ok(&["list", &pid]).contains("fix-worker_step [enabled]"));
}

#[test]
fn threads_created_and_exiting_during_apply() {
    let p = fix("churn_fn", "int x", "return x + 2;");
    let mut t = Target::start(&cons(), &["churn"]);
    let pid = t.pid.to_string();
    t.wait_line(|l| l.starts_with("churn"), T);
    for _ in 0..5 {
        rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
        t.assert_running();
        rlp_ok(&["disable", &pid, "fix-churn_fn"]);
        t.assert_running();
    }
    // Still churning: the count moves on (a line with a higher count comes in time).
    let n = |l: &str| l.rsplit("n=").next().unwrap().parse::<i64>().unwrap();
    let a = n(&t.wait_line(|l| l.starts_with("churn"), T));
    t.wait_line(|l| l.starts_with("churn") && n(l) > a, T);
}

#[test]
fn check_on_an_idle_process_is_safe() {
    let p = fix("busy_work", "int x", "(void)x; return 2;");
    let t = Target::start(&cons(), &["sleeper", "100"]);
    let out = rlp_ok(&["check", &t.pid.to_string(), p.to_str().unwrap()]);
    assert!(out.contains("would be safe"), "{out}");
    assert!(t.rlivepatch_maps().is_empty(), "check maps nothing");
    t.assert_running();
}

#[test]
fn sigint_while_waiting_undoes_everything() {
    let p = fix("spin_forever", "void", "return 2;");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut t = Target::start(&cons(), &["spin"]);
        t.wait_seen(|l| l == "spinning", T);
        let pid = t.pid.to_string();
        let entry = t.symbol_addr("consistency", "spin_forever");
        let before = t.snapshot(entry);
        let (mut child, rx) = rlp_spawn(&["apply", &pid, p.to_str().unwrap(), "--timeout", "60"]);
        // Interrupt once it is waiting (a return trampoline is planted by then).
        wait_stderr(&rx, |l| l.contains("waiting for a safe moment"));
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(7), "interrupted exit code");
        let last = wait_stderr(&rx, |l| l.starts_with("rlivepatch: error:"));
        assert!(last.contains("interrupted by SIG"), "{last}");
        t.assert_untouched(&before, entry);
    }
}

#[test]
fn a_stack_that_cannot_be_unwound_is_unsafe() {
    let p = fix("busy_work", "int x", "(void)x; return 2;");
    let mut t = Target::start(&cons(), &["nocfi"]);
    t.wait_seen(|l| l == "generated", T);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("consistency", "busy_work");
    let before = t.snapshot(entry);
    let (code, out, _) = rlp_full(&["check", &pid, p.to_str().unwrap(), "--json"]);
    assert_eq!(code, 6, "{out}");
    let r = json(&out);
    assert!(r["blockers"][0]["unreliable"].is_string(), "{r}");
    let (code, _, err) = rlp_full(&["apply", &pid, p.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("unreliable stack"), "{err}");
    t.assert_untouched(&before, entry);
}

/// A program built without unwind tables (and without -g, so no .debug_frame either):
/// no stack can be checked, which does not pass with time, so apply says so at once
/// instead of after the timeout; --force patches it (and disable --force takes it back,
/// leaving the forced patch's code loaded).
#[test]
fn a_program_without_unwind_tables_is_refused_at_once_and_forced() {
    let exe = cc(
        "counter-nocfi",
        &[
            "-O2",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "fixtures/counter.c",
        ],
    );
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("counter-nocfi", "compute");
    let before = t.snapshot(entry);
    let p = patch("counter-fix");
    let p = p.to_str().unwrap();
    let err = rlp_fails(&["apply", &pid, p], 6);
    assert!(err.contains("cannot be unwound"), "{err}");
    assert!(err.contains("--force"), "{err}");
    t.assert_untouched(&before, entry);

    let (code, _, err) = rlp_full(&["apply", &pid, p, "--force"]);
    assert_eq!(code, 0, "{err}");
    for l in t.next_lines(2) {
        let (i, v) = value(&l);
        assert_eq!(v, i * 100, "{l}");
    }
    let (code, _, err) = rlp_full(&["disable", &pid, "counter-fix", "--force"]);
    assert_eq!(code, 0, "{err}");
    for l in t.next_lines(2) {
        let (i, v) = value(&l);
        assert_eq!(v, i + 1, "{l}");
    }
    assert_eq!(t.read_mem(entry, 16), before.code);
}

/// A switch that gives up while one thread it caught at a return is held and another is
/// still inside the function, and taking a trampoline away fails: every other thread's
/// trampoline is still taken away before rlivepatch's memory goes (a thread returning
/// into memory that is gone would crash).
#[test]
fn a_failed_release_of_a_caught_thread_leaves_no_thread_returning_into_nothing() {
    let p = fix("handler", "long ms", sleep_body());
    let mut t = Target::start(&cons(), &["loop2", "3000"]);
    let pid = t.pid.to_string();
    t.wait_line(|l| l.ends_with("ms=3000"), T);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &pid, p.to_str().unwrap(), "--timeout", "2"])
        .env("RLIVEPATCH_FAULT", "fail:catch:release")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    // The long sleeper returns from the call it was in when the switch gave up, and goes
    // on: twice, so that its return went through its own code.
    t.next_lines(0);
    t.wait_line(|l| l.ends_with("ms=3000"), T);
    t.wait_line(|l| l.ends_with("ms=3000"), T);
    t.assert_running();
    assert!(t.rlivepatch_maps().is_empty(), "{:?}", t.rlivepatch_maps());
    assert!(rlp_ok(&["list", &pid]).contains("no patches applied"));
}
