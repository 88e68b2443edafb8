//! A session: one rlivepatch operation on one attached process. Attaching is also the
//! lock against a second rlivepatch; the session holds the tracer, the process's maps,
//! objects and record, the unwinder's caches, and the thread borrowed for injected calls,
//! and gives everything back in [`Session::close`].

use crate::elf::objects::Objects;
use crate::elf::unwind::Unwinder;
mod keeper;
mod pick;
mod runtime;

use crate::error::{Error, Result};
use crate::livepatch::record::{Record, Stage};
use crate::livepatch::store::Store;
use crate::livepatch::transition::{self, Plan};
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::{Stop, Tid, Tracer};
use crate::os::restart::Signals;
use crate::remote::inject::{Check, Injector, Libc, Scratch, Step};
use crate::{bail, err};
use std::time::{Duration, Instant};

/// Options of an operation.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the switch may wait for a safe moment.
    pub timeout: Duration,
    /// Switch without the consistency check.
    pub force: bool,
    /// How long one injected call may take.
    pub call_timeout: Duration,
    /// How long to wait for another rlivepatch working on the same process.
    pub lock_timeout: Duration,
    /// More directories to look for separate debug files in (besides /usr/lib/debug).
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// More directories to look for objects the process has not loaded yet in (besides
    /// the loader's own path).
    pub library_path: Vec<std::path::PathBuf>,
    /// Say which child processes of the same program an apply did not cover (off in a
    /// fleet run, which says it once for the whole run).
    pub note_children: bool,
    /// How the patch file is accepted: trust, keyring, signatures (see
    /// `crate::patch::Acceptance`).
    pub acceptance: crate::patch::Acceptance,
    /// What started the operation, for the audit line (`autoload` for a process's own
    /// start-up; empty for the command line).
    pub origin: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(15),
            force: false,
            call_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(30),
            debug_dirs: Vec::new(),
            library_path: Vec::new(),
            note_children: true,
            acceptance: crate::patch::Acceptance::default(),
            origin: "",
        }
    }
}

/// Where progress lines go (stderr in the CLI).
pub type ProgressFn<'a> = &'a mut dyn FnMut(&str);

/// An attached process and what rlivepatch knows of it during one operation.
pub struct Session<'a> {
    /// The process.
    pub proc: Process,
    /// The tracer (holds every thread).
    pub tr: Tracer,
    /// Mappings, refreshed after the address space changes.
    pub maps: Vec<Mapping>,
    /// Objects, refreshed with the maps.
    pub objects: Objects,
    /// The unwinder with its caches.
    pub unwinder: Unwinder,
    /// The borrowed thread, while one is.
    pub inj: Option<Injector>,
    /// rlivepatch's memory in the target.
    pub scratch: Option<Scratch>,
    /// rlivepatch's own mapping of the scratch memory's notify block (see
    /// `crate::remote::inject`), kept for every borrow of the session.
    notify: Option<std::sync::Arc<crate::os::shared::SharedPage>>,
    /// Where the record lives, once it exists.
    pub store: Option<Store>,
    /// The record.
    pub record: Record,
    libc: Option<Libc>,
    /// The thread borrowed last: after a switch it is kept attached for later calls.
    last_borrowed: Option<Tid>,
    pub(crate) opts: Options,
    progress: ProgressFn<'a>,
    /// The runtime's hook for objects that come is held ([`crate::livepatch::coming::freeze`]).
    pub frozen: bool,
    /// Copies of objects patched by this run that the runtime's table must learn, by
    /// build-id and load bias ([`crate::livepatch::coming::adopt`]).
    pub adopted: Vec<(String, u64)>,
    /// The main thread's malloc arena, once read.
    main_arena: Option<u64>,
    /// What tidying up after the operation took effect left behind ([`Session::left`]).
    leftovers: Vec<String>,
    /// The maps and objects were read at attach, and nothing has run in the process for
    /// rlivepatch since ([`Session::refresh_after_attach`]).
    fresh: bool,
    /// What the seccomp check found of the threads judged since the last borrow (may
    /// each wait at the `futex_waitv` gate?), with their signals from the same read of
    /// their status.
    gates: std::collections::HashMap<Tid, (crate::os::seccomp::WaitvGate, Signals)>,
    /// The state lists last written to the runtime at its base ([`Session::set_states`]).
    states_written: Option<(u64, Vec<u64>, Vec<u64>)>,
    /// Empty memfds made ahead in the target, by name, for the steps that fill them
    /// ([`Session::make_memfds`]); those left are closed at the end.
    made_memfds: Vec<(String, i32)>,
    /// The record's first save may leave its mapping to the next load
    /// ([`Session::defer_store_mapping`]).
    defer_store: bool,
    /// Memfds to make along with rlivepatch's memory, if the next borrow maps it
    /// ([`Session::want_memfds`]).
    memfds_wanted: Vec<String>,
}

/// An object for [`Session::load_all`]: its memfd's name, its bytes, `dlopen`'s flags.
pub type ToLoad<'b> = (&'b str, &'b [u8], i32);

/// What [`Session::load_all`] loaded.
pub struct Loaded {
    /// The handle and the target's fd of each object loaded, in order.
    pub loaded: Vec<(u64, i32)>,
    /// dlerror's text for the first object the loader refused.
    pub refused: Option<String>,
}

/// The memfd name the runtime is loaded from.
pub const RUNTIME_MEMFD: &str = "rlp:runtime";

/// An operation's result, and what tidying up after it left behind.
pub struct Concluded<T> {
    /// The result.
    pub value: T,
    /// Leftovers, named (`repair` clears them).
    pub leftovers: Vec<String>,
    /// A stop signal or a job-control stop was seen while attached.
    pub job_control_seen: bool,
    /// A stop signal rlivepatch handed back to a thread as it let it go (see
    /// [`crate::os::ptrace::Tracer::stop_handed_back`]).
    pub stop_handed_back: Option<i32>,
}

impl<'a> Session<'a> {
    /// Attach to every thread and read the record.
    pub fn attach(proc: Process, opts: &Options, progress: ProgressFn<'a>) -> Result<Session<'a>> {
        Self::attach_with(proc, opts, progress, None)
    }

    /// [`Session::attach`], reusing the files parsed before attaching.
    pub fn attach_with(
        proc: Process,
        opts: &Options,
        progress: ProgressFn<'a>,
        prior: Option<Objects>,
    ) -> Result<Session<'a>> {
        let tr = Tracer::attach(
            proc.pid,
            proc.start_time,
            Instant::now() + opts.lock_timeout,
            progress,
        )?;
        let maps = proc.maps()?;
        let mut objects = Objects::new(&proc, &maps, &opts.debug_dirs)?;
        if let Some(p) = prior {
            objects.adopt(p);
        }
        let (store, mut record) = match Store::load(&proc, &maps)? {
            Some((s, r)) => (Some(s), r),
            None => (
                None,
                Record {
                    format: crate::livepatch::record::FORMAT,
                    ..Default::default()
                },
            ),
        };
        crate::livepatch::leftovers::forget_unloaded_runtime(&maps, &mut record);
        let (scratch, notify) = adopt_kept_scratch(&proc, &maps, &mut record);
        // Threads may be inside wrappers' trampolines: they unwind with the originals' CFI.
        let mut unwinder = Unwinder::new();
        unwinder.relocated = crate::livepatch::func_stack::relocated_code(&record);
        Ok(Session {
            proc,
            tr,
            maps,
            objects,
            unwinder,
            inj: None,
            scratch,
            notify,
            store,
            record,
            libc: None,
            last_borrowed: None,
            opts: opts.clone(),
            progress,
            frozen: false,
            adopted: Vec::new(),
            main_arena: None,
            leftovers: Vec::new(),
            fresh: true,
            gates: Default::default(),
            states_written: None,
            made_memfds: Vec::new(),
            defer_store: false,
            memfds_wanted: Vec::new(),
        })
    }

    /// [`Session::refresh`], unless the maps were read at attach and rlivepatch has run
    /// nothing in the process since: a second read a moment later would see no more of
    /// the program's own loads and unloads than the first (its threads run throughout),
    /// and the maps are the dearest file of /proc to read.
    pub fn refresh_after_attach(&mut self) -> Result<()> {
        if self.fresh {
            return Ok(());
        }
        self.refresh()
    }

    /// The C library's entry points, when already found before attaching.
    pub fn set_libc(&mut self, libc: Libc) {
        self.libc = Some(libc);
    }

    /// Re-read the mappings and objects (after a load or unload).
    pub fn refresh(&mut self) -> Result<()> {
        self.maps = self.proc.maps()?;
        let mut objects = Objects::new(&self.proc, &self.maps, &self.opts.debug_dirs)?;
        objects.adopt(std::mem::replace(
            &mut self.objects,
            Objects { list: Vec::new() },
        ));
        self.objects = objects;
        Ok(())
    }

    /// Borrow a thread for injected calls, mapping rlivepatch's memory on first use.
    /// Only the thread tried is stopped; the others keep running.
    pub fn borrow(&mut self) -> Result<()> {
        self.forget_ended();
        if self.inj.as_ref().is_some_and(|i| i.safe) {
            return Ok(());
        }
        // A thread borrowed for system calls only is given back for one at a safe point.
        self.unborrow()?;
        crate::os::fault::trace("borrow");
        let tid = self.pick_thread()?;
        crate::os::fault::trace("borrowed");
        self.borrow_tid(tid, true)
    }

    /// Borrow a thread for system calls only (mapping and unmapping, closing, writing the
    /// record): any stopped thread will do, wherever it is, since a raw system call takes
    /// no lock of the C library or the loader. What undoes and cleans up needs no more.
    pub fn borrow_for_syscalls(&mut self) -> Result<()> {
        self.forget_ended();
        if self.inj.is_some() {
            return Ok(());
        }
        // The keeper, parked, is fit for any call: borrowed as such, the calls that
        // follow the system calls (a dlclose after a switch) need no second borrow.
        if let Some(tid) = self.borrowable_keeper()? {
            return self.borrow_tid(tid, true);
        }
        let tid = self.pick_any_thread()?;
        self.borrow_tid(tid, false)
    }

    /// A thread that never allocated has no malloc arena yet: the loader's allocations
    /// on it would make glibc create one, which stays for the life of the process. Such a
    /// thread allocates from the main arena while it is borrowed (glibc's `thread_arena`
    /// set to the main thread's, and set back to none when it is given back). Returns the
    /// slot to set and the main arena.
    fn arena_to_lend(&mut self, tid: Tid, libc: &Libc) -> Result<Option<(u64, u64)>> {
        let main = self.proc.pid;
        let Some(slot) = libc.thread_arena_slot.filter(|_| tid != main) else {
            return Ok(None);
        };
        let tpoff = self.proc.read_u64(slot)?;
        let at = |regs: &crate::os::ptrace::Regs| regs.fs_base.wrapping_add(tpoff);
        let mine = at(&self.tr.regs(tid)?);
        if self.proc.read_u64(mine)? != 0 {
            return Ok(None);
        }
        if self.main_arena.is_none() {
            let deadline = Instant::now() + Duration::from_secs(5);
            let was_running = self.tr.threads.get(&main).is_some_and(|t| t.stop.is_none());
            if self.tr.stop_one(main, deadline).unwrap_or(false) {
                let regs = self.tr.regs(main);
                if was_running {
                    self.tr.resume(main)?;
                }
                if let Ok(r) = regs {
                    self.main_arena = self.proc.read_u64(at(&r)).ok().filter(|a| *a != 0);
                }
            }
        }
        Ok(self.main_arena.map(|arena| (mine, arena)))
    }

    /// Borrow the stopped thread `tid` (`safe`: it is at a safe point for the loader).
    fn borrow_tid(&mut self, tid: Tid, safe: bool) -> Result<()> {
        self.fresh = false;
        let libc = match &self.libc {
            Some(l) => l.clone(),
            None => {
                let l = Libc::find(self.proc.pid, &self.objects)?;
                self.libc = Some(l.clone());
                l
            }
        };
        // The others run during the calls: one of them may hold a lock the call needs.
        self.tr.resume_all_but(&[tid])?;
        self.last_borrowed = Some(tid);
        // A system call our interrupt cut short runs again when the thread gets its
        // context back; one a job-control stop or a signal cut short does not (the
        // program would have seen that EINTR anyway).
        // Judged when picked, mostly (one read of its status for the filter and the
        // signals); else read now.
        let judged = self.gates.remove(&tid);
        self.gates.clear();
        let read = match judged {
            Some((_, signals)) => Some((signals, None)),
            None => Signals::with_seccomp(self.proc.pid, tid).map(|(s, m)| (s, Some(m))),
        };
        let rewind = self
            .tr
            .threads
            .get(&tid)
            .is_some_and(|t| matches!(t.stop, Some(Stop::Interrupt) | Some(Stop::Syscall)))
            && read.as_ref().is_some_and(|(s, _)| !s.interrupting());
        let mut inj = Injector::borrow(&mut self.tr, tid, libc, rewind)?;
        let ip = inj.context().rip;
        // A refusal now (a filter installed since it was picked) keeps the thread off
        // the gate.
        let gate = match (judged, read) {
            (Some((g, _)), _) => g,
            (None, Some((_, Some(mode)))) => {
                crate::os::seccomp::check_mode(self.proc.pid, tid, ip, mode)
                    .unwrap_or(crate::os::seccomp::WaitvGate(false))
            }
            _ => crate::os::seccomp::WaitvGate(false),
        };
        inj.allow_waitv(gate.0);
        inj.call_timeout = self.opts.call_timeout;
        inj.safe = safe;
        let lend = if safe {
            self.arena_to_lend(tid, &inj.libc)?
        } else {
            None
        };
        let wanted = std::mem::take(&mut self.memfds_wanted);
        let r = match self.scratch {
            Some(s) => inj.adopt_scratch(&self.proc, s, self.notify.clone()),
            None => inj
                .map_scratch(&mut self.tr, &self.proc, &self.maps, &wanted)
                .map(|(s, made)| {
                    self.scratch = Some(s);
                    self.notify = inj.notify.clone();
                    self.made_memfds.extend(made);
                }),
        }
        .and_then(|()| match lend {
            Some((slot, arena)) => inj.lend_arena(&self.proc, slot, arena),
            None => Ok(()),
        });
        if let Err(e) = r {
            let _ = inj.release(&mut self.tr, &self.proc);
            return Err(e);
        }
        self.inj = Some(inj);
        Ok(())
    }

    /// Take the borrowed thread back from the gate where it waits for the next injected
    /// call ([`Injector::settle`]): before anything stops every thread or looks at it.
    pub fn settle(&mut self) -> Result<()> {
        if let Some(inj) = self.inj.as_mut() {
            inj.settle(&mut self.tr)?;
        }
        self.forget_ended();
        Ok(())
    }

    /// A borrowed thread that ended on its own ([`Injector::gone`]) is no longer
    /// borrowed: the next call borrows another.
    fn forget_ended(&mut self) {
        if self.inj.as_ref().is_some_and(|i| i.gone) {
            self.inj = None;
        }
    }

    /// Give the borrowed thread back (rlivepatch's memory stays mapped).
    pub fn unborrow(&mut self) -> Result<()> {
        if let Some(mut inj) = self.inj.take() {
            let leaked = inj.leaked;
            inj.release(&mut self.tr, &self.proc)?;
            if leaked {
                // A call still runs on the scratch stack: never unmap it.
                self.scratch = None;
            }
        }
        Ok(())
    }

    /// A system call in the target on the borrowed thread (borrowing one if needed).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        self.borrow_for_syscalls()?;
        self.inj.as_mut().unwrap().syscall(&mut self.tr, nr, args)
    }

    /// [`Session::call`] of a patch's code (a callback) while the hook for objects that
    /// come may be held: the borrowed thread may pass the hook during that call only (a
    /// callback may load a library), and no other thread may.
    pub fn call_held(&mut self, func: u64, args: &[u64], what: &str) -> Result<u64> {
        let t = match crate::livepatch::coming::table::table(&self.record)? {
            Some(t) if self.frozen => t,
            _ => return self.call(func, args, what),
        };
        self.borrow()?;
        let tid = self.inj.as_ref().map(|i| i.tid).unwrap_or(0) as u64;
        crate::livepatch::coming::table::let_through(&self.proc, t, tid)?;
        let r = self.call(func, args, what);
        let cleared = crate::livepatch::coming::table::let_through(&self.proc, t, 0);
        let v = r?;
        cleared?;
        Ok(v)
    }

    /// Let the hook for objects that come go again, when this session holds it.
    pub fn thaw(&mut self) -> Result<()> {
        if !self.frozen {
            return Ok(());
        }
        self.frozen = false;
        if let Some(t) = crate::livepatch::coming::table::table(&self.record)? {
            crate::livepatch::coming::table::unhold(&self.proc, t)?;
        }
        Ok(())
    }

    /// A function call in the target on the borrowed thread.
    pub fn call(&mut self, func: u64, args: &[u64], what: &str) -> Result<u64> {
        crate::os::fault::trace(what);
        self.borrow()?;
        self.inj
            .as_mut()
            .unwrap()
            .call(&mut self.tr, func, args, what)
    }

    /// Load a shared object into the target from `bytes`: a memfd named `name` and
    /// `dlopen("/proc/PID/fd/N", flags)` ([`Process::fd_path`]). Returns (handle, fd), or
    /// dlerror's text. The memfd stays open while the object is loaded, which keeps its
    /// name unique.
    pub fn load(
        &mut self,
        name: &str,
        bytes: &[u8],
        flags: i32,
    ) -> Result<std::result::Result<(u64, i32), String>> {
        let Loaded { loaded, refused } = self.load_all(&[(name, bytes, flags)])?;
        Ok(match loaded.first() {
            Some(&v) => Ok(v),
            None => Err(refused.unwrap_or_default()),
        })
    }

    /// Load shared objects one after the other, as [`Session::load`] does each, in one
    /// hand-over to the target: the (handle, fd) of those loaded, in order, and dlerror's
    /// text for the first the loader refused (those after it are not tried; its memfd
    /// and theirs are closed).
    pub fn load_all(&mut self, objs: &[ToLoad]) -> Result<Loaded> {
        self.borrow()?;
        let mut fds = Vec::with_capacity(objs.len());
        for &(name, bytes, _) in objs {
            match self.memfd_holding(name, bytes) {
                Ok(fd) => fds.push(fd),
                Err(e) => {
                    self.close_fds(&fds)?;
                    return Err(e);
                }
            }
        }
        // A record not mapped yet is mapped first, in the same hand-over.
        let state = self.store.as_ref().and_then(Store::unmapped_fd);
        let mut steps: Vec<Step> = state.map(Store::map_steps).into_iter().flatten().collect();
        let first = steps.len();
        let inj = self.inj.as_mut().unwrap();
        for (&(_, _, flags), &fd) in objs.iter().zip(&fds) {
            let path = inj.put_cstr(&self.proc, &self.proc.fd_path(fd));
            let Ok(p) = path else {
                self.close_fds(&fds)?;
                return Err(path.unwrap_err());
            };
            let args = [p, flags as u64];
            steps.push(Step::call(inj.libc.dlopen, &args, Check::Null));
        }
        let mut handles = match inj.batch(&mut self.tr, &steps, "dlopen") {
            Ok(h) => h,
            Err(e) => {
                let leaked = inj.leaked;
                if state.is_some() {
                    self.state_after_failed_batch(leaked);
                }
                if !leaked {
                    let _ = self.close_fds(&fds);
                }
                return Err(e);
            }
        };
        if state.is_some() {
            let mapped = self.state_mapped(&handles[..first.min(handles.len())]);
            if let Err(e) = mapped {
                self.close_fds(&fds)?;
                return Err(e);
            }
            handles.drain(..first);
        }
        let loaded: Vec<(u64, i32)> = handles
            .into_iter()
            .zip(fds.iter().copied())
            .take_while(|&(h, _)| h != 0)
            .collect();
        if loaded.len() == objs.len() {
            return Ok(Loaded {
                loaded,
                refused: None,
            });
        }
        let inj = self.inj.as_mut().unwrap();
        let text = inj.dlerror(&mut self.tr, &self.proc)?;
        self.close_fds(&fds[loaded.len()..])?;
        Ok(Loaded {
            loaded,
            refused: Some(text),
        })
    }

    /// The record's mapping, made by the front of a batch ([`Store::map_steps`], `done`
    /// their results): the store is mapped there and its descriptor closed, or the
    /// error says which failed (no later step of the batch ran then).
    fn state_mapped(&mut self, done: &[u64]) -> Result<()> {
        let pid = self.proc.pid;
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        store.mapped_by(done.first().copied().unwrap_or(u64::MAX), pid)?;
        // The maps gain the record's mapping, as the kernel made it (see `save_record`).
        self.maps.push(store.mapping());
        self.maps.sort_by_key(|m| m.start);
        // Closed by the batch unless that failed; then it is closed with the run's other
        // memfds made ahead.
        match done.get(1) {
            Some(&r) if (r as i64) >= 0 => {
                self.take_memfd(crate::livepatch::store::MEMFD_NAME);
                Ok(())
            }
            _ => Err(err!(
                Failed,
                "closing the state memfd in process {pid} failed; the apply was undone"
            )),
        }
    }

    /// After a batch that began with the record's mapping failed: whether that mapping
    /// was made, from the maps. Made, the store is there and its descriptor was closed
    /// by the batch; not made, the descriptor is still open, for the run's cleanup to
    /// close, unless the call still runs (`leaked`): then the number is forgotten, for a
    /// descriptor the batch may yet close must not be closed again (the program may have
    /// opened another under that number), and so is the record it would have held.
    fn state_after_failed_batch(&mut self, leaked: bool) {
        let pid = self.proc.pid;
        let found = self
            .proc
            .maps()
            .ok()
            .and_then(|m| crate::livepatch::store::find_mapping(&m));
        if let (Some(addr), Some(store)) = (found, self.store.as_mut())
            && store.mapped_by(addr, pid).is_ok()
        {
            self.maps.push(store.mapping());
            self.maps.sort_by_key(|m| m.start);
            self.take_memfd(crate::livepatch::store::MEMFD_NAME);
        } else if leaked {
            // Nor is the record written there again.
            self.take_memfd(crate::livepatch::store::MEMFD_NAME);
            self.store = None;
        }
    }

    /// A memfd in the target holding `bytes`: the one named `name` made ahead, filled, or
    /// a new one.
    fn memfd_holding(&mut self, name: &str, bytes: &[u8]) -> Result<i32> {
        match self.take_memfd(name) {
            Some(fd) => {
                let filled = crate::remote::inject::fill_memfd(&self.proc, fd, name, bytes, None);
                if let Err(e) = filled {
                    self.syscall(libc::SYS_close, &[fd as u64])?;
                    return Err(e);
                }
                Ok(fd)
            }
            None => {
                let inj = self.inj.as_mut().unwrap();
                inj.memfd_with(&mut self.tr, &self.proc, name, bytes)
            }
        }
    }

    /// Close descriptors of the target, in one hand-over.
    fn close_fds(&mut self, fds: &[i32]) -> Result<()> {
        if fds.is_empty() {
            return Ok(());
        }
        let steps: Vec<Step> = fds
            .iter()
            .map(|&fd| Step::syscall(libc::SYS_close, &[fd as u64]))
            .collect();
        self.borrow_for_syscalls()?;
        let inj = self.inj.as_mut().unwrap();
        inj.batch(&mut self.tr, &steps, "close")?;
        Ok(())
    }

    /// The TLS module id of an object (`None`: the executable), from the dynamic loader:
    /// `dlopen(path, RTLD_NOLOAD)` and `dlinfo(RTLD_DI_TLS_MODID)`.
    pub fn tls_module(&mut self, object: Option<&str>) -> Result<u64> {
        const RTLD_DI_TLS_MODID: u64 = 9;
        self.borrow()?;
        let dlinfo = self.inj.as_ref().unwrap().libc.dlinfo.ok_or_else(|| {
            err!(
                Target,
                "process {} has no dlinfo to find thread-local variables",
                self.proc.pid
            )
        })?;
        let path = match object {
            Some(p) => self.inj.as_mut().unwrap().put_cstr(&self.proc, p)?,
            None => 0,
        };
        let dlopen = self.inj.as_ref().unwrap().libc.dlopen;
        let flags = (libc::RTLD_LAZY | libc::RTLD_NOLOAD) as u64;
        let handle = self.call(dlopen, &[path, flags], "dlopen(RTLD_NOLOAD)")?;
        if handle == 0 {
            bail!(
                Failed,
                "the dynamic loader of process {} does not know {}",
                self.proc.pid,
                object.unwrap_or("the executable")
            );
        }
        // The reference dlopen took is given back whatever happens next.
        let asked = (|| -> Result<(u64, u64)> {
            let out = self.inj.as_mut().unwrap().put_data(&self.proc, &[0u8; 8])?;
            if crate::os::fault::fails("tls:dlinfo") {
                bail!(Failed, "dlinfo in process {} failed", self.proc.pid);
            }
            let r = self.call(dlinfo, &[handle, RTLD_DI_TLS_MODID, out], "dlinfo")?;
            Ok((r, self.proc.read_u64(out)?))
        })();
        let closed = self.inj.as_mut().unwrap().dlclose(&mut self.tr, handle);
        let (r, module) = asked?;
        closed?;
        if r as u32 != 0 || module == 0 {
            bail!(
                Failed,
                "{} has no thread-local storage in process {}",
                object.unwrap_or("the executable"),
                self.proc.pid
            );
        }
        Ok(module)
    }

    /// The record this run makes is mapped by the run's first load ([`Session::load_all`]),
    /// in that hand-over, and written into its memfd until then (see
    /// [`Store::unmapped`]): for an apply, whose every path loads the patch.
    pub fn defer_store_mapping(&mut self) {
        self.defer_store = true;
    }

    /// Make empty memfds named `names` in the target with rlivepatch's memory, in the
    /// hand-over that sets that up, if the next borrow maps it; else
    /// [`Session::make_memfds`] makes them (a hand-over of their own).
    pub fn want_memfds(&mut self, names: &[&str]) {
        self.memfds_wanted = names.iter().map(|n| n.to_string()).collect();
    }

    /// Make empty memfds named `names` in the target now, in one batch, for the steps
    /// that fill them later this run ([`Session::load`], the record's mapping): one
    /// hand-over to the target instead of one each.
    pub fn make_memfds(&mut self, names: &[&str]) -> Result<()> {
        self.memfds_wanted.clear();
        let names: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.made_memfds.iter().any(|(m, _)| m == n))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        self.borrow_for_syscalls()?;
        let inj = self.inj.as_mut().unwrap();
        let fds = inj.memfds(&mut self.tr, &self.proc, &names)?;
        self.made_memfds
            .extend(names.iter().map(|n| n.to_string()).zip(fds));
        Ok(())
    }

    /// A memfd named `name` made ahead, if any: from now on the caller's.
    fn take_memfd(&mut self, name: &str) -> Option<i32> {
        let i = self.made_memfds.iter().position(|(n, _)| n == name)?;
        Some(self.made_memfds.swap_remove(i).1)
    }

    /// Close the memfds made ahead that no step took (the run failed before them).
    fn close_made_memfds(&mut self) -> Result<()> {
        let fds: Vec<i32> = self.made_memfds.drain(..).map(|(_, fd)| fd).collect();
        self.close_fds(&fds)
    }

    /// Unload an object loaded with [`Session::load`].
    pub fn unload(&mut self, handle: u64, fd: i32) -> Result<()> {
        if crate::os::fault::fails("unload") {
            bail!(Failed, "dlclose: Input/output error");
        }
        self.borrow()?;
        let inj = self.inj.as_mut().unwrap();
        let steps = [
            Step::call(inj.libc.dlclose, &[handle], Check::Never),
            Step::syscall(libc::SYS_close, &[fd as u64]),
        ];
        let done = inj.batch(&mut self.tr, &steps, "dlclose")?;
        let r = done[0] as i32;
        if r != 0 {
            self.progress(&format!("warning: dlclose returned {r}"));
        }
        Ok(())
    }

    /// Save the record (creating its mapping if needed) or remove it when empty.
    pub fn save_record(&mut self) -> Result<()> {
        // The private memory is kept only along with a runtime (see `Record::scratch`).
        if self.record.runtime.is_none() {
            self.record.scratch = None;
        }
        if self.record.is_empty() {
            // Raw system calls (munmap; memfd_create, mmap): any stopped thread will do.
            if let Some(store) = self.store.take() {
                self.borrow_for_syscalls()?;
                store.remove(self.inj.as_mut().unwrap(), &mut self.tr)?;
                self.refresh()?;
            }
            return Ok(());
        }
        if self.store.is_none() && self.defer_store {
            // Filled now, mapped in the next load's hand-over (see `Store::unmapped`).
            let made = self
                .made_memfds
                .iter()
                .find(|(n, _)| n == crate::livepatch::store::MEMFD_NAME)
                .map(|&(_, fd)| fd);
            if let Some(fd) = made {
                self.store = Some(Store::unmapped(&self.proc, fd)?);
            }
        }
        if self.store.is_none() {
            self.borrow_for_syscalls()?;
            let made = self.take_memfd(crate::livepatch::store::MEMFD_NAME);
            let store = Store::create(self.inj.as_mut().unwrap(), &mut self.tr, &self.proc, made)?;
            // The maps gain the record's mapping, as the kernel made it (no object in it:
            // no need to read them all again).
            self.maps.push(store.mapping());
            self.maps.sort_by_key(|m| m.start);
            self.store = Some(store);
        }
        self.store.as_mut().unwrap().save(&self.proc, &self.record)
    }

    /// The operation took effect and the runtime stays loaded: rlivepatch's private
    /// memory stays mapped with it, for the next operation (recorded by the caller's
    /// next save). Left unset, the memory is unmapped at the end, as the run found the
    /// process: a failed operation leaves the process as it was.
    pub fn keep_scratch(&mut self) {
        self.record.scratch = self.scratch.filter(|_| self.record.runtime.is_some());
    }

    /// A progress line.
    pub fn progress(&mut self, line: &str) {
        (self.progress)(line)
    }

    /// Run the switch of `plan` with the consistency model.
    pub fn switch(&mut self, plan: &Plan) -> Result<transition::Report> {
        self.settle()?;
        // Return trampolines live in rlivepatch's memory in the target.
        if self.scratch.is_none() && !self.opts.force && !plan.writes.is_empty() {
            self.borrow_for_syscalls()?;
        }
        self.unborrow()?;
        let opts = transition::Options {
            timeout: self.opts.timeout,
            force: self.opts.force,
        };
        // What follows a switch needs one thread for injected calls: one stays attached,
        // every other thread is let go at the switch (without being resumed and stopped
        // again to detach). Not the leader while other threads are let go, when the
        // process is known to get signals it ignores (see `Tracer::attach`): then a
        // thread asleep, or every thread if none is.
        let leader = self.proc.pid;
        let keep = match self.last_borrowed {
            Some(t) if t != leader => Some(vec![t]),
            _ if self.tr.threads.len() <= 1 => Some(vec![leader]),
            _ => {
                match self.tr.threads.keys().copied().find(|&t| {
                    t != leader && crate::os::process::thread_state(leader, t) == Some('S')
                }) {
                    Some(t) => Some(vec![t]),
                    None if self.tr.watches_all() => None,
                    None => Some(vec![leader]),
                }
            }
        };
        // The keeper, kept, stays stopped: nothing of the program waits for it.
        let park = self
            .record
            .keeper
            .as_ref()
            .map(|k| k.tid)
            .filter(|t| keep.as_ref().is_some_and(|k| k.contains(t)));
        let mut w = transition::World {
            tr: &mut self.tr,
            proc: &self.proc,
            objects: &self.objects,
            maps: &self.maps,
            unwinder: &mut self.unwinder,
            scratch: self.scratch,
            shadow_stack: self.proc.status.shadow_stack,
            keep,
            park,
        };
        let progress = &mut self.progress;
        let r = transition::switch(&mut w, plan, &opts, &mut |p| {
            let mut s = format!(
                "waiting for a safe moment to switch (attempt {}, {:.1}s left):",
                p.attempt,
                p.left.as_secs_f32()
            );
            for b in p.blockers {
                s.push_str("\n  ");
                s.push_str(&b.describe());
            }
            progress(&s);
        });
        if r.as_ref()
            .is_err_and(|e| e.cause == crate::error::Cause::ScratchInUse)
        {
            // Threads return through trampolines there: it stays, for `repair`.
            self.scratch = None;
            if let Some(inj) = self.inj.as_mut() {
                inj.scratch = None;
            }
        }
        r
    }

    /// Something left behind by a step that tidies up after the operation took effect
    /// (an unload, an unmap): the operation stands; the leftover is named in its report
    /// and `repair` clears it.
    pub fn left(&mut self, what: String) {
        (self.progress)(&format!(
            "warning: {what}; run `rlivepatch repair {}` to clear it",
            self.proc.pid
        ));
        self.leftovers.push(what);
    }

    /// End the operation whose result is `r`: [`Session::close`], and the result with
    /// what was left behind. A clean-up that fails after a success does not make the
    /// operation a failure (the process is as it says): its leftover is named; after a
    /// failure it is added to the error, with what is left and the way to clean it.
    pub fn conclude<T>(mut self, r: Result<T>) -> Result<Concluded<T>> {
        let pid = self.proc.pid;
        let start = self.proc.start_time;
        let mut leftovers = std::mem::take(&mut self.leftovers);
        let (closed, say, (job_control_seen, stop_handed_back)) = self.close_keeping_progress();
        let (r, closed) = match (r, closed) {
            (Ok(value), Ok(())) => {
                return Ok(Concluded {
                    value,
                    leftovers,
                    job_control_seen,
                    stop_handed_back,
                });
            }
            (Err(e), Ok(())) => return Err(e),
            (r, Err(c)) => (r, c),
        };
        // Read only when the clean-up failed: what is left depends on it.
        let proc_alive = crate::os::process::alive(pid, start);
        match (r, closed) {
            // Nothing is left in a process that is gone.
            (Ok(value), _) if !proc_alive => Ok(Concluded {
                value,
                leftovers,
                job_control_seen,
                stop_handed_back,
            }),
            (Err(e), _) if !proc_alive => Err(e),
            (Ok(value), c) => {
                let what = format!(
                    "cleaning up failed ({}){}",
                    c.message,
                    crate::livepatch::leftovers::left_in(pid, proc_alive)
                );
                say(&format!(
                    "warning: the operation is done, but {what}; run `rlivepatch repair {pid}` to clear it"
                ));
                leftovers.push(what);
                Ok(Concluded {
                    value,
                    leftovers,
                    job_control_seen,
                    stop_handed_back,
                })
            }
            (Err(e), c) => Err(crate::err!(
                Incomplete,
                "{}; and cleaning up failed: {}{}; run `rlivepatch repair {pid}`",
                e.message,
                c.message,
                crate::livepatch::leftovers::left_in(pid, proc_alive)
            )),
        }
    }

    /// The error for an operation that failed with `e` and whose undoing (`what`) failed
    /// with `undo`: what is left in the process, and `repair`.
    pub fn left_behind(&self, e: &Error, what: &str, undo: &Error) -> Error {
        let pid = self.proc.pid;
        if !self.proc.is_alive() {
            // Nothing is left in a process that is gone.
            return e.clone();
        }
        let cause = e.cause_alone();
        crate::err!(
            Incomplete,
            "{cause}; {what} failed ({}){}; run `rlivepatch repair {pid}`",
            undo.message,
            crate::livepatch::leftovers::left_in(pid, self.proc.is_alive())
        )
    }

    /// [`Session::close`], giving back where progress lines go.
    /// [`Session::close`], keeping the progress callback and whether a stop signal or a
    /// job-control stop was seen while attached (the detach included).
    fn close_keeping_progress(mut self) -> (Result<()>, ProgressFn<'a>, (bool, Option<i32>)) {
        let r = self.close_inner();
        let seen = (self.tr.job_control_seen, self.tr.stop_handed_back);
        (r, self.progress, seen)
    }

    /// Undo rlivepatch's presence: unmap its memory, give threads back, detach.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        crate::os::fault::point("close");
        // The operation is done or undone; cleaning up must finish even if rlivepatch was
        // asked to stop meanwhile.
        self.tr.finishing = true;
        let mut first: Option<Error> = self.thaw().err();
        if let Err(e) = self.close_made_memfds() {
            first.get_or_insert(e);
        }
        let kept = self
            .scratch
            .filter(|s| self.record.scratch == Some(*s) && self.record.runtime.is_some());
        if let Some(s) = kept {
            // Given back first: then no thread runs on the memory, which is marked idle
            // for the next run to adopt.
            let r = self
                .unborrow()
                .and_then(|()| crate::remote::inject::mark_idle(&self.proc, &s));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
            self.scratch = None;
        }
        if self.scratch.is_some() {
            if let Err(e) = self.borrow_for_syscalls() {
                first.get_or_insert(e);
            }
            if let Some(inj) = self.inj.as_mut() {
                // The maps are only asked where the borrowed thread's stack is: as last
                // read, unless that stack is newer than them or may have grown since (the
                // frame goes a few KiB below the stack pointer).
                let sp = inj.context().rsp.wrapping_sub(1);
                let fresh;
                let known = crate::os::process::mapping_at(&self.maps, sp)
                    .is_some_and(|m| sp - m.start >= 16 << 10);
                let maps = if known {
                    &self.maps
                } else {
                    fresh = self.proc.maps().unwrap_or_default();
                    &fresh
                };
                let r = if crate::os::fault::fails("unmap_scratch") {
                    Err(crate::err!(Failed, "munmap: Input/output error"))
                } else {
                    inj.unmap_scratch(&mut self.tr, &self.proc, maps)
                };
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.unborrow() {
            first.get_or_insert(e);
        }
        // Threads at work pause only for their own detach.
        if !self.tr.exited
            && let Err(e) = self
                .tr
                .detach_gently(Instant::now() + Duration::from_secs(10))
        {
            // Stopping them all, then detaching, is the way left; when it works, nothing
            // was left behind and the failed gentle way is no error.
            if self
                .tr
                .stop_all(Instant::now() + Duration::from_secs(10))
                .is_ok()
            {
                self.tr.detach_all();
            } else {
                first.get_or_insert(e);
            }
        }
        self.tr.detach_all();
        first.map_or(Ok(()), Err)
    }
}

/// The private memory an earlier run kept (see `Record::scratch`), when it is still
/// there and idle, with rlivepatch's own view of its notify block when the memfd can be
/// opened through `/proc/PID/map_files` (else calls stop at each system call, as on a
/// kernel without `pidfd_getfd`). A record naming memory that is gone or in use forgets
/// it: memory in use is a killed run's leftover, which `repair` clears.
fn adopt_kept_scratch(
    proc: &Process,
    maps: &[Mapping],
    record: &mut Record,
) -> (
    Option<Scratch>,
    Option<std::sync::Arc<crate::os::shared::SharedPage>>,
) {
    let Some(s) = record.scratch else {
        return (None, None);
    };
    if record.runtime.is_none() || !crate::remote::inject::scratch_is_idle(proc, maps, &s) {
        record.scratch = None;
        return (None, None);
    }
    let path = format!(
        "/proc/{}/map_files/{:x}-{:x}",
        proc.pid,
        s.rw,
        s.rw + crate::remote::inject::RW_SIZE
    );
    let notify = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()
        .and_then(|f| {
            crate::os::shared::SharedPage::map(&f.into(), crate::remote::inject::CODE_SIZE).ok()
        })
        .map(std::sync::Arc::new);
    (Some(s), notify)
}

/// The pending operation.
pub fn pending<'s>(s: &'s mut Session<'_>) -> &'s mut crate::livepatch::record::Pending {
    s.record.pending.as_mut().expect("an operation is pending")
}

/// Record that the pending operation reaches `stage`.
pub fn set_stage(s: &mut Session, stage: Stage) -> Result<()> {
    pending(s).stage = stage;
    s.save_record()
}

/// Run a callback; `Ok(None)` when the patch has none.
pub fn callback(
    s: &mut Session,
    addr: Option<u64>,
    what: &str,
    patch: &str,
) -> Result<Option<i32>> {
    let Some(a) = addr else { return Ok(None) };
    let what = format!("the {what} callback of patch {patch}");
    let rax = s.call_held(a, &[], &what)?;
    Ok(Some(rax as u32 as i32))
}

/// Refuse to start while the record says an earlier run was interrupted.
pub fn refuse_pending(s: &Session) -> Result<()> {
    if let Some(p) = &s.record.pending {
        let pid = s.proc.pid;
        bail!(
            Incomplete,
            "an earlier rlivepatch run ({} {}) on process {pid} was interrupted; run `rlivepatch repair {pid}` first",
            p.op,
            p.patch
        );
    }
    Ok(())
}
