//! The operations: apply, disable, check, repair. Each runs in a `Session`: the process
//! attached (under the lock against a second rlivepatch), its record read, a thread
//! borrowed for injected calls when one is needed; and each operation either completes or
//! undoes every step it made, so that a failure leaves the target as it was.

pub mod apply;
pub mod disable;
pub mod list;
pub mod repair;
pub mod report;

use crate::elf::objects::Objects;
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::func_stack::{current_impl, expected_entry};
use crate::livepatch::session::Session;
use crate::livepatch::transition::{self, Plan};
use crate::os::process::Process;
use crate::patch::Patch;
use crate::remote::inject::Libc;
use crate::remote::redirect::JMP_LEN;
use crate::resolve::funcs::{Resolved, resolve_ifuncs};
use crate::resolve::symbols::resolve_symbols;
use crate::resolve::target::preflight;
use crate::{bail, err};
use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::livepatch::session::{Options, ProgressFn};
pub use crate::livepatch::store::read_record;

/// What `apply` did.
#[derive(Debug, serde::Serialize)]
pub struct ApplyReport {
    /// Process id.
    pub pid: i32,
    /// Patch name.
    pub patch: String,
    /// Functions redirected.
    pub functions: Vec<crate::ops::report::FuncView>,
    /// Objects the process has not loaded: patched when they come.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<crate::resolve::coming::PendingView>,
    /// Patches it replaced (atomic replace).
    pub replaced: Vec<String>,
    /// The switch.
    pub switch: transition::Report,
    /// Wall time of the whole operation in milliseconds.
    pub elapsed_ms: f64,
    /// Job control stopped the process while rlivepatch worked (the signal); it stays
    /// stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Child processes running the same program, which this apply did not patch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<i32>,
}

/// Apply the patch file at `path` to process `pid`.
pub fn apply(pid: i32, path: &Path, opts: &Options, progress: ProgressFn) -> Result<ApplyReport> {
    let patch = Patch::load(path)?;
    apply_patch(pid, &patch, opts, progress)
}

/// Apply a loaded patch to process `pid` (a fleet run loads the patch once). A run that
/// a library loaded or unloaded meanwhile stopped with nothing changed starts over, a few
/// times, from the objects of that moment.
pub fn apply_patch(
    pid: i32,
    patch: &Patch,
    opts: &Options,
    progress: ProgressFn,
) -> Result<ApplyReport> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match apply_once(pid, patch, opts, progress) {
            Err(e) if attempt < ATTEMPTS && e.cause == crate::error::Cause::Churn => {
                progress(&format!(
                    "process {pid} loaded or unloaded a library under the apply, which changed nothing; starting over (attempt {} of {ATTEMPTS})",
                    attempt + 1
                ));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn apply_once(
    pid: i32,
    patch: &Patch,
    opts: &Options,
    progress: ProgressFn,
) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let proc = Process::open(pid)?;
    preflight(&proc)?;
    let maps = proc.maps()?;
    let objects = Objects::new(&proc, &maps, &opts.debug_dirs)?;
    crate::resolve::target::check_build_ids(patch, &objects)?;
    crate::resolve::linkage::check(patch, &objects)?;
    let mut contracts = crate::contract::Contracts::new();
    let coming = crate::resolve::coming::resolve(
        patch,
        &objects,
        pid,
        &opts.library_path,
        &opts.debug_dirs,
        &mut contracts,
    )?;
    let resolved = crate::resolve::coming::loaded(patch, &objects, &mut contracts, &coming)?;
    tell_contracts(&resolved, progress);
    let symbols = resolve_symbols(patch, &objects)?;
    crate::resolve::symbols::refuse_self_calls(patch, &resolved, &symbols)?;
    let places = crate::remote::relocate::resolve(patch, &objects)?;
    let libc = Libc::find(pid, &objects)?;
    crate::os::fault::trace("resolved");
    let mut s = Session::attach_with(proc, opts, progress, Some(objects))?;
    s.set_libc(libc);
    crate::os::fault::point("apply:attached");
    let mut resolved = resolved;
    let r = ifuncs(&mut s, patch, &mut contracts, &mut resolved)
        .and_then(|()| crate::ops::repair::repair_if_needed(&mut s))
        .and_then(|()| {
            crate::ops::apply::run(&mut s, patch, &resolved, &coming, &symbols, &places)
        });
    let (functions, replaced, report) = s.conclude(r).map_err(|e| continued(e, pid))?;
    let children = crate::os::process::same_program_children(pid);
    if let Some(n) = crate::os::process::children_note(pid, &children, "still run the old code") {
        progress(&n);
    }
    Ok(ApplyReport {
        pid,
        patch: patch.name.clone(),
        pending: crate::resolve::coming::PendingView::of(&coming),
        functions,
        replaced,
        switch: report,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        stopped_by: stopped_note(pid, progress),
        children,
    })
}

/// What `disable` did.
#[derive(Debug, serde::Serialize)]
pub struct DisableReport {
    /// Process id.
    pub pid: i32,
    /// Patch name.
    pub patch: String,
    /// The patch's code was unloaded (false for a forced patch).
    pub unloaded: bool,
    /// The switch.
    pub switch: transition::Report,
    /// Wall time in milliseconds.
    pub elapsed_ms: f64,
    /// Job control stopped the process while rlivepatch worked (the signal); it stays
    /// stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
}

/// What callers of each function rely on and what rlivepatch does or only warns of, on
/// stderr, before anything is touched.
fn tell_contracts(resolved: &[Resolved], progress: ProgressFn) {
    for r in resolved {
        for n in &r.notes {
            progress(n);
        }
    }
}

/// After an operation that completed: if job control stopped the process meanwhile (it
/// is stopped, or a stop signal waits for it), say so; returns the signal's name.
fn stopped_note(pid: i32, progress: ProgressFn) -> Option<String> {
    let sig = crate::os::process::job_stop(pid)?;
    progress(&format!(
        "process {pid} was stopped by {sig} (job control) while rlivepatch worked; it stays stopped, as job control asked: `kill -CONT {pid}` resumes it"
    ));
    Some(sig)
}

/// An operation undone because job control stopped the process: if a `SIGCONT` came
/// meanwhile, the process runs again and the message says so.
fn continued(e: crate::error::Error, pid: i32) -> crate::error::Error {
    if e.kind != crate::error::ErrorKind::Stopped || crate::os::process::job_stop(pid).is_some() {
        return e;
    }
    err!(
        Stopped,
        "process {pid} was stopped by job control and continued while rlivepatch worked; the current step was undone; retry"
    )
}

/// Disable the patch `name` in process `pid`: its functions fall back to the next patch
/// below or to the original, then it is unloaded.
pub fn disable(
    pid: i32,
    name: &str,
    opts: &Options,
    progress: ProgressFn,
) -> Result<DisableReport> {
    let t0 = Instant::now();
    let proc = Process::open(pid)?;
    if let Ok(maps) = proc.maps()
        && crate::livepatch::store::find_mapping(&maps).is_none()
    {
        bail!(Mismatch, "no patch is applied to process {pid}");
    }
    let mut s = Session::attach(proc, opts, progress)?;
    let r = crate::ops::repair::repair_if_needed(&mut s)
        .and_then(|()| crate::ops::disable::run(&mut s, name));
    let (unloaded, report) = s.conclude(r).map_err(|e| continued(e, pid))?;
    Ok(DisableReport {
        pid,
        patch: name.to_string(),
        unloaded,
        switch: report,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        stopped_by: stopped_note(pid, progress),
    })
}

/// Repair what an interrupted run left in process `pid`.
pub fn repair(pid: i32, opts: &Options, progress: ProgressFn) -> Result<Vec<String>> {
    let proc = Process::open(pid)?;
    let mut s = Session::attach(proc, opts, progress)?;
    // A repair brings the process to a consistent state: it is not interrupted midway.
    s.tr.finishing = true;
    let r = crate::ops::repair::repair(&mut s);
    s.conclude(r)
}

/// What `check` found.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    /// Process id.
    pub pid: i32,
    /// Patch name.
    pub patch: String,
    /// The switch would be safe now.
    pub safe: bool,
    /// The functions, resolved.
    pub functions: Vec<Resolved>,
    /// Objects the process has not loaded: the patch would wait for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<crate::resolve::coming::PendingView>,
    /// Who blocks, and where.
    pub blockers: Vec<transition::Blocker>,
    /// Threads checked.
    pub threads: usize,
}

/// Dry run of `apply`: resolve everything, stop the threads once, and report whether the
/// switch would be safe now. Nothing is loaded or written.
pub fn check(pid: i32, path: &Path, opts: &Options, progress: ProgressFn) -> Result<CheckReport> {
    let patch = Patch::load(path)?;
    let proc = Process::open(pid)?;
    preflight(&proc)?;
    let maps = proc.maps()?;
    let objects = Objects::new(&proc, &maps, &opts.debug_dirs)?;
    crate::resolve::target::check_build_ids(&patch, &objects)?;
    crate::resolve::linkage::check(&patch, &objects)?;
    let mut contracts = crate::contract::Contracts::new();
    let coming = crate::resolve::coming::resolve(
        &patch,
        &objects,
        pid,
        &opts.library_path,
        &opts.debug_dirs,
        &mut contracts,
    )?;
    let mut resolved = crate::resolve::coming::loaded(&patch, &objects, &mut contracts, &coming)?;
    tell_contracts(&resolved, progress);
    // What apply resolves before it touches the process, check resolves too.
    let symbols = resolve_symbols(&patch, &objects)?;
    crate::resolve::symbols::refuse_self_calls(&patch, &resolved, &symbols)?;
    crate::remote::relocate::resolve(&patch, &objects)?;
    let mut s = Session::attach_with(proc, opts, progress, Some(objects))?;
    let r = (|| -> Result<CheckReport> {
        ifuncs(&mut s, &patch, &mut contracts, &mut resolved)?;
        s.unborrow()?;
        if s.record
            .patches
            .iter()
            .any(|p| p.name == patch.name && !p.disabled)
        {
            bail!(
                Mismatch,
                "a patch named {} is already applied to process {pid}",
                patch.name
            );
        }
        crate::livepatch::states::check(&s.record, &patch)?;
        let mut plan = Plan::default();
        for r in &resolved {
            let now = s.proc.read(r.addr, JMP_LEN)?;
            let expected = expected_entry(&s.record, r.addr, &r.orig);
            if now != expected {
                bail!(
                    Mismatch,
                    "the entry of {} at {:#x} holds {} (expected {}); something else owns it",
                    r.symbol,
                    r.addr,
                    hex(&now),
                    hex(&expected)
                );
            }
            let f = crate::livepatch::record::AppliedFunc::redirected(r, "", 0, 0);
            plan.changed.extend(current_impl(&s.record, &f));
            plan.entries.push((r.addr, JMP_LEN as u64));
        }
        s.tr.stop_all(Instant::now() + Duration::from_secs(10))?;
        let mut w = transition::World {
            tr: &mut s.tr,
            proc: &s.proc,
            objects: &s.objects,
            maps: &s.maps,
            unwinder: &mut s.unwinder,
            scratch: None,
            shadow_stack: false,
            keep: None,
        };
        let blockers = transition::check_all(&mut w, &plan, false)?;
        Ok(CheckReport {
            pid,
            patch: patch.name.clone(),
            pending: crate::resolve::coming::PendingView::of(&coming),
            safe: blockers.is_empty(),
            functions: resolved.clone(),
            threads: s.tr.threads.len(),
            blockers,
        })
    })();
    s.conclude(r)
}

/// Resolve the IFUNCs among `resolved`: each resolver is called in the process, on the
/// borrowed thread, and the implementation it returns is what gets patched.
fn ifuncs(
    s: &mut Session,
    patch: &Patch,
    contracts: &mut crate::contract::Contracts,
    resolved: &mut Vec<Resolved>,
) -> Result<()> {
    let mut called = Vec::with_capacity(resolved.len());
    for r in resolved.iter() {
        called.push(match r.resolver {
            Some(a) => Some(s.call(a, &[], &format!("the IFUNC resolver of {}", r.symbol))?),
            None => None,
        });
    }
    resolve_ifuncs(&s.objects, patch, contracts, resolved, &called)
}
