//! Choosing the thread to borrow for injected calls ([`Session::borrow`]): one asleep in
//! a blocking call if possible, else one running its own code; never one inside malloc,
//! the loader, pthread internals or a signal handler, nor one whose seccomp filter would
//! refuse the calls.

use super::Session;
use crate::bail;
use crate::error::{Error, Result};
use crate::os::process;
use crate::os::ptrace::{Stop, Tid};
use crate::os::restart::Signals;
use crate::remote::safepoint::{self, Fitness, Unfit};
use std::time::{Duration, Instant};

/// How good a thread is to borrow, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// The main thread asleep in a blocking call: its allocations go to the main arena,
    /// so the loader's mallocs create nothing new.
    MainAsleep,
    /// Another thread asleep in a blocking call.
    Asleep,
    /// The main thread running its own code.
    MainRunning,
    /// Another thread running its own code.
    Running,
}

impl Rank {
    fn of(fitness: Fitness, main: bool) -> Rank {
        match (fitness, main) {
            (Fitness::Sleeping, true) => Rank::MainAsleep,
            (Fitness::Sleeping, false) => Rank::Asleep,
            (Fitness::Running, true) => Rank::MainRunning,
            (Fitness::Running, false) => Rank::Running,
        }
    }

    fn asleep(self) -> bool {
        self <= Rank::Asleep
    }
}

/// Why a thread was not taken.
enum Refusal {
    /// It could not be looked at: gone, or it did not stop in time.
    Unseen(String),
    /// Where it is makes it unfit (it may be fit later).
    Unfit(Unfit),
    /// Its seccomp filter would not let the injected calls through (for good).
    Filtered(Error),
}

impl Refusal {
    fn why(&self) -> String {
        match self {
            Refusal::Unseen(w) => w.clone(),
            Refusal::Unfit(u) => u.why.clone(),
            Refusal::Filtered(e) => e.message.clone(),
        }
    }
}

/// The threads in the order they are tried: the main thread first, then the others by
/// tid. Threads on a CPU right now go to a second pass: stopping one to look at it would
/// pause work, and a thread asleep is the better choice anyway.
struct Order {
    queue: std::vec::IntoIter<Tid>,
    deferred: Vec<Tid>,
    second_pass: bool,
}

impl Order {
    fn new(mut tids: Vec<Tid>, main: Tid) -> Order {
        tids.sort_by_key(|t| (*t != main, *t));
        Order {
            queue: tids.into_iter(),
            deferred: Vec::new(),
            second_pass: false,
        }
    }

    /// The next thread to try.
    fn next(&mut self) -> Option<Tid> {
        if let Some(t) = self.queue.next() {
            return Some(t);
        }
        if self.second_pass {
            return None;
        }
        self.second_pass = true;
        self.queue = std::mem::take(&mut self.deferred).into_iter();
        self.queue.next()
    }

    /// Try `tid` again in the second pass.
    fn defer(&mut self, tid: Tid) {
        self.deferred.push(tid);
    }
}

impl Session<'_> {
    /// Choose a thread to borrow (see the module's doc). Threads are stopped one at a
    /// time; the chosen one stays stopped.
    pub(super) fn pick_thread(&mut self) -> Result<Tid> {
        let deadline = Instant::now() + self.opts.timeout.min(Duration::from_secs(10));
        // The keeper, parked for this, first: borrowing it costs the program nothing (and
        // attaches it alone when the threads were let go at a switch).
        if let Some(tid) = self.borrowable_keeper()? {
            return Ok(tid);
        }
        let keeper = self.record.keeper.as_ref().map(|k| k.tid);
        if self.tr.threads.keys().all(|&t| Some(t) == keeper) {
            // The thread kept at a switch is gone: attach again.
            self.tr.reattach()?;
        }
        for round in 0u32.. {
            let (best, refusals) = self.pick_round()?;
            if best.is_none() {
                self.refused_for_good(refusals.as_slice(), round)?;
            }
            // Settle for less than a sleeping thread only after a few tries.
            match best {
                Some((r, tid)) if r.asleep() || round >= 4 => return Ok(tid),
                Some((_, tid)) => self.tr.resume(tid)?,
                None => {}
            }
            self.tr.check_interrupted()?;
            if Instant::now() >= deadline {
                let reasons: Vec<String> = refusals
                    .iter()
                    .map(|(tid, r)| format!("thread {tid}: {}", r.why()))
                    .collect();
                bail!(
                    Busy,
                    "no thread of process {} is at a point where it can safely run dlopen ({}); retry when the process is less busy",
                    self.proc.pid,
                    reasons.join("; ")
                );
            }
            self.tr.resume_all()?;
            // Only some threads are attached (the one kept at a switch): the others may be
            // at a better place.
            if process::thread_count(self.proc.pid).is_some_and(|n| n > self.tr.threads.len()) {
                self.tr.reattach()?;
            }
            self.tr.pump(Instant::now() + Duration::from_millis(20))?;
        }
        unreachable!()
    }

    /// Choose a thread for system calls only ([`Session::borrow_for_syscalls`]): any
    /// thread that is stopped where a call may begin (not entering a system call, no
    /// signal waiting for it) and whose seccomp filter lets the calls through. Threads
    /// stopped already come first, then threads asleep.
    pub(super) fn pick_any_thread(&mut self) -> Result<Tid> {
        let deadline = Instant::now() + self.opts.timeout.min(Duration::from_secs(10));
        if self.tr.threads.is_empty() {
            // Any thread will do: one asleep, attached alone, before all of them.
            self.attach_one_asleep()?;
        }
        loop {
            let mut refusals: Vec<(Tid, String)> = Vec::new();
            let mut tids = self.tr.tids();
            let pid = self.proc.pid;
            let rank = |tr: &crate::os::ptrace::Tracer, t: Tid| {
                let stopped = tr.threads.get(&t).is_some_and(|x| x.stop.is_some());
                (
                    !stopped,
                    process::thread_state(pid, t) != Some('S'),
                    t != pid,
                    t,
                )
            };
            // Each thread's state read once: it changes while the threads run, and a
            // sort whose keys change under it panics (a total order is required).
            tids.sort_by_cached_key(|&t| rank(&self.tr, t));
            for tid in tids {
                let until = Instant::now() + Duration::from_secs(5);
                let stopped = self.tr.stop_one(tid, until);
                match stopped.and_then(|ok| Ok(ok && self.tr.step_off_entry(tid, until)?)) {
                    Ok(true) => {}
                    Ok(false) => {
                        refusals.push((tid, "exited".into()));
                        continue;
                    }
                    Err(e) => {
                        refusals.push((tid, e.message));
                        continue;
                    }
                }
                match self.judge_thread_for_syscalls(tid)? {
                    Ok(()) => return Ok(tid),
                    Err(why) => {
                        refusals.push((tid, why));
                        let _ = self.tr.resume(tid);
                    }
                }
            }
            self.tr.check_interrupted()?;
            if Instant::now() >= deadline {
                let reasons: Vec<String> = refusals
                    .iter()
                    .map(|(t, w)| format!("thread {t}: {w}"))
                    .collect();
                bail!(
                    Busy,
                    "no thread of process {pid} can run a system call for rlivepatch ({}); retry",
                    crate::fmt::names_or_none(&reasons)
                );
            }
            if process::thread_count(pid).is_some_and(|n| n > self.tr.threads.len()) {
                self.tr.reattach()?;
            }
            self.tr.pump(Instant::now() + Duration::from_millis(20))?;
        }
    }

    /// Attach one thread: one asleep (stopping it costs the program nothing) before one
    /// at work, and another before the leader (see `Tracer::attach`: a traced leader
    /// makes the kernel queue signals the program ignores); all of them when none can be.
    fn attach_one_asleep(&mut self) -> Result<()> {
        let pid = self.proc.pid;
        let mut tids: Vec<Tid> = process::task_ids(pid)?.into_iter().collect();
        tids.sort_by_key(|&t| t == pid);
        // States are read until one is asleep: not a thousand of them to find one.
        let asleep = tids
            .iter()
            .copied()
            .filter(|&t| t != pid)
            .find(|&t| process::thread_state(pid, t) == Some('S'));
        for t in asleep.into_iter().chain(tids) {
            if self.tr.attach_one(t)? {
                return Ok(());
            }
        }
        self.tr.reattach()
    }

    /// Can the stopped thread `tid` run a system call for rlivepatch now?
    pub(super) fn judge_thread_for_syscalls(
        &mut self,
        tid: Tid,
    ) -> Result<std::result::Result<(), String>> {
        let th = &self.tr.threads[&tid];
        match th.stop {
            Some(Stop::Interrupt) | Some(Stop::Group(_)) => {}
            Some(Stop::Syscall) if !crate::os::ptrace::is_syscall_entry(tid)? => {}
            Some(Stop::Syscall) => return Ok(Err("entering a system call".into())),
            Some(Stop::Signal(sig)) => {
                return Ok(Err(format!("stopped for {}", process::signal_name(sig))));
            }
            _ => return Ok(Err("stopped for a ptrace event".into())),
        }
        if th.pending_signal.is_some() {
            return Ok(Err("a signal is waiting for it".into()));
        }
        let regs = self.tr.regs(tid)?;
        Ok(self.judge_filter(tid, regs.rip).map_err(|e| e.message))
    }

    /// Refuse thread `tid` (stopped at `ip`) when a seccomp filter would stop the calls
    /// loading a patch; else keep what its status said (the gate, its signals) for the
    /// borrow.
    fn judge_filter(&mut self, tid: Tid, ip: u64) -> Result<()> {
        // Unreadable only if the thread is gone: then no call will run on it.
        let (signals, mode) = Signals::with_seccomp(self.proc.pid, tid).unwrap_or_default();
        let gate = crate::os::seccomp::check_mode(self.proc.pid, tid, ip, mode)?;
        self.gates.insert(tid, (gate, signals));
        Ok(())
    }

    /// One pass over the threads: the best found (kept stopped), and why the others
    /// were refused.
    #[allow(clippy::type_complexity)]
    fn pick_round(&mut self) -> Result<(Option<(Rank, Tid)>, Vec<(Tid, Refusal)>)> {
        let mut best: Option<(Rank, Tid)> = None;
        let mut refusals = Vec::new();
        let mut order = Order::new(self.tr.tids(), self.proc.pid);
        while let Some(tid) = order.next() {
            crate::os::pace::point();
            let was_running = self.tr.threads.get(&tid).is_some_and(|t| t.stop.is_none());
            if !order.second_pass
                && was_running
                && process::thread_state(self.proc.pid, tid) == Some('R')
            {
                order.defer(tid);
                continue;
            }
            let until = Instant::now() + Duration::from_secs(5);
            let stopped = self.tr.stop_one(tid, until);
            match stopped.and_then(|ok| Ok(ok && self.tr.step_off_entry(tid, until)?)) {
                Ok(true) => {}
                Ok(false) => {
                    refusals.push((tid, Refusal::Unseen("exited".into())));
                    continue;
                }
                // Not stopped in time (a busy machine): the others may be better.
                Err(e) => {
                    refusals.push((tid, Refusal::Unseen(e.message)));
                    continue;
                }
            }
            let rank = match self.judge_thread(tid)? {
                Ok(f) => Some(Rank::of(f, tid == self.proc.pid)),
                Err(r) => {
                    refusals.push((tid, r));
                    None
                }
            };
            match (rank, best) {
                (Some(r), None) => best = Some((r, tid)),
                (Some(r), Some((b, old))) if r < b => {
                    self.tr.resume(old)?;
                    best = Some((r, tid));
                }
                _ => {
                    if was_running {
                        self.tr.resume(tid)?;
                    }
                }
            }
            // The main thread is tried first: any thread asleep will do after it.
            if best.is_some_and(|(r, _)| r.asleep()) {
                break;
            }
        }
        Ok((best, refusals))
    }

    /// Judge a stopped thread: fit (how), or why not.
    fn judge_thread(&mut self, tid: Tid) -> Result<std::result::Result<Fitness, Refusal>> {
        let th = &self.tr.threads[&tid];
        // A thread at a syscall-exit stop (a watched thread stopped in a system call) or
        // in a job-control stop can run calls too (the latter goes back into the stop
        // when rlivepatch detaches). At a syscall-entry stop, the call it is entering
        // would run first: not that one.
        let unfit = |why: String| Ok(Err(Refusal::Unfit(why.into())));
        match th.stop {
            Some(Stop::Interrupt) | Some(Stop::Group(_)) => {}
            Some(Stop::Syscall) if !crate::os::ptrace::is_syscall_entry(tid)? => {}
            Some(Stop::Syscall) => return unfit("entering a system call".into()),
            Some(Stop::Signal(sig)) => {
                return unfit(format!("stopped for {}", process::signal_name(sig)));
            }
            _ => return unfit("stopped for a ptrace event".into()),
        }
        if th.pending_signal.is_some() {
            return unfit("a signal is waiting for it".into());
        }
        let regs = self.tr.regs(tid)?;
        // Before any injected call: a seccomp filter could kill the process for one.
        if let Err(e) = self.judge_filter(tid, regs.rip) {
            return Ok(Err(Refusal::Filtered(e)));
        }
        Ok(safepoint::judge(
            &self.proc,
            &self.maps,
            &self.objects,
            &mut self.unwinder,
            &regs,
            self.opts.force,
        )
        .map_err(Refusal::Unfit))
    }

    /// Every thread judged was refused for a cause that does not pass with time: say
    /// so now, not after the timeout.
    fn refused_for_good(&self, refusals: &[(Tid, Refusal)], round: u32) -> Result<()> {
        let refusals: Vec<&(Tid, Refusal)> = refusals
            .iter()
            .filter(|(_, r)| !matches!(r, Refusal::Unseen(_)))
            .collect();
        if refusals.is_empty() {
            return Ok(());
        }
        if let Some((_, Refusal::Filtered(e))) = refusals.first().copied()
            && refusals
                .iter()
                .all(|(_, r)| matches!(r, Refusal::Filtered(_)))
        {
            return Err(e.clone());
        }
        // Stacks that stop at code without unwind information (a program built without
        // unwind tables): the consistency check could not pass either. Not at once: a
        // thread may pass through code without it (a library's _init while it loads).
        if round >= 3
            && refusals
                .iter()
                .all(|(_, r)| matches!(r, Refusal::Unfit(u) if u.no_unwind_info))
        {
            bail!(
                Busy,
                "the stacks of process {} cannot be unwound (thread {}: {}): it was built without unwind tables (-fno-asynchronous-unwind-tables?), so rlivepatch can check neither that the switch is safe nor where to load the patch; rebuild with unwind tables, or use --force to patch without the check",
                self.proc.pid,
                refusals[0].0,
                refusals[0].1.why()
            );
        }
        Ok(())
    }
}
