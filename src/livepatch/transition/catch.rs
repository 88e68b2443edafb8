//! Catching a blocking thread at the return of its outermost changed frame: a return
//! trampoline in rlivepatch's scratch page replaces the return address, and the thread is
//! held at the trampoline's marker system call (outside every changed function) while the
//! others are checked again.

use super::plan::World;
use crate::bail;
use crate::error::{Error, Result};
use crate::os::ptrace::{Catch, Stop, Tid};
use crate::remote::inject::{Scratch, TRAMPOLINE_SIZE, TRAMPOLINE_STOP};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the threads that were asleep are held while the ones that were on a CPU
/// leave the changed code (a quick catch).
const QUICK: Duration = Duration::from_millis(5);

/// A return trampoline planted for a thread.
pub(super) struct Planted {
    /// Which trampoline of the scratch page.
    pub index: usize,
    /// The stack slot of the return address it replaced.
    pub slot: u64,
    /// The return address it replaced.
    pub ret: u64,
    /// The thread came out and is held at the marker.
    pub parked: bool,
}

/// Mark the planted threads that came out (stopped at their trampoline's marker).
/// Returns how many did.
pub(super) fn collect_parked(w: &mut World, planted: &mut BTreeMap<Tid, Planted>) -> u32 {
    let mut n = 0;
    for (tid, p) in planted.iter_mut().filter(|(_, p)| !p.parked) {
        let stopped =
            w.tr.threads
                .get(tid)
                .is_some_and(|t| t.stop == Some(Stop::Syscall));
        if stopped
            && w.scratch.is_some_and(|s| {
                w.tr.regs(*tid)
                    .is_ok_and(|r| r.rip == s.trampoline(p.index) + TRAMPOLINE_STOP)
            })
        {
            p.parked = true;
            n += 1;
        }
    }
    n
}

/// A quick catch: the only blockers are threads that were on a CPU, each with a
/// trampoline; they are about to return. Only the threads that were on a CPU run, the
/// others stay stopped (their check stays valid), for at most [`QUICK`]. Returns whether
/// every trampoline was reached; then the threads still stopped are `held`.
pub(super) fn quick_catch(
    w: &mut World,
    planted: &mut BTreeMap<Tid, Planted>,
    first: &[Tid],
    caught: &mut u32,
) -> Result<bool> {
    for &tid in first {
        if !planted.get(&tid).is_some_and(|p| p.parked) {
            w.tr.resume(tid)?;
        }
    }
    let until = Instant::now() + QUICK;
    loop {
        *caught += collect_parked(w, planted);
        if planted.values().all(|p| p.parked) {
            return Ok(true);
        }
        if w.tr.interrupted.is_some()
            || w.tr.job_stop.is_some()
            || w.tr.exited
            || !w.tr.pump(until)?
        {
            return Ok(false);
        }
    }
}

/// Give up with `e`: the world stopped, every trampoline taken away. Threads that keep a
/// trampoline (one could not be taken away) still return through rlivepatch's memory:
/// the error then says so, and that memory stays mapped.
pub(super) fn finish_err<T>(
    w: &mut World,
    planted: &mut BTreeMap<Tid, Planted>,
    e: Error,
) -> Result<T> {
    let kept: Vec<Tid> = planted.keys().copied().collect();
    let cleared =
        w.tr.stop_all(Instant::now() + Duration::from_secs(10))
            .and_then(|()| release_all(w, planted));
    match cleared {
        Ok(()) => Err(e),
        Err(r) => Err(crate::err!(
            Incomplete,
            "{}; and taking the return trampolines away from threads {} failed ({}): rlivepatch's memory stays mapped until they have returned; run `rlivepatch repair {}` later",
            e.message,
            kept.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            r.message,
            w.proc.pid
        )
        .because(crate::error::Cause::ScratchInUse)),
    }
}

/// Remove every trampoline. The world must be stopped.
pub(super) fn release_all(w: &mut World, planted: &mut BTreeMap<Tid, Planted>) -> Result<()> {
    let Some(s) = w.scratch else { return Ok(()) };
    let mut first_err = None;
    for (tid, p) in std::mem::take(planted) {
        if let Err(e) = release(w, &s, tid, &p) {
            first_err.get_or_insert(e);
        }
    }
    w.unwinder.aliases.clear();
    first_err.map_or(Ok(()), Err)
}

pub(super) fn plant(
    w: &mut World,
    s: &Scratch,
    tid: Tid,
    index: usize,
    slot: u64,
    ret: u64,
) -> Result<()> {
    if w.proc.read_u64(slot)? != ret {
        bail!(Failed, "return address of thread {tid} moved");
    }
    let t = s.trampoline(index);
    w.proc.write(t, &s.trampoline_code(index, ret))?;
    w.proc.write(slot, &t.to_le_bytes())?;
    if let Some(th) = w.tr.threads.get_mut(&tid) {
        th.syscall_mode = true;
        th.catch = Catch::At(vec![t + TRAMPOLINE_STOP]);
    }
    Ok(())
}

/// Take a trampoline away from a stopped thread. A thread that has returned into it (held
/// at the marker, or anywhere in it) continues at the real return address with its
/// `%rax`; a thread that has not gets its return address back.
pub(super) fn release(w: &mut World, s: &Scratch, tid: Tid, p: &Planted) -> Result<()> {
    if crate::os::fault::fails("catch:release") {
        bail!(
            Failed,
            "taking the return trampoline away from thread {tid} failed"
        );
    }
    let Some(th) = w.tr.threads.get_mut(&tid) else {
        return Ok(());
    };
    th.syscall_mode = false;
    th.catch = Catch::Nothing;
    let t = s.trampoline(p.index);
    let mut r = w.tr.regs(tid)?;
    if r.rip >= t && r.rip < t + TRAMPOLINE_SIZE {
        // Between saving %rax (t+10) and reloading it (t+27) the register holds the
        // marker's number; the saved value is in the data slot.
        let off = r.rip - t;
        if off > 10 && off < 27 {
            r.rax = w.proc.read_u64(s.trampoline_data(p.index))?;
        }
        r.rip = p.ret;
        r.orig_rax = u64::MAX;
        return w.tr.set_regs(tid, &r);
    }
    // Give the return address back, unless the stack moved on (longjmp).
    if w.proc.read_u64(p.slot).ok() == Some(t) {
        w.proc.write(p.slot, &p.ret.to_le_bytes())?;
    }
    Ok(())
}
