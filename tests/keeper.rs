//! The keeper thread: later operations always find a thread at a safe point for the
//! loader, even when every thread of the program is where dlopen may not run.

mod common;
use common::*;
use std::time::Duration;

fn threads(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap()
}

/// The counter (PIE), its patch, and its mappings and fd count before anything.
fn counter() -> (Target, String, std::path::PathBuf, Vec<String>, usize) {
    let (t, pid, fix) = counter_pie("2");
    let (maps, fds) = (t.stable_maps(), t.fd_count());
    (t, pid, fix, maps, fds)
}

fn patched(l: &str) -> bool {
    l.starts_with("compute(") && value(l).1 == value(l).0 * 100
}

fn original(l: &str) -> bool {
    l.starts_with("compute(") && value(l).1 == value(l).0 + 1
}

/// The only thread of the process runs inside a signal handler for good. Without the
/// keeper (`RLIVEPATCH_FAULT=no-keeper`) the disable has no thread to run dlclose on: it
/// refuses, naming the thread and why, and the process runs on, patched, its maps as they
/// were. With the keeper the disable goes through, and the process is left with its own
/// threads and maps, as before the apply.
#[test]
fn a_process_stuck_in_a_signal_handler_can_still_be_unpatched() {
    let exe = fixture("handled", "handled", &[]);
    let fix = patch("counter-fix");
    let fix = fix.to_str().unwrap();

    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    let o = rlp_env(&["apply", &pid, fix], &[("RLIVEPATCH_FAULT", "no-keeper")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(threads(t.pid), 1, "a keeper despite no-keeper");
    t.assert_settled(2, patched, "patched");
    unsafe { libc::kill(t.pid, libc::SIGUSR1) };
    t.wait_line(|l| l == "in handler", Duration::from_secs(20));
    let maps = t.maps();
    let o = rlp_env(
        &["disable", &pid, "counter-fix", "--timeout", "2"],
        &[("RLIVEPATCH_FAULT", "no-keeper")],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("inside a signal handler"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    t.assert_settled(2, patched, "still patched");
    assert_eq!(t.maps(), maps);

    let mut t = Target::start(&exe, &["2"]);
    let pid = t.pid.to_string();
    let (maps, fds) = (t.stable_maps(), t.fd_count());
    rlp_ok(&["apply", &pid, fix]);
    assert_eq!(threads(t.pid), 2, "no keeper thread while patched");
    t.assert_settled(2, patched, "patched");
    unsafe { libc::kill(t.pid, libc::SIGUSR1) };
    t.wait_line(|l| l == "in handler", Duration::from_secs(20));
    rlp_ok(&["disable", &pid, "counter-fix"]);
    t.assert_settled(2, original, "original");
    assert_eq!(threads(t.pid), 1, "the keeper stayed");
    assert_eq!((t.stable_maps(), t.fd_count()), (maps, fds));
}

/// rlivepatch killed while the keeper runs a call for it (the keeper, which never
/// allocated, has the main malloc arena lent while borrowed) leaves a note in its private
/// memory by which `repair` gives the arena back. Without it, every keeper ended after
/// such a kill would detach from the main arena once more than it attached, and glibc
/// aborts the process at the second ("malloc assertion failure in
/// __malloc_arena_thread_freeres"): the cycles below would kill it.
#[test]
fn a_run_killed_in_a_call_on_the_keeper_is_repaired_without_a_trace() {
    let (mut t, pid, fix, maps, fds) = counter();
    let fix = fix.to_str().unwrap();
    for _ in 0..3 {
        rlp_ok(&["apply", &pid, fix]);
        t.assert_settled(2, patched, "patched");
        rlp_killed_at("inject:in_call", &["disable", &pid, "counter-fix"]);
        rlp_ok(&["repair", &pid]);
        if rlp_ok(&["list", &pid, "--json"]).contains("counter-fix") {
            rlp_ok(&["disable", &pid, "counter-fix"]);
        }
        t.assert_settled(2, original, "original");
        assert_eq!(threads(t.pid), 1, "the keeper stayed");
    }
    assert_eq!((t.stable_maps(), t.fd_count()), (maps, fds));
}

/// A disable killed at each step of unloading the runtime with its last patch (after the
/// runtime's last dlclose, after the keeper was told to end, after its mapping was
/// unmapped; each before the record says so): `repair` ends what is left (the keeper, its
/// mapping, the runtime's memfd) from what it finds, never reads or unmaps memory the
/// record no longer describes, and the process is left as it was before the apply.
#[test]
fn a_run_killed_while_unloading_the_runtime_is_repaired_without_a_trace() {
    let (mut t, pid, fix, maps, fds) = counter();
    let fix = fix.to_str().unwrap();
    for point in ["runtime:unloaded", "keeper:posted", "keeper:unmapped"] {
        rlp_ok(&["apply", &pid, fix]);
        t.assert_settled(2, patched, "patched");
        assert_eq!(threads(t.pid), 2, "no keeper thread while patched");
        rlp_killed_at(point, &["disable", &pid, "counter-fix"]);
        t.assert_settled(2, original, "original");
        let out = rlp_ok(&["repair", &pid]);
        assert!(
            out.contains("repaired") || out.contains("keeper"),
            "{point}: {out}"
        );
        assert_eq!(threads(t.pid), 1, "{point}: the keeper stayed");
        assert_eq!(
            (t.stable_maps(), t.fd_count()),
            (maps.clone(), fds),
            "{point}: something stayed"
        );
        assert!(!rlp_ok(&["list", &pid, "--json"]).contains("counter-fix"));
    }
}

/// An apply killed just after the runtime loaded, its constructor having started the
/// keeper, before the record said either: `repair` finds the runtime by its memfd and the
/// keeper by its mapping's mark and the thread asleep on it, records both, and ends them
/// (no patch is left to need them). Before the keeper was adopted, the process kept a
/// parked thread nothing would end.
#[test]
fn an_apply_killed_after_the_runtime_loaded_leaves_no_keeper_behind() {
    let (mut t, pid, fix, maps, fds) = counter();
    let fix = fix.to_str().unwrap();
    for round in 0..2 {
        rlp_killed_at("runtime:loaded", &["apply", &pid, fix]);
        assert_eq!(threads(t.pid), 2, "round {round}: no keeper started");
        let out = rlp_ok(&["repair", &pid]);
        assert!(
            out.contains("and its keeper thread"),
            "round {round}: {out}"
        );
        assert_eq!(threads(t.pid), 1, "round {round}: the keeper stayed");
        t.assert_settled(2, original, "original");
        assert_eq!(
            (t.stable_maps(), t.fd_count()),
            (maps.clone(), fds),
            "round {round}: something stayed"
        );
    }
    rlp_ok(&["apply", &pid, fix]);
    t.assert_settled(2, patched, "patched");
    rlp_ok(&["disable", &pid, "counter-fix"]);
    assert_eq!(threads(t.pid), 1);
}

/// On a saturated machine rlivepatch may not get a CPU back before the keeper's wait at
/// its gate times out after the call that posts its end (`linger:keeper:posted` holds
/// rlivepatch there longer than that wait): the keeper then goes back to its own
/// `sem_wait`, takes the post and ends by itself before rlivepatch takes it back. The
/// disable is done all the same: the process runs the original code, with its own
/// threads, maps and descriptors as before the apply.
#[test]
fn a_keeper_that_ends_before_it_is_taken_back_is_no_error() {
    let (mut t, pid, fix, maps, fds) = counter();
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    assert_eq!(threads(t.pid), 2, "no keeper thread while patched");
    t.assert_settled(2, patched, "patched");
    let o = rlp_env(
        &["disable", &pid, "counter-fix"],
        &[("RLIVEPATCH_FAULT", "linger:keeper:posted")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.is_empty(), "{err}");
    t.assert_settled(2, original, "original");
    assert_eq!(threads(t.pid), 1, "the keeper stayed");
    assert_eq!((t.stable_maps(), t.fd_count()), (maps, fds));
    let (code, out, err) = rlp_full(&["repair", &pid, "--json"]);
    assert_eq!(code, 0, "repair: {err}");
    assert_eq!(json(&out)["actions"].as_array().unwrap().len(), 0, "{out}");
}
