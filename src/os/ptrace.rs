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
//!
//! Wait statuses are decoded from the raw integer: every signal number (1 to 64, real-time
//! ones included) and every ptrace event is the tracer's business, and a library enum that
//! lacks some of them must not turn a report into an error. Signals are re-delivered by
//! number, so the kernel keeps the `siginfo` the sender gave (it rewrites it only when the
//! tracer changes the number).
//!
//! Job control: a stop signal the process receives (`SIGSTOP`, `SIGTSTP`...) is delivered
//! like any other, and each thread's group-stop is left in place (`PTRACE_LISTEN`), never
//! resumed, but for a thread that must finish an injected call; when rlivepatch detaches,
//! the kernel puts every thread back into the stop and tells the parent, as job control
//! asked. [`Tracer::job_stop`] says that such a stop is in effect.

use crate::error::{Context, Result};
use crate::os::process;
use crate::os::restart::{self, Signals};
use crate::{bail, err};
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
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
    /// Resume it with syscall stops, to see (and undo) an `EINTR` the program would not
    /// have seen without a tracer: it was seen in a system call that a stray wake-up ends
    /// with `EINTR`, or the process gets signals it ignores (see [`prepare_resume`]).
    pub watch_eintr: bool,
    /// It runs with syscall stops now (resumed with `PTRACE_SYSCALL`; not after a seize).
    syscall_traced: bool,
    interrupt_sent: bool,
    /// Where it sleeps was read once for [`Tracer::watch_blocked`]: a reattach reads only
    /// the threads attached since (one read of /proc per thread, whatever the threads).
    blocked_read: bool,
    /// That read found it blocked in a system call, and no stop of its own said
    /// otherwise since: the switch takes it for asleep without reading again
    /// ([`Tracer::on_cpu_known`]).
    asleep_when_read: bool,
    /// Its registers as read or written during the current stop: a stopped thread's
    /// registers change only through us, so one `PTRACE_GETREGS` per stop is enough.
    /// Cleared with every change of `stop` ([`Thread::set_stop`]).
    regs: std::cell::Cell<Option<Regs>>,
    /// Its `syscall` file in /proc, kept open between reads.
    syscall_file: process::SyscallFile,
}

impl Thread {
    /// Record a new stop (or that it runs): what was known of its registers is stale.
    fn set_stop(&mut self, stop: Option<Stop>) {
        // Our interrupt leaves it where it was; a stop of its own (a system call's entry
        // or exit, a signal, an event) says it ran.
        if !matches!(stop, None | Some(Stop::Interrupt)) {
            self.asleep_when_read = false;
        }
        self.stop = stop;
        self.regs.set(None);
    }

    /// Its registers, read once per stop.
    fn regs(&self) -> nix::Result<Regs> {
        if self.stop.is_some()
            && let Some(r) = self.regs.get()
        {
            return Ok(r);
        }
        let r = ptrace::getregs(Pid::from_raw(self.tid))?;
        if self.stop.is_some() {
            self.regs.set(Some(r));
        }
        Ok(r)
    }

    /// Write its registers (and remember them for this stop).
    fn set_regs(&self, regs: Regs) -> nix::Result<()> {
        let r = ptrace::setregs(Pid::from_raw(self.tid), regs);
        self.regs.set(if r.is_ok() && self.stop.is_some() {
            Some(regs)
        } else {
            None
        });
        r
    }
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
    /// Threads created while traced: (creating thread, new thread), oldest first.
    pub clones: Vec<(Tid, Tid)>,
    /// A job-control stop is in effect (the stop signal): the process was stopped by
    /// `SIGSTOP`, `SIGTSTP`, `SIGTTIN` or `SIGTTOU` while traced, and not continued since.
    pub job_stop: Option<i32>,
    /// A stop signal or a job-control stop was seen while traced, continued since or not:
    /// only then can a stop have begun that the threads enter one by one after the
    /// detach ([`crate::os::process::job_stop`] reads each thread's state for that).
    pub job_control_seen: bool,
    /// A thread was let go with a stop signal to take (one it reported to the tracer):
    /// the process stops when that thread next runs, after rlivepatch has detached.
    pub stop_handed_back: Option<i32>,
    /// The operation is past the point where it can be undone (or is undoing): requests
    /// to stop wait until it is done.
    pub finishing: bool,
    /// The process got a signal it ignores while traced: every thread is watched for a
    /// stray `EINTR` from now on (see [`prepare_resume`]).
    watch_all: bool,
    /// Threads whose exit was reaped: a late clone event must not bring them back.
    gone: std::collections::HashSet<Tid>,
    /// The lock against another rlivepatch, held until the tracer is dropped (after the
    /// last detach).
    lock: Option<crate::os::lock::Lock>,
    /// Threads given a short slice before rlivepatch waited for them on crowded CPUs
    /// ([`Tracer::hurry`]), given back at their detach (`None`: none was needed).
    hurried: std::collections::HashMap<Tid, Option<crate::os::slice::Shortened>>,
}

/// One report of `waitpid` about a traced thread, decoded from the raw status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The thread exited or was killed.
    Gone,
    /// Syscall-enter or syscall-exit stop (`SIGTRAP | 0x80` with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// Signal-delivery-stop with the signal's number.
    Signal(i32),
    /// A ptrace event stop: the event (`PTRACE_EVENT_*`) and the stop's signal.
    Event(i32, i32),
}

impl Report {
    /// Decode a raw `waitpid` status of a traced thread. `None` for statuses a tracer
    /// does not get for its tracees (continued).
    pub fn decode(status: i32) -> Option<Report> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Some(Report::Gone);
        }
        if !libc::WIFSTOPPED(status) {
            return None;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        Some(if sig == libc::SIGTRAP | 0x80 {
            Report::Syscall
        } else if event != 0 {
            Report::Event(event, sig)
        } else {
            Report::Signal(sig)
        })
    }
}

/// Several tracer threads run at once (a fleet run): see [`set_concurrent`].
static CONCURRENT: AtomicBool = AtomicBool::new(false);
/// A stop request (SIGINT, SIGTERM, SIGHUP) any tracer thread read, for all of them.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// Say that several threads will trace a process each: each then waits for its own
/// tracees' reports only, and sleeps in short slices (a wake-up may be read by another).
pub fn set_concurrent() {
    CONCURRENT.store(true, Ordering::Relaxed);
}

/// The stop request any tracer thread read (0: none).
pub fn requested() -> i32 {
    REQUESTED.load(Ordering::Relaxed)
}

/// `waitpid(who, WNOHANG | __WALL)`: the thread and its raw status, or `None` when no
/// report is ready.
fn wait_raw(who: i32) -> std::io::Result<Option<(Tid, i32)>> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our integer and touches nothing else.
    // __WNOTHREAD: only this thread's tracees. Several threads of rlivepatch trace a
    // process each in a fleet run; without it, one would reap another's reports.
    let r = unsafe {
        libc::waitpid(
            who,
            &mut status,
            libc::WNOHANG | libc::__WALL | libc::__WNOTHREAD,
        )
    };
    match r {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        tid => Ok(Some((tid, status))),
    }
}

/// A ptrace request that takes a signal number in `data` (resume, detach, listen).
fn ptrace_sig(request: libc::c_uint, tid: Tid, sig: i32) -> std::io::Result<()> {
    // SAFETY: these requests take no pointers: `addr` is ignored, `data` is a number.
    let r = unsafe { libc::ptrace(request, tid, 0usize, sig as usize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
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
    /// `start` is the process's start time, read when it was opened: the lock's name.
    pub fn attach(
        pid: i32,
        start: u64,
        deadline: Instant,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Tracer> {
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
            clones: Vec::new(),
            exited: false,
            job_stop: None,
            job_control_seen: false,
            stop_handed_back: None,
            finishing: false,
            watch_all: false,
            gone: Default::default(),
            lock: None,
            hurried: Default::default(),
        };
        crate::os::fault::set_target(pid);
        // One rlivepatch at a time: wait for another one working on this process.
        let mut announced = false;
        t.lock = Some(loop {
            if let Some(lock) = crate::os::lock::Lock::try_acquire(pid, start)? {
                break lock;
            }
            t.wait_for_other(deadline, &mut announced, progress)?;
        });
        t.seize_all(deadline, &mut announced, progress)?;
        Ok(t)
    }

    /// Seize every thread, the leader last, until the set is stable. While the leader is
    /// not traced, the kernel drops a signal the program ignores when it is sent to the
    /// process; once the leader is traced, such a signal is queued (for the tracer to see)
    /// and wakes some thread: attaching the leader last, and detaching it first, means
    /// that a thread rlivepatch does not trace is never woken for nothing.
    fn seize_all(
        &mut self,
        deadline: Instant,
        announced: &mut bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let pid = self.pid;
        loop {
            let mut tids: Vec<Tid> = process::task_ids(pid)?.into_iter().collect();
            tids.sort_by_key(|&tid| tid == pid);
            let mut new = false;
            for tid in tids {
                crate::os::pace::point();
                if self.threads.contains_key(&tid) {
                    continue;
                }
                if tid == pid {
                    // Before the leader is traced (and signals the program ignores start
                    // to be queued), every thread asleep in a call that a stray wake-up
                    // ends with EINTR is watched.
                    self.watch_blocked(deadline)?;
                }
                // A tracer of an older rlivepatch, or one in another network namespace
                // (which has its own locks): wait for it too.
                let seized = loop {
                    match self.seize(tid) {
                        Err(_) if traced_by_rlivepatch(pid, tid).is_some() => {
                            self.wait_for_other(deadline, announced, progress)?;
                        }
                        r => break r?,
                    }
                };
                if seized {
                    new = true;
                } else if tid == pid {
                    return Err(
                        err!(Target, "process {pid} exited").because(crate::error::Cause::Gone)
                    );
                }
            }
            // Drain clone events so threads created meanwhile are known.
            self.pump(Instant::now())?;
            // No thread unknown to us (the process counts as many as are attached): a
            // second listing would find nothing new.
            if !new || self.all_known() {
                // The leader was attached already (a reattach): the threads just attached
                // are watched now.
                return self.watch_blocked(deadline);
            }
        }
    }

    /// Does the process count as many threads as are attached? Then none is unknown:
    /// a thread that exits stays counted until its tracer reaps it, so a new thread
    /// rlivepatch has not seen always makes the count larger. One read of `status`
    /// instead of listing `/proc/PID/task` (half a millisecond with a thousand threads).
    fn all_known(&self) -> bool {
        process::thread_count(self.pid) == Some(self.threads.len())
    }

    /// Threads attached but never stopped that are asleep in a call a stray wake-up ends
    /// with `EINTR` (as `/proc/PID/task/TID/syscall` tells, without stopping anyone), or
    /// all of them once the process is known to get signals it ignores: stopped once and
    /// resumed with syscall stops (see [`prepare_resume`]).
    fn watch_blocked(&mut self, deadline: Instant) -> Result<()> {
        let all = self.watch_all;
        let pid = self.pid;
        let blocked: Vec<Tid> = self
            .threads
            .values_mut()
            .filter(|t| t.stop.is_none() && !t.syscall_traced && !t.listening && t.want_run)
            .filter_map(|t| {
                if all {
                    return Some(t.tid);
                }
                if std::mem::replace(&mut t.blocked_read, true) {
                    return None;
                }
                let nr = t
                    .syscall_file
                    .read(pid, t.tid)
                    .and_then(|text| process::blocked_in_text(&text));
                t.asleep_when_read = nr.is_some();
                nr.is_some_and(restart::waits_for_events).then_some(t.tid)
            })
            .collect();
        if blocked.is_empty() {
            return Ok(());
        }
        self.stop_these(&blocked, deadline)?;
        for tid in blocked {
            if let Some(th) = self.threads.get_mut(&tid) {
                th.watch_eintr = true;
            }
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Wait a moment for another rlivepatch working on the process (saying so once), or
    /// fail at `deadline`.
    fn wait_for_other(
        &mut self,
        deadline: Instant,
        announced: &mut bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let pid = self.pid;
        let who = process::task_ids(pid)
            .unwrap_or_default()
            .into_iter()
            .find_map(|tid| traced_by_rlivepatch(pid, tid))
            .map(|t| format!("rlivepatch pid {t}"))
            .unwrap_or_else(|| "another rlivepatch".to_string());
        if Instant::now() >= deadline {
            bail!(
                Target,
                "{who} is still working on process {pid}; wait for it to finish and retry"
            );
        }
        if !*announced {
            progress(&format!("waiting for {who} to finish with process {pid}"));
            *announced = true;
        }
        self.pump(Instant::now() + Duration::from_millis(50))?;
        self.check_interrupted()
    }

    /// Attach again after every thread was let go at a switch (the one kept has exited):
    /// every thread, in the same order as [`Tracer::attach`]. They keep running.
    pub fn reattach(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.seize_all(deadline, &mut false, &mut |_| {})
    }

    /// Attach one more thread (it keeps running), when one is all that is needed after
    /// the threads were let go at a switch: attaching every thread again costs a
    /// thousand-thread process a stop of each at the detach. `Ok(false)` when it is gone.
    pub fn attach_one(&mut self, tid: Tid) -> Result<bool> {
        if self.threads.contains_key(&tid) {
            return Ok(true);
        }
        self.seize(tid)
    }

    /// Seize one thread. `Ok(false)` when it is gone (or a zombie).
    fn seize(&mut self, tid: Tid) -> Result<bool> {
        // A zombie or exiting thread refuses the seize (EPERM) and is looked at then:
        // reading every thread's state first would cost a thousand-thread process
        // milliseconds.
        match ptrace::seize(Pid::from_raw(tid), OPTIONS) {
            Ok(()) => {
                let mut th = new_thread(tid);
                th.watch_eintr = self.watch_all;
                self.threads.insert(tid, th);
                // A run killed while it held this thread left it a short slice.
                crate::os::slice::heal(tid);
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
        crate::os::fault::trace("stop all");
        self.world_stopped = true;
        crate::os::pace::world_stopped(true);
        loop {
            let waited: Vec<Tid> = self
                .threads
                .values()
                .filter(|th| (th.stop.is_none() || th.listening) && !th.interrupt_sent)
                .map(|th| th.tid)
                .collect();
            self.hurry(&waited);
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
                if self.all_known() {
                    crate::os::fault::trace("all stopped");
                    return Ok(());
                }
                let tids = process::task_ids(self.pid).unwrap_or_default();
                let mut new = false;
                for tid in tids {
                    if !self.threads.contains_key(&tid) && self.seize(tid)? {
                        new = true;
                    }
                }
                if !new {
                    crate::os::fault::trace("all stopped");
                    return Ok(());
                }
                continue;
            }
            if self.exited {
                return Err(
                    err!(Target, "process {} exited", self.pid).because(crate::error::Cause::Gone)
                );
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
            self.hurry(&[tid]);
            match ptrace::interrupt(Pid::from_raw(tid)) {
                Ok(()) => {
                    if let Some(th) = self.threads.get_mut(&tid) {
                        th.interrupt_sent = true;
                    }
                }
                Err(nix::Error::ESRCH) => return Ok(false),
                Err(e) => bail!(Failed, "PTRACE_INTERRUPT on thread {tid}: {}", e.desc()),
            }
        }
        // A thread that has not stopped a while after its interrupt is sent another: on
        // a saturated machine the first one's stop can be taken by an event handled in
        // between (a syscall stop, a signal) and the thread resumed with it.
        let mut sent = Instant::now();
        loop {
            match self.threads.get(&tid) {
                None => return Ok(false),
                Some(t) if t.stop.is_some() && !t.listening => return Ok(true),
                _ => {}
            }
            if self.exited {
                return Ok(false);
            }
            let again = sent + Duration::from_millis(500);
            if !self.pump(deadline.min(again))? {
                if Instant::now() >= deadline {
                    bail!(Failed, "thread {tid} of process {} did not stop", self.pid);
                }
                match ptrace::interrupt(Pid::from_raw(tid)) {
                    Ok(()) => {}
                    Err(nix::Error::ESRCH) => return Ok(false),
                    Err(e) => bail!(Failed, "PTRACE_INTERRUPT on thread {tid}: {}", e.desc()),
                }
                if let Some(th) = self.threads.get_mut(&tid) {
                    th.interrupt_sent = true;
                }
                sent = Instant::now();
            }
        }
    }

    /// A thread stopped at a syscall-entry stop (it runs with syscall stops) is let into
    /// the call and stopped again: at the call's exit, or at an interrupt stop if it
    /// sleeps in it. There, unlike at the entry, it can run injected calls and be
    /// detached. `Ok(false)` when it is gone.
    pub fn step_off_entry(&mut self, tid: Tid, deadline: Instant) -> Result<bool> {
        let at_entry = self.threads.get(&tid).is_some_and(|t| {
            t.stop == Some(Stop::Syscall) && is_syscall_entry(tid).unwrap_or(false)
        });
        if !at_entry {
            return Ok(self.threads.contains_key(&tid));
        }
        let th = self.threads.get_mut(&tid).unwrap();
        th.want_run = false;
        th.watch_eintr = true;
        resume_raw(th)?;
        self.stop_one(tid, deadline)
    }

    /// Resume one stopped thread, delivering its pending signal.
    pub fn resume(&mut self, tid: Tid) -> Result<()> {
        let Some(th) = self.threads.get_mut(&tid) else {
            return Ok(());
        };
        th.want_run = true;
        resume_thread(self.pid, th)
    }

    /// Resume every stopped thread.
    pub fn resume_all(&mut self) -> Result<()> {
        crate::os::fault::trace("resume all");
        self.world_stopped = false;
        crate::os::pace::world_stopped(false);
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.resume(tid)?;
        }
        Ok(())
    }

    /// Resume every stopped thread except `keep`.
    pub fn resume_all_but(&mut self, keep: &[Tid]) -> Result<()> {
        self.world_stopped = false;
        crate::os::pace::world_stopped(false);
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
                match wait_raw(-1) {
                    Ok(None) => break,
                    Ok(Some((tid, status))) => {
                        self.handle(tid, status)?;
                        handled = true;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                    Err(e) => bail!(Failed, "waitpid: {e}"),
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
        // With other tracer threads, the process-wide SIGCHLD that should wake this one
        // may be read by another's signalfd: sleep in short slices then.
        let cap = if CONCURRENT.load(Ordering::Relaxed) {
            5
        } else {
            60_000
        };
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, cap) as u16;
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
        let mut drained = false;
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
                return Err(
                    err!(Target, "process {} exited", self.pid).because(crate::error::Cause::Gone)
                );
            }
            match wait_raw(tid) {
                // Nothing yet: the signals are taken before a second look, so that a
                // SIGCHLD arriving after it wakes the poll (taken for every thread, they
                // were a system call each for nothing when the reports are there).
                Ok(None) if !std::mem::replace(&mut drained, true) => {
                    self.read_signals();
                }
                Ok(None) => {
                    drained = false;
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
                Ok(Some((t, status))) => {
                    drained = false;
                    self.handle(t, status)?
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                    // Not ours to wait for any more: it exited and was reaped.
                    self.threads.remove(&tid);
                    self.gone.insert(tid);
                }
                Err(e) => bail!(Failed, "waitpid: {e}"),
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
                REQUESTED.store(sig, Ordering::Relaxed);
                asked = true;
            }
        }
        // A request another tracer thread read is this one's too.
        let other = REQUESTED.load(Ordering::Relaxed);
        if other != 0 && self.interrupted.is_none() {
            self.interrupted = Some(other);
            asked = true;
        }
        asked
    }

    /// An error if rlivepatch was asked to stop (SIGINT, SIGTERM, SIGHUP), or if job
    /// control stopped the process: the current step is to be undone. Once the operation
    /// is finishing (past its switch, or undoing), requests wait until it is done.
    pub fn check_interrupted(&mut self) -> Result<()> {
        if self.finishing {
            return Ok(());
        }
        // A request that came since the last wait is read now, not after the next one.
        self.read_signals();
        if let Some(sig) = self.interrupted {
            let why = format!("interrupted by {}", process::signal_name(sig));
            return Err(
                crate::err!(Interrupted, "{why}; the current step was undone").bare_cause(why),
            );
        }
        if let Some(sig) = self.job_stop {
            let pid = self.pid;
            let why = format!(
                "process {pid} was stopped by {} (job control) while rlivepatch worked",
                process::signal_name(sig)
            );
            return Err(crate::err!(
                Stopped,
                "{why}; the current step was undone and the process stays stopped, as job control asked; continue it (kill -CONT {pid}) and retry"
            )
            .bare_cause(why));
        }
        Ok(())
    }

    fn handle(&mut self, tid: Tid, status: i32) -> Result<()> {
        let Some(report) = Report::decode(status) else {
            return Ok(());
        };
        match report {
            Report::Gone => {
                self.threads.remove(&tid);
                self.gone.insert(tid);
                if tid == self.pid {
                    // The leader's directory stays while any thread of it is left.
                    self.exited = !process::has_task(self.pid, self.pid);
                }
                // The last thread followed ended: the process is gone unless a thread
                // other than a dead leader is left in it (others may run detached). The
                // kernel counts threads until they are reaped, and one nobody traces is
                // reaped as it ends: another than the leader counted is alive (the count,
                // not a listing of a thousand threads to find one).
                if self.threads.is_empty() {
                    let pid = self.pid;
                    self.exited = match process::thread_count(pid) {
                        Some(n) if n > 1 => false,
                        Some(1) => {
                            matches!(process::thread_state(pid, pid), None | Some('Z' | 'X'))
                        }
                        _ => true,
                    };
                }
            }
            Report::Syscall => {
                let pid = self.pid;
                let th = self.thread_entry(tid);
                th.set_stop(Some(Stop::Syscall));
                th.interrupt_sent = false;
                if th.want_run {
                    let keep = match &th.catch {
                        Catch::Nothing => false,
                        Catch::All => true,
                        Catch::At(list) => th.regs().is_ok_and(|r| list.contains(&r.rip)),
                    };
                    if !keep {
                        resume_thread(pid, th)?;
                    }
                }
            }
            Report::Event(event, sig) => self.handle_event(tid, event, sig)?,
            Report::Signal(sig) => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    self.job_control_seen = true;
                }
                if sig == libc::SIGCONT {
                    // SIGCONT ends a job-control stop the moment it is sent.
                    self.job_stop = None;
                }
                if !self.watch_all && Signals::of(self.pid, tid).is_some_and(|s| s.ignores(sig)) {
                    // Queued only because the process is traced, such a signal wakes any
                    // thread asleep in a system call, and another thread may take it
                    // first: that one's EINTR would then pass unseen. Every thread is
                    // watched from now on; those running are switched over at once (an
                    // interrupt, resumed with syscall stops; a thread asleep loses nothing).
                    self.watch_all = true;
                    for th in self.threads.values_mut() {
                        th.watch_eintr = true;
                        if th.stop.is_none()
                            && !th.syscall_traced
                            && th.want_run
                            && !th.listening
                            && !th.interrupt_sent
                            && ptrace::interrupt(Pid::from_raw(th.tid)).is_ok()
                        {
                            th.interrupt_sent = true;
                        }
                    }
                }
                let pid = self.pid;
                let th = self.thread_entry(tid);
                th.set_stop(Some(Stop::Signal(sig)));
                th.interrupt_sent = false;
                th.pending_signal = Some(sig);
                // A thread in an injected call keeps its signal for the caller to judge
                // (a fault of the call, or a stop signal to pass on); others get it now.
                if th.want_run && !th.in_call {
                    resume_thread(pid, th)?;
                }
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, tid: Tid, event: i32, sig: i32) -> Result<()> {
        let world_stopped = self.world_stopped;
        if event == libc::PTRACE_EVENT_CLONE
            && let Ok(child) = ptrace::getevent(Pid::from_raw(tid))
        {
            let child = child as Tid;
            self.clones.push((tid, child));
            // A child that already exited (its exit was reaped first) stays gone.
            if !self.gone.contains(&child) {
                self.threads.entry(child).or_insert_with(|| {
                    let mut t = new_thread(child);
                    t.want_run = !world_stopped;
                    t
                });
            }
        }
        let pid = self.pid;
        let th = self.thread_entry(tid);
        let was_listening = th.listening;
        let ours = th.interrupt_sent;
        // Any trap clears a pending PTRACE_INTERRUPT, EVENT_STOP or not.
        th.interrupt_sent = false;
        let stop = match event {
            libc::PTRACE_EVENT_STOP if is_stop_signal(sig) => Stop::Group(sig),
            libc::PTRACE_EVENT_STOP => Stop::Interrupt,
            e => {
                if !matches!(e, libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_EXEC) {
                    crate::os::fault::trace(&format!("ptrace event {e} on thread {tid}"));
                }
                Stop::Event(e)
            }
        };
        th.set_stop(Some(stop));
        th.listening = false;
        let in_call = th.in_call;
        let want_run = th.want_run;
        match stop {
            Stop::Group(sig) => {
                self.job_stop = Some(sig);
                self.job_control_seen = true;
            }
            // A listening thread trapping again without our interrupt: SIGCONT came.
            Stop::Interrupt if was_listening && !ours => self.job_stop = None,
            _ => {}
        }
        if event == libc::PTRACE_EVENT_EXEC {
            self.exec_seen = true;
            return Ok(());
        }
        let th = self.threads.get_mut(&tid).unwrap();
        if in_call {
            // A thread running an injected call finishes it even when job control stops
            // the process: detaching puts it back into the stop.
            resume_raw(th)?;
        } else if want_run {
            resume_thread(pid, th)?;
        }
        Ok(())
    }

    fn thread_entry(&mut self, tid: Tid) -> &mut Thread {
        let world_stopped = self.world_stopped;
        let watch = self.watch_all;
        self.gone.remove(&tid);
        self.threads.entry(tid).or_insert_with(|| {
            let mut t = new_thread(tid);
            t.want_run = !world_stopped;
            t.watch_eintr = watch;
            t
        })
    }

    /// Detach from every thread, delivering pending signals. Threads must be stopped
    /// (call [`Tracer::stop_all`] first); threads already gone are skipped.
    pub fn detach_all(&mut self) {
        crate::os::fault::trace("detach all");
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.detach_one(tid);
        }
    }

    /// Detach from every thread without stopping them all at once: stopped threads at
    /// once, threads asleep together (stopping them costs the process nothing), threads
    /// on a CPU one at a time, so that each pauses only for its own stop and detach.
    pub fn detach_gently(&mut self, deadline: Instant) -> Result<()> {
        crate::os::fault::trace("detach gently");
        self.world_stopped = false;
        crate::os::pace::world_stopped(false);
        // The leader first (see `attach`): from then on the kernel drops the signals the
        // program ignores instead of queueing them for threads rlivepatch lets go.
        if self.threads.len() > 1
            && self.threads.contains_key(&self.pid)
            && self.stop_one(self.pid, deadline)?
        {
            self.detach_one(self.pid);
        }
        while !self.threads.is_empty() && !self.exited {
            let stopped: Vec<Tid> = self
                .threads
                .values()
                .filter(|t| t.stop.is_some() && !t.listening)
                .map(|t| t.tid)
                .collect();
            for tid in stopped {
                self.detach_one(tid);
            }
            if self.threads.is_empty() {
                break;
            }
            let on_cpu = self.on_cpu();
            let asleep: Vec<Tid> = self
                .threads
                .values()
                .filter(|t| t.stop.is_none() || t.listening)
                .map(|t| t.tid)
                .filter(|t| !on_cpu.contains(t))
                .collect();
            if !asleep.is_empty() {
                self.stop_these(&asleep, deadline)?;
                continue;
            }
            for tid in on_cpu {
                crate::os::pace::point();
                if self.stop_one(tid, deadline)? {
                    self.detach_one(tid);
                }
            }
        }
        self.threads.clear();
        crate::os::fault::trace("detached");
        Ok(())
    }

    fn detach_one(&mut self, tid: Tid) {
        // Detaching wakes the thread as a signal would (the kernel sets its
        // signal-pending flag): at the entry of a call that a stray wake-up ends with
        // EINTR, the call would fail at once. Let it make the call, stop it again at the
        // call's exit (where a stray EINTR is undone), and detach it there. (Skipping the
        // call and making it again would show seccomp a system call -1, which strict mode
        // and most filters punish.)
        if self.threads.get(&tid).is_some_and(|t| {
            t.stop == Some(Stop::Syscall) && t.pending_signal.is_none() && at_eintr_entry(tid)
        }) && !self
            .step_off_entry(tid, Instant::now() + Duration::from_secs(5))
            .unwrap_or(false)
        {
            self.threads.remove(&tid);
            return;
        }
        let Some(mut th) = self.threads.remove(&tid) else {
            return;
        };
        self.hurried.remove(&tid);
        prepare_resume(self.pid, &mut th);
        let sig = th.pending_signal.unwrap_or(0);
        if is_stop_signal(sig) {
            self.stop_handed_back = Some(sig);
        }
        crate::os::fault::trace_with(|| format!("detach thread {tid} from {:?}", th.stop));
        let _ = ptrace_sig(libc::PTRACE_DETACH, th.tid, sig);
    }

    /// Give `tids` a short slice when the CPUs are crowded, before rlivepatch interrupts
    /// them and waits for them: a thread asleep must run to enter its stop, and behind a
    /// busy thread's slice it waited up to 1.4 ms (see [`crate::os::slice`]). Given back
    /// at each one's detach (or, should rlivepatch be killed, by the next run's seize). On free CPUs nothing is asked (a woken thread runs at once),
    /// nor for more threads than CPUs at once: those queue for the CPUs whatever their
    /// slice, and the four system calls each costs rlivepatch were measured to cost more
    /// than they saved (2 busy threads and 100 or 1000 asleep: no shorter).
    fn hurry(&mut self, tids: &[Tid]) {
        if tids.len() > crate::os::pace::cpus()
            || tids.iter().all(|t| self.hurried.contains_key(t))
            || !crate::os::pace::crowded_cpus()
        {
            return;
        }
        let mut shortened = 0;
        for &tid in tids {
            self.hurried.entry(tid).or_insert_with(|| {
                let s = crate::os::slice::shorten(tid);
                shortened += usize::from(s.is_some());
                s
            });
        }
        if shortened > 0 {
            crate::os::fault::trace(&format!("short slice for {shortened} threads waited for"));
        }
    }

    /// [`Tracer::on_cpu`], reading only the threads not found asleep when they were
    /// attached (one read of /proc per thread in a run): a thread that was blocked in a
    /// system call then, and gave no sign since, is taken for asleep. Taken wrongly, it
    /// shows when it stops in its own code ([`Tracer::stopped_at_work`]).
    pub fn on_cpu_known(&mut self) -> Vec<Tid> {
        self.runnable(false)
    }

    /// Of `tids`, the threads at an interrupt stop in their own code, not in a system
    /// call: they were at work when stopped. Each is taken for awake from now on.
    pub fn stopped_at_work(&mut self, tids: &[Tid]) -> Vec<Tid> {
        let mut out = Vec::new();
        for &tid in tids {
            let Some(th) = self.threads.get_mut(&tid) else {
                continue;
            };
            if th.stop != Some(Stop::Interrupt) || th.listening {
                continue;
            }
            if th.regs().is_ok_and(|r| (r.orig_rax as i64) < 0) {
                th.asleep_when_read = false;
                out.push(tid);
            }
        }
        out
    }

    /// The attached threads that run and are on a CPU right now (runnable, as their
    /// `syscall` file in /proc says):
    /// the ones whose stop would pause work.
    pub fn on_cpu(&mut self) -> Vec<Tid> {
        self.runnable(true)
    }

    /// The running threads runnable as their `syscall` file says, read for each (or,
    /// without `all`, for those not found asleep at the attach).
    fn runnable(&mut self, all: bool) -> Vec<Tid> {
        let pid = self.pid;
        self.threads
            .values_mut()
            .filter(|t| t.stop.is_none() && !t.listening && (all || !t.asleep_when_read))
            .filter_map(|t| {
                t.syscall_file
                    .read(pid, t.tid)
                    .is_some_and(|text| process::runnable_text(&text))
                    .then_some(t.tid)
            })
            .collect()
    }

    /// Stop the threads `tids` (all interrupted at once) and wait until each is stopped
    /// or gone. The others keep running; threads created meanwhile run.
    pub fn stop_these(&mut self, tids: &[Tid], deadline: Instant) -> Result<()> {
        self.hurry(tids);
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
    pub fn detach_all_but(&mut self, keep: &[Tid], first: &[Tid], park: Option<Tid>) -> Result<()> {
        crate::os::fault::trace("detach all but");
        self.world_stopped = false;
        crate::os::pace::world_stopped(false);
        // The leader before any other (see `attach`).
        let leader = [self.pid];
        let rest: Vec<Tid> = self.threads.keys().copied().collect();
        for (i, &tid) in leader.iter().chain(first).chain(&rest).enumerate() {
            if i == first.len() + 1 {
                crate::os::fault::trace("busy resumed");
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
        for &tid in keep.iter().filter(|&&t| Some(t) != park) {
            self.resume(tid)?;
        }
        // Threads not stopped (listening in a group-stop) stay attached; the rest are
        // detached at the end like any other.
        crate::os::fault::trace("resumed");
        Ok(())
    }

    /// Resume every stopped thread, `first` before the others (the threads whose work
    /// waits: they were running when the world was stopped).
    pub fn resume_all_first(&mut self, first: &[Tid]) -> Result<()> {
        crate::os::fault::trace("resume all");
        self.world_stopped = false;
        crate::os::pace::world_stopped(false);
        for &tid in first {
            self.resume(tid)?;
        }
        crate::os::fault::trace("busy resumed");
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            self.resume(tid)?;
        }
        crate::os::fault::trace("resumed");
        Ok(())
    }

    /// The registers of a stopped thread.
    pub fn regs(&self, tid: Tid) -> Result<Regs> {
        match self.threads.get(&tid) {
            Some(th) => th.regs(),
            None => ptrace::getregs(Pid::from_raw(tid)),
        }
        .map_err(|e| err!(Failed, "reading registers of thread {tid}: {}", e.desc()))
    }

    /// Set the registers of a stopped thread.
    pub fn set_regs(&self, tid: Tid, regs: &Regs) -> Result<()> {
        match self.threads.get(&tid) {
            Some(th) => th.set_regs(*regs),
            None => ptrace::setregs(Pid::from_raw(tid), *regs),
        }
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

    /// Has the process shown that it gets signals it ignores (every thread is watched)?
    pub fn watches_all(&self) -> bool {
        self.watch_all
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
        watch_eintr: false,
        syscall_traced: false,
        interrupt_sent: false,
        blocked_read: false,
        asleep_when_read: false,
        regs: std::cell::Cell::new(None),
        syscall_file: Default::default(),
    }
}

/// Let a stopped thread go on: a job-control stop stays in place (`PTRACE_LISTEN`); any
/// other stop is resumed, delivering its pending signal.
fn resume_thread(pid: i32, th: &mut Thread) -> Result<()> {
    if th.stop.is_none() {
        return Ok(());
    }
    if matches!(th.stop, Some(Stop::Group(_))) && th.pending_signal.is_none() && !th.in_call {
        return match ptrace_sig(PTRACE_LISTEN, th.tid, 0) {
            Ok(()) => {
                th.listening = true;
                th.set_stop(None);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                th.set_stop(None);
                Ok(())
            }
            Err(e) => Err(err!(Failed, "PTRACE_LISTEN on thread {}: {e}", th.tid)),
        };
    }
    prepare_resume(pid, th);
    resume_raw(th)
}

/// Resume a stopped thread as it is (syscall mode or not), delivering its pending signal.
fn resume_raw(th: &mut Thread) -> Result<()> {
    let sig = th.pending_signal.take().unwrap_or(0);
    let traced = th.syscall_mode || th.watch_eintr;
    let request = if traced {
        libc::PTRACE_SYSCALL
    } else {
        libc::PTRACE_CONT
    };
    match ptrace_sig(request, th.tid, sig) {
        Ok(()) => {
            th.set_stop(None);
            th.syscall_traced = traced;
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            th.set_stop(None);
            Ok(())
        }
        Err(e) => Err(err!(Failed, "resuming thread {}: {e}", th.tid)),
    }
}

/// Before a thread leaves a stop (resumed or detached): a system call that failed with
/// `EINTR` only because rlivepatch traces the thread is set to run again, so that the
/// program never sees it (see the restart module). That is the case
/// - at our interrupt stop, and at a syscall-exit stop, unless a signal the thread will
///   act on is pending (then the program would have seen that `EINTR` anyway);
/// - at the delivery of a signal the program ignores: without a tracer the kernel drops
///   such a signal when it is sent, and it wakes nobody.
///
/// A signal the program ignores can also wake a thread asleep in such a call and be
/// taken by another thread first; the woken thread's `EINTR` then comes with no stop at
/// all, unless the thread runs with syscall stops. So a thread seen in one of these calls
/// is watched (resumed with `PTRACE_SYSCALL`) until rlivepatch lets it go; once such a
/// signal was seen, every thread is.
fn prepare_resume(pid: i32, th: &mut Thread) {
    let candidate = match th.stop {
        Some(Stop::Interrupt) | Some(Stop::Syscall) => th.pending_signal.is_none(),
        Some(Stop::Signal(sig)) => th.pending_signal == Some(sig),
        _ => false,
    };
    if !candidate {
        return;
    }
    let Ok(mut r) = th.regs() else {
        return;
    };
    if (r.orig_rax as i64) >= 0 && restart::waits_for_events(r.orig_rax) {
        th.watch_eintr = true;
    }
    if !(r.rax as i64 == -(libc::EINTR as i64) && restart::eintr_on_stop(r.orig_rax)) {
        return;
    }
    let Some(signals) = Signals::of(pid, th.tid) else {
        return;
    };
    let ours = match th.stop {
        Some(Stop::Signal(sig)) => signals.ignores(sig) && !signals.interrupting(),
        _ => !signals.interrupting(),
    };
    crate::os::fault::trace(&format!(
        "thread {} stopped ({:?}) after an EINTR of system call {}: {}",
        th.tid,
        th.stop,
        r.orig_rax,
        if ours {
            "run again"
        } else {
            "left to the program"
        }
    ));
    if ours && restart::rewind_eintr(&mut r) {
        let _ = th.set_regs(r);
    }
}

/// Is the thread at the syscall-entry stop of a call that a stray wake-up ends with
/// `EINTR` (see [`restart::eintr_on_stop`])?
fn at_eintr_entry(tid: Tid) -> bool {
    is_syscall_entry(tid).unwrap_or(false)
        && ptrace::getregs(Pid::from_raw(tid))
            .is_ok_and(|r| (r.orig_rax as i64) >= 0 && restart::eintr_on_stop(r.orig_rax))
}

/// The pid of the rlivepatch tracing thread `tid` of `pid`, if an rlivepatch does.
fn traced_by_rlivepatch(pid: i32, tid: Tid) -> Option<i32> {
    let tracer = process::read_thread_status(pid, tid).ok()?.tracer;
    (tracer != 0 && tracer != std::process::id() as i32 && is_rlivepatch(tracer)).then_some(tracer)
}

fn is_rlivepatch(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "rlivepatch")
}

/// What a syscall stop of a thread says of its system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallStop {
    /// Entering system call number N.
    Entry(i64),
    /// Leaving one, with its return value.
    Exit(i64),
    /// Not a syscall stop.
    Other,
}

/// [`SyscallStop`] of a thread stopped at a syscall stop: one `PTRACE_GET_SYSCALL_INFO`,
/// no registers read.
pub fn syscall_stop(tid: Tid) -> Result<SyscallStop> {
    let info = nix::sys::ptrace::syscall_info(nix::unistd::Pid::from_raw(tid)).map_err(|e| {
        err!(
            Failed,
            "PTRACE_GET_SYSCALL_INFO on thread {tid}: {}",
            e.desc()
        )
    })?;
    // SAFETY: the kernel filled the union member that `op` names.
    Ok(unsafe {
        match info.op {
            libc::PTRACE_SYSCALL_INFO_ENTRY => SyscallStop::Entry(info.u.entry.nr as i64),
            libc::PTRACE_SYSCALL_INFO_EXIT => SyscallStop::Exit(info.u.exit.sval),
            _ => SyscallStop::Other,
        }
    })
}

/// Is the thread at a syscall-enter stop (rather than syscall-exit)?
pub fn is_syscall_entry(tid: Tid) -> Result<bool> {
    Ok(matches!(syscall_stop(tid)?, SyscallStop::Entry(_)))
}
