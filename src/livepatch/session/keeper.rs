//! The keeper: a thread rlivepatch's runtime starts (its constructor, on the thread
//! borrowed to load it: a safe moment) when it is loaded with the first patch, and that
//! waits parked in the C library's `sem_wait` until the runtime is unloaded with the last
//! patch (`runtime/rlivepatch-keeper.c`). Operations
//! borrow it first: it is always at a safe point for the loader, however busy the
//! program's own threads are (all inside malloc, in signal handlers, on code without
//! unwind information). It runs no code of the runtime, so the last `dlclose` of the
//! runtime can run on it too; then a `sem_post` ends it.
//!
//! Why it is safe:
//! - **signals**: it blocks every signal from its first instruction, so process-directed
//!   signals go to the program's threads as before; it runs no handler.
//! - **fork**: a child has only the forking thread, never the keeper; an operation on the
//!   child finds none (its thread id, seen when the runtime created it, is not one of the
//!   child's), borrows the program's threads as before, and unmaps the inherited mapping
//!   with the runtime.
//! - **seccomp**: a filter that refuses `clone` makes `pthread_create` fail: then there
//!   is no keeper, and nothing else changes. Calls on the keeper pass the same seccomp
//!   check as on any thread.
//! - **thread-per-request servers**: it is one thread more, asleep; it takes no requests
//!   and no CPU.
//! - **processes that count their threads** (`/proc/self/status`, a watchdog): they see
//!   one thread more while a patch is applied, with the program's name. Its allocations
//!   (the loader's, while borrowed) go to the main malloc arena, as a borrowed thread's
//!   do, so it leaves no arena behind.
//! - **ending it**: glibc ends it as any detached thread whose start routine returned (no
//!   unwinding, nothing loaded); once the kernel has reaped it, its mapping (the
//!   runtime's own, never in glibc's stack cache) is unmapped: an apply/disable cycle
//!   leaves no mapping, thread or fd.

use super::Session;
use crate::error::Result;
use crate::livepatch::record::KeeperRecord;
use crate::os::process;
use crate::os::ptrace::Tid;
use std::time::{Duration, Instant};

impl Session<'_> {
    /// Record the keeper the runtime's constructor started as the runtime was loaded at
    /// `base` (on the borrowed thread, at a safe point; `clones` is how many threads the
    /// tracer had seen created before that load). A refusal (`clone` filtered, no
    /// memory) leaves the process without one, as before: noted, not an error.
    pub(super) fn keeper_started(&mut self, base: u64, clones: usize) -> Result<()> {
        let k = &crate::remote::runtime::layout()?.keeper;
        let r = self.proc.read_u64(base + k.error)? as u32 as i32;
        if r != 0 {
            self.progress(&format!(
                "note: process {} refused the keeper thread (error {r}); later operations borrow its own threads",
                self.proc.pid
            ));
            return Ok(());
        }
        // The thread the load created is the keeper: the borrowed thread ran nothing else.
        let by = self.inj.as_ref().map(|i| i.tid);
        let tid = self.tr.clones[clones..]
            .iter()
            .find(|(parent, _)| Some(*parent) == by)
            .map(|(_, child)| *child)
            .unwrap_or(0);
        // It inherits the borrowed thread's slice: not rlivepatch's mark (see os::slice).
        if tid > 0 {
            crate::os::slice::heal(tid);
        }
        self.record.keeper = Some(KeeperRecord {
            mapping: self.proc.read_u64(base + k.vars.0)?,
            size: self.proc.read_u64(base + k.vars.1)?,
            sem: self.proc.read_u64(base + k.vars.2)?,
            tid,
        });
        Ok(())
    }

    /// Record the keeper of a runtime loaded at `base` that a killed run loaded and did
    /// not record (`repair`): found by its mapping's mark and the thread sleeping on it.
    /// Without it the process would keep a parked thread nothing ends.
    pub fn adopt_keeper(&mut self, base: u64) -> Result<bool> {
        if self.record.keeper.is_some() {
            return Ok(false);
        }
        let k = &crate::remote::runtime::layout()?.keeper;
        let found = KeeperRecord {
            mapping: self.proc.read_u64(base + k.vars.0)?,
            size: self.proc.read_u64(base + k.vars.1)?,
            sem: self.proc.read_u64(base + k.vars.2)?,
            tid: 0,
        };
        if found.mapping == 0 || !self.keeper_mapping_is_ours(&found) {
            return Ok(false);
        }
        let pid = self.proc.pid;
        let on_stack = |tid: Tid| {
            stack_pointer(pid, tid)
                .is_some_and(|sp| (found.mapping..found.mapping + found.size).contains(&sp))
        };
        // Started (its mapping says so), it may not be asleep yet: it gets there soon.
        // Not found there in time, it is left alone, as it is safer to keep a parked
        // thread than to unmap the stack of one that may run.
        let deadline = Instant::now() + self.opts.timeout.min(Duration::from_secs(10));
        let tid = loop {
            if let Some(t) = process::task_ids(pid)?.into_iter().find(|&t| on_stack(t)) {
                break t;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.tr.pump(Instant::now() + Duration::from_millis(5))?;
        };
        self.record.keeper = Some(KeeperRecord { tid, ..found });
        Ok(true)
    }

    /// The keeper's thread id, if it runs in this process (a child after a fork has the
    /// record, not the thread).
    fn keeper_tid(&self) -> Option<Tid> {
        let k = self.record.keeper.as_ref()?;
        let tid = k.tid;
        // A thread the tracer holds is there (its exit would have been reaped); else ask
        // the process.
        if tid <= 0
            || !(self.tr.threads.contains_key(&tid) || process::has_task(self.proc.pid, tid))
        {
            return None;
        }
        // A thread seen off the keeper's stack is another one with its id (the keeper
        // ended after a killed run posted it, and the program reused the id).
        match stack_pointer(self.proc.pid, tid) {
            Some(sp) if !(k.mapping..k.mapping + k.size).contains(&sp) => None,
            _ => Some(tid),
        }
    }

    /// Is the keeper's mapping still the one the runtime made (its mark is there)? After
    /// a killed run unmapped it, the program may have mapped memory at the same address.
    fn keeper_mapping_is_ours(&self, k: &KeeperRecord) -> bool {
        const PAGE: u64 = 4096;
        let Ok(mark) = self.proc.read(k.mapping + PAGE + KEEPER_MARK, 24) else {
            return false;
        };
        mark[..16] == KEEPER_MAGIC[..] && mark[16..] == k.mapping.to_le_bytes()
    }

    /// Is the keeper asleep in its `sem_wait`, or stopped there (on its own stack:
    /// `/proc/PID/task/TID/syscall` ends with the stack pointer and the program counter)?
    /// Not yet, just started.
    fn keeper_asleep(&self, tid: Tid) -> bool {
        let Some(k) = self.record.keeper.as_ref() else {
            return false;
        };
        stack_pointer(self.proc.pid, tid)
            .is_some_and(|sp| (k.mapping..k.mapping + k.size).contains(&sp))
    }

    /// Kept stopped at a switch ([`crate::livepatch::transition::World::park`]), in a
    /// system call on its own stack: where it sleeps, as [`Session::keeper_asleep`] asks
    /// of a thread not held (its `/proc` file says `running` for a stopped thread).
    fn keeper_parked(&self, tid: Tid) -> bool {
        let Some(k) = self.record.keeper.as_ref() else {
            return false;
        };
        if self.tr.threads.get(&tid).is_none_or(|t| t.stop.is_none()) {
            return false;
        }
        self.tr.regs(tid).is_ok_and(|r| {
            (r.orig_rax as i64) >= 0 && (k.mapping..k.mapping + k.size).contains(&r.rsp)
        })
    }

    /// The keeper, stopped and fit for calls; `None` when there is none or it is not
    /// usable now (then the program's threads are tried).
    pub(super) fn borrowable_keeper(&mut self) -> Result<Option<Tid>> {
        let Some(tid) = self.keeper_tid() else {
            return Ok(None);
        };
        let borrowed = self.inj.as_ref().is_some_and(|i| i.tid == tid);
        if !borrowed && !self.keeper_parked(tid) && !self.keeper_asleep(tid) {
            return Ok(None);
        }
        if !self.tr.attach_one(tid)? {
            return Ok(None);
        }
        let was_running = self.tr.threads.get(&tid).is_some_and(|t| t.stop.is_none());
        let until = Instant::now() + Duration::from_secs(5);
        let stopped = self.tr.stop_one(tid, until);
        if !matches!(stopped, Ok(true)) || !self.tr.step_off_entry(tid, until).unwrap_or(false) {
            return Ok(None);
        }
        // Found asleep in a system call on its own stack, it is in its sem_wait: a safe
        // point by construction (the general rule would refuse a stack of C-library
        // frames only). What remains to check is how it stopped, and seccomp.
        if self.judge_thread_for_syscalls(tid)?.is_ok() {
            return Ok(Some(tid));
        }
        if was_running {
            self.tr.resume(tid)?;
        }
        Ok(None)
    }

    /// End the keeper (after the runtime is unloaded, on it if need be) and unmap its
    /// mapping. When it cannot be ended now, it stays, recorded, for `repair`: an error.
    pub(super) fn stop_keeper(&mut self) -> Result<()> {
        let Some(k) = self.record.keeper.clone() else {
            return Ok(());
        };
        // Borrowed, it was recognised then (and a thread held cannot end unseen): the post
        // goes to it where it waits between calls. Else it is recognised by where it
        // sleeps: not while it waits at the gate of the calls it was borrowed for.
        let borrowed = k.tid > 0 && self.inj.as_ref().is_some_and(|i| i.tid == k.tid);
        if !borrowed {
            self.settle()?;
        }
        let tid = if borrowed {
            Some(k.tid)
        } else {
            self.keeper_tid()
        };
        if let Some(tid) = tid {
            let pid = self.proc.pid;
            let sem_post = self.libc.as_ref().and_then(|l| l.sem_post).ok_or_else(|| {
                crate::err!(Failed, "no sem_post in the C library of process {pid}")
            })?;
            // The post runs on the keeper itself: it is at a safe point, and its own
            // sem_wait, which the call interrupted, takes the post when it resumes.
            if self.inj.as_ref().is_none_or(|i| i.tid != tid) {
                self.unborrow()?;
                // Just started, it may not be asleep yet: it gets there soon.
                let deadline = Instant::now() + self.opts.timeout.min(Duration::from_secs(10));
                while self.borrowable_keeper()? != Some(tid) {
                    if Instant::now() >= deadline {
                        crate::bail!(
                            Busy,
                            "the keeper thread {tid} of process {pid} could not be stopped to end it"
                        );
                    }
                    self.tr.pump(Instant::now() + Duration::from_millis(20))?;
                }
                self.borrow_tid(tid, true)?;
            }
            // The arena lent for the loader goes back first: if rlivepatch dies after the
            // post, the kernel lets the keeper go, and it ends at once, before any repair.
            if let Some(inj) = self.inj.as_mut() {
                inj.return_arena(&self.proc)?;
            }
            self.call(sem_post, &[k.sem], "ending the keeper thread")?;
            crate::os::fault::point("keeper:posted");
            self.unborrow()?;
            self.tr.resume(tid)?;
            let deadline = Instant::now() + self.opts.timeout.min(Duration::from_secs(10));
            // Gone from the process, and from the tracer's threads (its exit reaped).
            while self.tr.threads.contains_key(&tid) || process::has_task(pid, tid) {
                if Instant::now() >= deadline {
                    crate::bail!(
                        Busy,
                        "the keeper thread {tid} of process {pid} did not end in time"
                    );
                }
                self.tr.pump(Instant::now() + Duration::from_millis(20))?;
            }
        }
        if self.keeper_mapping_is_ours(&k) {
            self.syscall(libc::SYS_munmap, &[k.mapping, k.size])?;
            crate::os::fault::point("keeper:unmapped");
        }
        self.record.keeper = None;
        Ok(())
    }
}

/// Where `runtime/rlivepatch-keeper.c` marks the keeper's mapping: past the semaphore, in
/// the page after the guard page.
const KEEPER_MARK: u64 = 128;
const KEEPER_MAGIC: &[u8; 16] = b"rlivepatch-keepr";

/// A thread's stack pointer, when it is in a system call or stopped out of one
/// (`/proc/PID/task/TID/syscall` ends with the stack pointer and the program counter;
/// it says `running` on a CPU).
fn stack_pointer(pid: i32, tid: Tid) -> Option<u64> {
    let text = crate::os::process::read_task_file(pid, tid, "syscall")?;
    let text = String::from_utf8_lossy(&text);
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2];
    u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
}
