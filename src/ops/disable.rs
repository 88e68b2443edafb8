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

/// A wrapper of a patch applied later (`RLIVEPATCH_FUNC_WRAP`) that calls a function
/// of the patch being disabled as the code it replaces, and what its `orig` pointer gets
/// in the same switch: what lies below that patch for the function (the kernel disables
/// patches in any order; the wrapper then calls what is left).
pub struct Rewire {
    /// The upper patch and its function, by index in the record.
    pub upper: (usize, usize),
    /// The wrapper's pointer.
    pub slot: u64,
    /// What it holds now (the disabled patch's function) and what it gets.
    pub old: u64,
    /// What it gets.
    pub new: u64,
    /// The disabled patch's trampoline into the original, which the wrapper takes over.
    pub trampoline: Option<(u64, Vec<(u32, u32)>)>,
}

/// The wrappers above `rec.patches[idx]` that call into it, each with its new target,
/// or (`Err`) the original function a trampoline must be made for first (its entry and
/// symbol): nothing made one, since the patch replaces it without calling it.
fn rewires_of(rec: &Record, idx: usize) -> Vec<std::result::Result<Rewire, (u64, String)>> {
    let p = &rec.patches[idx];
    let made = rec.pending.iter().flat_map(|x| &x.trampolines);
    let mut out = Vec::new();
    for (qi, q) in rec.patches.iter().enumerate().skip(idx + 1) {
        if q.disabled {
            continue;
        }
        for (gi, g) in q.funcs.iter().enumerate() {
            let Some(w) = &g.wrap else { continue };
            let Some(f) = p.funcs.iter().find(|f| f.new_addr == w.target) else {
                continue;
            };
            let stack = rec.stack_of(f.old_addr);
            let below = stack
                .iter()
                .position(|(s, _)| s.name == p.name)
                .and_then(|i| i.checked_sub(1))
                .map(|i| stack[i].1);
            let (new, trampoline) = match (below, &f.wrap) {
                (Some(b), _) => (b.new_addr, None),
                (None, Some(fw)) if fw.trampoline.is_some() => {
                    (fw.target, fw.trampoline.map(|t| (t, fw.points.clone())))
                }
                _ => match made.clone().find(|t| t.orig == f.old_addr) {
                    Some(t) => (t.at, Some((t.at, t.points.clone()))),
                    None => {
                        out.push(Err((f.old_addr, f.symbol.clone())));
                        continue;
                    }
                },
            };
            out.push(Ok(Rewire {
                upper: (qi, gi),
                slot: w.slot,
                old: w.target,
                new,
                trampoline,
            }));
        }
    }
    out
}

/// The rewires of the patch named `name` that can be made now.
fn rewires(rec: &Record, name: &str) -> Vec<Rewire> {
    rec.patches
        .iter()
        .position(|p| p.name == name && !p.disabled)
        .map(|i| rewires_of(rec, i).into_iter().flatten().collect())
        .unwrap_or_default()
}

/// Trampolines into the originals that wrappers above `rec.patches[idx]` will call once
/// it is gone, where nothing made one (a plain replacement right above the original):
/// made before the switch, each recorded in the pending operation before its bytes are
/// written, so that an undo or `repair` frees it and the switch hands it to the wrapper.
fn make_trampolines(s: &mut Session, idx: usize) -> Result<()> {
    let needed: Vec<(u64, String)> = rewires_of(&s.record, idx)
        .into_iter()
        .filter_map(|r| r.err())
        .collect();
    let mut pool = redirect::SlotPool::new(&s.record.islands);
    for (addr, symbol) in needed {
        if s.record
            .pending
            .iter()
            .flat_map(|p| &p.trampolines)
            .any(|t| t.orig == addr)
        {
            continue;
        }
        let o = s
            .objects
            .by_addr(addr)
            .ok_or_else(|| crate::err!(Failed, "{symbol} is in no loaded object"))?;
        let (bias, file) = (o.bias()?, o.file()?);
        let code = file
            .bytes_at(addr.wrapping_sub(bias), 32)
            .or_else(|| file.bytes_at(addr.wrapping_sub(bias), 16))
            .ok_or_else(|| crate::err!(Failed, "the code of {symbol} is not in its file"))?
            .to_vec();
        let at = crate::ops::apply::islands::take(s, &mut pool, addr, &symbol, true)?;
        let (bytes, points) = crate::remote::relocate::trampoline(&code, addr, at, &symbol)?;
        let page = at & !(redirect::PAGE - 1);
        if let Some(isl) = s.record.islands.iter_mut().find(|i| i.addr == page) {
            isl.used.extend([at, at + redirect::SLOT_SIZE]);
        }
        crate::livepatch::session::pending(s).trampolines.push(
            crate::livepatch::record::MadeTrampoline {
                orig: addr,
                at,
                points,
            },
        );
        s.save_record()?;
        s.proc.write(at, &bytes)?;
    }
    Ok(())
}

/// The record after the switch: each re-pointed wrapper calls its new target, and takes
/// over the trampoline of the patch below it (so that unloading that patch frees none).
fn rewire_record(rec: &mut Record, name: &str) {
    for r in rewires(rec, name) {
        let (qi, gi) = r.upper;
        if let Some((t, points)) = &r.trampoline {
            // The disabled wrapper's own, or one this disable made.
            if let Some(p) = rec.patches.iter_mut().find(|p| p.name == name)
                && let Some(fw) = p
                    .funcs
                    .iter_mut()
                    .filter_map(|f| f.wrap.as_mut())
                    .find(|fw| fw.trampoline == Some(*t))
            {
                fw.trampoline = None;
                fw.points = Vec::new();
            }
            if let Some(w) = rec.patches[qi].funcs[gi].wrap.as_mut() {
                w.trampoline = Some(*t);
                w.points = points.clone();
            }
        }
        if let Some(w) = rec.patches[qi].funcs[gi].wrap.as_mut() {
            w.target = r.new;
        }
    }
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
        let now = crate::elf::objects::read_code(&s.proc, w.addr, w.old.len())?;
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
    // Wrappers above that will call the original need a trampoline into it: made now,
    // and the switch re-planned with their pointers.
    if rewires_of(&s.record, idx).iter().any(|r| r.is_err()) {
        if let Err(e) = make_trampolines(s, idx) {
            s.tr.finishing = true;
            if let Err(e2) = unwind(s) {
                return Err(s.left_behind(&e, "undoing the disable", &e2));
            }
            return Err(e);
        }
        plan = replan(s, &p, unhook.clone())?;
    }
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

/// The plan again, once trampolines were made: with the wrappers' pointers, recorded as
/// the pending operation's writes.
fn replan(s: &mut Session, p: &AppliedPatch, unhook: Option<Write>) -> Result<Plan> {
    let mut plan = plan(&s.record, p);
    if let Some(w) = unhook {
        plan.entries.push((w.addr, JMP_LEN as u64));
        plan.writes.push(w);
    }
    crate::livepatch::session::pending(s).writes = plan
        .writes
        .iter()
        .map(|w| (w.addr, hex(&w.old), hex(&w.new)))
        .collect();
    s.save_record()?;
    Ok(plan)
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
    // Wrappers above that call into `p` call what lies below it, in the same switch; a
    // thread inside one may hold the old pointer, so they are code the switch changes.
    for r in rewires(rec, &p.name) {
        let (qi, gi) = r.upper;
        plan.changed.extend(implementation_of(
            &rec.patches[qi],
            &rec.patches[qi].funcs[gi],
        ));
        plan.writes.push(Write {
            addr: r.slot,
            old: r.old.to_le_bytes().to_vec(),
            new: r.new.to_le_bytes().to_vec(),
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
    rewire_record(&mut s.record, &name);
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
    s.keep_scratch();
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
    // Trampolines it made for wrappers, and island pages left empty by that.
    let slots: Vec<u64> = pend
        .trampolines
        .iter()
        .flat_map(|t| [t.at, t.at + redirect::SLOT_SIZE])
        .collect();
    let empty = if slots.is_empty() {
        Vec::new()
    } else {
        s.record.free_slots(&slots)
    };
    s.record.pending = None;
    s.save_record()?;
    crate::ops::apply::unmap_pages(s, &empty);
    Ok(())
}
