//! Signals at every moment of an operation: a stream of every catchable signal number,
//! sent by `kill`, `tgkill` and with values by `sigqueue` (to the process and to single
//! threads), while rlivepatch applies, disables, checks and times out. Each signal must
//! reach the program exactly once, with the siginfo the sender gave it, and queued
//! real-time signals in order; and every operation must succeed.

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The counts the sigstorm fixture keeps in its board file (see fixtures/sigstorm.c).
#[derive(Debug, Clone)]
struct Board {
    count: Vec<u64>,
    wrong: u64,
    dup: u64,
    disorder: u64,
    ticks: u64,
    tids: Vec<i32>,
}

const NTHREADS: usize = 5;

fn read_board(path: &Path) -> Board {
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; 65 * 8 + 4 * 8 + NTHREADS * 4];
    f.read_exact_at(&mut b, 0).unwrap();
    let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    let tid = |i: usize| {
        let o = 65 * 8 + 4 * 8 + i * 4;
        i32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    };
    Board {
        count: (0..65).map(u).collect(),
        wrong: u(65),
        dup: u(66),
        disorder: u(67),
        ticks: u(68),
        tids: (0..NTHREADS).map(tid).collect(),
    }
}

/// Every signal number a program can catch (glibc keeps 32 and 33 for itself).
fn catchable() -> Vec<i32> {
    (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP && s != 32 && s != 33)
        .collect()
}

/// A siginfo as `sigqueue` fills it: SI_QUEUE, our pid and uid, a value.
fn queue_info(sig: i32, value: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[0..4].copy_from_slice(&sig.to_le_bytes());
    b[8..12].copy_from_slice(&(-1i32).to_le_bytes()); // SI_QUEUE
    b[16..20].copy_from_slice(&(std::process::id() as i32).to_le_bytes());
    // SAFETY: getuid(2) has no preconditions.
    b[20..24].copy_from_slice(&unsafe { libc::getuid() }.to_le_bytes());
    b[24..32].copy_from_slice(&value.to_le_bytes());
    b
}

/// What the sender sent, per signal number.
struct Sent {
    count: Vec<u64>,
    total: u64,
}

/// Send a seeded random mix of every catchable signal to `pid` until `stop`: standard
/// signals only once the previous one of that number was handled (they do not queue, so
/// a second one would merge with the first), real-time signals up to 32 in flight per
/// number.
fn sender(pid: i32, board: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> Sent {
    let mut rng = Rng(seed);
    let sigs = catchable();
    let tids = read_board(&board).tids;
    let mut sent = vec![0u64; 65];
    let mut proc_seq = vec![0u64; 65];
    let mut thread_seq = vec![vec![0u64; 65]; NTHREADS];
    let mut total = 0;
    while !stop.load(Ordering::SeqCst) {
        let b = read_board(&board);
        for _ in 0..8 {
            let sig = sigs[(rng.next() % sigs.len() as u64) as usize];
            let u = sig as usize;
            let in_flight = |s: i32| sent[s as usize] - b.count[s as usize].min(sent[s as usize]);
            if (sig < 32 && in_flight(sig) > 0) || in_flight(sig) >= 32 {
                continue;
            }
            // The kernel drops a pending SIGCONT when a stop signal is sent, and pending
            // stop signals when SIGCONT is (traced or not): one of them at a time.
            let job = [libc::SIGCONT, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
            if job.contains(&sig) && job.iter().any(|&j| in_flight(j) > 0) {
                continue;
            }
            let r = match rng.next() % 4 {
                // SAFETY: kill(2) on the process this test started.
                0 => unsafe { libc::kill(pid, sig) },
                1 => {
                    let tid = tids[(rng.next() % NTHREADS as u64) as usize];
                    // SAFETY: tgkill(2) on a thread of the process this test started.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) as i32 }
                }
                2 => {
                    proc_seq[u] += 1;
                    let info = queue_info(sig, (sig as u64) << 32 | 0xff << 24 | proc_seq[u]);
                    // SAFETY: rt_sigqueueinfo(2) reads the 128-byte siginfo we pass.
                    unsafe {
                        libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr()) as i32
                    }
                }
                _ => {
                    let i = (rng.next() % NTHREADS as u64) as usize;
                    thread_seq[i][u] += 1;
                    let value = (sig as u64) << 32 | (i as u64) << 24 | thread_seq[i][u];
                    let info = queue_info(sig, value);
                    // SAFETY: rt_tgsigqueueinfo(2) reads the 128-byte siginfo we pass.
                    unsafe {
                        libc::syscall(
                            libc::SYS_rt_tgsigqueueinfo,
                            pid,
                            tids[i],
                            sig,
                            info.as_ptr(),
                        ) as i32
                    }
                }
            };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // The target is gone only when the test failed already.
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ESRCH),
                    "sending signal {sig}: {e}"
                );
                return Sent { count: sent, total };
            }
            sent[u] += 1;
            total += 1;
        }
        // A rate, not a wait for anything: signals arrive all the time, not in a burst.
        std::thread::sleep(Duration::from_micros(300));
    }
    Sent { count: sent, total }
}

/// Wait until the fixture handled every signal sent (a hang detector: a lost signal never
/// arrives), then check that nothing was doubled, altered or reordered.
fn assert_all_delivered(board: &Path, sent: &Sent) {
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let b = read_board(board);
        let missing: Vec<String> = (1..65)
            .filter(|&s| b.count[s] < sent.count[s])
            .map(|s| format!("{s}: {} of {}", b.count[s], sent.count[s]))
            .collect();
        let extra: Vec<String> = (1..65)
            .filter(|&s| b.count[s] > sent.count[s])
            .map(|s| format!("{s}: {} of {}", b.count[s], sent.count[s]))
            .collect();
        assert!(
            extra.is_empty(),
            "signals handled more often than sent: {extra:?}"
        );
        if missing.is_empty() {
            assert_eq!(
                b.wrong, 0,
                "signals with siginfo the sender did not give: {b:?}"
            );
            assert_eq!(b.dup, 0, "queued values delivered twice: {b:?}");
            assert_eq!(b.disorder, 0, "queued values out of order: {b:?}");
            return;
        }
        assert!(
            Instant::now() < limit,
            "signals never delivered (lost): {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tick_patch() -> PathBuf {
    func_patch(
        "storm-tick",
        "tick",
        "static int f(int x) { return x + 1; }",
    )
}

fn hold_patch() -> PathBuf {
    func_patch("storm-hold", "hold", "static int f(void) { return 0; }")
}

/// A board file for one fixture run.
fn board_file(name: &str) -> PathBuf {
    let p = build_dir().join(format!("{name}.{}.board", std::process::id()));
    std::fs::write(&p, []).unwrap();
    p
}

#[test]
fn every_signal_is_delivered_once_with_its_information_during_operations() {
    let exe = fixture("sigstorm", "sigstorm", &[]);
    let board = board_file("storm");
    let t = Target::start(&exe, &[s(&board)]);
    let pid = t.pid;
    let ps = pid.to_string();
    let (tick, hold) = (tick_patch(), hold_patch());
    let seed = env_seed("RLIVEPATCH_SIGNAL_SEED");
    eprintln!("signal storm seed {seed} (RLIVEPATCH_SIGNAL_SEED={seed} replays it)");
    let cycles = env_count("RLIVEPATCH_SIGNAL_CYCLES", 50);
    let stop = Arc::new(AtomicBool::new(false));
    let send = {
        let (board, stop) = (board.clone(), stop.clone());
        std::thread::spawn(move || sender(pid, board, seed, stop))
    };
    for i in 0..cycles {
        rlp_ok(&["apply", &ps, s(&tick)]);
        rlp_ok(&["disable", &ps, "storm-tick"]);
        if i == cycles / 2 {
            // A check reports on the moment it looked: safe (0) or not (6), never an error.
            let (code, out, err) = rlp_full(&["check", &ps, s(&tick), "--json"]);
            assert!(code == 0 || code == 6, "check failed ({code}): {err}");
            assert!(json(&out)["threads"].as_u64().unwrap() >= NTHREADS as u64);
            // A switch that cannot happen (a thread sits in hold()) times out and is undone.
            let (code, _, err) = rlp_full(&["apply", &ps, s(&hold), "--timeout", "1"]);
            assert_eq!(code, 6, "apply of hold() must time out: {err}");
            let (code, out, err) = rlp_full(&["repair", &ps, "--json"]);
            assert_eq!(code, 0, "repair: {err}");
            assert_eq!(json(&out)["actions"].as_array().unwrap().len(), 0, "{out}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let sent = send.join().unwrap();
    eprintln!("{} signals sent during the operations", sent.total);
    assert!(
        sent.total > 100,
        "the sender sent only {} signals",
        sent.total
    );
    assert_all_delivered(&board, &sent);
    let b = read_board(&board);
    assert!(b.ticks > 0);
    t.assert_running();
    assert!(!t.maps().contains("/memfd:rlp:"), "a patch stayed loaded");
    let _ = std::fs::remove_file(&board);
}

/// A patch of every waiting function of the blocked fixture: the same calls, and a count
/// of the calls that ran the new code.
fn waits_patch() -> PathBuf {
    let body = r#"
#define _GNU_SOURCE
#include <rlivepatch.h>
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
struct fds { int epfd, epoll_r, poll_r, select_r, read_r, lsock, semid; int futex_word; char sockpath[108]; };
RLIVEPATCH_SYMBOL(long, patched, "patched_calls");
static void bump(void) { __atomic_add_fetch(patched, 1, __ATOMIC_SEQ_CST); }
static int n_epoll(struct fds *f) { bump(); struct epoll_event ev; int r = epoll_wait(f->epfd, &ev, 1, -1); return r < 0 ? -errno : r; }
static int n_poll(struct fds *f) { bump(); struct pollfd p = { f->poll_r, POLLIN, 0 }; int r = poll(&p, 1, -1); return r < 0 ? -errno : r; }
static int n_select(struct fds *f) { bump(); fd_set s; FD_ZERO(&s); FD_SET(f->select_r, &s); int r = select(f->select_r + 1, &s, NULL, NULL, NULL); return r < 0 ? -errno : r; }
RLIVEPATCH_SYMBOL(long, period_ms, "period_ms");
static int n_nanosleep(struct fds *f) { (void)f; bump(); struct timespec ts = { *period_ms / 1000, (*period_ms % 1000) * 1000000L }; int r = nanosleep(&ts, NULL); return r < 0 ? -errno : r; }
static int n_futex(struct fds *f) { bump(); long r = syscall(SYS_futex, &f->futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0); return r < 0 && errno != EAGAIN ? -errno : 0; }
static int n_read(struct fds *f, unsigned char *c) { bump(); ssize_t r = read(f->read_r, c, 1); return r < 0 ? -errno : (int)r; }
static int n_accept(struct fds *f) { bump(); int c = accept(f->lsock, NULL, NULL); if (c < 0) return -errno; close(c); return 0; }
static int n_sigtimedwait(struct fds *f) { (void)f; bump(); sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR2); struct timespec ts = { 10, 0 }; int r = sigtimedwait(&s, NULL, &ts); return r < 0 ? -errno : r; }
static int n_semop(struct fds *f) { bump(); struct sembuf op = { 0, -1, 0 }; int r = semop(f->semid, &op, 1); return r < 0 ? -errno : r; }
RLIVEPATCH_FUNC(wait_epoll, n_epoll);
RLIVEPATCH_FUNC(wait_poll, n_poll);
RLIVEPATCH_FUNC(wait_select, n_select);
RLIVEPATCH_FUNC(wait_nanosleep, n_nanosleep);
RLIVEPATCH_FUNC(wait_futex, n_futex);
RLIVEPATCH_FUNC(wait_read, n_read);
RLIVEPATCH_FUNC(wait_accept, n_accept);
RLIVEPATCH_FUNC(wait_sigtimedwait, n_sigtimedwait);
RLIVEPATCH_FUNC(wait_semop, n_semop);
RLIVEPATCH_NAME("waits");
"#;
    patch_src("blocked-waits", body)
}

fn spin_patch() -> PathBuf {
    patch_src(
        "blocked-spin",
        "#include <rlivepatch.h>\nstatic long new_spin(long n) { long s = 0; for (long i = 0; i < n; i++) s += i; return s; }\nRLIVEPATCH_FUNC(spin, new_spin);\nRLIVEPATCH_NAME(\"spin\");\n",
    )
}

/// A SysV semaphore of a fixture: it outlives the process, so the test removes it.
struct Semaphore(i32);

impl Drop for Semaphore {
    fn drop(&mut self) {
        // SAFETY: semctl(2) IPC_RMID on the id the fixture printed; no memory is passed.
        unsafe { libc::semctl(self.0, 0, libc::IPC_RMID) };
    }
}

#[test]
fn no_system_call_sees_an_eintr_it_did_not_ask_for() {
    const T: Duration = Duration::from_secs(30);
    let exe = fixture("blocked", "blocked", &[]);
    // Woken every 300 ms: longer than rlivepatch's first wait for a return (100 ms), so
    // that the threads are stopped again while blocked, with their system calls traced.
    let mut t = Target::start(&exe, &["300"]);
    let _sem = Semaphore(field(&t.seen[0], "semid") as i32);
    let ps = t.pid.to_string();
    let (waits, spin, tick) = (waits_patch(), spin_patch(), tick_patch());
    let before = t.wait_line(|l| l.starts_with("blocked") && field(l, "rounds") > 20, T);
    let cycles = env_count("RLIVEPATCH_EINTR_CYCLES", 10);
    // Signals the program ignores keep coming: without a tracer the kernel drops them when
    // they are sent; while traced they wake the threads, and must change nothing either.
    let stop = Arc::new(AtomicBool::new(false));
    let ignored = {
        let (pid, stop) = (t.pid, stop.clone());
        std::thread::spawn(move || {
            let sigs = [libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGPIPE];
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: kill(2) on the process this test started.
                unsafe { libc::kill(pid, sigs[n % sigs.len()]) };
                n += 1;
                // A rate: a steady stream, not a burst.
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        })
    };
    for _ in 0..cycles {
        // Every waiting thread is inside a changed function, blocked in its system call:
        // stopped there, a return trampoline planted, caught when it returns; then the
        // switch and the detach.
        let r = json(&rlp_ok(&["apply", &ps, s(&waits), "--json"]));
        assert_eq!(r["switch"]["forced"], false, "{r}");
        let p0 = field(&t.wait_line(|l| l.starts_with("blocked"), T), "patched");
        t.wait_line(|l| l.starts_with("blocked") && field(l, "patched") > p0, T);
        rlp_ok(&["disable", &ps, "waits"]);
        // Only the thread on a CPU is inside the changed function (a quick catch); the
        // blocked ones are held meanwhile, then let go at the switch.
        rlp_ok(&["apply", &ps, s(&spin)]);
        rlp_ok(&["disable", &ps, "spin"]);
        // Nothing near them changes: attached, stopped and checked, detached.
        let (code, _, err) = rlp_full(&["check", &ps, s(&tick)]);
        assert!(code == 0 || code == 6, "check: {err}");
    }
    stop.store(true, Ordering::SeqCst);
    assert!(ignored.join().unwrap() > 0);
    let after = t.wait_line(
        |l| l.starts_with("blocked") && field(l, "rounds") > field(&before, "rounds") + 20,
        T,
    );
    for key in ["eintr", "short", "lost"] {
        assert_eq!(field(&after, key), 0, "{key}: {after}");
    }
    t.assert_running();
}

/// `waitpid` for a stop or continue report of the test's own child, with a hang
/// detector. Returns the raw status.
fn wait_report(pid: i32, flags: i32) -> i32 {
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on the test's own child; writes one integer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags | libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            return status;
        }
        assert!(Instant::now() < limit, "no report of process {pid}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every thread of `pid` is stopped by job control (`T`), none traced. A thread that
/// ran an injected call goes back into the stop a moment after the parent was told (the
/// others completed the stop): wait for that, with a hang detector.
fn assert_job_stopped(pid: i32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0"), "still traced: {status}");
    let limit = Instant::now() + Duration::from_secs(10);
    loop {
        let running: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("stat")).ok())
            .filter(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('T'))
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(Instant::now() < limit, "threads not stopped: {running:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tick2_patch() -> PathBuf {
    func_patch(
        "jobctl-tick",
        "tick",
        "static int f(int x) { return x + 2; }",
    )
}

/// Run `args` with a stop signal (`signals`) sent to the target at `points`, and check the
/// outcome: rlivepatch finished or undid its step (exit 0 or 9, saying so), the process
/// is stopped as job control asked and its parent (this test) was told, and `SIGCONT`
/// resumes it with the patch in the state the exit code says.
fn stopped_midway(
    t: &mut Target,
    args: &[&str],
    points: &str,
    signals: &str,
    applied_if_done: bool,
) {
    let pid = t.pid;
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .env("RLIVEPATCH_FAULT", points)
        .env("RLIVEPATCH_FAULT_SIGNAL", signals)
        .output()
        .unwrap();
    let code = o.status.code().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // A SIGCONT is sent at its point only if the run gets there: a stop seen first makes
    // it undo its step before (exit 9), and then the process does stay stopped. Whether
    // it says so or not, what it says is checked against the process.
    let continued = signals.contains(&libc::SIGCONT.to_string()) && !err.contains("stays stopped");
    assert!(
        code == 0 || code == 9,
        "{args:?} at {points}: exit {code}: {err}"
    );
    if code == 9 && !continued {
        assert!(
            err.contains("(job control)") && err.contains("kill -CONT"),
            "{err}"
        );
    }
    if !continued {
        let stopped = wait_report(pid, libc::WUNTRACED);
        assert!(
            libc::WIFSTOPPED(stopped),
            "the parent was not told of the stop"
        );
        assert_job_stopped(pid);
        if code == 0 {
            assert!(err.contains("stays stopped"), "the note on the stop: {err}");
        }
        // SAFETY: kill(2) on the process this test started.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let cont = wait_report(pid, libc::WCONTINUED);
        assert!(libc::WIFCONTINUED(cont), "no continue report");
    } else {
        // The SIGCONT came before the stop was complete (rlivepatch held a thread): as
        // without a tracer when a thread is slow to stop, the parent hears at most that
        // it continued. Collect that report, if any.
        let mut status = 0;
        // SAFETY: waitpid(2) on the test's own child; writes one integer.
        unsafe {
            libc::waitpid(
                pid,
                &mut status,
                libc::WUNTRACED | libc::WCONTINUED | libc::WNOHANG,
            )
        };
    }
    let applied = if code == 0 {
        applied_if_done
    } else {
        !applied_if_done
    };
    let want = if applied { "tick=2" } else { "tick=1" };
    t.wait_line(
        |l| l.starts_with("blocked") && l.contains(want),
        Duration::from_secs(30),
    );
    t.assert_running();
    let maps = t.maps();
    assert_eq!(maps.contains("/memfd:rlp:jobctl-tick"), applied, "{maps}");
    // rlivepatch's working memory stays with a loaded patch, and only then.
    assert_eq!(
        maps.contains("/memfd:rlivepatch-scratch"),
        applied,
        "{maps}"
    );
}

#[test]
fn job_control_stops_midway_leave_the_process_stopped_and_consistent() {
    let exe = fixture("blocked", "blocked", &[]);
    let mut t = Target::start_in_own_group(&exe, &["3"]);
    let _sem = Semaphore(field(&t.seen[0], "semid") as i32);
    let ps = t.pid.to_string();
    let p = tick2_patch();
    let stop = libc::SIGSTOP.to_string();
    let apply = ["apply", ps.as_str(), s(&p)];
    let disable = ["disable", ps.as_str(), "jobctl-tick"];
    for point in [
        "apply:attached",
        "apply:pending",
        "inject:in_call",
        "apply:loaded",
        "apply:planned",
        "apply:pre_patched",
        "apply:switched",
        "apply:post_patched",
        "apply:committed",
        "close",
    ] {
        stopped_midway(&mut t, &apply, point, &stop, true);
        if t.maps().contains("/memfd:rlp:jobctl-tick") {
            rlp_ok(&disable);
        }
    }
    for point in [
        "disable:pending",
        "disable:pre_unpatched",
        "disable:switched",
        "disable:committed",
    ] {
        rlp_ok(&apply);
        stopped_midway(&mut t, &disable, point, &stop, false);
        if t.maps().contains("/memfd:rlp:jobctl-tick") {
            rlp_ok(&disable);
        }
    }
    // SIGTSTP with its default action stops the process the same way.
    let tstp = libc::SIGTSTP.to_string();
    stopped_midway(&mut t, &apply, "apply:loaded", &tstp, true);
    if t.maps().contains("/memfd:rlp:jobctl-tick") {
        rlp_ok(&disable);
    }
    // SIGCONT arriving meanwhile is delivered too: the process runs on.
    let both = format!("{},{}", libc::SIGSTOP, libc::SIGCONT);
    stopped_midway(&mut t, &apply, "apply:pending,apply:loaded", &both, true);
}

/// Run `args` with SIGINT or SIGTERM sent to rlivepatch itself at `point`.
fn interrupted_at(args: &[&str], point: &str, sig: i32) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .env("RLIVEPATCH_FAULT", point)
        .env("RLIVEPATCH_FAULT_SIGNAL", format!("tool:{sig}"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn an_interrupt_at_any_point_undoes_everything_or_finishes() {
    let exe = fixture("counter", "counter", &[]);
    let fix = patch("counter-fix");
    let mut t = Target::start(&exe, &["5"]);
    let ps = t.pid.to_string();
    let entry = t.symbol_addr("counter", "compute");
    let before = t.snapshot(entry);
    let apply = ["apply", ps.as_str(), s(&fix)];
    let disable = ["disable", ps.as_str(), "counter-fix"];
    let patched = |t: &mut Target, yes: bool| {
        for l in t.next_lines(2) {
            let (i, v) = value(&l);
            assert_eq!(v, if yes { i * 100 } else { i + 1 }, "{l}");
        }
    };
    let sigs = [libc::SIGINT, libc::SIGTERM];
    // Before the switch: undone, the process exactly as before (maps, fds, code).
    let before_switch = [
        "apply:attached",
        "apply:pending",
        "inject:in_call",
        "apply:loaded",
        "apply:planned",
        "apply:pre_patched",
    ];
    for (i, point) in before_switch.iter().enumerate() {
        let (code, err) = interrupted_at(&apply, point, sigs[i % 2]);
        assert_eq!(code, 7, "{point}: {err}");
        assert!(
            err.contains("the current step was undone"),
            "{point}: {err}"
        );
        t.assert_untouched(&before, entry);
        patched(&mut t, false);
    }
    // After it: the operation finishes.
    for (i, point) in ["apply:switched", "apply:committed", "close"]
        .iter()
        .enumerate()
    {
        let (code, err) = interrupted_at(&apply, point, sigs[i % 2]);
        assert_eq!(code, 0, "{point}: {err}");
        patched(&mut t, true);
        rlp_ok(&disable);
        t.assert_untouched(&before, entry);
    }
    // A disable interrupted before its switch keeps the patch; after it, unloads it.
    for (i, point) in ["disable:pending", "disable:pre_unpatched"]
        .iter()
        .enumerate()
    {
        rlp_ok(&apply);
        let (code, err) = interrupted_at(&disable, point, sigs[i % 2]);
        assert_eq!(code, 7, "{point}: {err}");
        patched(&mut t, true);
        assert!(
            t.rlivepatch_maps()
                .iter()
                .any(|l| l.contains("/memfd:rlp:counter-fix")),
            "the patch stays loaded"
        );
        rlp_ok(&disable);
        t.assert_untouched(&before, entry);
    }
    for (i, point) in ["disable:switched", "disable:committed"].iter().enumerate() {
        rlp_ok(&apply);
        let (code, err) = interrupted_at(&disable, point, sigs[i % 2]);
        assert_eq!(code, 0, "{point}: {err}");
        t.assert_untouched(&before, entry);
        patched(&mut t, false);
    }
}

#[test]
fn an_interrupt_while_waiting_for_another_run_leaves_nothing() {
    let exe = fixture("consistency", "consistency", &[]);
    let spin = patch_src(
        "lockwait-spin",
        "#include <rlivepatch.h>\nstatic int f(void) { return 2; }\nRLIVEPATCH_FUNC(spin_forever, f);\n",
    );
    let mut t = Target::start(&exe, &["spin"]);
    t.wait_seen(|l| l == "spinning", Duration::from_secs(30));
    let ps = t.pid.to_string();
    let entry = t.symbol_addr("consistency", "spin_forever");
    let before = t.snapshot(entry);
    // The first run waits for a safe moment that never comes; the second waits for it.
    let (mut first, rx1) = rlp_spawn(&["apply", &ps, s(&spin), "--timeout", "3"]);
    wait_stderr(&rx1, |l| l.contains("waiting for a safe moment"));
    let (mut second, rx2) = rlp_spawn(&["apply", &ps, s(&spin)]);
    wait_stderr(&rx2, |l| l.contains("waiting for rlivepatch pid"));
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(second.wait().unwrap().code(), Some(7));
    // The first one is undisturbed: it times out and undoes its own work.
    assert_eq!(first.wait().unwrap().code(), Some(6));
    t.assert_untouched(&before, entry);
}

/// A borrowed thread whose wait at the gate times out (rlivepatch slow to get a CPU back:
/// `linger:apply:pending`) runs its own code on, which unblocks a signal and takes one of
/// two queued ones. When rlivepatch borrows it again there, that signal is delivered under
/// the thread's mask of the moment: set back to the mask it had when first borrowed (the
/// signal blocked), the kernel would queue it again behind the second, and the program
/// would get them out of order (and keep the signal blocked where it had unblocked it).
/// Every round of the fixture before, during and after the apply gets 1, then 2.
#[test]
fn a_signal_taken_past_the_gate_keeps_its_place_in_the_queue() {
    let exe = fixture("maskorder", "maskorder", &[]);
    let fix = func_patch(
        "maskorder-tick",
        "tick",
        "static int f(int x) { return x + 1000; }",
    );
    let mut t = Target::start(&exe, &[]);
    let pid = t.pid.to_string();
    let round = |l: &str| l.starts_with("round ");
    t.wait_line(round, Duration::from_secs(10));
    let o = rlp_env(
        &["apply", &pid, s(&fix)],
        &[("RLIVEPATCH_FAULT", "no-keeper,linger:apply:pending")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut lines = Vec::new();
    loop {
        let l = t.wait_line(round, Duration::from_secs(10));
        let patched = l.split_whitespace().last().unwrap().parse::<i32>().unwrap() >= 1000;
        lines.push(l);
        if patched {
            break;
        }
    }
    lines.push(t.wait_line(round, Duration::from_secs(10)));
    for l in &lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            &w[3..w.len() - 2],
            ["1", "2"],
            "signals out of order or held back: {lines:?}"
        );
    }
    t.assert_running();
}
