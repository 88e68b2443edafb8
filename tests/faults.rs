//! Fault injection: rlivepatch killed with SIGKILL at random moments of apply and
//! disable. After each kill the target must be alive with no thread stopped, and the next
//! run (`repair`, then `list`) must find it consistent: the patch fully applied and
//! recorded, or not at all; in the end its maps and fds are back where they were. Short
//! here (FAULT_RUNS, default 20); the full run is `scripts/faults.sh`.

mod common;
use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tracer(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn sigkill_at_random_moments() {
    let runs = env_count("FAULT_RUNS", 20);
    let seed = env_seed("FAULT_SEED");
    println!("faults: seed {seed}, {runs} runs");
    let (mut t, pid, fix) = counter_pie("2");
    let base = (t.stable_maps(), t.fd_count());
    let patched = |l: &str| l.contains(" = ") && value(l).1 == value(l).0 * 100;
    let original = |l: &str| l.contains(" = ") && value(l).1 == value(l).0 + 1;
    // How long an operation takes here, to spread the kills over it.
    let t0 = Instant::now();
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    let apply_span = t0.elapsed() * 6 / 5;
    let t1 = Instant::now();
    rlp_ok(&["disable", &pid, "counter-fix"]);
    let disable_span = t1.elapsed() * 6 / 5;
    let mut rng = Rng(seed);
    let (mut killed, mut finished, mut failures) = (0, 0, Vec::new());
    let mut applied = false;
    for run in 0..runs {
        let args: Vec<String> = if applied {
            vec!["disable".into(), pid.clone(), "counter-fix".into()]
        } else {
            vec!["apply".into(), pid.clone(), fix.to_str().unwrap().into()]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let span = if applied { disable_span } else { apply_span };
        let delay = Duration::from_nanos(rng.next() % span.as_nanos().max(1) as u64);
        std::thread::sleep(delay);
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.signal() == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            finished += 1;
        }
        // The target lives and is no longer traced; then the next run repairs it.
        let limit = Instant::now() + Duration::from_secs(10);
        while tracer(t.pid) != "0" && Instant::now() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
        let check = (|| -> Result<bool, String> {
            if tracer(t.pid) != "0" {
                return Err("still traced".into());
            }
            t.assert_running();
            let o = rlp(&["repair", &pid]);
            if !o.status.success() {
                return Err(format!(
                    "repair failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            let v = json(&rlp_ok(&["list", &pid, "--json"]));
            if v.get("pending").is_some() {
                return Err(format!("still pending after repair: {v}"));
            }
            let now_applied = v["patches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "counter-fix");
            // The code agrees with the record: the lines printed from now on.
            t.assert_settled(
                2,
                |l| if now_applied { patched(l) } else { original(l) },
                if now_applied { "patched" } else { "original" },
            );
            Ok(now_applied)
        })();
        match check {
            Ok(a) => applied = a,
            Err(e) => failures.push(format!("run {run} (delay {delay:?}, {}): {e}", args[0])),
        }
    }
    // Alive after the last run too (its check may have read lines printed before).
    t.assert_running();
    if applied {
        rlp_ok(&["disable", &pid, "counter-fix"]);
    }
    rlp_ok(&["repair", &pid]);
    t.wait_line(original, Duration::from_secs(20));
    if (t.stable_maps(), t.fd_count()) != base {
        failures.push("maps or fds not back to where they were".into());
    }
    println!(
        "faults: {runs} runs ({killed} killed mid-operation, {finished} finished first), {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
}

/// A write of the switch that fails after some of its bytes landed (one across a page it
/// may not write): those bytes go back too, with every write before it; the process runs
/// its original code.
#[test]
fn a_write_cut_short_leaves_the_entry_as_it_was() {
    let (mut t, pid, fix) = counter_pie("2");
    let (at, before) = t.snapshot_of("counter-pie", "compute");
    let o = rlp_env(
        &["apply", &pid, fix.to_str().unwrap()],
        &[("RLIVEPATCH_FAULT", "fail:switch:write")],
    );
    assert_ne!(o.status.code(), Some(0));
    t.assert_untouched(&before, at);
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
}

/// A read of mapped code that fails because its file no longer holds that page (a file
/// truncated under the program; the fault stands for it) is that failure: not taken for
/// a library unloaded meanwhile, and not retried as one.
#[test]
fn a_failed_read_of_mapped_code_is_no_dlclose() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let fix = patch("counter-fix");
    let t = Target::start(&exe, &["2"]);
    let (at, before) = t.snapshot_of("counter-pie", "compute");
    let o = rlp_env(
        &["apply", &t.pid.to_string(), fix.to_str().unwrap()],
        &[("RLIVEPATCH_FAULT", "fail:read_code,fail:read_code:short")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("dlclose") && !err.contains("starting over"),
        "{err}"
    );
    assert!(
        err.contains("Input/output error") && err.contains("truncated"),
        "{err}"
    );
    t.assert_untouched(&before, at);
}

/// Run rlivepatch with `RLIVEPATCH_FAULT=fail:<step>` and `--json`.
fn rlp_failing(step: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .arg("--json")
        .env("RLIVEPATCH_FAULT", format!("fail:{step}"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let json = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (
        o.status.code(),
        json,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// A disable whose switch happened but whose unload then fails is a disable: exit 0, the
/// process runs its original code, the report names what stayed loaded; `repair` clears
/// it, and the maps and fds are back where they were before the apply.
#[test]
fn a_failed_unload_after_the_switch_is_a_disable_with_a_leftover() {
    let (mut t, pid, base) = counter_with_fix();
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        "patched",
    );
    let (code, json, err) = rlp_failing("unload", &["disable", &pid, "counter-fix"]);
    assert_eq!(code, Some(0), "{err}");
    let left = json["leftovers"].as_array().cloned().unwrap_or_default();
    assert_eq!(left.len(), 1, "{json}");
    assert!(left[0].as_str().unwrap().contains("still loaded"), "{json}");
    assert!(err.contains("rlivepatch repair"), "{err}");
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
    assert!(
        t.maps().contains("rlp:counter-fix"),
        "the leftover is not there to clear"
    );
    rlp_ok(&["repair", &pid]);
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}

/// rlivepatch's working memory stays mapped while a patch is loaded (the next operation
/// adopts it) and goes with the last patch. A disable whose clean-up (unmapping it) then
/// fails is a disable: exit 0 with the original code back, the mapping named as left;
/// `repair` then clears it.
#[test]
fn a_failed_cleanup_after_the_last_disable_is_a_disable_with_a_leftover() {
    let (mut t, pid, fix) = counter_pie("2");
    let scratch_maps = |t: &Target| {
        t.maps()
            .lines()
            .filter(|l| l.contains("/memfd:rlivepatch-scratch"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let fds = t.fd_count();
    assert!(scratch_maps(&t).is_empty());
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    let kept = scratch_maps(&t);
    assert_eq!(kept.len(), 2, "code page and data, kept with the patch");
    let (code, json, err) = rlp_failing("unmap_scratch", &["disable", &pid, "counter-fix"]);
    assert_eq!(code, Some(0), "{err}");
    let left = json["leftovers"].as_array().cloned().unwrap_or_default();
    assert_eq!(left.len(), 1, "{json}");
    assert!(
        left[0].as_str().unwrap().contains("private mapping"),
        "{json}"
    );
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
    // The disable adopted the kept memory (the same memfd at the same place), and it is
    // what stays.
    assert_eq!(scratch_maps(&t), kept);
    let o = rlp_ok(&["repair", &pid]);
    assert!(o.contains("unmapped") || o.contains("mapping"), "{o}");
    assert!(scratch_maps(&t).is_empty(), "repair left the mapping");
    assert_eq!(t.fd_count(), fds);
}

/// A read of the code that fails once and works when read again saw the code go and come
/// back (a library unloaded and another mapped at the same place, as in a dlopen/dlclose
/// loop): the apply starts over from the objects of the moment, and goes through.
#[test]
fn a_read_that_fails_once_is_churn_and_starts_over() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let fix = patch("counter-fix");
    let mut t = Target::start(&exe, &["2"]);
    let o = rlp_env(
        &["apply", &t.pid.to_string(), fix.to_str().unwrap()],
        &[("RLIVEPATCH_FAULT", "fail:read_code")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("starting over"), "{err}");
    // The notes of the resolution, made again by the second attempt, are said once.
    let notes: Vec<&str> = err.lines().filter(|l| l.contains(": note: ")).collect();
    let mut once = notes.clone();
    once.sort();
    once.dedup();
    assert!(!notes.is_empty() && once.len() == notes.len(), "{err}");
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        "patched",
    );
}

/// The system call thread `pid`'s main thread is in (`/proc/PID/syscall`'s first field),
/// or `running`.
fn in_syscall(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Does this kernel have `futex_waitv` (Linux 5.16)?
fn has_futex_waitv() -> bool {
    // SAFETY: futex_waitv with no waiters touches no memory (EINVAL when supported).
    let r = unsafe { libc::syscall(libc::SYS_futex_waitv, 0usize, 0u32, 0u32, 0usize, 0u32) };
    r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
}

/// The gates a thread waits at between injected calls when `futex_waitv` cannot serve:
/// a `ppoll` for a thread borrowed out of its `nanosleep` (its restart block must stay
/// as it is; the usual case with the counter's long period), a timed `FUTEX_WAIT` for a
/// thread caught elsewhere (on a busy machine it may be caught running).
const GATES_WITHOUT_WAITV: [i64; 2] = [libc::SYS_ppoll, libc::SYS_futex];

/// Wait until `pid`'s main thread was seen in one of `nrs` and then left it.
fn passes_through_one_of(pid: i32, nrs: &[i64]) {
    let nrs: Vec<String> = nrs.iter().map(|n| n.to_string()).collect();
    let limit = Instant::now() + Duration::from_secs(20);
    let mut seen = in_syscall(pid);
    while !nrs.contains(&seen) {
        assert!(Instant::now() < limit, "never in system call {nrs:?}");
        std::thread::sleep(Duration::from_micros(200));
        seen = in_syscall(pid);
    }
    while in_syscall(pid) == seen {
        assert!(Instant::now() < limit, "never left system call {seen}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// An injected call reports that it is done through a futex, then waits at a gate for
/// the next call or for rlivepatch to take it back. A rlivepatch too slow for the gate
/// (here: stopped right after the report) finds the thread back in its own code: it
/// takes it back where it is, and the apply goes on. `gates` are the system calls the
/// thread may wait in; `fault` adds a test switch.
fn went_past_the_gate(gates: &[i64], fault: &str) {
    let (mut t, pid, fix) = counter_pie("20");
    let base = (t.stable_maps(), t.fd_count());
    let run = StoppedRun::at(
        &format!("inject:notified{fault}"),
        &["apply", &pid, fix.to_str().unwrap()],
        &[],
    );
    // The thread waits at the gate, then goes back to its own code by itself.
    passes_through_one_of(t.pid, gates);
    run.finish();
    fixed_then_original(&mut t, &pid, base);
}

/// At the `futex_waitv` gate, wherever the thread was borrowed (Linux 5.16; else the
/// older gates).
#[test]
fn a_thread_that_went_past_the_gate_is_taken_back_where_it_is() {
    if has_futex_waitv() {
        went_past_the_gate(&[libc::SYS_futex_waitv], "");
    } else {
        went_past_the_gate(&GATES_WITHOUT_WAITV, "");
    }
}

/// At the gates of a kernel without `futex_waitv`: a thread borrowed out of its
/// `nanosleep` waits in a `ppoll`.
#[test]
fn a_thread_that_went_past_the_ppoll_gate_is_taken_back_where_it_is() {
    went_past_the_gate(&GATES_WITHOUT_WAITV, ",no-waitv");
}

/// Consecutive injected calls are handed to the thread waiting at the gate (its command
/// word and a futex wake-up) instead of stopping it and starting it again for each. The
/// second patch's apply borrows the keeper (asleep in `sem_wait`), so it may wait there
/// on any kernel; the trace names each call posted (after the first, which starts it:
/// the patch's memfd, then its `dlopen` posted; the working memory is the first
/// apply's, kept).
#[test]
fn consecutive_calls_are_handed_to_the_thread_at_the_gate() {
    let (mut t, pid, base) = counter_with_fix();
    let second = rlp_env(
        &["apply", &pid, s(&patch("counter-fix2"))],
        &[("RLIVEPATCH_TRACE", "1")],
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(posted(&err) >= 1, "calls posted at the gate:\n{err}");
    twice_then_original(&mut t, &pid, base);
}

/// The keeper, borrowed and waiting at the futex gate, gives up when rlivepatch is too
/// slow (stopped here right after a call): it marks the command word on its way out, so
/// the next call is not posted to it but finds it back in its `sem_wait` and borrows it
/// there; the apply goes on.
#[test]
fn a_thread_that_left_the_futex_gate_is_not_posted_to() {
    let (mut t, pid, base) = counter_with_fix();
    let keeper = |t: &Target| -> i32 {
        std::fs::read_dir(format!("/proc/{}/task", t.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .find(|&tid| tid != t.pid)
            .expect("the keeper thread")
    };
    let tid = keeper(&t);
    let run = StoppedRun::at(
        "inject:notified",
        &["apply", &pid, s(&patch("counter-fix2"))],
        &[("RLIVEPATCH_TRACE", std::path::Path::new("1"))],
    );
    // Where the keeper's system call was made: in rlivepatch's memory (the gate), then
    // back in the C library (its sem_wait) once the gate timed out.
    // Unknown while it runs (`running`): woken at the gate, it may be on its way out or
    // about to take a command, and only the system call it then sleeps in tells.
    let in_scratch = || -> Option<bool> {
        let text = std::fs::read_to_string(format!("/proc/{}/task/{tid}/syscall", t.pid))
            .unwrap_or_default();
        if text.starts_with("running") {
            return None;
        }
        let pc = text
            .split_whitespace()
            .last()
            .and_then(|pc| u64::from_str_radix(pc.trim_start_matches("0x"), 16).ok())?;
        Some(
            t.ranges_of("rlivepatch-scratch")
                .iter()
                .any(|&(a, b)| (a..b).contains(&pc)),
        )
    };
    let limit = Instant::now() + Duration::from_secs(20);
    while in_scratch() != Some(true) {
        assert!(
            Instant::now() < limit,
            "the keeper never waited at the gate"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    while in_scratch() != Some(false) {
        assert!(Instant::now() < limit, "the keeper never left the gate");
        std::thread::sleep(Duration::from_micros(200));
    }
    let err = run.finish();
    // The next call found the word marked and took the keeper back where it was.
    assert!(
        err.contains("borrowed thread went past the gate: borrowed again"),
        "{err}"
    );
    twice_then_original(&mut t, &pid, base);
}

/// Calls posted at the gate in a run's trace.
fn posted(trace: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.ends_with(" inject:posted"))
        .count()
}

/// Killed while the thread waits at the gate: after the gate's timeout the thread
/// returns to its own code by itself, and `repair` finds what is left.
#[test]
fn killed_while_a_thread_waits_at_the_gate() {
    let (mut t, pid, fix) = counter_pie("2");
    let base = (t.stable_maps(), t.fd_count());
    rlp_killed_at("inject:notified", &["apply", &pid, fix.to_str().unwrap()]);
    let limit = Instant::now() + Duration::from_secs(10);
    while tracer(t.pid) != "0" && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(tracer(t.pid), "0");
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
    rlp_ok(&["repair", &pid]);
    assert_eq!((t.stable_maps(), t.fd_count()), base);
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    rlp_ok(&["disable", &pid, "counter-fix"]);
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}

/// The PIE counter runs the fix; disabled, it runs the original, and its maps and fd
/// count are `base` again.
fn fixed_then_original(t: &mut Target, pid: &str, base: (Vec<String>, usize)) {
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        "patched",
    );
    rlp_ok(&["disable", pid, "counter-fix"]);
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}

/// The PIE counter with counter-fix applied, its pid, and its maps and fd count from
/// before the apply.
fn counter_with_fix() -> (Target, String, (Vec<String>, usize)) {
    let (t, pid, fix) = counter_pie("2");
    let base = (t.stable_maps(), t.fd_count());
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    (t, pid, base)
}

/// The PIE counter runs counter-fix2 on top of counter-fix; with each disabled in turn,
/// the fix and then the original (see [`fixed_then_original`]).
fn twice_then_original(t: &mut Target, pid: &str, base: (Vec<String>, usize)) {
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 1000,
        "patched twice",
    );
    rlp_ok(&["disable", pid, "counter-fix2"]);
    fixed_then_original(t, pid, base);
}

/// rlivepatch with `RLIVEPATCH_TRACE=1`, which must succeed; its stderr.
fn traced_ok(args: &[&str]) -> String {
    let o = rlp_env(args, &[("RLIVEPATCH_TRACE", "1")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{args:?}: {err}");
    err
}

#[test]
fn descriptors_are_read_only_after_a_run_was_cut_short() {
    // A busy server holds thousands of descriptors, and looking at each (a readlink) cost
    // 40 ms per 10,000 on every operation once a patch was applied: rlivepatch looks only
    // when a killed run may have left one of its memfds open.
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let opens = "for i in $(seq 10 300); do eval \"exec $i</dev/null\"; done; exec \"$@\"";
    let mut t = Target::start(
        std::path::Path::new("/bin/bash"),
        &["-c", opens, "counter", s(&exe), "5"],
    );
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(10));
    let pid = t.pid.to_string();
    let dir = fresh_dir("fd-scan");
    let a = counter_patch_for(&dir, "fdscan-a", &exe);
    let b = counter_patch_for(&dir, "fdscan-b", &exe);
    let fds = t.fd_count();
    assert!(fds > 290, "{fds} descriptors");
    // Nothing cut short: with no record, and then with one, no descriptor is read.
    let e = traced_ok(&["apply", &pid, s(&a)]);
    assert!(!e.contains("descriptors scanned"), "{e}");
    let with_a = t.fd_count();
    let e = traced_ok(&["apply", &pid, s(&b)]);
    assert!(!e.contains("descriptors scanned"), "{e}");
    let e = traced_ok(&["disable", &pid, "fdscan-b"]);
    assert!(!e.contains("descriptors scanned"), "{e}");
    assert_eq!(t.fd_count(), with_a);
    // Killed once it recorded the apply and made its memfd: the next operation reads the
    // descriptors, finds that one, closes it, and goes on.
    rlp_killed_at("apply:pending", &["apply", &pid, s(&b)]);
    assert!(t.fd_count() > with_a, "the killed run left no memfd open");
    let e = traced_ok(&["apply", &pid, s(&b)]);
    assert!(e.contains("descriptors scanned"), "{e}");
    let e = traced_ok(&["disable", &pid, "fdscan-b"]);
    assert!(!e.contains("descriptors scanned"), "{e}");
    assert_eq!(t.fd_count(), with_a);
    rlp_ok(&["disable", &pid, "fdscan-a"]);
    assert_eq!(t.fd_count(), fds);
    t.assert_running();
}

/// A thread rlivepatch borrows for the loader is lent the main malloc arena, so that the
/// loader's allocations create none (see `Session::arena_to_lend`); a run killed while a
/// thread holds the loan leaves a note, and `repair` gives it back. The keeper is ended
/// by a `sem_post` made on it: when the run was killed right after that post, the keeper,
/// let go by the kernel, took the post and exited still holding the loan, before any
/// repair, and left the arena without ever having joined it. The second time, glibc
/// aborted the process ("malloc assertion failure in __malloc_arena_thread_freeres:
/// a->attached_threads > 0", seen once in the random kills of
/// `sigkill_at_random_moments`). Also: an apply killed while it borrows the keeper.
#[test]
fn an_arena_lent_by_a_killed_run_is_given_back() {
    let (mut t, pid, fix) = counter_pie("2");
    let fix2 = patch("counter-fix2");
    let original = |l: &str| l.contains(" = ") && value(l).1 == value(l).0 + 1;
    for round in 0..3 {
        rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
        // An apply that borrows the keeper (the arena lent) dies at its first call.
        rlp_killed_at("inject:posted", &["apply", &pid, fix2.to_str().unwrap()]);
        rlp_ok(&["repair", &pid]);
        // The last patch's disable unloads the runtime and dies once it has asked the
        // keeper to end.
        rlp_killed_at("keeper:posted", &["disable", &pid, "counter-fix"]);
        rlp_ok(&["repair", &pid]);
        t.assert_running();
        t.assert_settled(2, original, &format!("original (round {round})"));
    }
}

/// A borrowed thread that rlivepatch's death leaves at the gate returns to its own code
/// on its own (after the gate's timeout), and gives back the arena lent to it on the way,
/// before any repair: a thread may end right after (a thread-per-request server's), and
/// one that ends holding the loan leaves an arena it never joined.
#[test]
fn a_thread_left_at_the_gate_gives_back_the_lent_arena() {
    let (mut t, pid, fix) = counter_pie("2");
    let fix2 = patch("counter-fix2");
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    // The keeper, borrowed with the arena lent, waits at the gate after its first call.
    rlp_killed_at("inject:notified", &["apply", &pid, fix2.to_str().unwrap()]);
    let rw = scratch_rw(&t);
    let word = |at: u64| word_at(&t, at);
    // The note: the thread's arena slot, the arena, the thread.
    let (slot, arena, tid) = (word(rw + 16), word(rw + 24), word(rw + 32));
    assert_ne!(tid, 0, "no arena lent to the borrowed thread");
    let limit = Instant::now() + Duration::from_secs(10);
    while word(slot) != 0 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        word(slot),
        0,
        "thread {tid} still holds the arena {arena:#x} lent to it"
    );
    assert_eq!(word(rw + 32), 0, "the note still names thread {tid}");
    rlp_ok(&["repair", &pid]);
    rlp_ok(&["disable", &pid, "counter-fix"]);
    t.assert_running();
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
        "original",
    );
}

/// The keeper, borrowed with the main arena lent, goes past the gate while rlivepatch is
/// held: it gives the arena back on its way, and is lent it again when taken back, so
/// that the patch's load makes it no arena of its own (one more arena for the process's
/// life).
#[test]
fn a_thread_taken_back_past_the_gate_is_lent_the_arena_again() {
    let (mut t, pid, base) = counter_with_fix();
    let run = StoppedRun::at(
        "inject:notified",
        &["apply", &pid, s(&patch("counter-fix2"))],
        &[],
    );
    let rw = scratch_rw(&t);
    let word = |at: u64| word_at(&t, at);
    let (slot, tid) = (word(rw + 16), word(rw + 32));
    assert_ne!(tid, 0, "no arena lent to the borrowed thread");
    // Past the gate, back in its own code: the loan given back.
    let limit = Instant::now() + Duration::from_secs(10);
    while word(slot) != 0 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(word(slot), 0, "thread {tid} did not leave the gate");
    run.finish();
    // Given back after the load, with no arena of its own.
    assert_eq!(
        word(slot),
        0,
        "the loader's allocations on thread {tid} made it an arena"
    );
    twice_then_original(&mut t, &pid, base);
}

/// Where rlivepatch's read-write memory starts in `t` (its lent-arena note is 16 bytes
/// in: the thread's arena slot, the arena, the thread).
fn scratch_rw(t: &Target) -> u64 {
    t.maps()
        .lines()
        .find(|l| l.contains("rlivepatch-scratch") && l.contains(" rw-s "))
        .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        .expect("rlivepatch's memory is mapped")
}

/// The 8 bytes at `at` in `t`.
fn word_at(t: &Target, at: u64) -> u64 {
    u64::from_le_bytes(t.read_mem(at, 8).try_into().unwrap())
}

/// An apply whose record cannot be written or mapped (the first apply writes it into its
/// memfd, and maps it with the load of the runtime and the patch) fails, naming that, and
/// leaves the process as it found it: code, maps, descriptors, the original running. A
/// later apply works.
#[test]
fn a_record_that_cannot_be_written_or_mapped_leaves_the_process_as_it_was() {
    let (mut t, pid, fix) = counter_pie("2");
    let (at, before) = t.snapshot_of("counter-pie", "compute");
    for (step, says) in [
        ("state:file", "writing the rlivepatch state"),
        ("state:map", "mapping the state memfd"),
    ] {
        let (code, _, err) = rlp_failing(step, &["apply", &pid, fix.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{step}: {err}");
        assert!(err.contains(says), "{step}: {err}");
        assert!(!err.contains("repair"), "{step}: {err}");
        t.assert_untouched(&before, at);
        t.assert_settled(
            2,
            |l| l.contains(" = ") && value(l).1 == value(l).0 + 1,
            "original",
        );
    }
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    t.assert_settled(
        2,
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        "patched",
    );
}
