//! Disable: switch a patch's functions back to the patch below or the original, then
//! unload it (the kernel's `klp_disable_patch`), and what finishes or undoes a disable
//! (also used by `repair`).

use crate::bail;
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::func_stack::{expected_entry, implementation_of};
use crate::livepatch::record::{AppliedPatch, Record, Stage};
use crate::livepatch::session::{Session, callback, refuse_pending, set_stage};
use crate::livepatch::states;
use crate::livepatch::transition::{self, Plan, Write};
use crate::remote::redirect::{self, JMP_LEN};

/// A patch applied later whose replacement calls this patch's function through
/// `RLIVEPATCH_FUNC_WRAP` needs it: it goes first (the kernel disables stacked patches
/// from the top, too).
fn refuse_if_wrapped(rec: &Record, idx: usize) -> Result<()> {
    let p = &rec.patches[idx];
    for q in rec.patches[idx + 1..].iter().filter(|q| !q.disabled) {
        for g in &q.funcs {
            let Some(w) = &g.wrap else { continue };
            if let Some(f) = p.funcs.iter().find(|f| f.new_addr == w.target) {
                bail!(
                    Mismatch,
                    "patch {}'s {} calls {} of patch {} as the code it replaces (RLIVEPATCH_FUNC_WRAP); disable {} first, or apply an atomic replace",
                    q.name,
                    g.new_name,
                    f.new_name,
                    p.name,
                    q.name
                );
            }
        }
    }
    Ok(())
}

/// Disable the patch `name` in an attached process whose earlier runs' leftovers were
/// repaired. Returns whether it was unloaded, and the switch.
pub fn run(s: &mut Session, name: &str) -> Result<(bool, transition::Report)> {
    let pid = s.proc.pid;
    refuse_pending(s)?;
    // By its name, or the file it was applied from.
    let name = match s.record.enabled_named(name) {
        Some(p) => p.name.clone(),
        None => name.to_string(),
    };
    let name = name.as_str();
    let idx = s
        .record
        .patches
        .iter()
        .position(|p| p.name == name && !p.disabled);
    let Some(idx) = idx else {
        if s.record.patches.iter().any(|p| p.name == name) {
            bail!(
                Mismatch,
                "patch {name} is already disabled; it was forced, so its code stays loaded in process {pid}"
            );
        }
        if let Some(like) = s.record.name_like(name) {
            bail!(
                Mismatch,
                "no patch named {name} is applied to process {pid}; did you mean {like}? (names are case-sensitive)"
            );
        }
        let names: Vec<&str> = s.record.patches.iter().map(|p| p.name.as_str()).collect();
        bail!(
            Mismatch,
            "no patch named {name} is applied to process {pid} (applied: {}); see `rlivepatch list {pid}`",
            crate::fmt::names_or_none(&names)
        );
    };
    // Copies of objects that came since are patched too: the record learns them while
    // the hook waits, until the table says what stays active.
    if crate::livepatch::coming::in_use(&s.record) {
        crate::livepatch::coming::freeze(s)?;
        crate::livepatch::coming::sync(s)?;
    }
    crate::livepatch::coming::forget_unloaded(s)?;
    let p = s.record.patches[idx].clone();
    refuse_if_wrapped(&s.record, idx)?;
    let mut plan = plan(&s.record, &p);
    let needed = s
        .record
        .patches
        .iter()
        .any(|q| q.name != p.name && !q.disabled && !q.coming.is_empty());
    let unhook = crate::livepatch::coming::unhook(s, needed);
    if let Some(w) = unhook.clone() {
        plan.entries.push((w.addr, JMP_LEN as u64));
        plan.writes.push(w);
    }
    for w in &plan.writes {
        let now = crate::elf::objects::read_code(&s.proc, w.addr, JMP_LEN)?;
        if now != w.old {
            bail!(
                Mismatch,
                "the entry at {:#x} holds {} instead of rlivepatch's jump {}; something else changed it: remove that first",
                w.addr,
                hex(&now),
                hex(&w.old)
            );
        }
    }
    // The unload after the switch needs a thread at a safe point for the loader: one is
    // found first, so that a process without one is left as it is, not half-done.
    s.borrow()?;
    let mut pending = crate::livepatch::record::Pending::new("disable", name);
    pending.stage = Stage::PreUnpatching;
    pending.writes = plan
        .writes
        .iter()
        .map(|w| (w.addr, hex(&w.old), hex(&w.new)))
        .collect();
    pending.scratch = s.scratch;
    s.record.pending = Some(pending);
    s.save_record()?;
    crate::os::fault::point("disable:pending");
    // pre_unpatch, the switch, post_unpatch. A switch that fails is reversed: the patch
    // stays, and post_patch runs (the kernel's reversed transition).
    let prev = states::installed(&s.record, Some(idx));
    s.set_states(&p.state_addrs, &prev)?;
    callback(s, p.callbacks[2], "pre_unpatch", &p.name)?;
    crate::livepatch::coming::object_callbacks(s, &p, 2)?;
    crate::os::fault::point("disable:pre_unpatched");
    set_stage(s, Stage::Switching)?;
    let report = match s.switch(&plan) {
        Ok(r) => r,
        Err(e) => {
            s.tr.finishing = true;
            if let Err(e2) = unwind(s) {
                return Err(s.left_behind(&e, "undoing the disable", &e2));
            }
            return Err(e);
        }
    };
    s.tr.finishing = true;
    if unhook.is_some() {
        s.record.hook = None;
    }
    crate::os::fault::point("disable:switched");
    // The patch is disabled now: what fails from here is left for `repair`, named in the
    // report, and does not make the disable a failure.
    let unloaded = finish(s, true).unwrap_or_else(|e| {
        s.left(format!(
            "finishing the disable after its switch failed ({}), so the record still says it is under way",
            e.message
        ));
        false
    });
    Ok((unloaded, report))
}

/// The switch that takes `p` away: each function whose newest implementation is `p`'s
/// falls back to the one below it, or to the original.
pub fn plan(rec: &Record, p: &AppliedPatch) -> Plan {
    let mut plan = Plan::default();
    for f in &p.funcs {
        // The patch's code goes away, so a thread still in it blocks, whether or not a
        // newer patch replaced the function since.
        plan.changed.extend(implementation_of(p, f));
        let stack = rec.stack_of(f.old_addr);
        let Some((top, _)) = stack.last() else {
            continue;
        };
        if top.name != p.name {
            continue;
        }
        let below = stack.len().checked_sub(2).map(|i| stack[i].1);
        let new = match below {
            Some(b) => redirect::jmp(f.old_addr, b.target()).unwrap().to_vec(),
            None => f.orig.clone(),
        };
        plan.entries.push((f.old_addr, JMP_LEN as u64));
        plan.writes.push(Write {
            addr: f.old_addr,
            old: expected_entry(rec, f.old_addr, &f.orig),
            new,
        });
    }
    // With the last patch the runtime may be unloaded: a thread still in the thunk, back
    // from a new function, must have left it.
    let last = rec.patches.iter().all(|q| q.name == p.name);
    if let (true, Some(rt), Ok(l)) = (last, &rec.runtime, crate::remote::runtime::layout()) {
        plan.changed.push(transition::Changed {
            start: rt.base + l.preserve,
            end: rt.base + l.preserve_end,
            name: crate::livepatch::transition::PRESERVING_PATH.to_string(),
        });
    }
    plan
}

/// Finish a disable whose switch is done: post_unpatch (when `run_post_unpatch`), the
/// record, the islands, and the patch unloaded (unless it was forced). Returns whether it
/// was unloaded.
pub fn finish(s: &mut Session, run_post_unpatch: bool) -> Result<bool> {
    let name = s
        .record
        .pending
        .as_ref()
        .map(|p| p.patch.clone())
        .unwrap_or_default();
    let Some(idx) = s
        .record
        .patches
        .iter()
        .position(|p| p.name == name && !p.disabled)
    else {
        s.record.pending = None;
        return s.save_record().map(|()| false);
    };
    let p = s.record.patches[idx].clone();
    if run_post_unpatch {
        set_stage(s, Stage::PostUnpatching)?;
        let prev = states::installed(&s.record, Some(idx));
        s.set_states(&p.state_addrs, &prev)?;
        callback(s, p.callbacks[3], "post_unpatch", &p.name)?;
        crate::livepatch::coming::object_callbacks(s, &p, 3)?;
        s.set_states(&[], &[])?;
    }
    let unload = !p.forced;
    let empty_pages = s.record.free_slots(&p.slots(unload));
    if unload {
        s.record.patches.remove(idx);
    } else {
        s.record.patches[idx].disabled = true;
    }
    s.record.pending = None;
    s.save_record()?;
    crate::os::fault::point("disable:committed");
    // The hook forgets the patch before its code goes; while it may still run it, the
    // code stays loaded.
    if let Err(e) = crate::livepatch::coming::settle(s) {
        s.left(format!(
            "the hook for objects that come was not told that {name} is gone ({}), so its code stays loaded",
            e.message
        ));
        return Ok(false);
    }
    crate::ops::apply::unmap_pages(s, &empty_pages);
    if unload {
        if let Err(e) = s.unload(p.handle, p.fd) {
            s.left(format!(
                "patch {name} is disabled but its code is still loaded ({})",
                e.message
            ));
            return Ok(false);
        }
        if let Err(e) = s.unload_runtime_if_idle().and_then(|()| s.save_record()) {
            s.left(format!(
                "the runtime is out of use but still loaded ({})",
                e.message
            ));
        }
    } else {
        s.progress(&format!(
            "patch {name} was forced: its functions are restored, but its code stays loaded because a thread may still be inside it"
        ));
    }
    Ok(unload)
}

/// Undo a disable that did not switch: the patch stays; if pre_unpatch ran, post_patch
/// runs (the kernel's reversed transition).
pub fn unwind(s: &mut Session) -> Result<()> {
    let Some(pend) = s.record.pending.clone() else {
        return Ok(());
    };
    if let Some(idx) = s
        .record
        .patches
        .iter()
        .position(|p| p.name == pend.patch && !p.disabled)
    {
        let p = s.record.patches[idx].clone();
        let prev = states::installed(&s.record, Some(idx));
        s.set_states(&p.state_addrs, &prev)?;
        if let Err(e) = callback(s, p.callbacks[1], "post_patch", &p.name) {
            s.progress(&format!("warning: {}", e.message));
        }
        s.set_states(&[], &[])?;
    }
    s.record.pending = None;
    s.save_record()
}
