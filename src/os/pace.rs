//! Pacing: rlivepatch's own CPU time must not take a CPU away from the target for long.
//!
//! On a machine whose CPUs are all busy (the target's threads at work), every stretch of
//! CPU rlivepatch runs is a stretch some other thread waits, and the scheduler lets a
//! newcomer run a whole slice (a tick, 4 ms at HZ=250) before the thread it displaced
//! gets its CPU back. So outside the moments the world is stopped (when rlivepatch is the
//! only thing that can run, and must finish fast), rlivepatch gives the CPU back for a
//! moment after each short burst of work, when every CPU has something else to run. On a
//! machine with a free CPU it never sleeps.
//!
//! While the world is stopped the opposite holds: the target waits for rlivepatch, so
//! rlivepatch runs at a raised priority (nice -10, when allowed) and never pauses.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// CPU time rlivepatch runs before it lets the others run.
const BURST_NS: u64 = 250_000;
/// How long it lets them.
const PAUSE_NS: i64 = 60_000;
/// How close to a full burst a thread may pause (see [`point`]).
const BURST_SLACK_NS: u64 = 50_000;

static WORLD_STOPPED: AtomicBool = AtomicBool::new(false);
thread_local! {
    /// This thread's CPU time at its last pause (each worker of a fleet run is paced on
    /// its own CPU time, not on the sum of all of them).
    static LAST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The monotonic clock and this thread's CPU time when it last read the latter. A
    /// thread runs no more CPU time than wall time goes by, so while that reading plus
    /// the wall time since is short of a burst, there is no need to ask again (the
    /// thread's CPU clock is a system call, with no vDSO path, and points come every few
    /// microseconds).
    static CHECKED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    /// The monotonic clock until which no point pauses: the CPUs were found free, and
    /// that answer holds until it is read again ([`CROWDED_TTL_NS`]).
    static QUIET_UNTIL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
/// How long an answer of [`crowded`] holds.
const CROWDED_TTL_NS: u64 = 10_000_000;
/// Wall time spent in pauses (ns), for the trace. No budget caps it: measured, a cap
/// (pauses at most a fifth of the run) made the busy threads' worst gap larger with a
/// few hundred threads and did not shorten the run with a thousand, whose length is the
/// kernel's per-thread work (seize, interrupt, wake-up), not the pauses.
static PAUSED: AtomicU64 = AtomicU64::new(0);
/// The nice value rlivepatch was started with.
static BASE_NICE: AtomicI32 = AtomicI32::new(0);
/// The nice value while the world is stopped.
const STOPPED_NICE: i32 = -10;

/// Remember the priority rlivepatch was started with (call first thing).
pub fn init() {
    // SAFETY: getpriority(2) on this thread; -1 is also a valid answer, never an error
    // for our own thread.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    BASE_NICE.store(n, Ordering::Relaxed);
    // The first burst counts from here, not from the exec (a pause at the first point
    // gave back nothing the run had taken).
    LAST.with(|l| l.set(cpu_ns()));
}

fn set_nice(n: i32) {
    // SAFETY: setpriority(2) on this thread only; failing (no CAP_SYS_NICE) is fine.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
}

/// The target's threads are held stopped (or not): no pausing while they wait, and a
/// raised priority so that other work on the machine does not make them wait longer.
pub fn world_stopped(stopped: bool) {
    if WORLD_STOPPED.swap(stopped, Ordering::Relaxed) == stopped {
        return;
    }
    let base = BASE_NICE.load(Ordering::Relaxed);
    if stopped {
        set_nice(base.min(STOPPED_NICE));
    } else {
        set_nice(base);
    }
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cpu_ns() -> u64 {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPUs rlivepatch may run on (its affinity mask), read once per run. Not
/// `available_parallelism`, which also reads the cgroup's CPU quota files (a tenth of a
/// millisecond, a twentieth of a single apply): the load it is compared with is the
/// host's, counted on the host's CPUs.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&i| set.is_set(i).unwrap_or(false))
                    .count()
            })
            .unwrap_or(1)
            .max(1)
    })
}

/// The CPUs this run may use for work of its own: its affinity and its cgroup's CPU
/// quota (a container limited to one CPU of many runs one fleet worker per CPU it has,
/// not per CPU of the host). Read once per run (the quota is three files: a fleet run
/// asked twice, 0.1 ms each).
pub fn usable_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Do tasks wait for a CPU? With the monotonic time the answer was read: it is read at
/// most every [`CROWDED_TTL_NS`], since it changes with the machine's load, not within a
/// burst, and a fleet run asked it hundreds of times a second.
///
/// The lock is held while the answer is read: when it went stale, every worker of a fleet
/// run found it stale at once and read it too (eight workers: eight reads of
/// `/proc/loadavg`, each listing rlivepatch's threads and reading their states, every
/// 10 ms; a third of the files a fleet apply opened). The others wait the read out and
/// take its answer.
fn crowded() -> (bool, u64) {
    crowded_at(clock(libc::CLOCK_MONOTONIC)).0
}

/// [`crowded`] at monotonic time `now`; and whether this call read the answer.
fn crowded_at(now: u64) -> ((bool, u64), bool) {
    use std::sync::Mutex;
    static LAST: Mutex<Option<(u64, bool)>> = Mutex::new(None);
    let Ok(mut last) = LAST.lock() else {
        return ((crowded_now(), now), true);
    };
    if let Some((at, answer)) = *last
        && now.saturating_sub(at) < CROWDED_TTL_NS
    {
        return ((answer, at), false);
    }
    let answer = crowded_now();
    *last = Some((now, answer));
    ((answer, now), true)
}

/// Are all the CPUs busy (tasks waiting for one) right now?
pub fn cpus_busy() -> bool {
    crowded().0
}

/// Tasks other than rlivepatch's own want every CPU: as many of them runnable as there
/// are CPUs (`/proc/loadavg`'s count, less rlivepatch's own runnable threads and the
/// target threads lent to it, [`Lent`]).
///
/// Why not the runnable count alone: it counted the target's thread running
/// rlivepatch's injected call. With one busy thread on one of two CPUs, an apply found 3
/// runnable (the busy thread, rlivepatch, the borrowed thread finishing a call) and
/// paused 12 to 16 times (each 60 µs asked, 130 µs taken) for nobody: what that thread
/// runs, it runs for rlivepatch, and a fleet's workers likewise wait for each other.
fn crowded_now() -> bool {
    let Ok(l) = crate::os::process::read_proc_whole("/proc/loadavg") else {
        return false;
    };
    let running: usize = l
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Quick answer first: all of them counted, there is room.
    if running <= cpus() {
        return false;
    }
    running.saturating_sub(own_running() + lent_running()) >= cpus()
}

/// rlivepatch's own runnable threads, this one among them (at least 1).
fn own_running() -> usize {
    let me = std::process::id() as i32;
    let Ok(tids) = crate::os::process::task_ids(me) else {
        return 1;
    };
    if tids.len() <= 1 {
        return 1;
    }
    let this = nix::unistd::gettid().as_raw();
    1 + tids
        .into_iter()
        .filter(|&t| t != this && crate::os::process::thread_state(me, t) == Some('R'))
        .count()
}

/// Do tasks wait for a CPU (an answer at most [`CROWDED_TTL_NS`] old)?
pub fn crowded_cpus() -> bool {
    crowded().0
}

/// Target threads lent to rlivepatch (borrowed for injected calls) that are runnable.
fn lent_running() -> usize {
    let lent = LENT.lock().map(|l| l.clone()).unwrap_or_default();
    lent.into_iter()
        .filter(|&(pid, tid)| crate::os::process::thread_state(pid, tid) == Some('R'))
        .count()
}

/// The target threads lent to rlivepatch: (pid, tid).
static LENT: std::sync::Mutex<Vec<(i32, i32)>> = std::sync::Mutex::new(Vec::new());

/// A target thread lent to rlivepatch for injected calls, while this value lives: what
/// it runs, it runs for rlivepatch, so it is not one of the others a pause would let run.
pub struct Lent {
    pid: i32,
    tid: i32,
    /// Its slice while lent: short, so that each hand-over runs it at once.
    _slice: Option<crate::os::slice::Shortened>,
}

impl Lent {
    /// Thread `tid` of process `pid` is lent until the value is dropped.
    pub fn new(pid: i32, tid: i32) -> Lent {
        if let Ok(mut l) = LENT.lock() {
            l.push((pid, tid));
        }
        Lent {
            pid,
            tid,
            _slice: crowded_cpus()
                .then(|| crate::os::slice::shorten(tid))
                .flatten(),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Ok(mut l) = LENT.lock()
            && let Some(i) = l.iter().position(|&e| e == (self.pid, self.tid))
        {
            l.swap_remove(i);
        }
    }
}

/// A point where rlivepatch may pause: when it has run a burst of CPU, the world is not
/// stopped and the CPUs are crowded, sleep a moment.
pub fn point() {
    if WORLD_STOPPED.load(Ordering::Relaxed) {
        return;
    }
    let last = LAST.with(|l| l.get());
    let wall = clock(libc::CLOCK_MONOTONIC);
    if wall < QUIET_UNTIL.with(|q| q.get()) {
        return;
    }
    let (wall_then, cpu_then) = CHECKED.with(|c| c.get());
    let at_most = cpu_then + wall.saturating_sub(wall_then);
    if wall_then != 0 && at_most.saturating_sub(last) < BURST_NS {
        return;
    }
    let now = cpu_ns();
    CHECKED.with(|c| c.set((wall, now)));
    // Within a small slack of the burst counts as the burst: a thread that runs nearly
    // all the time would otherwise read its clock at every point as it nears the end.
    if now.saturating_sub(last) + BURST_SLACK_NS < BURST_NS {
        return;
    }
    let (crowded, read_at) = crowded();
    if !crowded {
        // A free CPU: nothing waits for this one, until the load is read again. The
        // next burst is counted from then.
        LAST.with(|l| l.set(now));
        QUIET_UNTIL.with(|q| q.set(read_at + CROWDED_TTL_NS));
        return;
    }
    let t0 = clock(libc::CLOCK_MONOTONIC);
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: PAUSE_NS,
    };
    // SAFETY: nanosleep reads one timespec; an early wake-up (a signal) is fine.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    PAUSED.fetch_add(
        clock(libc::CLOCK_MONOTONIC).saturating_sub(t0),
        Ordering::Relaxed,
    );
    let cpu = cpu_ns();
    LAST.with(|l| l.set(cpu));
    CHECKED.with(|c| c.set((clock(libc::CLOCK_MONOTONIC), cpu)));
}

/// Time spent in pauses so far, in ms (for the trace).
pub fn paused_ms() -> f64 {
    PAUSED.load(Ordering::Relaxed) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_asking_at_once_read_the_load_once() {
        // Eight threads ask together, as a fleet run's workers do, at a time when any
        // answer read before is stale.
        let later = clock(libc::CLOCK_MONOTONIC) + 1000 * CROWDED_TTL_NS;
        let start = std::sync::Barrier::new(8);
        let reads: usize = std::thread::scope(|s| {
            let askers: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        crowded_at(later).1
                    })
                })
                .collect();
            askers.into_iter().map(|a| a.join().unwrap() as usize).sum()
        });
        assert_eq!(reads, 1, "{reads} reads of the load for 8 askers");
    }
}
