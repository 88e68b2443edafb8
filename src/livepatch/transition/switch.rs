//! The switch itself: attempts (stop the world, check, write or not), the return
//! trampolines planted for the threads that block, and rounds of waiting for them, until
//! the switch is done or the timeout leaves the target as it was.

use super::catch::{self, Planted};
use super::check::{Blocker, ChangedIndex, stop_and_check};
use super::plan::{Options, Plan, World};
use super::write::write_all;
use crate::elf::unwind::Alias;
use crate::err;
use crate::error::{Error, ErrorKind, Result};
use crate::os::ptrace::Tid;
use crate::remote::inject::{MAX_TRAMPOLINES, TRAMPOLINE_SIZE};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The longest a thread caught at a return is held while the others are caught.
const PARK_LIMIT: Duration = Duration::from_secs(3);
/// How long a switch waits before it tells the operator who blocks it.
const FIRST_REPORT: Duration = Duration::from_millis(250);
/// After a thread is caught, how long to wait for more before checking again.
const BATCH: Duration = Duration::from_millis(5);

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

/// Switch: stop the world, check, write; retry until `opts.timeout`. On success every
/// write is done and read back; on failure nothing is written.
pub fn switch(
    w: &mut World,
    plan: &Plan,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report> {
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
    let mut s = Switch::new(w, plan, opts);
    let ended = s.run(progress);
    s.end(ended)
}

/// How the attempts ended.
enum Ended {
    /// Switched.
    Done(Report),
    /// Given up: every trampoline is taken away (with the world stopped), then the error.
    Undo(Error),
}

/// A round of waiting: it goes on while threads keep being caught, the caught ones held
/// (out of every changed function) while the others are caught in turn.
struct Round {
    /// How long a round lasts without a catch; doubles up to 1 s.
    len: Duration,
    /// When it ends, once started.
    end: Option<Instant>,
    /// When it started.
    started: Option<Instant>,
}

/// One switch in progress.
struct Switch<'s, 'a> {
    w: &'s mut World<'a>,
    plan: &'s Plan,
    opts: &'s Options,
    /// Built once, before any thread is stopped.
    changed: ChangedIndex<'s>,
    start: Instant,
    deadline: Instant,
    round: Round,
    planted: BTreeMap<Tid, Planted>,
    attempts: u32,
    caught: u32,
    last_report: Option<Instant>,
    /// Threads checked safe and stopped ever since (after a quick catch).
    held: BTreeSet<Tid>,
    /// Threads seen on a CPU in any attempt: resumed first.
    busy: Vec<Tid>,
}

impl<'s, 'a> Switch<'s, 'a> {
    fn new(w: &'s mut World<'a>, plan: &'s Plan, opts: &'s Options) -> Self {
        let start = Instant::now();
        Switch {
            w,
            plan,
            opts,
            changed: ChangedIndex::new(&plan.changed),
            start,
            deadline: start + opts.timeout,
            round: Round {
                len: Duration::from_millis(100),
                end: None,
                started: None,
            },
            planted: BTreeMap::new(),
            attempts: 0,
            caught: 0,
            last_report: None,
            held: BTreeSet::new(),
            busy: Vec::new(),
        }
    }

    /// Attempts until the switch is done or given up.
    fn run(&mut self, progress: &mut dyn FnMut(&Progress)) -> Ended {
        loop {
            let (first, blockers, stopped_at) = match self.stop_and_check() {
                Ok(v) => v,
                Err(e) => return Ended::Undo(e),
            };
            if blockers.is_empty() {
                return self.write(stopped_at);
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Ended::Undo(busy_error(&blockers, self.opts.timeout));
            }
            self.tell(now, &blockers, progress);
            if let Err(e) = self.plant_returns(&blockers) {
                return Ended::Undo(e);
            }
            crate::os::fault::point("switch:planted");
            match self.try_quick_catch(&first, &blockers) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Ended::Undo(e),
            }
            if let Err(e) = self.wait_round(now) {
                return e;
            }
        }
    }

    /// One attempt's stop and check. Returns the threads that were on a CPU, who
    /// blocks, and when the world was stopped.
    fn stop_and_check(&mut self) -> Result<(Vec<Tid>, Vec<Blocker>, Instant)> {
        self.attempts += 1;
        // Threads gone meanwhile lose their trampolines; the others' are known to the
        // unwinder, which sees through them.
        self.forget_exited();
        self.w.unwinder.aliases = match self.w.scratch {
            Some(s) => self
                .planted
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
        let blockers = stop_and_check(
            self.w,
            self.plan,
            &self.changed,
            self.opts.force,
            &mut first,
            &self.held,
        )?;
        self.held.clear();
        for t in &first {
            if !self.busy.contains(t) {
                self.busy.push(*t);
            }
        }
        self.w.tr.check_interrupted()?;
        // Threads that exited while the others were stopped.
        self.forget_exited();
        Ok((first, blockers, stopped_at))
    }

    fn forget_exited(&mut self) {
        let threads = &self.w.tr.threads;
        self.planted.retain(|tid, _| threads.contains_key(tid));
    }

    /// Safe: write, take the trampolines away before anyone runs, then let the threads
    /// that were at work run first.
    fn write(&mut self, stopped_at: Instant) -> Ended {
        let written = write_all(self.w.proc, &self.plan.writes);
        crate::os::fault::point("switch:written");
        if let Err(e) = written {
            return Ended::Undo(e);
        }
        if let Err(e) = catch::release_all(self.w, &mut self.planted) {
            return Ended::Undo(e);
        }
        let resumed = match &self.w.keep {
            None => self.w.tr.resume_all_first(&self.busy),
            Some(keep) => self.w.tr.detach_all_but(keep, &self.busy, self.w.park),
        };
        match resumed {
            Err(e) => Ended::Undo(e),
            Ok(()) => Ended::Done(Report {
                attempts: self.attempts,
                caught_returns: self.caught,
                waited_ms: self.start.elapsed().as_millis() as u64,
                stopped_ms: stopped_at.elapsed().as_secs_f64() * 1000.0,
                forced: self.opts.force,
            }),
        }
    }

    /// Tell the operator who blocks. A thread caught in passing is usually out a moment
    /// later: only waits the operator would notice are reported.
    fn tell(&mut self, now: Instant, blockers: &[Blocker], progress: &mut dyn FnMut(&Progress)) {
        if now.duration_since(self.start) >= FIRST_REPORT
            && self
                .last_report
                .is_none_or(|l| now.duration_since(l) >= Duration::from_millis(500))
        {
            progress(&Progress {
                attempt: self.attempts,
                left: self.deadline - now,
                blockers,
            });
            self.last_report = Some(now);
        }
    }

    /// Catch the return of each blocking thread's outermost changed frame.
    fn plant_returns(&mut self, blockers: &[Blocker]) -> Result<()> {
        let (Some(s), false) = (self.w.scratch, self.w.shadow_stack) else {
            return Ok(());
        };
        for b in blockers {
            let Some((slot, ret)) = b.plant else { continue };
            if self.planted.get(&b.tid).is_some_and(|p| p.slot == slot) {
                continue;
            }
            if let Some(old) = self.planted.get(&b.tid) {
                catch::release(self.w, &s, b.tid, old)?;
                self.planted.remove(&b.tid);
            }
            let Some(index) =
                (0..MAX_TRAMPOLINES).find(|i| !self.planted.values().any(|p| p.index == *i))
            else {
                break;
            };
            if catch::plant(self.w, &s, b.tid, index, slot, ret).is_ok() {
                self.planted.insert(
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
        Ok(())
    }

    /// When the only blockers are threads that were on a CPU, each with a trampoline,
    /// they are about to return: a quick catch. Returns whether it caught them all (then
    /// the threads that stayed stopped are held, and checked no more).
    fn try_quick_catch(&mut self, first: &[Tid], blockers: &[Blocker]) -> Result<bool> {
        if self.planted.is_empty()
            || !blockers
                .iter()
                .all(|b| first.contains(&b.tid) && self.planted.contains_key(&b.tid))
        {
            return Ok(false);
        }
        if !catch::quick_catch(self.w, &mut self.planted, first, &mut self.caught)? {
            return Ok(false);
        }
        self.held = self
            .w
            .tr
            .threads
            .values()
            .filter(|t| t.stop.is_some() && !t.listening)
            .map(|t| t.tid)
            .filter(|t| !first.contains(t))
            .collect();
        Ok(true)
    }

    /// Run everyone but the parked threads until the planted ones came out (then check
    /// again), or a little after the first one did, or the round ends; a round that ends
    /// lets its parked threads go on (they are caught again next time they block).
    fn wait_round(&mut self, now: Instant) -> std::result::Result<(), Ended> {
        let round_start = *self.round.started.get_or_insert(now);
        let end = (*self.round.end.get_or_insert(now + self.round.len))
            .min(self.deadline)
            .min(round_start + PARK_LIMIT);
        let parked: Vec<Tid> = self.parked();
        self.w.tr.resume_all_but(&parked).map_err(Ended::Undo)?;
        let fired = self.pump_until(end).map_err(Ended::Undo)?;
        if fired {
            self.round.end = Some(Instant::now() + self.round.len);
        }
        if self.w.tr.exited {
            return Err(Ended::Undo(
                err!(
                    Target,
                    "process {} exited during the switch",
                    self.w.proc.pid
                )
                .because(crate::error::Cause::Gone),
            ));
        }
        let round_over = self.round.end.is_some_and(|e| Instant::now() >= e)
            || Instant::now() >= round_start + PARK_LIMIT;
        if !fired || round_over {
            self.round.end = None;
            self.round.started = None;
            self.round.len = (self.round.len * 2).min(Duration::from_secs(1));
            self.w
                .tr
                .stop_all(Instant::now() + Duration::from_secs(10))
                .map_err(Ended::Undo)?;
            // A thread leaves the planted set only once its trampoline is gone: the end
            // of a switch given up takes away those that are left.
            for tid in self.parked() {
                if let Some(s) = self.w.scratch {
                    catch::release(self.w, &s, tid, &self.planted[&tid]).map_err(Ended::Undo)?;
                }
                self.planted.remove(&tid);
            }
        }
        Ok(())
    }

    fn parked(&self) -> Vec<Tid> {
        self.planted
            .iter()
            .filter(|(_, p)| p.parked)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Wait for the planted threads to come out, until `end`; once one did, a little
    /// longer for the others. Returns whether any came out.
    fn pump_until(&mut self, end: Instant) -> Result<bool> {
        let mut fired = false;
        let mut check_at = end;
        loop {
            if !self.w.tr.pump(check_at.min(end))? {
                break;
            }
            let tr = &self.w.tr;
            if tr.interrupted.is_some() || tr.job_stop.is_some() || tr.exited {
                break;
            }
            let n = catch::collect_parked(self.w, &mut self.planted);
            if n > 0 {
                self.caught += n;
                if !fired {
                    check_at = Instant::now() + BATCH;
                }
                fired = true;
            }
            if (fired && self.planted.values().all(|p| p.parked)) || Instant::now() >= check_at {
                break;
            }
        }
        Ok(fired)
    }

    /// The end: every trampoline taken away, with the world stopped when given up.
    fn end(&mut self, ended: Ended) -> Result<Report> {
        match ended {
            Ended::Done(r) => {
                catch::release_all(self.w, &mut self.planted)?;
                Ok(r)
            }
            Ended::Undo(e) => catch::finish_err(self.w, &mut self.planted, e),
        }
    }
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
