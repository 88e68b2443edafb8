//! Short scheduler slices for the threads a hand-over waits for.
//!
//! rlivepatch and the target thread it borrows hand work to each other many times per
//! operation: rlivepatch posts an injected call and sleeps, the thread runs it and wakes
//! rlivepatch. On a machine whose CPUs are all taken by the target's busy threads, each
//! wake-up waited for the running thread's slice to end (EEVDF lets the current task
//! run to its deadline: 1.4 ms on 2 CPUs), and an apply made a dozen such hand-overs.
//! Since Linux 6.12 a task may ask for a shorter slice (`sched_attr::sched_runtime`,
//! clamped to 0.1–100 ms); a woken task with a shorter slice has the earlier deadline
//! and runs at once. Measured with two busy threads on two CPUs, a pipe ping-pong
//! between two threads took 0.027 ms on average and up to 3.7 ms with the default
//! slice, 0.008 ms and at most 0.03 ms with 0.1 ms.
//!
//! A shorter slice changes no priority: the thread gets no more CPU over time than its
//! nice value gives, it only gets it sooner and in smaller pieces. rlivepatch takes one
//! for itself when it works on a process ([`hurry_self`]), and, while the CPUs are
//! crowded, one for each target thread it borrows (for the time it is borrowed) and for
//! each it stops and waits for alone ([`crate::os::ptrace::Tracer`], until its detach);
//! each gets its own back. Only threads with the kernel's default slice are touched (one
//! that chose its own keeps it), and they are given [`MARK_NS`], a length no program
//! picks: a thread left with it (rlivepatch killed with `kill -9` meanwhile, or a thread
//! the program started from one that had it) is given the default back by the next run
//! that attaches ([`heal`]). A kernel without custom slices (before 6.12) ignores the
//! request; that is fine.

/// `struct sched_attr` of `include/uapi/linux/sched/types.h` (`SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// The slice rlivepatch asks for itself: the kernel's least.
const SHORT_NS: u64 = 100_000;
/// The slice it gives a target thread: as short, and a value no program picks (the
/// kernel keeps it as asked), by which a thread left with it is recognised.
pub const MARK_NS: u64 = 100_003;

fn get(tid: i32) -> Option<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: sched_getattr(2) writes at most `size` bytes into `attr`, which is that
    // large and lives for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    (r == 0).then_some(attr)
}

fn set(tid: i32, attr: &SchedAttr) -> bool {
    let mut attr = *attr;
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    // The utilization clamps are changed only when asked for by flags; keep them out.
    attr.flags &= !(SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX);
    // SAFETY: sched_setattr(2) reads one `SchedAttr`, which lives for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &attr as *const SchedAttr,
            0u32,
        )
    };
    r == 0
}

const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;

/// The slice this kernel gives a task that asked for none, as rlivepatch's own at
/// start: only target threads found with it are shortened, and given back with no
/// request of their own (runtime 0), so that they follow the kernel's default.
static DEFAULT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Read the kernel's default slice (first thing, before anything asks for another).
pub fn init() {
    if let Some(attr) = get(0).filter(fair) {
        DEFAULT_NS.store(attr.runtime, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Ask for a short slice for rlivepatch's own thread, when it works on a process (the
/// threads it starts inherit it; the programs `build` runs do not).
pub fn hurry_self() {
    let Some(mut attr) = get(0).filter(fair) else {
        return;
    };
    attr.runtime = SHORT_NS;
    set(0, &attr);
}

/// SCHED_OTHER and SCHED_BATCH: the policies whose slice the request sets. Real-time,
/// deadline and idle threads are left alone.
fn fair(attr: &SchedAttr) -> bool {
    matches!(attr.policy as i32, libc::SCHED_OTHER | libc::SCHED_BATCH)
}

/// A target thread's scheduling attributes as found, given back when dropped.
#[derive(Debug)]
pub struct Shortened {
    tid: i32,
    was: SchedAttr,
}

/// Give thread `tid` the marked short slice; `None` when it is not a fair-class thread
/// with the default slice, or the kernel refused.
pub fn shorten(tid: i32) -> Option<Shortened> {
    let default = DEFAULT_NS.load(std::sync::atomic::Ordering::Relaxed);
    let was = get(tid).filter(|a| fair(a) && default != 0 && a.runtime == default)?;
    let short = SchedAttr {
        runtime: MARK_NS,
        ..was
    };
    set(tid, &short).then_some(Shortened { tid, was })
}

/// The default slice back for thread `tid` if it has the mark (see the module's doc):
/// one system call for a thread without it.
pub fn heal(tid: i32) {
    if let Some(attr) = get(tid).filter(|a| fair(a) && a.runtime == MARK_NS) {
        set(tid, &SchedAttr { runtime: 0, ..attr });
    }
}

impl Drop for Shortened {
    fn drop(&mut self) {
        // Changed since (by the program, or gone): leave it.
        match get(self.tid) {
            Some(now) if now.runtime == MARK_NS && now.policy == self.was.policy => {}
            _ => return,
        }
        set(
            self.tid,
            &SchedAttr {
                runtime: 0,
                ..self.was
            },
        );
    }
}
