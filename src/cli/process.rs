//! The commands that work on running processes: apply, disable, check, list, repair,
//! symbols.

use super::args::{ApplyArgs, CheckArgs, DisableArgs, OneOrFleet, SymbolsArgs};
use super::out;
use super::select::{run_fleet, targets};
use crate::error::{ErrorKind, Result};
use crate::fleet::Op;
use crate::ops::{self, Options};
use std::fmt::Write as _;
use std::path::PathBuf;

/// `rlivepatch apply`.
pub fn apply(a: ApplyArgs) -> Result<u8> {
    let (pid, patch) = targets(&a.fleet, a.pid, a.patch, &a.more, "patch")?;
    let patch = PathBuf::from(patch);
    let opts = Options {
        timeout: a.timeout,
        force: a.force,
        debug_dirs: a.debug_dir,
        library_path: a.library_path,
        acceptance: a.trust.acceptance(),
        ..Options::default()
    };
    let Some(pid) = pid else {
        return run_fleet(&Op::Apply(patch), &a.fleet, opts, a.json);
    };
    let r = ops::apply(pid, &patch, &opts, &mut out::progress)?;
    if a.json {
        out::json(&r);
        return Ok(0);
    }
    let mut t = format!(
        "applied patch {} to process {} in {:.1} ms\n",
        r.patch, r.pid, r.elapsed_ms
    );
    for f in &r.functions {
        let _ = writeln!(t, "  {}", f.line());
    }
    for p in &r.pending {
        let _ = writeln!(t, "  {}", p.line());
    }
    if let Some(b) = ops::report::BindingView::summary(&r.bindings) {
        let _ = writeln!(t, "  {b}");
    }
    if !r.replaced.is_empty() {
        let _ = writeln!(t, "  replaced: {}", r.replaced.join(", "));
    }
    out::text(&t);
    Ok(0)
}

/// `rlivepatch disable`.
pub fn disable(a: DisableArgs) -> Result<u8> {
    let (pid, name) = targets(&a.fleet, a.pid, a.name, &a.more, "patch name")?;
    let opts = Options {
        timeout: a.timeout,
        force: a.force,
        ..Options::default()
    };
    let Some(pid) = pid else {
        return run_fleet(&Op::Disable(name), &a.fleet, opts, a.json);
    };
    let r = ops::disable(pid, &name, &opts, &mut out::progress)?;
    if a.json {
        out::json(&r);
    } else if r.unloaded {
        out::text(&format!(
            "disabled and unloaded patch {} from process {} in {:.1} ms\n",
            r.patch, r.pid, r.elapsed_ms
        ));
    } else {
        out::text(&format!(
            "disabled patch {} in process {}; its code stays loaded (forced patch)\n",
            r.patch, r.pid
        ));
    }
    Ok(0)
}

/// `rlivepatch check`: exit 0 when the switch would be safe now, 6 when a thread blocks.
pub fn check(a: CheckArgs) -> Result<u8> {
    let (pid, patch) = targets(&a.fleet, a.pid, a.patch, &[], "patch")?;
    let patch = PathBuf::from(patch);
    let opts = Options {
        debug_dirs: a.debug_dir,
        library_path: a.library_path,
        acceptance: a.trust.acceptance(),
        ..Options::default()
    };
    let Some(pid) = pid else {
        return run_fleet(&Op::Check(patch), &a.fleet, opts, a.json);
    };
    let r = ops::check(pid, &patch, &opts, &mut out::progress)?;
    if a.json {
        out::json(&r);
    } else {
        let mut t = if r.safe {
            format!(
                "patch {}: switching process {} now would be safe ({} checked)\n",
                r.patch,
                r.pid,
                crate::fmt::plural(r.threads, "thread", "threads")
            )
        } else {
            format!(
                "patch {}: switching process {} now would NOT be safe:\n",
                r.patch, r.pid
            )
        };
        for b in &r.blockers {
            let _ = writeln!(t, "  {}", b.describe());
        }
        for p in &r.pending {
            let _ = writeln!(t, "  {}", p.line());
        }
        out::text(&t);
    }
    Ok(if r.safe {
        0
    } else {
        ErrorKind::Busy.exit_code() as u8
    })
}

/// `rlivepatch list`.
pub fn list(a: OneOrFleet) -> Result<u8> {
    let pid = match a.single(Op::List)? {
        Ok(pid) => pid,
        Err(code) => return Ok(code),
    };
    let view = ops::list::list(pid)?;
    if a.json {
        out::json(&view);
    } else {
        out::text(&view.text());
    }
    Ok(0)
}

/// `rlivepatch repair`.
pub fn repair(a: OneOrFleet) -> Result<u8> {
    let pid = match a.single(Op::Repair)? {
        Ok(pid) => pid,
        Err(code) => return Ok(code),
    };
    let actions = ops::repair(pid, &Options::default(), &mut out::progress)?;
    if a.json {
        out::json(&serde_json::json!({ "pid": pid, "actions": actions }));
    } else if actions.is_empty() {
        out::text(&format!("process {pid}: nothing to repair\n"));
    } else {
        out::text(&(actions.join("\n") + "\n"));
    }
    Ok(0)
}

/// `rlivepatch symbols`.
pub fn symbols(a: SymbolsArgs) -> Result<u8> {
    let views = crate::lookup::symbols(
        a.pid,
        a.pattern.as_deref().unwrap_or(""),
        a.object.as_deref(),
        &a.debug_dir,
    )?;
    if a.json {
        out::json(&views);
    } else {
        out::text(&crate::lookup::text(&views));
    }
    Ok(0)
}
