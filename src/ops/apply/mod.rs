//! Apply: load a patch into an attached process and switch its functions in (the
//! kernel's `klp_enable_patch`), and what finishes or undoes an apply (also used by
//! `repair`).

use crate::elf::symbols::{ElfFile, SymKind};
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::func_stack::{current_impl, expected_entry};
use crate::livepatch::record::{AppliedFunc, AppliedPatch, Record, Stage};
use crate::livepatch::session::{Session, callback, pending, refuse_pending, set_stage};
use crate::livepatch::states;
use crate::livepatch::transition::{self, Plan, Write};
use crate::patch::Patch;
use crate::remote::redirect::{self, JMP_LEN};
use crate::remote::relocate::RelocFill;
use crate::resolve::funcs::Resolved;
use crate::resolve::symbols::{Fill, SymbolFill};
use crate::{bail, err};

pub(crate) mod islands;
mod near;
use islands::{bind_places, place_islands, wire_wrappers};
/// What an apply did: the functions redirected, the patches an atomic replace replaced,
/// and the switch.
pub type Applied = (
    Vec<crate::ops::report::FuncView>,
    Vec<String>,
    transition::Report,
    Vec<crate::ops::report::BindingView>,
);

/// Apply `patch` (resolved) in an attached process whose earlier runs' leftovers were
/// repaired: the record says what is going on from the first step, so that a failure or
/// the death of rlivepatch can be undone from it.
pub fn run(
    s: &mut Session,
    patch: &Patch,
    resolved: &[Resolved],
    coming: &[crate::resolve::coming::Pending],
    symbols: &[SymbolFill],
    places: &[RelocFill],
) -> Result<Applied> {
    refuse_pending(s)?;
    // Functions in copies of objects that came since the last run are patched: the
    // record learns them before anything is compared with it.
    crate::livepatch::coming::forget_unloaded(s)?;
    if crate::livepatch::coming::in_use(&s.record) {
        crate::livepatch::coming::sync(s)?;
    }
    if s.record
        .patches
        .iter()
        .any(|p| p.name == patch.name && !p.disabled)
    {
        bail!(
            Mismatch,
            "a patch named {} is already applied to process {}; disable it first, or give this one another name with RLIVEPATCH_NAME",
            patch.name,
            s.proc.pid
        );
    }
    crate::livepatch::states::check(&s.record, patch)?;
    // Someone else's bytes at an entry (a breakpoint, another tool's jump) mean someone
    // else owns it.
    for r in resolved {
        let expected = expected_entry(&s.record, r.addr, &r.orig);
        let now = crate::elf::objects::read_code(&s.proc, r.addr, JMP_LEN)?;
        if now != expected {
            let what = if now[0] == 0xcc {
                "a breakpoint (int3) of a debugger or uprobe"
            } else {
                "code that rlivepatch did not write"
            };
            bail!(
                Mismatch,
                "the entry of {} at {:#x} holds {} ({}, expected {}); remove it (detach the debugger or tool) and retry",
                r.symbol,
                r.addr,
                what,
                hex(&now),
                hex(&expected)
            );
        }
    }
    // The memfds this apply fills (the record's, the runtime's, the patch's), made in one
    // hand-over to the target: the one that sets up rlivepatch's memory when the borrow
    // maps it. A process with a record has it say first that an apply is under way:
    // only then does a later run look for descriptors a killed one left (see
    // `leftovers::scan_before_operation`). Without one, the record's memfd is among
    // them, and rlivepatch's memory, mapped already, says it.
    let recorded = s.store.is_some();
    let mut memfds = Vec::new();
    if !recorded {
        memfds.push(crate::livepatch::store::MEMFD_NAME.to_string());
    }
    if s.record.runtime.is_none() {
        memfds.push(crate::livepatch::session::RUNTIME_MEMFD.to_string());
    }
    memfds.push(format!("rlp:{}", patch.name));
    let memfds: Vec<&str> = memfds.iter().map(String::as_str).collect();
    if !recorded {
        s.want_memfds(&memfds);
    }
    // From here on the record says what is going on, so that a failure, or the death of
    // rlivepatch, can be undone from it.
    s.borrow()?;
    if !recorded {
        s.make_memfds(&memfds)?;
    }
    let mut pending = crate::livepatch::record::Pending::new("apply", &patch.name);
    pending.scratch = s.scratch;
    s.record.pending = Some(pending);
    if !recorded {
        // The record's mapping rides along with the load of the patch (or the runtime).
        s.defer_store_mapping();
    }
    s.save_record()?;
    // Undone like any step after the record says the apply is under way.
    let steps = |s: &mut Session| {
        if recorded {
            s.make_memfds(&memfds)?;
        }
        crate::os::fault::point("apply:pending");
        apply_steps(s, patch, resolved, coming, symbols, places)
    };
    match steps(s) {
        Ok(v) => Ok(v),
        Err(e) => {
            let leaked = s.inj.as_ref().is_some_and(|i| i.leaked);
            if any_write_done(s) {
                // The switch happened: the patch's code runs. Only finishing is right now;
                // the record keeps the operation for `repair`.
                return Err(err!(
                    Incomplete,
                    "patch {} was switched in, but finishing the apply failed ({}); run `rlivepatch repair {}`",
                    patch.name,
                    e.message,
                    s.proc.pid
                ));
            }
            if !leaked {
                // Undoing is not interrupted in turn.
                s.tr.finishing = true;
                if let Err(e2) = unwind(s) {
                    return Err(s.left_behind(&e, "undoing the apply", &e2));
                }
            }
            Err(e)
        }
    }
}

/// Did the pending operation write any entry already?
fn any_write_done(s: &Session) -> bool {
    let Some(p) = &s.record.pending else {
        return false;
    };
    p.writes.iter().any(|(addr, _, new)| {
        s.proc
            .read(*addr, JMP_LEN)
            .is_ok_and(|now| hex(&now) == *new)
    })
}

/// The steps of an apply once the record says it is under way; each step leaves the
/// record saying how far it got (see `repair`).
fn apply_steps(
    s: &mut Session,
    patch: &Patch,
    resolved: &[Resolved],
    coming: &[crate::resolve::coming::Pending],
    symbols: &[SymbolFill],
    places: &[RelocFill],
) -> Result<Applied> {
    // The runtime holds the hook for objects that come, and the hold on the loader while
    // objects it resolved may go (loaded with dlopen, or gone already).
    let hold = !coming.is_empty() || crate::livepatch::coming::may_go(&s.objects, resolved);
    let (mut applied, kept) = load(s, patch, places)?;
    fill_symbols(s, applied.base, symbols)?;
    let bindings = bind_places(s, &mut applied, places, kept)?;
    crate::os::fault::trace("symbols filled");
    applied.funcs = locate(s, patch, resolved, applied.base)?;
    applied.coming = crate::livepatch::coming::applied(patch, coming, applied.base);
    let pending_too: Vec<Resolved> = coming.iter().map(|c| c.resolved.clone()).collect();
    locate(s, patch, &pending_too, applied.base)?;
    crate::os::fault::trace("new functions found");
    wire_wrappers(s, patch, &mut applied, resolved)?;
    place_islands(s, &mut applied, resolved)?;
    crate::os::fault::trace("islands");
    // From here to the end, the hook for objects that come waits: the record and its
    // table must agree, and no object may come unseen in between.
    let mut adopt = Vec::new();
    if hold || crate::livepatch::coming::in_use(&s.record) {
        crate::livepatch::coming::freeze(s)?;
        s.refresh()?;
        crate::livepatch::coming::refuse_gone(s, resolved)?;
        // Functions in objects loaded with dlopen are also patched in their later
        // copies: the hook takes them over after the switch.
        adopt = crate::livepatch::coming::adoptable(&s.objects, resolved);
        for f in crate::livepatch::coming::arrived(s, &applied.coming)? {
            adopt.push(applied.funcs.len());
            applied.funcs.push(f);
        }
        crate::livepatch::coming::sync(s)?;
        pending(s).loading = Some(applied.clone());
        s.save_record()?;
    }
    let needed = !applied.coming.is_empty()
        || !adopt.is_empty()
        || (!applied.replace
            && s.record
                .patches
                .iter()
                .any(|p| !p.disabled && !p.coming.is_empty()));
    let unhook = crate::livepatch::coming::unhook(s, needed);
    let plan = record_plan(s, &applied, unhook.clone())?;
    pre_patch(s, &applied)?;
    // The switch. If it fails, the transition is reversed (post_unpatch runs while the
    // record is undone).
    crate::os::fault::point("apply:pre_patched");
    set_stage(s, Stage::Switching)?;
    // A switch with nothing to write (every function waits for its object) checks
    // nothing: an interrupt that came until now still undoes the apply.
    s.tr.check_interrupted()?;
    if s.opts.force {
        s.progress("warning: --force: switching without checking that no thread is inside the changed functions; this patch can never be unloaded");
    }
    let report = s.switch(&plan)?;
    // Past the switch, the apply finishes whatever comes.
    s.tr.finishing = true;
    if unhook.is_some() {
        s.record.hook = None;
    }
    crate::os::fault::point("apply:switched");
    let views = applied
        .funcs
        .iter()
        .zip(resolved)
        .map(|(f, r)| {
            let mut v = crate::ops::report::FuncView::new(f, &s.objects);
            v.notes = r.notes.clone();
            v
        })
        .collect();
    // post_patch, the record, and the replaced patches unloaded. The patch is applied
    // now: what fails from here is left for `repair`, named in the report, and does not
    // make the apply a failure.
    let replaced = crate::livepatch::coming::adopt(s, &mut applied, &adopt)
        .and_then(|()| finish(s, applied, true))
        .unwrap_or_else(|e| {
            s.left(format!(
                "finishing the apply after its switch failed ({}), so the record still says it is under way",
                e.message
            ));
            Vec::new()
        });
    Ok((views, replaced, report, bindings))
}

/// Load the patch (and first the runtime, with the first patch: a patch's `rlp_*`
/// references must resolve when it loads, redirects may take the preserving path, and
/// the runtime's keeper thread serves later operations), from a memfd so that the target
/// needs no access to our file. The record then knows it as loading.
fn load(
    s: &mut Session,
    patch: &Patch,
    places: &[RelocFill],
) -> Result<(AppliedPatch, Option<String>)> {
    let pid = s.proc.pid;
    // The runtime comes with the first patch: besides what patches call in it, it keeps
    // a thread parked for later operations (see `crate::livepatch::session::keeper`).
    // Loaded with the patch, in one hand-over, when the patch binds nothing (where the
    // patch lands then does not depend on where the runtime did).
    let with_runtime = s.record.runtime.is_none() && !near::binds(places);
    if s.record.runtime.is_none() && !with_runtime {
        s.ensure_runtime()?;
        s.save_record()?;
        // Its mappings (and the keeper's stack) may take the range the patch is moved
        // to.
        s.refresh()?;
    }
    // The bytes read (and checked) when the patch was loaded, not the path again: a
    // file swapped since is not what runs. Moved next to what its code reaches, when it
    // binds anything.
    let near::Load {
        bytes,
        delta,
        mut kept,
    } = near::load(patch.file.data(), places, &s.maps);
    s.tr.check_interrupted()?;
    let name = format!("rlp:{}", patch.name);
    let loaded = if with_runtime {
        load_with_runtime(s, &name, &bytes)?
    } else {
        s.load(&name, &bytes, libc::RTLD_NOW)?
    };
    let (handle, fd) = match loaded {
        Ok(v) => v,
        Err(text) => bail!(
            Patch,
            "process {pid} could not load the patch: {text}; build it with cc -shared -fPIC against libraries the process has"
        ),
    };
    let bias = s.proc.read_u64(handle)?;
    if delta != 0 && bias != 0 {
        kept = Some("the loader put it elsewhere (the range was taken meanwhile)".into());
    }
    // Addresses in the patch as it was: the moved file's are `delta` higher.
    let base = bias.wrapping_add(delta);
    let at = |v: Option<u64>| v.map(|v| v + base);
    let applied = AppliedPatch {
        name: patch.name.clone(),
        path: patch.path.display().to_string(),
        handle,
        base,
        fd,
        forced: s.opts.force,
        replace: patch.replace,
        states: patch.states.clone(),
        callbacks: [
            at(patch.callbacks.pre_patch),
            at(patch.callbacks.post_patch),
            at(patch.callbacks.pre_unpatch),
            at(patch.callbacks.post_unpatch),
        ],
        funcs: Vec::new(),
        applied_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        disabled: false,
        state_addrs: patch.states.iter().map(|st| st.vaddr + base).collect(),
        thunks: Vec::new(),
        coming: Vec::new(),
        object_callbacks: patch
            .object_callbacks
            .iter()
            .map(|(o, c)| {
                (
                    o.clone(),
                    [
                        at(c.pre_patch),
                        at(c.post_patch),
                        at(c.pre_unpatch),
                        at(c.post_unpatch),
                    ],
                )
            })
            .collect(),
    };
    pending(s).loading = Some(applied.clone());
    set_stage(s, Stage::Loaded)?;
    crate::os::fault::point("apply:loaded");
    s.tr.check_interrupted()?;
    s.refresh()?;
    crate::os::fault::trace("refreshed");
    Ok((applied, kept))
}

/// The runtime and then the patch (`bytes`, memfd `name`) loaded in one hand-over, the
/// runtime recorded: the patch's handle and fd, or why the loader refused it.
fn load_with_runtime(
    s: &mut Session,
    name: &str,
    bytes: &[u8],
) -> Result<std::result::Result<(u64, i32), String>> {
    let runtime = s.runtime_image()?;
    let clones = s.tr.clones.len();
    let crate::livepatch::session::Loaded { loaded, refused } =
        s.load_all(&[runtime.to_load(), (name, bytes, libc::RTLD_NOW)])?;
    let Some(&(handle, fd)) = loaded.first() else {
        return Err(s.runtime_refused(refused));
    };
    s.runtime_loaded(handle, fd, clones, &runtime)?;
    s.save_record()?;
    Ok(match loaded.get(1) {
        Some(&v) => Ok(v),
        None => Err(refused.unwrap_or_default()),
    })
}

/// Where the new functions are, as the loader resolved them: each must be the patch's own
/// code (a global function of the same name elsewhere would have been picked instead).
fn locate(
    s: &mut Session,
    patch: &Patch,
    resolved: &[Resolved],
    base: u64,
) -> Result<Vec<AppliedFunc>> {
    let mut funcs = Vec::with_capacity(resolved.len());
    for r in resolved {
        let f = &patch.funcs[r.index];
        let stored = s.proc.read_u64(base + f.slot_vaddr)?;
        let expected = base + f.new_vaddr;
        if stored != expected {
            bail!(
                Patch,
                "the new function {} resolved to {} instead of the patch's own code (another object exports the same name); make it static",
                f.new_name,
                s.objects.symbolize(stored)
            );
        }
        let mut func = crate::livepatch::record::AppliedFunc::redirected(
            r,
            &f.new_name,
            expected,
            new_function_size(&patch.file, f.new_vaddr),
        );
        func.new_parts = crate::contract::code::named_parts(&patch.file, &f.new_name)
            .into_iter()
            .map(|p| crate::contract::code::Part {
                start: p.start + base,
                end: p.end + base,
                name: p.name,
            })
            .collect();
        funcs.push(func);
    }
    Ok(funcs)
}

/// The plan of the switch, written into the record with the patch before anything else
/// happens: an atomic replace also sends every function that only older patches change
/// back to the original, in the same switch.
fn record_plan(s: &mut Session, applied: &AppliedPatch, unhook: Option<Write>) -> Result<Plan> {
    let mut plan = plan(&s.record, applied);
    if let Some(w) = unhook {
        plan.entries.push((w.addr, JMP_LEN as u64));
        plan.writes.push(w);
    }
    crate::os::fault::trace("plan built");
    pending(s).loading = Some(applied.clone());
    pending(s).writes = plan
        .writes
        .iter()
        .map(|w| (w.addr, hex(&w.old), hex(&w.new)))
        .collect();
    s.save_record()?;
    crate::os::fault::point("apply:planned");
    s.tr.check_interrupted()?;
    Ok(plan)
}

/// The pre_patch callback, which may cancel the apply; then no other callback runs.
fn pre_patch(s: &mut Session, applied: &AppliedPatch) -> Result<()> {
    set_stage(s, Stage::PrePatching)?;
    let prev = states::installed(&s.record, None);
    s.set_states(&applied.state_addrs, &prev)?;
    if let Some(code) = callback(s, applied.callbacks[0], "pre_patch", &applied.name)?
        && code != 0
    {
        s.set_states(&[], &[])?;
        pending(s).stage = Stage::Loaded;
        bail!(
            Failed,
            "the pre_patch callback of patch {} returned {code}: the patch refused to apply and was unloaded",
            applied.name
        );
    }
    // The objects' own, for their loaded copies; one that refuses cancels the apply, and
    // every callback whose pre_patch ran gets post_unpatch (the kernel's cancelled
    // transition).
    if let Err(e) = crate::livepatch::coming::object_callbacks(s, applied, 0) {
        crate::livepatch::coming::object_callbacks(s, applied, 3)?;
        callback(s, applied.callbacks[3], "post_unpatch", &applied.name)?;
        s.set_states(&[], &[])?;
        pending(s).stage = Stage::Loaded;
        return Err(e);
    }
    Ok(())
}

/// The switch that makes `applied` the newest patch: its functions jump to it; with
/// atomic replace, functions that only older patches change go back to the original.
pub fn plan(rec: &Record, applied: &AppliedPatch) -> Plan {
    let mut plan = Plan::default();
    for f in &applied.funcs {
        plan.changed.extend(current_impl(rec, f));
        plan.entries.push((f.old_addr, JMP_LEN as u64));
        plan.writes.push(Write {
            addr: f.old_addr,
            old: expected_entry(rec, f.old_addr, &f.orig),
            new: redirect::jmp(f.old_addr, f.target()).unwrap().to_vec(),
        });
    }
    if applied.replace {
        let mut seen: Vec<u64> = applied.funcs.iter().map(|f| f.old_addr).collect();
        for p in rec.patches.iter().filter(|p| !p.disabled) {
            for f in &p.funcs {
                if seen.contains(&f.old_addr) {
                    continue;
                }
                seen.push(f.old_addr);
                plan.changed.extend(current_impl(rec, f));
                plan.entries.push((f.old_addr, JMP_LEN as u64));
                plan.writes.push(Write {
                    addr: f.old_addr,
                    old: expected_entry(rec, f.old_addr, &f.orig),
                    new: f.orig.clone(),
                });
            }
        }
    }
    plan
}

/// Finish an apply whose switch is done: post_patch (when `run_post_patch`), then the
/// record, then the patches an atomic replace replaced are unloaded without their
/// callbacks. Returns their names.
pub fn finish(s: &mut Session, applied: AppliedPatch, run_post_patch: bool) -> Result<Vec<String>> {
    if run_post_patch {
        set_stage(s, Stage::PostPatching)?;
        let prev = states::installed(&s.record, None);
        s.set_states(&applied.state_addrs, &prev)?;
        callback(s, applied.callbacks[1], "post_patch", &applied.name)?;
        crate::livepatch::coming::object_callbacks(s, &applied, 1)?;
        s.set_states(&[], &[])?;
        crate::os::fault::point("apply:post_patched");
    }
    let old_patches = std::mem::take(&mut s.record.patches);
    let mut to_unload = Vec::new();
    for p in old_patches {
        if applied.replace && !p.disabled {
            if p.forced {
                // A forced patch's code may still run: it stays loaded, out of the stack.
                let mut kept = p.clone();
                kept.disabled = true;
                s.record.patches.push(kept);
            }
            to_unload.push(p);
        } else {
            s.record.patches.push(p);
        }
    }
    let freed: Vec<u64> = to_unload.iter().flat_map(|p| p.slots(!p.forced)).collect();
    let empty_pages = s.record.free_slots(&freed);
    s.record.patches.push(applied);
    s.record.pending = None;
    s.keep_scratch();
    s.save_record()?;
    crate::os::fault::point("apply:committed");
    // The hook learns the active patches before any replaced one goes; a replaced patch
    // it may still run stays loaded.
    if let Err(e) = crate::livepatch::coming::settle(s) {
        s.left(format!(
            "the hook for objects that come was not told the active patches ({}), so the replaced patches stay loaded",
            e.message
        ));
        return Ok(to_unload.iter().map(|p| p.name.clone()).collect());
    }
    for p in to_unload.iter().filter(|p| !p.forced) {
        if let Err(e) = s.unload(p.handle, p.fd) {
            s.left(format!(
                "the replaced patch {} is out of use but still loaded ({})",
                p.name, e.message
            ));
        }
    }
    unmap_pages(s, &empty_pages);
    Ok(to_unload.iter().map(|p| p.name.clone()).collect())
}

/// Unmap island pages nothing uses any more; one that stays is named as left behind.
pub fn unmap_pages(s: &mut Session, pages: &[u64]) {
    for &page in pages {
        if let Err(e) = s.syscall(libc::SYS_munmap, &[page, redirect::PAGE]) {
            s.left(format!(
                "an unused island page at {page:#x} stays mapped ({})",
                e.message
            ));
        }
    }
}

/// Undo an apply that did not switch, from what the record says: post_unpatch if
/// pre_patch ran (the kernel's reversed transition), unload the patch, free its islands.
pub fn unwind(s: &mut Session) -> Result<()> {
    let Some(p) = s.record.pending.clone() else {
        return Ok(());
    };
    // Threads waiting in the hook hold the loader's lock, which unloading needs.
    s.thaw()?;
    if let Some(applied) = &p.loading {
        if p.stage >= Stage::Switching {
            let prev = states::installed(&s.record, None);
            s.set_states(&applied.state_addrs, &prev)?;
            if let Err(e) = callback(s, applied.callbacks[3], "post_unpatch", &applied.name) {
                s.progress(&format!("warning: {}", e.message));
            }
            s.set_states(&[], &[])?;
        }
        s.unload(applied.handle, applied.fd)?;
        s.record.free_slots(&applied.slots(true));
    }
    crate::livepatch::coming::release(s)?;
    // Pages mapped for this apply that nothing uses now.
    for page in &p.new_islands {
        if !s.record.islands.iter().any(|i| i.addr == *page)
            || s.record
                .islands
                .iter()
                .any(|i| i.addr == *page && i.used.is_empty())
        {
            s.record.islands.retain(|i| i.addr != *page);
            s.syscall(libc::SYS_munmap, &[*page, redirect::PAGE])?;
        }
    }
    s.record.pending = None;
    s.unload_runtime_if_idle()?;
    s.save_record()
}

fn new_function_size(file: &ElfFile, vaddr: u64) -> u64 {
    let from_sym = file
        .symtab()
        .iter()
        .chain(file.dynsym())
        .find(|s| s.value == vaddr && s.kind == SymKind::Func && s.size > 0)
        .map(|s| s.size);
    from_sym
        .or_else(|| crate::elf::unwind::fde_range(file, vaddr).map(|(a, b)| b - a))
        .unwrap_or_else(|| {
            // Unknown: the rest of the patch's code segment, which is conservative.
            file.segments
                .iter()
                .find(|s| s.exec && s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.memsz))
                .map(|s| s.vaddr.saturating_add(s.memsz) - vaddr)
                .unwrap_or(1)
        })
}

/// Fill the patch's symbol slots (the patch is loaded at `base`).
pub fn fill_symbols(s: &mut Session, base: u64, symbols: &[SymbolFill]) -> Result<()> {
    for f in symbols {
        match &f.value {
            Fill::Addr(a) => s.proc.write(base + f.slot_vaddr, &a.to_le_bytes())?,
            Fill::Tls(object, offset) => {
                let module = s.tls_module(object.as_deref())?;
                let mut b = module.to_le_bytes().to_vec();
                b.extend(offset.to_le_bytes());
                s.proc.write(base + f.slot_vaddr, &b)?;
            }
        }
    }
    Ok(())
}
