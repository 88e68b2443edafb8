//! The tracer: ptrace attachment to every thread of one process, and the event loop.
//!
//! Every ptrace request must come from the thread that attached, so a [`Tracer`] lives on
//! one thread and is used only from it. Threads are attached with `PTRACE_SEIZE` (never
//! `SIGSTOP`: the target's parent must see no stop) and stopped with `PTRACE_INTERRUPT`.
//! The event loop re-delivers every signal the target receives while traced, exactly once,
//! and follows threads that are created (`PTRACE_O_TRACECLONE`) or exit.
//!
//! SIGINT, SIGTERM and SIGHUP sent to rlivepatch are read from the same signalfd as
//! SIGCHLD, so a request to stop is seen between two ptrace events and the current step can
//! be undone before exiting.

use crate::error::{Context, Result};
use crate::process;
use crate::{bail, err};
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A thread id.
pub type Tid = i32;

/// Registers as ptrace gives them.
pub type Regs = libc::user_regs_struct;

/// Why a thread is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` after our `PTRACE_INTERRUPT`, or a new thread's first stop.
    Interrupt,
    /// Job-control group-stop with its signal.
    Group(i32),
    /// Syscall-enter or syscall-exit stop.
    Syscall,
    /// Signal-delivery-stop: the signal is delivered when the thread is resumed.
    Signal(i32),
    /// Another ptrace event (clone, exec).
    Event(i32),
}

/// Which syscall stops of a thread in syscall mode are kept for the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Catch {
    /// None: every syscall stop is resumed.
    #[default]
    Nothing,
    /// Stops whose instruction pointer is one of these.
    At(Vec<u64>),
    /// Every syscall stop.
    All,
}

/// One traced thread.
#[derive(Debug)]
pub struct Thread {
    /// Its id.
    pub tid: Tid,
    /// Why it is stopped; `None` while it runs.
    pub stop: Option<Stop>,
    /// A signal to deliver when it is resumed (it arrived while we kept it stopped).
    pub pending_signal: Option<i32>,
    /// We want it running: stops that are not ours are resumed at once.
    pub want_run: bool,
    /// Resume with `PTRACE_SYSCALL` (a thread in an injected call, or one whose return we
    /// wait for).
    pub syscall_mode: bool,
    /// Which syscall stops are kept (reported to the caller) rather than resumed.
    pub catch: Catch,
    /// It runs an injected call: signal-delivery-stops (synchronous faults, since all
    /// other signals are blocked) are kept for the caller.
    pub in_call: bool,
    /// It is in a job-control stop and we let it stay there (`PTRACE_LISTEN`).
    pub listening: bool,
    interrupt_sent: bool,
}

/// The tracer of one process.
pub struct Tracer {
    /// The process id.
    pub pid: i32,
    /// The attached threads.
    pub threads: BTreeMap<Tid, Thread>,
    /// New threads start stopped (true while the world is stopped).
    world_stopped: bool,
    sigfd: SignalFd,
    /// The signal that asked rlivepatch to stop (SIGINT, SIGTERM, SIGHUP), if any.
    pub interrupted: Option<i32>,
    /// The process called execve while traced.
    pub exec_seen: bool,
    /// The process exited.
    pub exited: bool,
    /// Threads whose exit was reaped: a late clone event must not bring them back.
    gone: std::collections::HashSet<Tid>,
}

const OPTIONS: Options = Options::PTRACE_O_TRACECLONE
    .union(Options::PTRACE_O_TRACESYSGOOD)
    .union(Options::PTRACE_O_TRACEEXEC);
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_LISTEN: libc::c_uint = 0x4208;
const NT_X86_XSTATE: libc::c_int = 0x202;

/// Block the signals the tracer reads from its signalfd. Call once, early, on the thread
/// that will trace.
pub fn block_tool_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    Ok(set)
}

impl Tracer {
    /// Attach to every thread of `pid` with `PTRACE_SEIZE`, without stopping them.
    /// Another tracer is an error naming it; another rlivepatch is waited for until
    /// `deadline`. The thread set is re-read until it is stable (threads created by traced
    /// threads are attached by the kernel through `PTRACE_O_TRACECLONE`).
    pub fn attach(pid: i32, deadline: Instant, progress: &mut dyn FnMut(&str)) -> Result<Tracer> {
        let set = block_tool_signals()?;
        let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("creating signalfd")?;
        let mut t = Tracer {
            pid,
            threads: BTreeMap::new(),
            world_stopped: false,
            sigfd,
            interrupted: None,
            exec_seen: false,
            exited: false,
            gone: Default::default(),
        };
        // The leader first: every rlivepatch seizes it first, so holding it is the lock
        // that keeps two runs from interleaving.
        let mut announced = false;
        loop {
            match t.seize(pid) {
                Ok(true) => break,
                Ok(false) => bail!(Target, "process {pid} exited"),
                Err(e) => {
                    let st = process::read_status(pid)?;
                    if st.tracer != 0 && is_rlivepatch(st.tracer) {
                        if Instant::now() >= deadline {
                            bail!(
                                Target,
                                "another rlivepatch (pid {}) is still working on process {pid}; wait for it to finish and retry",
                                st.tracer
                            );
                        }
                        if !announced {
                            progress(&format!(
                                "waiting for rlivepatch pid {} to finish with process {pid}",
                                st.tracer
                            ));
                            announced = true;
                        }
                        t.pump(Instant::now() + Duration::from_millis(50))?;
                        t.check_interrupted()?;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        // Then every other thread, until the set is stable.
        loop {
            let tids = process::task_ids(pid)?;
            let mut new = false;
            for tid in tids {
                crate::pace::point();
                if !t.threads.contains_key(&tid) && t.seize(tid)? {
                    new = true;
                }
            }
            // Drain clone events so threads created meanwhile are known.
            t.pump(Instant::now())?;
            if !new {
                break;
            }
        }
        Ok(t)
    }

    /// Seize one thread. `Ok(false)` when it is gone (or a zombie).
    fn seize(&mut self, tid: Tid) -> Result<bool> {
        // A zombie or exiting thread refuses the seize (EPERM) and is looked at then:
        // reading every thread's state first would cost a thousand-thread process
        // milliseconds.
        match ptrace::seize(Pid::from_raw(tid), OPTIONS) {
            Ok(()) => {
                self.threads.insert(tid, new_thread(tid));
                Ok(true)
            }
            Err(nix::Error::ESRCH) => Ok(false),
            Err(nix::Error::EPERM) => {
                let st = process::read_status(self.pid)?;
                let ts = process::read_thread_status(self.pid, tid).ok();
                let tracer = ts.as_ref().map_or(st.tracer, |t| t.tracer);
                if tracer == std::process::id() as i32 && tid != self.pid {
                    // Created by a thread we trace: the kernel attached it to us already;
                    // its first stop is on its way.
                    let world_stopped = self.world_stopped;
                    self.threads.entry(tid).or_insert_with(|| {
                        let mut t = new_thread(tid);
                        t.want_run = !world_stopped;
                        t
                    });
                    return Ok(true);
                }
                if ts.as_ref().is_none_or(|t| matches!(t.state, 'Z' | 'X')) {
                    // Exiting: gone a moment from now.
                    return Ok(false);
                }
                if tracer != 0 && tracer != std::process::id() as i32 {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
                    bail!(
                        Target,
                        "process {} is already traced by {} (pid {tracer}); detach it (quit the debugger or tracer) and retry",
                        self.pid,
                        comm.trim()
                    );
                }
                Err(process::permission_error(
                    self.pid,
                    &st,
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ))
            }
            Err(e) => Err(err!(
                Target,
                "cannot attach to thread {tid} of process {}: {}",
                self.pid,
                e.desc()
            )),
        }
    }

    /// Stop every thread (`PTRACE_INTERRUPT`) and wait until all are stopped, including
    /// threads created meanwhile. Threads already stopped stay as they are.
    pub fn stop_all(&mut self, deadline: Instant) -> Result<()> {
        crate::fault::trace("stop all");
        self.world_stopped = true;
        crate::pace::world_stopped(true);
        loop {
            for th in self.threads.values_mut() {
                th.want_run = false;
                if (th.stop.is_none() || th.listening) && !th.interrupt_sent {
                    match ptrace::interrupt(Pid::from_raw(th.tid)) {
                        Ok(()) | Err(nix::Error::ESRCH) => th.interrupt_sent = true,
                        Err(e) => bail!(
                            Failed,
                            "PTRACE_INTERRUPT on thread {}: {}",
                            th.tid,
                            e.desc()
                        ),
                    }
                }
            }
            let tids: Vec<Tid> = self.threads.keys().copied().collect();
            self.wait_stopped(&tids, deadline)?;
            if self
                .threads
                .values()
                .all(|t| t.stop.is_some() && !t.listening)
            {
                // Threads that were never seen by a traced thread's clone (raced with the
                // attach) show up in /proc: attach and stop them too.
                let tids = process::task_ids(self.pid).unwrap_or_default();
                let mut new = false;
                for tid in tids {
                    if !self.threads.contains_key(&tid) && self.seize(tid)? {
                        new = true;
                    }
                }
                if !new {
                    crate::fault::trace("all stopped");
                    return Ok(());
                }
                continue;
            }
            if self.exited {
                bail!(Target, "process {} exited", self.pid);
            }
            let step = (Instant::now() + Duration::from_millis(100)).min(deadline);
            if !self.pump(step)? && Instant::now() < deadline {
                // Nothing for a while: forget threads that no longer exist.
                let live = process::task_ids(self.pid).unwrap_or_default();
                self.threads
                    .retain(|t, th| live.contains(t) || th.stop.is_some());
                continue;
            }
            if Instant::now() >= deadline {
                let running: Vec<String> = self
                    .threads
                    .values()
                    .filter(|t| t.stop.is_none())
                    .map(|t| t.tid.to_string())
                    .collect();
                bail!(
                    Failed,
                    "threads {} of process {} did not stop",
                    running.join(", "),
                    self.pid
                );
            }
        }
    }

    /// Stop one thread and wait until it is stopped. `Ok(false)` when it is gone.
    pub fn stop_one(&mut self, tid: Tid, deadline: Instant) -> Result<bool> {
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(false);
        };
        th.want_run = false;
        if th.stop.is_some() && !th.listening {
            return Ok(true);
        }
        if !th.interrupt_sent {
            match ptrace::interrupt(Pid::from_raw(tid)) {
                Ok(()) => th.interrupt_sent = true,
                Err(nix::Error::ESRCH) => return Ok(false),
                Err(e) => bail!(Failed, "PTRACE_INTERRUPT on thread {tid}: {}", e.desc()),
            }
        }
        loop {
            match self.threads.get(&tid) {
                None => return Ok(false),
                Some(t) if t.stop.is_some() && !t.listening => return Ok(true),
                _ => {}
            }
            if self.exited {
                return Ok(false);
            }
            if !self.pump(deadline)? {
                bail!(Failed, "thread {tid} of process {} did not stop", self.pid);
            }
        }
    }

    /// Resume one stopped thread, delivering its pending signal.
    pub fn resume(&mut self, tid: Tid) -> Result<()> {
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        th.want_run = true;
        resume_thread(th)
    }

    /// Resume every stopped thread.
    pub fn resume_all(&mut self) -> Result<()> {
        crate::fault::trace("resume all");
        self.world_stopped = false;
        crate::pace::world_stopped(false);
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Resume every stopped thread except `keep`.
    pub fn resume_all_but(&mut self, keep: &[Tid]) -> Result<()> {
        self.world_stopped = false;
        crate::pace::world_stopped(false);
        let tids: Vec<Tid> = self
            .threads
            .keys()
            .copied()
            .filter(|t| !keep.contains(t))
            .collect();
        for tid in tids {
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Wait for ptrace events until at least one was handled or `deadline` passed;
    /// handles each one (re-delivering signals to threads that should run, following new
    /// and exiting threads). Returns `false` when the deadline passed with no event.
    pub fn pump(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            let mut handled = false;
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                    Ok(status) => {
                        self.handle(status)?;
                        handled = true;
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => bail!(Failed, "waitpid: {}", e.desc()),
                }
            }
            if handled {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.wait_signal(deadline)?;
            if self.read_signals() {
                return Ok(true);
            }
        }
    }

    /// Sleep until rlivepatch receives a signal (SIGCHLD: a traced thread has something
    /// to report) or `until`.
    fn wait_signal(&self, until: Instant) -> Result<()> {
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, 60_000) as u16;
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&self.sigfd),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(()),
            Err(e) => bail!(Failed, "poll: {}", e.desc()),
        }
    }

    /// Wait until each of `tids` is stopped or gone. Each thread's report is reaped with
    /// a `waitpid` on its own tid: `waitpid(-1)` makes the kernel walk every traced thread
    /// for each report, which is quadratic with a thousand threads (most of the time of a
    /// thousand-thread stop went there). Other threads' reports (a signal for a running
    /// thread, a clone) are collected every few milliseconds meanwhile, and at the end.
    fn wait_stopped(&mut self, tids: &[Tid], deadline: Instant) -> Result<()> {
        const DRAIN_EVERY: Duration = Duration::from_millis(2);
        let mut drain_at = Instant::now() + DRAIN_EVERY;
        let mut sweep = Instant::now() + Duration::from_millis(100);
        let mut i = 0;
        while i < tids.len() {
            let tid = tids[i];
            match self.threads.get(&tid) {
                Some(t) if t.stop.is_none() || t.listening => {}
                _ => {
                    i += 1;
                    continue;
                }
            }
            if self.exited {
                bail!(Target, "process {} exited", self.pid);
            }
            // Signals first, so that a SIGCHLD arriving after the waitpid below wakes the
            // poll.
            self.read_signals();
            match waitpid(
                Pid::from_raw(tid),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) => {
                    let now = Instant::now();
                    if now >= drain_at {
                        self.pump(now)?;
                        drain_at = Instant::now() + DRAIN_EVERY;
                    }
                    if now >= sweep {
                        if now >= deadline {
                            bail!(Failed, "thread {tid} of process {} did not stop", self.pid);
                        }
                        // Threads that exited without a report we could use are forgotten.
                        let live = process::task_ids(self.pid).unwrap_or_default();
                        self.threads
                            .retain(|t, th| live.contains(t) || th.stop.is_some());
                        sweep = now + Duration::from_millis(100);
                        continue;
                    }
                    self.wait_signal(drain_at.min(sweep).min(deadline))?;
                }
                Ok(status) => self.handle(status)?,
                Err(nix::Error::EINTR) => {}
                Err(nix::Error::ECHILD) => {
                    // Not ours to wait for any more: it exited and was reaped.
                    self.threads.remove(&tid);
                    self.gone.insert(tid);
                }
                Err(e) => bail!(Failed, "waitpid: {}", e.desc()),
            }
        }
        // Whatever else came meanwhile.
        self.pump(Instant::now())?;
        Ok(())
    }

    /// Take the signals rlivepatch received (SIGCHLD is only a wake-up; any other asks
    /// rlivepatch to stop). Returns whether such a request came.
    fn read_signals(&mut self) -> bool {
        let mut asked = false;
        while let Ok(Some(si)) = self.sigfd.read_signal() {
            let sig = si.ssi_signo as i32;
            if sig != libc::SIGCHLD {
                self.interrupted = Some(sig);
                asked = true;
            }
        }
        asked
    }

    /// An error if rlivepatch was asked to stop.
    pub fn check_interrupted(&self) -> Result<()> {
        match self.interrupted {
            Some(sig) => Err(err!(
                Interrupted,
                "interrupted by {}; the current step was undone",
                Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal")
            )),
            None => Ok(()),
        }
    }

    fn handle(&mut self, status: WaitStatus) -> Result<()> {
        match status {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                let tid = pid.as_raw();
                self.threads.remove(&tid);
                self.gone.insert(tid);
                if tid == self.pid {
                    self.exited = !process::task_ids(self.pid).is_ok_and(|t| !t.is_empty());
                }
                if self.threads.is_empty() {
                    self.exited = true;
                }
            }
            WaitStatus::PtraceSyscall(pid) => {
                let tid = pid.as_raw();
                let th = self.thread_entry(tid);
                th.stop = Some(Stop::Syscall);
                th.interrupt_sent = false;
                if th.want_run {
                    let keep = match &th.catch {
                        Catch::Nothing => false,
                        Catch::All => true,
                        Catch::At(list) => {
                            ptrace::getregs(pid).is_ok_and(|r| list.contains(&r.rip))
                        }
                    };
                    if !keep {
                        resume_thread(th)?;
                    }
                }
            }
            WaitStatus::PtraceEvent(pid, sig, event) => {
                let tid = pid.as_raw();
                let world_stopped = self.world_stopped;
                if event == libc::PTRACE_EVENT_CLONE
                    && let Ok(child) = ptrace::getevent(pid)
                {
                    let child = child as Tid;
                    // A child that already exited (its exit was reaped first) stays gone.
                    if !self.gone.contains(&child) {
                        self.threads.entry(child).or_insert_with(|| {
                            let mut t = new_thread(child);
                            t.want_run = !world_stopped;
                            t
                        });
                    }
                }
                let th = self.thread_entry(tid);
                // Any trap clears a pending PTRACE_INTERRUPT, EVENT_STOP or not.
                th.interrupt_sent = false;
                let stop = match (event, sig) {
                    (
                        libc::PTRACE_EVENT_STOP,
                        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU,
                    ) => Stop::Group(sig as i32),
                    (libc::PTRACE_EVENT_STOP, _) => Stop::Interrupt,
                    (e, _) => Stop::Event(e),
                };
                th.stop = Some(stop);
                th.listening = false;
                if event == libc::PTRACE_EVENT_EXEC {
                    self.exec_seen = true;
                    return Ok(());
                }
                if th.want_run {
                    if let Stop::Group(_) = stop {
                        // Job control stopped the process: let it stay stopped, and keep
                        // being told when it continues.
                        // SAFETY: PTRACE_LISTEN takes no pointers.
                        unsafe { libc::ptrace(PTRACE_LISTEN, tid, 0, 0) };
                        th.listening = true;
                        th.stop = None;
                    } else {
                        resume_thread(th)?;
                    }
                }
            }
            WaitStatus::Stopped(pid, sig) => {
                let tid = pid.as_raw();
                let th = self.thread_entry(tid);
                th.stop = Some(Stop::Signal(sig as i32));
                th.interrupt_sent = false;
                th.pending_signal = Some(sig as i32);
                // A thread in an injected call keeps its (synchronous) signal for the
                // caller to see; others get it delivered now.
                if th.want_run && !th.in_call {
                    resume_thread(th)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn thread_entry(&mut self, tid: Tid) -> &mut Thread {
        let world_stopped = self.world_stopped;
        self.gone.remove(&tid);
        self.threads.entry(tid).or_insert_with(|| {
            let mut t = new_thread(tid);
            t.want_run = !world_stopped;
            t
        })
    }

    /// Detach from every thread, delivering pending signals. Threads must be stopped
    /// (call [`Tracer::stop_all`] first); threads already gone are skipped.
    pub fn detach_all(&mut self) {
        crate::fault::trace("detach all");
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.detach_one(tid);
        }
    }

    /// Detach from every thread without stopping them all at once: stopped threads at
    /// once, threads asleep together (stopping them costs the process nothing), threads
    /// on a CPU one at a time, so that each pauses only for its own stop and detach.
    pub fn detach_gently(&mut self, deadline: Instant) -> Result<()> {
        crate::fault::trace("detach gently");
        self.world_stopped = false;
        crate::pace::world_stopped(false);
        while !self.threads.is_empty() && !self.exited {
            // The leader goes last: holding it is the lock that keeps another rlivepatch
            // out until this one is done.
            let skip = if self.threads.len() > 1 { self.pid } else { 0 };
            let stopped: Vec<Tid> = self
                .threads
                .values()
                .filter(|t| t.stop.is_some() && !t.listening)
                .filter(|t| t.tid != skip)
                .map(|t| t.tid)
                .collect();
            for tid in stopped {
                self.detach_one(tid);
            }
            if self.threads.is_empty() {
                break;
            }
            let mut on_cpu = self.on_cpu();
            on_cpu.retain(|&t| t != skip);
            let asleep: Vec<Tid> = self
                .threads
                .values()
                .filter(|t| t.stop.is_none() || t.listening)
                .map(|t| t.tid)
                .filter(|t| !on_cpu.contains(t) && *t != skip)
                .collect();
            if !asleep.is_empty() {
                self.stop_these(&asleep, deadline)?;
                continue;
            }
            for tid in on_cpu {
                crate::pace::point();
                if self.stop_one(tid, deadline)? {
                    self.detach_one(tid);
                }
            }
        }
        self.threads.clear();
        crate::fault::trace("detached");
        Ok(())
    }

    fn detach_one(&mut self, tid: Tid) {
        let Some(th) = self.threads.remove(&tid) else {
            return;
        };
        if th.stop == Some(Stop::Interrupt) && th.pending_signal.is_none() {
            undo_stop_eintr(th.tid);
        }
        let sig = th.pending_signal.and_then(|s| Signal::try_from(s).ok());
        let _ = ptrace::detach(Pid::from_raw(th.tid), sig);
    }

    /// The attached threads that run and are on a CPU right now (state `R` in /proc):
    /// the ones whose stop would pause work.
    pub fn on_cpu(&self) -> Vec<Tid> {
        self.threads
            .values()
            .filter(|t| t.stop.is_none() && !t.listening)
            .filter(|t| process::thread_state(self.pid, t.tid) == Some('R'))
            .map(|t| t.tid)
            .collect()
    }

    /// Stop the threads `tids` (all interrupted at once) and wait until each is stopped
    /// or gone. The others keep running; threads created meanwhile run.
    pub fn stop_these(&mut self, tids: &[Tid], deadline: Instant) -> Result<()> {
        for &tid in tids {
            let Some(th) = self.threads.get_mut(&tid) else {
                continue;
            };
            th.want_run = false;
            if (th.stop.is_none() || th.listening) && !th.interrupt_sent {
                match ptrace::interrupt(Pid::from_raw(tid)) {
                    Ok(()) | Err(nix::Error::ESRCH) => th.interrupt_sent = true,
                    Err(e) => bail!(Failed, "PTRACE_INTERRUPT on thread {tid}: {}", e.desc()),
                }
            }
        }
        self.wait_stopped(tids, deadline)
    }

    /// Detach every stopped thread but `keep`, `first` before the others (detaching lets
    /// a thread run); then resume the kept ones.
    pub fn detach_all_but(&mut self, keep: &[Tid], first: &[Tid]) -> Result<()> {
        crate::fault::trace("detach all but");
        self.world_stopped = false;
        crate::pace::world_stopped(false);
        let rest: Vec<Tid> = self.threads.keys().copied().collect();
        for (i, &tid) in first.iter().chain(&rest).enumerate() {
            if i == first.len() {
                crate::fault::trace("busy resumed");
            }
            if keep.contains(&tid) {
                continue;
            }
            if self
                .threads
                .get(&tid)
                .is_some_and(|t| t.stop.is_some() && !t.listening)
            {
                self.detach_one(tid);
            }
        }
        for &tid in keep {
            self.resume(tid)?;
        }
        // Threads not stopped (listening in a group-stop) stay attached; the rest are
        // detached at the end like any other.
        crate::fault::trace("resumed");
        Ok(())
    }

    /// Resume every stopped thread, `first` before the others (the threads whose work
    /// waits: they were running when the world was stopped).
    pub fn resume_all_first(&mut self, first: &[Tid]) -> Result<()> {
        crate::fault::trace("resume all");
        self.world_stopped = false;
        crate::pace::world_stopped(false);
        for &tid in first {
            self.resume(tid)?;
        }
        crate::fault::trace("busy resumed");
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.resume(tid)?;
        }
        crate::fault::trace("resumed");
        Ok(())
    }

    /// The registers of a stopped thread.
    pub fn regs(&self, tid: Tid) -> Result<Regs> {
        ptrace::getregs(Pid::from_raw(tid))
            .map_err(|e| err!(Failed, "reading registers of thread {tid}: {}", e.desc()))
    }

    /// Set the registers of a stopped thread.
    pub fn set_regs(&self, tid: Tid, regs: &Regs) -> Result<()> {
        ptrace::setregs(Pid::from_raw(tid), *regs)
            .map_err(|e| err!(Failed, "writing registers of thread {tid}: {}", e.desc()))
    }

    /// The whole XSAVE area (FPU, SSE, AVX, AVX-512...) of a stopped thread, in the
    /// standard format with the kernel's software-reserved bytes.
    pub fn xstate(&self, tid: Tid) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: iov points to a live buffer of iov_len bytes; the kernel writes at most
        // that many and updates iov_len.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                tid,
                NT_X86_XSTATE as usize,
                &mut iov as *mut libc::iovec,
            )
        };
        if r < 0 {
            bail!(
                Failed,
                "reading the XSAVE area of thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    /// Write back an XSAVE area read by [`Tracer::xstate`].
    pub fn set_xstate(&self, tid: Tid, xstate: &[u8]) -> Result<()> {
        let mut buf = xstate.to_vec();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: iov describes a live buffer the kernel only reads.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                tid,
                NT_X86_XSTATE as usize,
                &mut iov as *mut libc::iovec,
            )
        };
        if r < 0 {
            bail!(
                Failed,
                "writing the XSAVE area of thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The signal mask of a stopped thread.
    pub fn sigmask(&self, tid: Tid) -> Result<u64> {
        let mut mask: u64 = 0;
        // SAFETY: the kernel writes 8 bytes (addr = sizeof(sigset)) into `mask`.
        let r = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
        if r < 0 {
            bail!(
                Failed,
                "reading the signal mask of thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(mask)
    }

    /// Set the signal mask of a stopped thread.
    pub fn set_sigmask(&self, tid: Tid, mask: u64) -> Result<()> {
        // SAFETY: the kernel reads 8 bytes from `mask`.
        let r = unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) };
        if r < 0 {
            bail!(
                Failed,
                "writing the signal mask of thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Stopped thread ids.
    pub fn tids(&self) -> Vec<Tid> {
        self.threads.keys().copied().collect()
    }
}

fn new_thread(tid: Tid) -> Thread {
    Thread {
        tid,
        stop: None,
        pending_signal: None,
        want_run: true,
        syscall_mode: false,
        catch: Catch::Nothing,
        in_call: false,
        listening: false,
        interrupt_sent: false,
    }
}

fn resume_thread(th: &mut Thread) -> Result<()> {
    if th.stop.is_none() {
        return Ok(());
    }
    if th.stop == Some(Stop::Interrupt) && th.pending_signal.is_none() {
        undo_stop_eintr(th.tid);
    }
    let sig = th
        .pending_signal
        .take()
        .and_then(|s| Signal::try_from(s).ok());
    let pid = Pid::from_raw(th.tid);
    let r = if th.syscall_mode {
        ptrace::syscall(pid, sig)
    } else {
        ptrace::cont(pid, sig)
    };
    match r {
        Ok(()) | Err(nix::Error::ESRCH) => {
            th.stop = None;
            Ok(())
        }
        Err(e) => Err(err!(Failed, "resuming thread {}: {}", th.tid, e.desc())),
    }
}

/// A thread stopped by our interrupt in a system call that Linux ends with EINTR on any
/// stop (epoll_wait...): set it to make the call again, as if the stop never happened.
fn undo_stop_eintr(tid: Tid) {
    let pid = Pid::from_raw(tid);
    let Ok(mut r) = ptrace::getregs(pid) else {
        return;
    };
    if (r.orig_rax as i64) >= 0
        && r.rax as i64 == -(libc::EINTR as i64)
        && crate::inject::eintr_on_stop(r.orig_rax)
    {
        r.rax = r.orig_rax;
        r.rip -= 2;
        r.orig_rax = u64::MAX;
        let _ = ptrace::setregs(pid, r);
    }
}

fn is_rlivepatch(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "rlivepatch")
}
