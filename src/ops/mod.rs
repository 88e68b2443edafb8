//! The operations: apply, disable, check, repair, list. Each runs in a `Session`: the process
//! attached (under the lock against a second rlivepatch), its record read, a thread
//! borrowed for injected calls when one is needed; and each operation either completes or
//! undoes every step it made, so that a failure leaves the target as it was.

pub mod apply;
pub mod audit;
pub mod check;
pub mod disable;
pub mod list;
pub mod prepare;
pub mod repair;
pub mod report;

use crate::error::Result;
use crate::livepatch::session::Session;
use crate::livepatch::transition::{self};
use crate::os::process::Process;
use crate::patch::Patch;
use crate::remote::inject::Libc;
use crate::{bail, err};
use std::path::Path;
use std::time::Instant;

pub use crate::livepatch::session::{Options, ProgressFn};
pub use crate::livepatch::store::read_record;
pub use check::{CheckReport, check};

/// What `apply` did.
#[derive(Debug, serde::Serialize)]
pub struct ApplyReport {
    /// Process id.
    pub pid: i32,
    /// Patch name.
    pub patch: String,
    /// Functions redirected.
    pub functions: Vec<crate::ops::report::FuncView>,
    /// How each data access of a generated patch reaches the process's data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<crate::ops::report::BindingView>,
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
    /// What tidying up after the switch left behind (the patch is applied); `repair`
    /// clears it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
    /// Child processes running the same program, which this apply did not patch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<i32>,
    /// The notes and warnings printed on stderr during the apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Apply the patch file at `path` to process `pid`.
pub fn apply(pid: i32, path: &Path, opts: &Options, progress: ProgressFn) -> Result<ApplyReport> {
    let patch = Patch::load_with(path, &opts.acceptance, progress)?;
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
    // The notes and warnings printed are in the report too (JSON readers see them).
    let mut notes: Vec<String> = Vec::new();
    let mut say = |l: &str| {
        if l.starts_with("note: ") || l.starts_with("warning: ") {
            // Once per run, though an apply that starts over resolves again.
            if notes.iter().any(|n| n == l) {
                return;
            }
            notes.push(l.to_string());
        }
        progress(l)
    };
    let r = loop {
        match apply_once(pid, patch, opts, &mut say) {
            Err(e) if attempt < ATTEMPTS && e.cause == crate::error::Cause::Churn => {
                say(&format!(
                    "process {pid} loaded or unloaded a library under the apply, which changed nothing; starting over (attempt {} of {ATTEMPTS})",
                    attempt + 1
                ));
                attempt += 1;
            }
            r => break r,
        }
    };
    let op = if opts.force { "apply --force" } else { "apply" };
    let op = match opts.origin {
        "" => op.to_string(),
        o => format!("{o} {op}"),
    };
    audit::record(
        &op,
        pid,
        Some(audit::Audited {
            name: &patch.name,
            sha256: patch.sha256(),
            signer: patch.signer.as_deref(),
        }),
        &outcome(&r),
    );
    r.map(|mut rep| {
        rep.notes = notes;
        rep
    })
}

/// An operation's outcome for the audit line.
fn outcome<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}: {}", e.kind, e.message),
    }
}

fn apply_once(
    pid: i32,
    patch: &Patch,
    opts: &Options,
    progress: ProgressFn,
) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let mut p = prepare::prepare(pid, patch, opts, progress)?;
    let libc = Libc::find(pid, &p.objects)?;
    crate::os::fault::trace("resolved");
    let mut s = Session::attach_with(p.proc, opts, progress, Some(p.objects))?;
    s.set_libc(libc);
    crate::os::fault::point("apply:attached");
    let coming = p.coming;
    let r = prepare::ifuncs(&mut s, patch, &mut p.contracts, &mut p.resolved)
        .and_then(|()| crate::ops::repair::repair_if_needed(&mut s))
        .and_then(|()| {
            crate::ops::apply::run(&mut s, patch, &p.resolved, &coming, &p.symbols, &p.places)
        });
    let done = s.conclude(r).map_err(|e| continued(e, pid))?;
    let (functions, replaced, report, bindings) = done.value;
    let children = if opts.note_children {
        crate::os::process::same_program_children(pid)
    } else {
        Vec::new()
    };
    if let Some(n) = crate::os::process::children_note(pid, &children, "still run the old code") {
        progress(&n);
    }
    Ok(ApplyReport {
        pid,
        patch: patch.name.clone(),
        pending: crate::resolve::coming::PendingView::of(&coming),
        functions,
        bindings,
        replaced,
        switch: report,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        stopped_by: stopped_note(
            pid,
            (done.job_control_seen, done.stop_handed_back),
            progress,
        ),
        children,
        notes: Vec::new(),
        leftovers: done.leftovers,
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
    /// What this run could not clean up after the patch was disabled (each a sentence
    /// naming the thing and how to clear it); empty when nothing was left.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
}

/// After an operation that completed: if job control stopped the process meanwhile (it
/// is stopped, or a stop signal waits for it), say so; returns the signal's name.
fn stopped_note(
    pid: i32,
    (seen, handed_back): (bool, Option<i32>),
    progress: ProgressFn,
) -> Option<String> {
    let sig = crate::os::process::job_stop(pid, seen)
        .or_else(|| crate::os::process::stop_to_come(pid, handed_back?))?;
    progress(&format!(
        "process {pid} was stopped by {sig} (job control) while rlivepatch worked; it stays stopped, as job control asked: `kill -CONT {pid}` resumes it"
    ));
    Some(sig)
}

/// An operation undone because job control stopped the process: if a `SIGCONT` came
/// meanwhile, the process runs again and the message says so.
fn continued(e: crate::error::Error, pid: i32) -> crate::error::Error {
    if e.kind != crate::error::ErrorKind::Stopped
        || crate::os::process::job_stop(pid, true).is_some()
    {
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
    let r = Process::open(pid).and_then(|proc| {
        if let Ok(maps) = proc.maps()
            && crate::livepatch::store::find_mapping(&maps).is_none()
        {
            bail!(Mismatch, "no patch is applied to process {pid}");
        }
        disable_unaudited(proc, name, opts, progress, t0)
    });
    audited_disable(pid, name, r)
}

/// [`disable`] of a process opened and found holding a record already (a fleet run reads
/// the record to know whether the patch is there): not opened and read again.
pub fn disable_opened(
    proc: Process,
    name: &str,
    opts: &Options,
    progress: ProgressFn,
) -> Result<DisableReport> {
    let pid = proc.pid;
    let r = disable_unaudited(proc, name, opts, progress, Instant::now());
    audited_disable(pid, name, r)
}

fn audited_disable(pid: i32, name: &str, r: Result<DisableReport>) -> Result<DisableReport> {
    let o = outcome(&r);
    let named = r.as_ref().map_or(name, |d| d.patch.as_str());
    audit::record("disable", pid, None, &format!("patch {named}: {o}"));
    r
}

fn disable_unaudited(
    proc: Process,
    name: &str,
    opts: &Options,
    progress: ProgressFn,
    t0: Instant,
) -> Result<DisableReport> {
    let pid = proc.pid;
    crate::os::fault::trace("disable:opened");
    let mut s = Session::attach(proc, opts, progress)?;
    crate::os::fault::trace("disable:attached");
    let r = crate::ops::repair::repair_if_needed(&mut s)
        .and_then(|()| crate::ops::disable::run(&mut s, name));
    let done = s.conclude(r).map_err(|e| continued(e, pid))?;
    let (unloaded, report) = done.value;
    Ok(DisableReport {
        pid,
        patch: name.to_string(),
        unloaded,
        switch: report,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        stopped_by: stopped_note(
            pid,
            (done.job_control_seen, done.stop_handed_back),
            progress,
        ),
        leftovers: done.leftovers,
    })
}

/// Repair what an interrupted run left in process `pid`.
pub fn repair(pid: i32, opts: &Options, progress: ProgressFn) -> Result<Vec<String>> {
    let proc = Process::open(pid)?;
    let mut s = Session::attach(proc, opts, progress)?;
    // A repair brings the process to a consistent state: it is not interrupted midway.
    s.tr.finishing = true;
    let r = crate::ops::repair::repair(&mut s);
    let r = s.conclude(r).map(|done| {
        let mut actions = done.value;
        actions.extend(done.leftovers.into_iter().map(|l| format!("left: {l}")));
        actions
    });
    // Only a repair that changed something is a change to the process.
    if !r.as_ref().is_ok_and(|a| a.is_empty()) {
        audit::record("repair", pid, None, &outcome(&r));
    }
    r
}
