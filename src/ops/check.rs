//! Check: apply's dry run. Everything apply resolves is resolved, the threads are
//! stopped once, and the report says whether the switch would be safe now.

use super::prepare::{ifuncs, prepare};
use crate::bail;
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::func_stack::{current_impl, expected_entry};
use crate::livepatch::session::Session;
use crate::livepatch::session::{Options, ProgressFn};
use crate::livepatch::transition::{self, Plan};
use crate::patch::Patch;
use crate::remote::redirect::JMP_LEN;
use crate::resolve::funcs::Resolved;
use std::path::Path;
use std::time::{Duration, Instant};

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
    let patch = Patch::load_with(path, &opts.acceptance, progress)?;
    // What apply resolves before it touches the process, check resolves too.
    let p = prepare(pid, &patch, opts, progress)?;
    let (mut contracts, mut resolved, coming) = (p.contracts, p.resolved, p.coming);
    let mut s = Session::attach_with(p.proc, opts, progress, Some(p.objects))?;
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
        s.settle()?;
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
            park: None,
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
    s.conclude(r).map(|c| c.value)
}
