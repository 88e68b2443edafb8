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
//! for itself at start, and one for each target thread it borrows, for the time it is
//! borrowed only (given back as it was), and one for a thread it stops alone and waits
//! for ([`crate::os::ptrace::Tracer`], until its detach), both only while the CPUs are
//! crowded. A kernel without custom slices ignores the request or refuses it; both are
//! fine. The keeper, cloned by a borrowed thread, inherits the short slice and keeps it:
//! it is rlivepatch's own, asleep but when borrowed, and then the same reasoning holds.
//! A `kill -9` of rlivepatch leaves the threads it held with the short slice (a hint to
//! the scheduler, not a change of what the program computes).

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

/// The slice asked for: the kernel's least.
const SHORT_NS: u64 = 100_000;

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
/// start (read before it asks for a shorter one): a borrowed thread found with it is
/// given back with no request of its own (runtime 0), so it follows the kernel's
/// default if that is changed later.
static DEFAULT_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Ask for a short slice for rlivepatch's own thread (before it starts others, which
/// inherit it).
pub fn init() {
    let Some(mut attr) = get(0) else { return };
    if !fair(&attr) {
        return;
    }
    DEFAULT_NS.store(attr.runtime, std::sync::atomic::Ordering::Relaxed);
    attr.runtime = SHORT_NS;
    set(0, &attr);
}

/// SCHED_OTHER and SCHED_BATCH: the policies whose slice the request sets. Real-time,
/// deadline and idle threads are left alone.
fn fair(attr: &SchedAttr) -> bool {
    matches!(attr.policy as i32, libc::SCHED_OTHER | libc::SCHED_BATCH)
}

/// A target thread's scheduling attributes as found, to give back.
#[derive(Debug)]
pub struct Shortened {
    tid: i32,
    was: SchedAttr,
}

/// Give thread `tid` a short slice; `None` when it is not a fair-class thread, already
/// has one as short, or the kernel refused.
pub fn shorten(tid: i32) -> Option<Shortened> {
    let was = get(tid)?;
    if !fair(&was) || was.runtime <= SHORT_NS {
        return None;
    }
    let short = SchedAttr {
        runtime: SHORT_NS,
        ..was
    };
    set(tid, &short).then_some(Shortened { tid, was })
}

impl Drop for Shortened {
    fn drop(&mut self) {
        // Changed since (by the program, or gone): leave it.
        match get(self.tid) {
            Some(now) if now.runtime == SHORT_NS && now.policy == self.was.policy => {}
            _ => return,
        }
        let mut was = self.was;
        if was.runtime == DEFAULT_NS.load(std::sync::atomic::Ordering::Relaxed) {
            was.runtime = 0;
        }
        set(self.tid, &was);
    }
}
