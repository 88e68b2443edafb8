//! Where an apply's code goes next to the process's: island slots for far jumps and
//! preserving stubs, wrappers' trampolines into the originals, and the thunks of places a
//! generated patch binds (see [`crate::remote::redirect`], [`crate::remote::relocate`]).

use crate::error::Result;
use crate::livepatch::record::AppliedPatch;
use crate::livepatch::session::{Session, pending};
use crate::ops::report::BindingView;
use crate::patch::{Patch, RelocKind};
use crate::remote::redirect::Island;
use crate::remote::redirect::{self};
use crate::remote::relocate::RelocFill;
use crate::resolve::funcs::Resolved;
use crate::{bail, err};

/// `RLIVEPATCH_FUNC_WRAP`: each wrapper's pointer gets the code its function replaces,
/// before any code of the patch runs: the function of the patch below it, or (for the
/// original, and always for an atomic replace, which replaces every patch below) a
/// trampoline into the original in an island next to it. The trampolines are recorded
/// with the loading patch first, so that an undo frees them.
pub(super) fn wire_wrappers(
    s: &mut Session,
    patch: &Patch,
    applied: &mut AppliedPatch,
    resolved: &[Resolved],
) -> Result<()> {
    if !patch.funcs.iter().any(|f| f.orig_slot.is_some()) {
        return Ok(());
    }
    let mut pool = redirect::SlotPool::new(&s.record.islands);
    for (i, r) in resolved.iter().enumerate() {
        let Some(slot) = patch.funcs[r.index].orig_slot else {
            continue;
        };
        let below = if patch.replace {
            None
        } else {
            s.record.stack_of(r.addr).last().map(|(_, f)| f.new_addr)
        };
        let (target, trampoline) = match below {
            Some(a) => (a, None),
            None => {
                let file = s
                    .objects
                    .by_addr(r.addr)
                    .ok_or_else(|| err!(Failed, "{} is in no loaded object", r.symbol))?
                    .file()?;
                let code = file
                    .bytes_at(r.addr.wrapping_sub(r.bias), 32)
                    .or_else(|| file.bytes_at(r.addr.wrapping_sub(r.bias), 16))
                    .ok_or_else(|| err!(Failed, "the code of {} is not in its file", r.symbol))?
                    .to_vec();
                let at = take(s, &mut pool, r.addr, &r.symbol, true)?;
                let page = at & !(redirect::PAGE - 1);
                if let Some(isl) = s.record.islands.iter_mut().find(|i| i.addr == page) {
                    isl.used.extend([at, at + redirect::SLOT_SIZE]);
                }
                applied.funcs[i].wrap = Some(crate::livepatch::record::Wrap {
                    slot: applied.base + slot,
                    target: at,
                    trampoline: Some(at),
                    points: Vec::new(),
                });
                pending(s).loading = Some(applied.clone());
                s.save_record()?;
                let (bytes, points) =
                    crate::remote::relocate::trampoline(&code, r.addr, at, &r.symbol)?;
                s.proc.write(at, &bytes)?;
                (at, Some((at, points)))
            }
        };
        s.proc.write(applied.base + slot, &target.to_le_bytes())?;
        let (trampoline, points) = match trampoline {
            Some((t, p)) => (Some(t), p),
            None => (None, Vec::new()),
        };
        applied.funcs[i].wrap = Some(crate::livepatch::record::Wrap {
            slot: applied.base + slot,
            target,
            trampoline,
            points,
        });
    }
    pending(s).loading = Some(applied.clone());
    s.save_record()
}

/// Islands: a slot for each new function out of reach of a 32-bit jump, and a stub of
/// two slots for each redirect through the preserving path (whose table entry is written
/// first). Slots are recorded as used by the pending patch, and written one page at a
/// time (a patch of 1000 far functions fills 4 pages).
pub(super) fn place_islands(
    s: &mut Session,
    applied: &mut AppliedPatch,
    resolved: &[Resolved],
) -> Result<()> {
    let mut pool = redirect::SlotPool::new(&s.record.islands);
    let mut slot_writes: Vec<(u64, Vec<u8>)> = Vec::new();
    let path = match &s.record.runtime {
        Some(rt) if resolved.iter().any(|r| r.contract.preserves()) => {
            Some(crate::remote::preserve::Runtime::of(rt.base, &s.proc)?)
        }
        _ => None,
    };
    let mut indexes = Vec::new();
    for (i, r) in resolved.iter().enumerate() {
        let f = &applied.funcs[i];
        let (entry, new_addr) = (f.old_addr, f.new_addr);
        let preserve = path.as_ref().filter(|_| r.contract.preserves());
        if preserve.is_none() && redirect::jmp(entry, new_addr).is_some() {
            continue;
        }
        let slot = take(s, &mut pool, entry, &f.symbol.clone(), preserve.is_some())?;
        let mut used = vec![slot];
        match preserve {
            Some(rt) => {
                let mut taken = s.record.preserve_indexes();
                taken.extend(&indexes);
                let index = crate::remote::preserve::free_index(&taken)?;
                indexes.push(index);
                s.proc.write(
                    rt.entry(index),
                    &crate::remote::preserve::entry_bytes(new_addr, &r.contract, rt.vector_width),
                )?;
                slot_writes.push((
                    slot,
                    crate::remote::preserve::stub_bytes(index, rt.thunk).to_vec(),
                ));
                used.push(slot + redirect::SLOT_SIZE);
                applied.funcs[i].preserve = Some(crate::livepatch::record::Preserve {
                    index,
                    stub: slot,
                    keeps: r.contract.keeps.names(),
                    // Up to the call's first byte: a thread stopped at the call is
                    // about to read the entry; one that returns through the thunk (its
                    // return address, probed one byte back, is outside) no longer does.
                    thunk: (rt.thunk, rt.returned - 1),
                });
            }
            None => {
                slot_writes.push((slot, redirect::slot_bytes(new_addr).to_vec()));
                applied.funcs[i].island = Some(slot);
            }
        }
        let page = slot & !(redirect::PAGE - 1);
        s.record
            .islands
            .iter_mut()
            .find(|i| i.addr == page)
            .unwrap()
            .used
            .extend(used);
    }
    slot_writes.sort_by_key(|(a, _)| *a);
    for chunk in
        slot_writes.chunk_by(|a, b| a.0 & !(redirect::PAGE - 1) == b.0 & !(redirect::PAGE - 1))
    {
        let page = chunk[0].0 & !(redirect::PAGE - 1);
        let mut bytes = s.proc.read(page, redirect::PAGE as usize)?;
        for (slot, b) in chunk {
            let off = (slot - page) as usize;
            bytes[off..off + b.len()].copy_from_slice(b);
        }
        s.proc.write(page, &bytes)?;
    }
    Ok(())
}

/// Bind the places of a generated patch (`RLP_KIND_RELOC`) before any of its code can
/// run: a 64-bit address or a displacement is written in place; an instruction whose
/// data is out of reach of the patch (`kept` says why the patch is not near it) moves
/// into a thunk in an island next to the data, and the place jumps to it through the
/// patch's own slot. The thunks' slots are recorded with the loading patch first, so
/// that an undo frees them. Returns how each data access was bound.
pub(super) fn bind_places(
    s: &mut Session,
    applied: &mut AppliedPatch,
    places: &[RelocFill],
    kept: Option<String>,
) -> Result<Vec<BindingView>> {
    let base = applied.base;
    let mut pool = redirect::SlotPool::new(&s.record.islands);
    let mut far = Vec::new();
    let mut views = Vec::new();
    for p in places {
        let at = base + p.site_vaddr;
        match p.kind {
            RelocKind::Abs64 => s.proc.write(at, &p.value.to_le_bytes())?,
            RelocKind::Rel32 { head, len } => {
                let end = at - head as u64 + len as u64;
                let start = at - head as u64;
                match crate::remote::relocate::near(p.value, end) {
                    Some(d) => {
                        s.proc.write(at, &d.to_le_bytes())?;
                        views.push(BindingView::new(p, start, "direct", None));
                    }
                    None => {
                        views.push(BindingView::new(p, start, "thunk", kept.clone()));
                        far.push((p, start, len as usize));
                    }
                }
            }
            // The displacement reaches the patch's stub already: left so when the
            // function is out of reach.
            RelocKind::Call32 { head, len } => {
                let start = at - head as u64;
                match crate::remote::relocate::near(p.value, start + len as u64) {
                    Some(d) => {
                        s.proc.write(at, &d.to_le_bytes())?;
                        views.push(BindingView::new(p, start, "direct", None));
                    }
                    None => views.push(BindingView::new(p, start, "stub", kept.clone())),
                }
            }
        }
    }
    for (p, start, len) in &far {
        let Some(thunk_slot) = p.thunk_slot else {
            bail!(
                Patch,
                "the data {} is out of reach of the patch and the patch has no slot for a thunk; rebuild it with `rlivepatch build`",
                p.name
            );
        };
        let slot = take(s, &mut pool, p.value, &p.name, true)?;
        applied.thunks.push(slot);
        let page = slot & !(redirect::PAGE - 1);
        if let Some(i) = s.record.islands.iter_mut().find(|i| i.addr == page) {
            i.used.extend([slot, slot + redirect::SLOT_SIZE]);
        }
        pending(s).loading = Some(applied.clone());
        s.save_record()?;
        let insn = s.proc.read(*start, *len)?;
        let code =
            crate::remote::relocate::thunk(&insn, *start, p.value, slot, start + *len as u64)?;
        s.proc.write(slot, &code)?;
        s.proc.write(base + thunk_slot, &slot.to_le_bytes())?;
        let jump = crate::remote::relocate::site_jump(*start, *len, base + thunk_slot)?;
        s.proc.write(*start, &jump)?;
    }
    Ok(views)
}

/// A free slot (or two, for a stub) within reach of `entry`, in an island page mapped for
/// it when none has room.
pub(crate) fn take(
    s: &mut Session,
    pool: &mut redirect::SlotPool,
    entry: u64,
    name: &str,
    pair: bool,
) -> Result<u64> {
    let got = |pool: &mut redirect::SlotPool| {
        if pair {
            pool.take_pair(entry)
        } else {
            pool.take(entry)
        }
    };
    if let Some(slot) = got(pool) {
        return Ok(slot);
    }
    let page = map_island(s, entry, name)?;
    pending(s).new_islands.push(page);
    s.record.islands.push(Island {
        addr: page,
        used: Vec::new(),
    });
    pool.add_page(page, &[]);
    got(pool).ok_or_else(|| redirect::no_island_error(name, entry))
}

/// Map a new island page within reach of `entry`: a private mapping of a memfd named
/// `rlivepatch-island`, so that it is recognisable in the maps (and never merged with a
/// neighbour).
fn map_island(s: &mut Session, entry: u64, name: &str) -> Result<u64> {
    let obj_start = s.objects.by_addr(entry).map(|o| o.start).unwrap_or(entry);
    let min = crate::os::process::mmap_min_addr();
    let candidates = redirect::island_candidates(&s.maps, entry, obj_start, min);
    s.borrow()?;
    let fd = {
        let inj = s.inj.as_mut().unwrap();
        inj.memfd_with(
            &mut s.tr,
            &s.proc,
            crate::remote::inject::ISLAND_NAME,
            &[0u8; redirect::PAGE as usize],
        )?
    } as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE) as u64;
    let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    let mut found = None;
    for hint in candidates {
        let r = s.syscall(libc::SYS_mmap, &[hint, redirect::PAGE, prot, flags, fd, 0])?;
        if r == hint as i64 {
            found = Some(hint);
            break;
        }
        if r > 0 {
            // An old kernel took the address as a hint only: give it back.
            s.syscall(libc::SYS_munmap, &[r as u64, redirect::PAGE])?;
        }
    }
    s.syscall(libc::SYS_close, &[fd])?;
    let page = found.ok_or_else(|| redirect::no_island_error(name, entry))?;
    s.refresh()?;
    Ok(page)
}
