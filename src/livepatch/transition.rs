//! The switch: writing the new entry bytes only at a moment when no thread is inside, or
//! will return into, a function whose implementation changes (the kernel livepatch
//! consistency model, carried to the threads of one process).
//!
//! Each attempt stops every thread, unwinds each stack with DWARF CFI and checks every pc
//! and return address against the changed code. When a thread blocks, the return address
//! of its outermost changed frame is replaced by a return trampoline in rlivepatch's code
//! page: the moment that frame returns, the thread makes a marker system call that
//! rlivepatch sees as a syscall-enter stop, and is held there (outside every changed
//! function) while the others are checked again. A trampoline is harmless if rlivepatch
//! dies: it jumps to the original return address. Threads that do not come out are waited
//! for, with rounds growing from 100 ms to 1 s, until the timeout; then every trampoline is
//! removed and the switch is abandoned with the target as it was.

use crate::elf::objects::Objects;
use crate::elf::unwind::{Alias, StackMem, Unwinder};
use crate::error::{Error, ErrorKind, Result};
use crate::os::process::{self, Mapping, Process};
use crate::os::ptrace::{Catch, Stop, Tid, Tracer};
use crate::remote::inject::{MAX_TRAMPOLINES, Scratch, TRAMPOLINE_SIZE, TRAMPOLINE_STOP};
use crate::{bail, err};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The longest a thread caught at a return is held while the others are caught.
const PARK_LIMIT: Duration = Duration::from_secs(3);
/// How long the threads that were asleep are held while the ones that were on a CPU
/// leave the changed code (a quick catch).
const QUICK: Duration = Duration::from_millis(5);
/// How long a switch waits before it tells the operator who blocks it.
const FIRST_REPORT: Duration = Duration::from_millis(250);
/// After a thread is caught, how long to wait for more before checking again.
const BATCH: Duration = Duration::from_millis(5);

/// How the preserving path is named where it blocks a switch.
pub const PRESERVING_PATH: &str = "the preserving path";

/// Code whose implementation the switch changes.
#[derive(Debug, Clone)]
pub struct Changed {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// For messages.
    pub name: String,
}

/// The changed functions sorted by address: every frame of every thread is looked up,
/// a thousand threads against a thousand functions.
struct ChangedIndex<'a> {
    sorted: Vec<&'a Changed>,
    longest: u64,
}

impl<'a> ChangedIndex<'a> {
    fn new(changed: &'a [Changed]) -> Self {
        let mut sorted: Vec<&Changed> = changed.iter().collect();
        sorted.sort_by_key(|c| c.start);
        let longest = changed
            .iter()
            .map(|c| c.end.saturating_sub(c.start))
            .max()
            .unwrap_or(0);
        ChangedIndex { sorted, longest }
    }

    /// A changed function holding `pc`.
    fn at(&self, pc: u64) -> Option<&'a Changed> {
        let after = self.sorted.partition_point(|c| c.start <= pc);
        self.sorted[..after]
            .iter()
            .rev()
            .take_while(|c| pc - c.start < self.longest)
            .find(|c| pc < c.end)
            .copied()
    }
}

/// One write of the switch.
#[derive(Debug, Clone)]
pub struct Write {
    /// Where.
    pub addr: u64,
    /// The bytes there now.
    pub old: Vec<u8>,
    /// The bytes after the switch.
    pub new: Vec<u8>,
}

/// What a switch changes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// No thread may be in these.
    pub changed: Vec<Changed>,
    /// Entries being written: even with `--force`, no pc may be inside their first bytes.
    pub entries: Vec<(u64, u64)>,
    /// The writes.
    pub writes: Vec<Write>,
}

/// How to switch.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Give up after this long.
    pub timeout: Duration,
    /// Switch without the consistency check (the kernel's force).
    pub force: bool,
}

/// A thread that keeps a switch from happening.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Blocker {
    /// Thread id.
    pub tid: Tid,
    /// Its name (comm).
    pub comm: String,
    /// The changed function it is in, or `None` for an unreliable stack.
    pub function: Option<String>,
    /// Where: the blocking frame, symbolized.
    pub frame: String,
    /// How deep that frame is (0 = the thread is executing it).
    pub depth: usize,
    /// Why the stack could not be unwound, when it could not.
    pub unreliable: Option<String>,
    #[serde(skip)]
    plant: Option<(u64, u64)>,
}

impl Blocker {
    /// One line for messages.
    pub fn describe(&self) -> String {
        match (&self.function, &self.unreliable) {
            (Some(f), _) if self.depth == 0 => format!(
                "thread {} ({}) is executing {f} at {}",
                self.tid, self.comm, self.frame
            ),
            (Some(f), _) => format!(
                "thread {} ({}) will return into {f} at {} ({} frames up)",
                self.tid, self.comm, self.frame, self.depth
            ),
            (None, Some(why)) => format!(
                "thread {} ({}) has an unreliable stack ({why})",
                self.tid, self.comm
            ),
            (None, None) => format!("thread {} ({}) is at {}", self.tid, self.comm, self.frame),
        }
    }
}

/// What happened in a switch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Attempts (stop-the-world checks).
    pub attempts: u32,
    /// Threads caught at the return of a changed function.
    pub caught_returns: u32,
    /// Milliseconds from the first attempt to the switch.
    pub waited_ms: u64,
    /// Milliseconds the switching attempt held the process's threads stopped: from its
    /// first stop to the resume (the threads at work, stopped last, for less).
    pub stopped_ms: f64,
    /// Switched without the check.
    pub forced: bool,
}

/// Progress while waiting, for the operator.
pub struct Progress<'a> {
    /// Attempt number.
    pub attempt: u32,
    /// Time left before the timeout.
    pub left: Duration,
    /// Who blocks.
    pub blockers: &'a [Blocker],
}

/// The process and its threads, as the switch needs them.
pub struct World<'a> {
    /// The tracer.
    pub tr: &'a mut Tracer,
    /// The process.
    pub proc: &'a Process,
    /// Its objects (including a patch just loaded).
    pub objects: &'a Objects,
    /// Its mappings.
    pub maps: &'a [Mapping],
    /// The unwinder (tables cached across attempts).
    pub unwinder: &'a mut Unwinder,
    /// rlivepatch's memory in the target, for return trampolines.
    pub scratch: Option<Scratch>,
    /// Return trampolines must not be used (CET shadow stack).
    pub shadow_stack: bool,
    /// After a successful switch, only these threads stay attached (resumed); the others
    /// are detached. `None`: all are resumed and stay attached.
    pub keep: Option<Vec<Tid>>,
}

struct Planted {
    index: usize,
    slot: u64,
    ret: u64,
    parked: bool,
}

/// Check every (stopped) thread against the plan. Returns who blocks.
pub fn check_all(w: &mut World, plan: &Plan, force: bool) -> Result<Vec<Blocker>> {
    check_some(w, plan, &ChangedIndex::new(&plan.changed), force, &|_| true)
}

/// Check the stopped threads that `which` selects.
fn check_some(
    w: &mut World,
    plan: &Plan,
    changed: &ChangedIndex,
    force: bool,
    which: &dyn Fn(Tid) -> bool,
) -> Result<Vec<Blocker>> {
    let mut out = Vec::new();
    for tid in w.tr.tids().into_iter().filter(|t| which(*t)) {
        crate::os::pace::point();
        let regs = match w.tr.regs(tid) {
            Ok(r) => r,
            Err(_)
                if !process::task_ids(w.proc.pid)
                    .unwrap_or_default()
                    .contains(&tid) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        // Even a forced switch must not write over the bytes a thread is executing.
        if let Some(&(e, _)) = plan
            .entries
            .iter()
            .find(|(e, l)| regs.rip > *e && regs.rip < e + l)
        {
            out.push(Blocker {
                tid,
                comm: process::thread_name(w.proc.pid, tid),
                function: Some(w.objects.symbolize(e)),
                frame: w.objects.symbolize(regs.rip),
                depth: 0,
                unreliable: None,
                plant: None,
            });
            continue;
        }
        if force {
            continue;
        }
        let mem = StackMem::of_thread(w.proc, w.maps, regs.rsp);
        let stack = w.unwinder.unwind(w.objects, &mem, &regs);
        // The outermost changed frame is the one that blocks (and where a return could
        // be diverted); the one inside it names the function when the outermost is the
        // preserving path a new function returns through.
        let mut hit: Option<(usize, &Changed)> = None;
        let mut inner: Option<&Changed> = None;
        for (i, f) in stack.frames.iter().enumerate() {
            let probe = if f.exact { f.pc } else { f.pc.wrapping_sub(1) };
            if let Some(c) = changed.at(probe) {
                inner = hit.map(|h| h.1).or(inner);
                hit = Some((i, c));
            }
        }
        if let Some((i, c)) = hit {
            let name = match inner {
                Some(n) if c.name == PRESERVING_PATH => {
                    format!("{}, which returns through {}", n.name, c.name)
                }
                _ => c.name.clone(),
            };
            let comm = process::thread_name(w.proc.pid, tid);
            let f = &stack.frames[i];
            let ret = stack.frames.get(i + 1).map(|n| n.pc);
            let plant = match (f.ra_slot, ret, &stack.unreliable) {
                (Some(slot), Some(ret), None) => Some((slot, ret)),
                _ => None,
            };
            out.push(Blocker {
                tid,
                comm,
                function: Some(name),
                frame: w.objects.symbolize(f.pc),
                depth: i,
                unreliable: None,
                plant,
            });
        } else if let Some(why) = stack.unreliable {
            let comm = process::thread_name(w.proc.pid, tid);
            let frame = stack
                .frames
                .last()
                .map(|f| w.objects.symbolize(f.pc))
                .unwrap_or_default();
            out.push(Blocker {
                tid,
                comm,
                function: None,
                frame,
                depth: stack.frames.len(),
                unreliable: Some(why),
                plant: None,
            });
        }
    }
    Ok(out)
}

/// Switch: stop the world, check, write; retry until `opts.timeout`. On success every
/// write is done and read back; on failure nothing is written.
pub fn switch(
    w: &mut World,
    plan: &Plan,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
    let start = Instant::now();
    if plan.writes.is_empty() && plan.changed.is_empty() {
        // Nothing changes (a patch of callbacks and states only): no thread can be in
        // the way.
        return Ok(Report {
            attempts: 0,
            caught_returns: 0,
            waited_ms: 0,
            stopped_ms: 0.0,
            forced: opts.force,
        });
    }
    let deadline = start + opts.timeout;
    // Built once, before any thread is stopped.
    let changed = ChangedIndex::new(&plan.changed);
    let mut round_len = Duration::from_millis(100);
    let mut round_end: Option<Instant> = None;
    let mut round_started: Option<Instant> = None;
    let mut planted: BTreeMap<Tid, Planted> = BTreeMap::new();
    let mut attempts = 0u32;
    let mut caught = 0u32;
    let mut last_report: Option<Instant> = None;
    // Threads checked safe and stopped ever since (after a quick catch).
    let mut held: BTreeSet<Tid> = BTreeSet::new();
    // Threads seen on a CPU in any attempt: resumed first.
    let mut busy: Vec<Tid> = Vec::new();
    let result = loop {
        attempts += 1;
        // Threads gone meanwhile lose their trampolines; the others' are known to the
        // unwinder, which sees through them.
        planted.retain(|tid, _| w.tr.threads.contains_key(tid));
        w.unwinder.aliases = match w.scratch {
            Some(s) => planted
                .values()
                .map(|p| Alias {
                    start: s.trampoline(p.index),
                    end: s.trampoline(p.index) + TRAMPOLINE_SIZE,
                    target: p.ret,
                })
                .collect(),
            None => Vec::new(),
        };
        let mut first: Vec<Tid> = Vec::new();
        let stopped_at = Instant::now();
        let blockers = match stop_and_check(w, plan, &changed, opts.force, &mut first, &held) {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        held.clear();
        for t in &first {
            if !busy.contains(t) {
                busy.push(*t);
            }
        }
        if let Err(e) = w.tr.check_interrupted() {
            break Err(e);
        }
        // Threads that exited while the others were stopped.
        planted.retain(|tid, _| w.tr.threads.contains_key(tid));
        if blockers.is_empty() {
            let written = write_all(w.proc, &plan.writes);
            crate::os::fault::point("switch:written");
            if written.is_ok() {
                // Trampolines go before anyone runs; then the threads that were at work
                // run first.
                if let Err(e) = release_all(w, &mut planted) {
                    break Err(e);
                }
                let r = match &w.keep {
                    None => w.tr.resume_all_first(&busy),
                    Some(keep) => w.tr.detach_all_but(keep, &busy),
                };
                if let Err(e) = r {
                    break Err(e);
                }
            }
            break written.map(|()| Report {
                attempts,
                caught_returns: caught,
                waited_ms: start.elapsed().as_millis() as u64,
                stopped_ms: stopped_at.elapsed().as_secs_f64() * 1000.0,
                forced: opts.force,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(busy_error(&blockers, opts.timeout));
        }
        // A thread caught in passing is usually out a moment later: report only waits
        // the operator would notice.
        if now.duration_since(start) >= FIRST_REPORT
            && last_report.is_none_or(|l| now.duration_since(l) >= Duration::from_millis(500))
        {
            progress(&Progress {
                attempt: attempts,
                left: deadline - now,
                blockers: &blockers,
            });
            last_report = Some(now);
        }
        // Catch the return of each blocking thread's outermost changed frame.
        if let (Some(s), false) = (w.scratch, w.shadow_stack) {
            for b in &blockers {
                let Some((slot, ret)) = b.plant else { continue };
                if planted.get(&b.tid).is_some_and(|p| p.slot == slot) {
                    continue;
                }
                if let Some(old) = planted.remove(&b.tid) {
                    release(w, &s, b.tid, &old)?;
                }
                let Some(index) =
                    (0..MAX_TRAMPOLINES).find(|i| !planted.values().any(|p| p.index == *i))
                else {
                    break;
                };
                if plant(w, &s, b.tid, index, slot, ret).is_ok() {
                    planted.insert(
                        b.tid,
                        Planted {
                            index,
                            slot,
                            ret,
                            parked: false,
                        },
                    );
                }
            }
        }
        crate::os::fault::point("switch:planted");
        if !planted.is_empty()
            && blockers
                .iter()
                .all(|b| first.contains(&b.tid) && planted.contains_key(&b.tid))
        {
            match quick_catch(w, &mut planted, &first, &mut caught) {
                Ok(true) => {
                    held =
                        w.tr.threads
                            .values()
                            .filter(|t| t.stop.is_some() && !t.listening)
                            .map(|t| t.tid)
                            .filter(|t| !first.contains(t))
                            .collect();
                    continue;
                }
                Ok(false) => {}
                Err(e) => return finish_err(w, &mut planted, e),
            }
        }
        // A round goes on while threads keep being caught: the parked ones stay parked (out
        // of every changed function) while the others are caught in turn; it ends when no
        // thread came out for `round_len`, or when threads have been held for PARK_LIMIT.
        let round_start = *round_started.get_or_insert(now);
        let end = (*round_end.get_or_insert(now + round_len))
            .min(deadline)
            .min(round_start + PARK_LIMIT);
        // Run everyone but the parked threads until the planted ones came out (then check
        // again), or a little after the first one did, or the round ends.
        if let Err(e) = w.tr.resume_all_but(
            &planted
                .iter()
                .filter(|(_, p)| p.parked)
                .map(|(t, _)| *t)
                .collect::<Vec<_>>(),
        ) {
            break Err(e);
        }
        let mut fired = false;
        let mut check_at = end;
        loop {
            match w.tr.pump(check_at.min(end)) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return finish_err(w, &mut planted, e),
            }
            if w.tr.interrupted.is_some() || w.tr.job_stop.is_some() || w.tr.exited {
                break;
            }
            let n = collect_parked(w, &mut planted);
            if n > 0 {
                caught += n;
                if !fired {
                    check_at = Instant::now() + BATCH;
                }
                fired = true;
            }
            if fired && planted.values().all(|p| p.parked) {
                break;
            }
            if Instant::now() >= check_at {
                break;
            }
        }
        if fired {
            round_end = Some(Instant::now() + round_len);
        }
        if w.tr.exited {
            break Err(err!(
                Target,
                "process {} exited during the switch",
                w.proc.pid
            ));
        }
        let round_over = round_end.is_some_and(|e| Instant::now() >= e)
            || Instant::now() >= round_start + PARK_LIMIT;
        if !fired || round_over {
            // The round is over: let the parked threads go on; they are caught again next
            // time they block.
            round_end = None;
            round_started = None;
            round_len = (round_len * 2).min(Duration::from_secs(1));
            if let Err(e) = w.tr.stop_all(Instant::now() + Duration::from_secs(10)) {
                break Err(e);
            }
            let parked: Vec<Tid> = planted
                .iter()
                .filter(|(_, p)| p.parked)
                .map(|(t, _)| *t)
                .collect();
            for tid in parked {
                let p = planted.remove(&tid).unwrap();
                if let Some(s) = w.scratch {
                    release(w, &s, tid, &p)?;
                }
            }
        }
    };
    match result {
        Ok(r) => {
            release_all(w, &mut planted)?;
            Ok(r)
        }
        Err(e) => finish_err(w, &mut planted, e),
    }
}

/// Stop the world and check every thread, in two phases so that the threads at work
/// pause as briefly as possible: first the threads off the CPU are stopped and checked
/// while the others run on (stopping a sleeping thread costs the process nothing), then
/// the threads on a CPU are stopped and checked. Their ids are put in `first`: they are
/// resumed first. (Stopping every thread and letting the busy ones go at once is worse:
/// with many threads, rlivepatch sees the busy ones' stops only after the wake-ups of
/// all the others.) Threads in `held` were checked and have stayed
/// stopped since: they are not checked again.
fn stop_and_check(
    w: &mut World,
    plan: &Plan,
    changed: &ChangedIndex,
    force: bool,
    first: &mut Vec<Tid>,
    held: &BTreeSet<Tid>,
) -> Result<Vec<Blocker>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    crate::os::fault::trace("find threads on a CPU");
    *first = w.tr.on_cpu();
    let asleep: Vec<Tid> =
        w.tr.threads
            .values()
            .filter(|t| t.stop.is_none() || t.listening)
            .map(|t| t.tid)
            .filter(|t| !first.contains(t))
            .collect();
    crate::os::fault::trace("stop asleep");
    w.tr.stop_these(&asleep, deadline)?;
    crate::os::fault::trace("asleep stopped");
    w.tr.check_interrupted()?;
    let checked: BTreeSet<Tid> =
        w.tr.threads
            .values()
            .filter(|t| t.stop.is_some() && !t.listening && !held.contains(&t.tid))
            .map(|t| t.tid)
            .collect();
    let mut blockers = check_some(w, plan, changed, force, &|t| checked.contains(&t))?;
    crate::os::fault::trace("asleep checked");
    // Unsafe already: the rest is checked too, for a complete report, and stopped anyway
    // since trampolines are planted with the world stopped.
    w.tr.stop_all(deadline)?;
    blockers.extend(check_some(w, plan, changed, force, &|t| {
        !checked.contains(&t) && !held.contains(&t)
    })?);
    crate::os::fault::trace("checked");
    Ok(blockers)
}

/// Mark the planted threads that came out (stopped at their trampoline's marker).
/// Returns how many did.
fn collect_parked(w: &mut World, planted: &mut BTreeMap<Tid, Planted>) -> u32 {
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
fn quick_catch(
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

fn finish_err<T>(w: &mut World, planted: &mut BTreeMap<Tid, Planted>, e: Error) -> Result<T> {
    w.tr.stop_all(Instant::now() + Duration::from_secs(10))?;
    release_all(w, planted)?;
    Err(e)
}

/// Remove every trampoline. The world must be stopped.
fn release_all(w: &mut World, planted: &mut BTreeMap<Tid, Planted>) -> Result<()> {
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

fn plant(w: &mut World, s: &Scratch, tid: Tid, index: usize, slot: u64, ret: u64) -> Result<()> {
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
fn release(w: &mut World, s: &Scratch, tid: Tid, p: &Planted) -> Result<()> {
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

/// Do the writes; on a failure, put back the ones done. Writes that share a page go in
/// one read, one write and one read-back of the bytes they span: a patch of 1000
/// functions is a few system calls while the world is stopped, not 3000.
pub fn write_all(proc: &Process, writes: &[Write]) -> Result<()> {
    let len = |w: &Write| w.old.len().max(w.new.len()) as u64;
    let mut order: Vec<&Write> = writes.iter().collect();
    order.sort_by_key(|w| w.addr);
    // Runs of writes within one page (a write crossing a page boundary is a run alone).
    let mut runs: Vec<Vec<&Write>> = Vec::new();
    for w in order {
        let page = w.addr & !0xfff;
        match runs.last_mut() {
            Some(r)
                if r[0].addr & !0xfff == page
                    && (w.addr + len(w) - 1) & !0xfff == page
                    && r.iter().all(|x| x.addr + len(x) <= w.addr) =>
            {
                r.push(w)
            }
            _ => runs.push(vec![w]),
        }
    }
    let mut done: Vec<(u64, Vec<u8>)> = Vec::new();
    for run in &runs {
        let start = run[0].addr;
        let end = run.iter().map(|w| w.addr + len(w)).max().unwrap();
        let r = write_run(proc, run, start, end);
        match r {
            Ok(before) => done.push((start, before)),
            Err(e) => {
                for (addr, bytes) in done.iter().rev() {
                    let _ = proc.write(*addr, bytes);
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One run: check that each write finds the bytes it expects, write the span, read it
/// back. Returns the span's bytes before.
fn write_run(proc: &Process, run: &[&Write], start: u64, end: u64) -> Result<Vec<u8>> {
    let before = crate::elf::objects::read_code(proc, start, (end - start) as usize)?;
    let mut after = before.clone();
    for w in run {
        let off = (w.addr - start) as usize;
        let now = &before[off..off + w.old.len()];
        if now != w.old.as_slice() {
            let code_there = proc
                .maps()
                .is_ok_and(|m| m.iter().any(|m| m.exec && m.contains(w.addr)));
            if !code_there {
                bail!(
                    Busy,
                    "the code at {:#x} was unloaded or replaced (a dlclose or dlopen) while rlivepatch worked; nothing was changed: retry",
                    w.addr
                );
            }
            bail!(
                Mismatch,
                "the code at {:#x} changed under rlivepatch (found {}, expected {}); another tool is writing the process, or it loaded and unloaded libraries meanwhile: retry",
                w.addr,
                crate::fmt::hex(now),
                crate::fmt::hex(&w.old)
            );
        }
        after[off..off + w.new.len()].copy_from_slice(&w.new);
    }
    proc.write(start, &after)?;
    Ok(before)
}

fn busy_error(blockers: &[Blocker], timeout: Duration) -> Error {
    let who: Vec<String> = blockers.iter().map(|b| b.describe()).collect();
    let unreliable_only = blockers.iter().all(|b| b.function.is_none());
    let advice = if unreliable_only {
        "the stacks could not be unwound to their base; retry later, or use --force if you accept the risk"
    } else {
        "wait and retry, patch a function that returns (a caller or a callee of the loop), or use --force (a forced patch can never be unloaded)"
    };
    Error::new(
        ErrorKind::Busy,
        format!(
            "no safe moment to switch within {}s: {}; {advice}",
            timeout.as_secs_f32(),
            who.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(start: u64, end: u64, name: &str) -> Changed {
        Changed {
            start,
            end,
            name: name.into(),
        }
    }

    #[test]
    fn finds_the_changed_function_of_a_pc() {
        let list = vec![
            f(0x3000, 0x3010, "c"),
            f(0x1000, 0x1800, "a"),
            f(0x2000, 0x2004, "b"),
        ];
        let ix = ChangedIndex::new(&list);
        let name = |pc| ix.at(pc).map(|c| c.name.as_str());
        assert_eq!(name(0xfff), None);
        assert_eq!(name(0x1000), Some("a"));
        assert_eq!(name(0x17ff), Some("a"));
        assert_eq!(name(0x1800), None);
        assert_eq!(name(0x2003), Some("b"));
        assert_eq!(name(0x2004), None);
        assert_eq!(name(0x300f), Some("c"));
        assert_eq!(name(u64::MAX), None);
        // Nested ranges (an alias inside a longer function) are still found.
        let nested = vec![f(0x1000, 0x2000, "outer"), f(0x1100, 0x1110, "inner")];
        let ix = ChangedIndex::new(&nested);
        assert_eq!(ix.at(0x1800).map(|c| c.name.as_str()), Some("outer"));
        assert!(ix.at(0x1105).is_some());
        assert!(ChangedIndex::new(&[]).at(0x1000).is_none());
    }
}
