//! The consistency check: every stopped thread's pc and return addresses against the
//! code a switch changes, with the stack unwound by DWARF CFI.

use super::plan::{Changed, PRESERVING_PATH, Plan, World};
use crate::elf::unwind::StackMem;
use crate::error::Result;
use crate::os::process;
use crate::os::ptrace::Tid;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The changed functions sorted by address: every frame of every thread is looked up,
/// a thousand threads against a thousand functions.
pub(super) struct ChangedIndex<'a> {
    sorted: Vec<&'a Changed>,
    longest: u64,
}

impl<'a> ChangedIndex<'a> {
    pub(super) fn new(changed: &'a [Changed]) -> Self {
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
    pub(super) fn at(&self, pc: u64) -> Option<&'a Changed> {
        let after = self.sorted.partition_point(|c| c.start <= pc);
        self.sorted[..after]
            .iter()
            .rev()
            .take_while(|c| pc - c.start < self.longest)
            .find(|c| pc < c.end)
            .copied()
    }
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
    /// Where a return trampoline could catch it: the return address slot and the
    /// return address.
    #[serde(skip)]
    pub(super) plant: Option<(u64, u64)>,
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

/// Check every (stopped) thread against the plan. Returns who blocks.
pub fn check_all(w: &mut World, plan: &Plan, force: bool) -> Result<Vec<Blocker>> {
    check_some(w, plan, &ChangedIndex::new(&plan.changed), force, &|_| true)
}

/// Check the stopped threads that `which` selects.
pub(super) fn check_some(
    w: &mut World,
    plan: &Plan,
    changed: &ChangedIndex,
    force: bool,
    which: &dyn Fn(Tid) -> bool,
) -> Result<Vec<Blocker>> {
    let mut out = Vec::new();
    let mut to_unwind = Vec::new();
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
        if !force {
            to_unwind.push((tid, regs));
        }
    }
    // The stacks are read together, a few threads at a time: the copies of one chunk
    // are dropped before the next is read, and the next takes the same memory (a
    // hundred stacks at once made the allocator take fresh pages, and their first
    // touches cost more than the system calls saved).
    for chunk in to_unwind.chunks(STACKS_AT_ONCE) {
        let sps: Vec<u64> = chunk.iter().map(|(_, r)| r.rsp).collect();
        let stacks = StackMem::of_threads(w.proc, w.maps, &sps);
        for ((tid, regs), mem) in chunk.iter().zip(stacks) {
            crate::os::pace::point();
            out.extend(check_stack(w, changed, *tid, regs, &mem));
        }
    }
    // In thread order, as the report lists them.
    out.sort_by_key(|b| b.tid);
    Ok(out)
}

/// How many threads' stacks [`check_some`] reads at once.
const STACKS_AT_ONCE: usize = 16;

/// The blocker thread `tid` (its registers `regs`, its stack `mem`) is, if any: a
/// changed function on its stack, or a stack that could not be unwound reliably.
fn check_stack(
    w: &mut World,
    changed: &ChangedIndex,
    tid: Tid,
    regs: &crate::os::ptrace::Regs,
    mem: &StackMem,
) -> Option<Blocker> {
    let stack = w.unwinder.unwind(w.objects, mem, regs);
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
        let f = &stack.frames[i];
        let ret = stack.frames.get(i + 1).map(|n| n.pc);
        let plant = match (f.ra_slot, ret, &stack.unreliable) {
            (Some(slot), Some(ret), None) => Some((slot, ret)),
            _ => None,
        };
        return Some(Blocker {
            tid,
            comm: process::thread_name(w.proc.pid, tid),
            function: Some(name),
            frame: w.objects.symbolize(f.pc),
            depth: i,
            unreliable: None,
            plant,
        });
    }
    let why = stack.unreliable?;
    let frame = stack
        .frames
        .last()
        .map(|f| w.objects.symbolize(f.pc))
        .unwrap_or_default();
    Some(Blocker {
        tid,
        comm: process::thread_name(w.proc.pid, tid),
        function: None,
        frame,
        depth: stack.frames.len(),
        unreliable: Some(why.text),
        plant: None,
    })
}

/// Stop the world and check every thread, in two phases so that the threads at work
/// pause as briefly as possible: first the threads off the CPU are stopped and checked
/// while the others run on (stopping a sleeping thread costs the process nothing), then
/// the threads on a CPU are stopped and checked. Their ids are put in `first`: they are
/// resumed first. (Stopping every thread and letting the busy ones go at once is worse:
/// with many threads, rlivepatch sees the busy ones' stops only after the wake-ups of
/// all the others.) Threads in `held` were checked and have stayed
/// stopped since: they are not checked again.
pub(super) fn stop_and_check(
    w: &mut World,
    plan: &Plan,
    changed: &ChangedIndex,
    force: bool,
    first: &mut Vec<Tid>,
    held: &BTreeSet<Tid>,
) -> Result<Vec<Blocker>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    crate::os::fault::trace("find threads on a CPU");
    *first = w.tr.on_cpu_known();
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
    // Taken for asleep on an earlier read but stopped at work: they go on at once and
    // are stopped with the threads on a CPU.
    for tid in w.tr.stopped_at_work(&asleep) {
        crate::os::fault::trace(&format!(
            "thread {tid} was at work: stopped again with the threads on a CPU"
        ));
        w.tr.resume(tid)?;
        first.push(tid);
    }
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

#[cfg(test)]
mod tests {
    use super::super::plan::Changed;
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
