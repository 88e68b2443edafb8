//! Objects that come later: the kernel's `klp_module_coming`, in a process.
//!
//! A patch may change functions of an object the process has not loaded yet (a plugin, a
//! gconv or NSS module). `apply` then resolves them in the object's file, at file
//! addresses, and the patch is applied with that object *pending*: its functions go into
//! a table of the rlivepatch runtime (`runtime/rlivepatch-coming.c`), and glibc's debugger
//! notification point, `_dl_debug_state`, jumps to the runtime's hook. glibc calls it in
//! every `dlopen` (its own loads included) once the new objects are mapped and before any
//! is relocated: the hook recognises a pending object by its build-id and writes the
//! jumps before any of its code runs, constructors and IFUNC resolvers included. No
//! tracer is needed then.
//!
//! The table is the truth about copies the hook patched; the record learns them
//! ([`sync`]) while the hook is held ([`freeze`]), so that disable, atomic replace and
//! stacking treat those copies as any patched function, and writes back what the active
//! patches want ([`commit`]) before letting it go.

use crate::elf::objects::Objects;
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::record::{AppliedFunc, AppliedPatch, ComingFunc, Hook, Record};
use crate::livepatch::session::Session;
use crate::livepatch::transition::Write;
use crate::patch::Patch;
use crate::remote::redirect::{self, JMP_LEN};
use crate::resolve::funcs::Resolved;
use crate::{bail, err};

pub mod table;

use std::time::{Duration, Instant};
use table::*;

/// Run callback `which` (0 pre_patch, 1 post_patch, 2 pre_unpatch, 3 post_unpatch) of
/// each object of `p` with callbacks, for each loaded copy the patch changes, in the
/// order the patch declares them. A nonzero pre_patch is an error naming the object.
pub fn object_callbacks(s: &mut Session, p: &AppliedPatch, which: usize) -> Result<()> {
    const NAMES: [&str; 4] = ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"];
    for (name, cbs) in &p.object_callbacks {
        let Some(addr) = cbs[which] else { continue };
        let mut bases: Vec<u64> = Vec::new();
        for f in &p.funcs {
            let Some(o) = s.objects.by_addr(f.old_addr) else {
                continue;
            };
            if !answers_to(o, name) {
                continue;
            }
            let Some(b) = f.copy.or_else(|| o.bias().ok()) else {
                continue;
            };
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        // Copies this run patched and handed to the hook (not in the record's functions
        // until the table knows them).
        for cf in p.coming.iter().filter(|cf| cf.name == *name) {
            for (id, b) in &s.adopted {
                if *id == cf.build_id && !bases.contains(b) {
                    bases.push(*b);
                }
            }
        }
        for b in bases {
            let what = format!(
                "the {} callback of {name} (at {b:#x}) of patch {}",
                NAMES[which], p.name
            );
            let rax = s.call_held(addr, &[b], &what)?;
            if which == 0 && rax as u32 != 0 {
                bail!(
                    Failed,
                    "{what} returned {}: the patch refused to apply and was unloaded",
                    rax as u32 as i32
                );
            }
        }
    }
    Ok(())
}

/// Does the loaded object `o` answer to the name a patch gives it?
fn answers_to(o: &crate::elf::objects::LoadedObject, name: &str) -> bool {
    o.path == name
        || (!name.starts_with('/')
            && (o.file_name() == name || o.soname().as_deref() == Some(name)))
}

/// The record's form of pending functions once the patch is loaded at `base`.
pub fn applied(
    patch: &Patch,
    pending: &[crate::resolve::coming::Pending],
    base: u64,
) -> Vec<ComingFunc> {
    pending
        .iter()
        .map(|p| {
            let r = &p.resolved;
            let f = &patch.funcs[r.index];
            ComingFunc {
                name: p.name.clone(),
                build_id: p.build_id.clone(),
                note_vaddr: p.note_vaddr,
                func: crate::livepatch::record::AppliedFunc::redirected(
                    r,
                    &f.new_name,
                    base + f.new_vaddr,
                    0,
                ),
            }
        })
        .collect()
}

/// Is anything waiting for objects to come, or patched in one that came?
pub fn in_use(rec: &Record) -> bool {
    rec.hook.is_some() || rec.patches.iter().any(|p| !p.coming.is_empty())
}

/// Hold the hook: a `dlopen` that reaches it waits until [`thaw`] (or until this
/// rlivepatch is gone), and one under way is waited for. Then the table stays as it is
/// while rlivepatch reads and changes it. The thread rlivepatch borrowed for its calls
/// passes (a callback may load a library).
pub fn freeze(s: &mut Session) -> Result<()> {
    let Some(t) = table(&s.record)? else {
        return Ok(());
    };
    if s.frozen {
        return Ok(());
    }
    // No thread passes: the one rlivepatch borrows for its calls runs the program's own
    // code between them (see `during_call`).
    s.proc.write(t + FROZEN_TID, &0u64.to_le_bytes())?;
    s.proc
        .write(t + FROZEN, &(std::process::id() as u64).to_le_bytes())?;
    s.frozen = true;
    // The hook is what holds the loader: it goes in first (idle while the table has no
    // functions), and the record says so before anything else can fail.
    if s.record.hook.is_none() {
        let r_debug = loader_symbol(&s.objects, "_r_debug").map_or(0, |(a, _)| a);
        s.proc.write(t + R_DEBUG, &r_debug.to_le_bytes())?;
        let h = install(s)?;
        s.record.hook = Some(h.clone());
        s.save_record()?;
        s.proc.write(h.addr, &h.jump)?;
    }
    let deadline = Instant::now() + s.opts.timeout;
    // Also wait for a dlopen or dlclose that is mapping or unmapping (it passed the hook
    // before the hold): until it reaches the hook again, objects may be half there.
    while s.proc.read_u64(t + BUSY)? != 0
        || (unmapping(s, t)? && s.proc.read_u64(t + WAITING_DELETE)? == 0)
    {
        if Instant::now() > deadline {
            bail!(
                Busy,
                "a thread of process {} stays inside rlivepatch's hook for objects that come (in a dlopen); retry",
                s.proc.pid
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Is a link-map namespace of the process in the middle of a `dlopen` or `dlclose`
/// (`RT_ADD`, `RT_DELETE`)?
fn unmapping(s: &Session, t: u64) -> Result<bool> {
    let mut r = s.proc.read_u64(t + R_DEBUG)?;
    let mut n = 0;
    while r != 0 && n < 256 {
        let head = s.proc.read(r, 48)?;
        let version = i32::from_le_bytes(head[0..4].try_into().unwrap());
        let state = i32::from_le_bytes(head[24..28].try_into().unwrap());
        if state != 0 {
            return Ok(true);
        }
        r = if version >= 2 {
            u64::from_le_bytes(head[40..48].try_into().unwrap())
        } else {
            0
        };
        n += 1;
    }
    Ok(false)
}

/// After an operation that was undone: let the hook go, and take it out of the loader
/// when no patch waits for objects (an apply that installed it failed).
pub fn release(s: &mut Session) -> Result<()> {
    s.thaw()?;
    if let Some(h) = s.record.hook.clone()
        && !s
            .record
            .patches
            .iter()
            .any(|p| !p.disabled && !p.coming.is_empty())
    {
        if s.proc.read(h.addr, JMP_LEN)? == h.jump {
            s.proc.write(h.addr, &h.orig)?;
        }
        s.record.hook = None;
        s.save_record()?;
    }
    Ok(())
}

/// The record learns the copies the hook patched since it last looked: for each, the
/// functions of every active patch pending for its object, at its addresses (oldest patch
/// first, as the hook stacked them); copies that went away are forgotten. Returns the
/// table's generation.
pub fn sync(s: &mut Session) -> Result<u64> {
    for p in &mut s.record.patches {
        p.funcs.retain(|f| f.copy.is_none());
    }
    let Some(view) = read(&s.proc, &s.record)? else {
        return Ok(0);
    };
    if !view.copies.is_empty() {
        s.refresh()?;
    }
    // A copy the hook has not seen go yet (its dlclose waits in the hook) may have left
    // its place to another object: only a copy still there counts.
    let objects = &s.objects;
    let there = |c: &Copy| {
        objects.list.iter().any(|o| {
            o.bias().ok() == Some(c.address)
                && o.file().ok().and_then(|f| f.build_id_hex()).as_deref() == Some(&c.build_id)
        })
    };
    let copies: Vec<Copy> = view
        .copies
        .iter()
        .filter(|c| c.state == "patched" && c.namespace == 0 && there(c))
        .cloned()
        .collect();
    // A copy listed as patched whose entry holds the original code was switched back
    // since (a disable while it stayed loaded): nothing of it is the patches'.
    let proc = &s.proc;
    let unpatched = |f: &AppliedFunc| {
        proc.read(f.old_addr, JMP_LEN)
            .is_ok_and(|b| b[..] == f.orig[..JMP_LEN])
    };
    for c in &copies {
        for p in s.record.patches.iter_mut().filter(|p| !p.disabled) {
            let add: Vec<AppliedFunc> = p
                .coming
                .iter()
                .filter(|cf| cf.build_id == c.build_id)
                .map(|cf| at(&cf.func, c.address))
                .filter(|f| !unpatched(f))
                .collect();
            p.funcs.extend(add);
        }
    }
    Ok(view.generation)
}

/// Forget the functions of objects the process unloaded since they were patched
/// (`dlclose`): there is nothing left to switch back, and a new object mapped at the same
/// place must not be taken for them.
pub fn forget_unloaded(s: &mut Session) -> Result<()> {
    // The objects of the session may be older than the last dlclose.
    s.refresh_after_attach()?;
    // Gone, or a new copy of the same file at the same place (its entry holds the
    // original code: no patch is at work there).
    let (proc, objects) = (&s.proc, &s.objects);
    let gone = |f: &AppliedFunc| {
        f.copy.is_none()
            && (!objects
                .by_addr(f.old_addr)
                .is_some_and(|o| o.path == f.object && o.is_code(f.old_addr))
                || proc
                    .read(f.old_addr, JMP_LEN)
                    .is_ok_and(|b| b[..] == f.orig[..JMP_LEN]))
    };
    let marks: Vec<Vec<bool>> = s
        .record
        .patches
        .iter()
        .map(|p| p.funcs.iter().map(|f| !p.disabled && gone(f)).collect())
        .collect();
    let mut dropped = Vec::new();
    for (p, marks) in s.record.patches.iter_mut().zip(marks) {
        let mut m = marks.into_iter();
        p.funcs.retain(|f| {
            let g = m.next().unwrap_or(false);
            if g {
                dropped.push(format!("{} of {} ({})", f.symbol, f.object, p.name));
            }
            !g
        });
    }
    if !dropped.is_empty() {
        s.progress(&format!(
            "note: unloaded since they were patched, forgotten: {}",
            dropped.join(", ")
        ));
    }
    Ok(())
}

/// `f` (at file addresses) in the copy loaded at `bias`.
fn at(f: &AppliedFunc, bias: u64) -> AppliedFunc {
    let mut g = f.clone();
    g.old_addr = f.old_addr.wrapping_add(bias);
    for p in &mut g.parts {
        p.start = p.start.wrapping_add(bias);
        p.end = p.end.wrapping_add(bias);
    }
    g.copy = Some(bias);
    g
}

/// The patches that are not disabled, with their places in the stack.
fn active(rec: &Record) -> impl Iterator<Item = (usize, &AppliedPatch)> {
    rec.patches.iter().enumerate().filter(|(_, p)| !p.disabled)
}

/// Write the table from the record: every function of every active patch pending for an
/// object, oldest patch first, and where the loader's `r_debug` is. Done while frozen.
pub fn commit(s: &mut Session) -> Result<()> {
    let Some(t) = table(&s.record)? else {
        return Ok(());
    };
    let view = read(&s.proc, &s.record)?.unwrap();
    let mut objs = view.objs.clone();
    let mut new_objs: Vec<(usize, &ComingFunc)> = Vec::new();
    let mut funcs = Vec::new();
    for (pi, p) in active(&s.record) {
        for cf in &p.coming {
            let obj = match objs.iter().position(|b| *b == cf.build_id) {
                Some(i) => i,
                None => {
                    if objs.len() >= MAX_OBJS {
                        bail!(
                            Failed,
                            "the runtime's table of objects that come is full ({MAX_OBJS} objects)"
                        );
                    }
                    objs.push(cf.build_id.clone());
                    new_objs.push((objs.len() - 1, cf));
                    objs.len() - 1
                }
            };
            let mut e = Vec::with_capacity(FUNC_SIZE as usize);
            e.extend((obj as u32).to_le_bytes());
            e.extend((pi as u32).to_le_bytes());
            e.extend(cf.func.old_addr.to_le_bytes());
            let mut orig = [0u8; 8];
            orig[..JMP_LEN].copy_from_slice(&cf.func.orig[..JMP_LEN]);
            e.extend(orig);
            e.extend(cf.func.new_addr.to_le_bytes());
            funcs.extend(e);
        }
    }
    if funcs.len() / FUNC_SIZE as usize > MAX_FUNCS {
        bail!(
            Failed,
            "the runtime's table of functions in objects that come is full ({MAX_FUNCS})"
        );
    }
    for (i, cf) in new_objs {
        let mut o = vec![0u8; OBJ_SIZE as usize];
        let id = unhex(&cf.build_id);
        o[..id.len()].copy_from_slice(&id);
        o[32..36].copy_from_slice(&(id.len() as u32).to_le_bytes());
        o[40..48].copy_from_slice(&cf.note_vaddr.to_le_bytes());
        let n = cf.name.as_bytes();
        let n = &n[..n.len().min(63)];
        o[48..48 + n.len()].copy_from_slice(n);
        s.proc.write(t + OBJS + i as u64 * OBJ_SIZE, &o)?;
    }
    // The objects' callbacks, for the copies the hook patches.
    let mut cbs = Vec::new();
    for (pi, p) in active(&s.record) {
        for (name, c) in &p.object_callbacks {
            let Some(cf) = p.coming.iter().find(|cf| cf.name == *name) else {
                continue;
            };
            let Some(obj) = objs.iter().position(|b| *b == cf.build_id) else {
                continue;
            };
            cbs.extend((obj as u32).to_le_bytes());
            cbs.extend((pi as u32).to_le_bytes());
            for a in c {
                cbs.extend(a.unwrap_or(0).to_le_bytes());
            }
        }
    }
    if cbs.len() / CB_SIZE as usize > MAX_CBS {
        bail!(
            Failed,
            "the runtime's table of object callbacks is full ({MAX_CBS})"
        );
    }
    if !cbs.is_empty() {
        s.proc.write(t + CBS, &cbs)?;
    }
    s.proc.write(
        t + NCBS,
        &((cbs.len() / CB_SIZE as usize) as u64).to_le_bytes(),
    )?;
    let r_debug = loader_symbol(&s.objects, "_r_debug").map_or(0, |(a, _)| a);
    s.proc.write(t + R_DEBUG, &r_debug.to_le_bytes())?;
    if !funcs.is_empty() {
        s.proc.write(t + FUNCS, &funcs)?;
    }
    s.proc
        .write(t + NOBJS, &(objs.len() as u64).to_le_bytes())?;
    s.proc.write(
        t + NFUNCS,
        &((funcs.len() / FUNC_SIZE as usize) as u64).to_le_bytes(),
    )?;
    register_adopted(s, t)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The run-time address of a symbol of the loader.
fn loader_symbol(objects: &Objects, name: &str) -> Option<(u64, u64)> {
    let o = objects.loader()?;
    let f = o.file().ok()?;
    let s = f
        .dynsym()
        .iter()
        .chain(f.symtab())
        .find(|s| s.name == name && s.value != 0)?;
    Some((s.value.wrapping_add(o.bias().ok()?), s.size))
}

/// Where in `_dl_debug_state` (its code `code`, then `padding` bytes of alignment padding
/// that nothing uses) the hook's jump goes: glibc's function is a bare `ret`, or
/// `endbr64; ret` when built for CET (the `endbr64` stays, for indirect branch tracking).
/// Any other shape is not one rlivepatch knows, and is refused.
pub fn hook_site(code: &[u8], padding: usize) -> std::result::Result<usize, String> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let at = match code {
        [0xc3] => 0,
        [a, b, c, d, 0xc3] if [*a, *b, *c, *d] == ENDBR64 => 4,
        _ => {
            return Err(format!(
                "its code ({}) is not the `ret` rlivepatch knows",
                hex(code)
            ));
        }
    };
    if 1 + padding < JMP_LEN {
        return Err(format!(
            "only {} bytes of padding follow it, and the jump takes {JMP_LEN}",
            padding
        ));
    }
    Ok(at)
}

/// The write that points the loader's debugger notification at the runtime's hook, when
/// the loader's code is its own.
pub fn install(s: &Session) -> Result<Hook> {
    let h = candidate(s)?;
    let now = s.proc.read(h.addr, JMP_LEN)?;
    if now != h.orig {
        bail!(
            Mismatch,
            "the loader's _dl_debug_state in process {} holds {} instead of its own code {} (a debugger's breakpoint, or another tool); detach it and retry",
            s.proc.pid,
            hex(&now),
            hex(&h.orig)
        );
    }
    Ok(h)
}

/// The record's hook from the loader's code itself: a run killed around the switch may
/// have written the jump without recording it, or the other way round.
pub fn observe_hook(s: &mut Session) -> Result<()> {
    if s.record.runtime.is_none() {
        return Ok(());
    }
    let Ok(h) = candidate(s) else {
        return Ok(());
    };
    let now = s.proc.read(h.addr, JMP_LEN)?;
    let seen = if now == h.jump {
        Some(h)
    } else if now == h.orig {
        None
    } else {
        return Ok(());
    };
    if s.record.hook != seen {
        s.record.hook = seen;
        s.save_record()?;
    }
    Ok(())
}

/// Where the hook's jump goes and what it is, in this process.
fn candidate(s: &Session) -> Result<Hook> {
    let why = |w: String| {
        err!(
            Mismatch,
            "rlivepatch cannot hook the loader of process {} to patch objects when they come: _dl_debug_state {w}; apply the patch once the objects are loaded",
            s.proc.pid
        )
    };
    let rt = s
        .record
        .runtime
        .as_ref()
        .ok_or_else(|| err!(Failed, "the runtime is not loaded"))?;
    let loader = s
        .objects
        .loader()
        .ok_or_else(|| why("is in no loader rlivepatch recognises".into()))?;
    let file = loader.file()?;
    let bias = loader.bias()?;
    // The same for every process and run with this version of the loader: kept (finding
    // it decodes the padding after the function).
    let version = file.version();
    let parts = version.as_deref().map(|v| [v]);
    let site = crate::os::kept::get_or_make("dl-hook", parts.as_ref().map(|p| &p[..]), || {
        Ok::<_, std::convert::Infallible>(site_in(&file))
    });
    let site = site.unwrap_or_else(|e| match e {}).map_err(why)?;
    let addr = site.at + bias;
    let target = rt.base + crate::remote::runtime::layout()?.dl_hook;
    let jump = redirect::jmp(addr, target)
        .ok_or_else(|| why("is more than 2 GiB away from the rlivepatch runtime".into()))?
        .to_vec();
    Ok(Hook {
        addr,
        orig: site.orig,
        jump,
    })
}

/// Where the hook's jump goes in the loader's file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Site {
    /// File address.
    at: u64,
    /// The bytes the jump covers there.
    orig: Vec<u8>,
}

/// The hook's place in the loader's `file`, or why there is none.
fn site_in(file: &crate::elf::symbols::ElfFile) -> std::result::Result<Site, String> {
    let sym = file
        .dynsym()
        .iter()
        .chain(file.symtab())
        .find(|x| x.name == "_dl_debug_state" && x.value != 0)
        .ok_or("is not among the loader's symbols")?;
    let code = file
        .bytes_at(sym.value, sym.size.max(1) as usize)
        .ok_or("is not in the loader's file")?;
    let padding = redirect::padding_after(file, sym.value, sym.size.max(1));
    let site = hook_site(code, padding)?;
    let orig = file
        .bytes_at(sym.value + site as u64, JMP_LEN)
        .ok_or("is cut short by the end of its segment")?
        .to_vec();
    Ok(Site {
        at: sym.value + site as u64,
        orig,
    })
}

/// The switch's write that installs (`on`) or removes the hook.
pub fn hook_write(h: &Hook, on: bool) -> Write {
    let (old, new) = if on {
        (h.orig.clone(), h.jump.clone())
    } else {
        (h.jump.clone(), h.orig.clone())
    };
    Write {
        addr: h.addr,
        old,
        new,
    }
}

/// The objects of the process it loaded with `dlopen` (not the program, the libraries
/// it needs from the start, the loader or the vDSO): those can be unloaded and loaded
/// again, as a new copy.
pub fn unloadable(objects: &Objects) -> Vec<String> {
    let Ok(main) = objects.main() else {
        return Vec::new();
    };
    // From the dynamic tables only: this runs on every apply, and parsing every object
    // of the process (its symbols) for its DT_NEEDED would cost more than the apply.
    let mut names: Vec<String> = main.needed();
    let mut reached: Vec<&str> = vec![main.path.as_str()];
    let mut i = 0;
    while i < names.len() {
        let n = names[i].clone();
        i += 1;
        for o in &objects.list {
            if reached.contains(&o.path.as_str()) {
                continue;
            }
            if o.file_name() == n || o.soname().as_deref() == Some(n.as_str()) {
                reached.push(o.path.as_str());
                let more: Vec<String> = o
                    .needed()
                    .into_iter()
                    .filter(|x| !names.contains(x))
                    .collect();
                names.extend(more);
            }
        }
    }
    let loader = objects.loader().map(|o| o.path.as_str());
    objects
        .list
        .iter()
        .filter(|o| o.path.starts_with('/') && !reached.contains(&o.path.as_str()))
        .filter(|o| Some(o.path.as_str()) != loader && !o.path.contains("/memfd:"))
        .map(|o| o.path.clone())
        .collect()
}

/// Is a function of `resolved` in an object that may be unloaded (loaded with `dlopen`,
/// or already gone)? Then the hook is held before the switch.
pub fn may_go(objects: &Objects, resolved: &[Resolved]) -> bool {
    let dynamic = unloadable(objects);
    resolved
        .iter()
        .any(|r| dynamic.contains(&r.object) || !objects.list.iter().any(|o| o.path == r.object))
}

/// The functions of `resolved` that are in objects the process may unload and load
/// again, and that a plain jump serves: a later copy must be patched too.
pub fn adoptable(objects: &Objects, resolved: &[Resolved]) -> Vec<usize> {
    let dynamic = unloadable(objects);
    resolved
        .iter()
        .enumerate()
        .filter(|(_, r)| dynamic.contains(&r.object))
        .filter(|(_, r)| r.resolver.is_none() && !r.contract.preserves())
        .map(|(i, _)| i)
        .collect()
}

/// After the switch: the functions at `which` (indexes into `applied.funcs`, patched in
/// loaded copies of objects that may be unloaded) become the patch's functions for every
/// copy, this one included, which the table learns as patched at [`settle`].
pub fn adopt(s: &mut Session, applied: &mut AppliedPatch, which: &[usize]) -> Result<()> {
    let mut keep = Vec::new();
    for (i, f) in std::mem::take(&mut applied.funcs).into_iter().enumerate() {
        let fit = which.contains(&i) && f.island.is_none() && f.wrap.is_none();
        let ids = fit
            .then(|| s.objects.by_addr(f.old_addr))
            .flatten()
            .and_then(|o| Some((o.file().ok()?, o.file_name().to_string(), o.bias().ok()?)))
            .and_then(|(file, name, bias)| {
                crate::elf::buildid::note(&file).map(|(id, note)| (id, note, name, bias))
            });
        let Some((build_id, note_vaddr, name, bias)) = ids else {
            keep.push(f);
            continue;
        };
        let mut func = at(&f, bias.wrapping_neg());
        func.copy = None;
        if !s.adopted.iter().any(|(b, a)| *b == build_id && *a == bias) {
            s.adopted.push((build_id.clone(), bias));
        }
        // A pending function whose object arrived meanwhile has its template already.
        if !applied
            .coming
            .iter()
            .any(|c| c.build_id == build_id && c.func.old_addr == func.old_addr)
        {
            applied.coming.push(ComingFunc {
                name,
                build_id,
                note_vaddr,
                func,
            });
        }
    }
    applied.funcs = keep;
    Ok(())
}

/// Tell the table of the copies this run patched itself (see [`adopt`]): found in the
/// loader's list by load bias.
fn register_adopted(s: &mut Session, t: u64) -> Result<()> {
    if s.adopted.is_empty() {
        return Ok(());
    }
    let view = read(&s.proc, &s.record)?.unwrap();
    let r_debug = s.proc.read_u64(t + R_DEBUG)?;
    let mut lm = if r_debug == 0 {
        0
    } else {
        s.proc.read_u64(r_debug + 8)?
    };
    let mut copies = Vec::new();
    let mut guard = 0;
    while lm != 0 && guard < 100_000 {
        let l_addr = s.proc.read_u64(lm)?;
        if let Some((b, _)) = s.adopted.iter().find(|(_, a)| *a == l_addr)
            && let Some(obj) = view.objs.iter().position(|x| x == b)
            && !view.copies.iter().any(|c| c.address == l_addr)
        {
            let mut c = Vec::with_capacity(COPY_SIZE as usize);
            c.extend(l_addr.to_le_bytes());
            c.extend(lm.to_le_bytes());
            c.extend((obj as u32).to_le_bytes());
            c.extend(1u32.to_le_bytes());
            c.extend(0u64.to_le_bytes());
            copies.push(c);
        }
        lm = s.proc.read_u64(lm + 24)?;
        guard += 1;
    }
    let n = view.copies.len() as u64;
    if n + copies.len() as u64 > MAX_COPIES {
        bail!(
            Failed,
            "the runtime's table of loaded copies is full ({MAX_COPIES})"
        );
    }
    s.proc.write(t + COPIES + n * COPY_SIZE, &copies.concat())?;
    s.proc
        .write(t + NCOPIES, &(n + copies.len() as u64).to_le_bytes())?;
    s.proc
        .write(t + GENERATION, &(view.generation + 1).to_le_bytes())?;
    s.adopted.clear();
    Ok(())
}

/// The switch's write that takes the hook out of the loader, when no patch will wait
/// for objects after it (the hook goes in when the hook is first held, see [`freeze`]).
pub fn unhook(s: &Session, needed: bool) -> Option<Write> {
    match (&s.record.hook, needed) {
        (Some(h), false) => Some(hook_write(h, false)),
        _ => None,
    }
}

/// A hold on the hook left by an rlivepatch that is gone (the hook stops waiting for a
/// dead one anyway, but its pid may be reused).
pub fn clear_stale(s: &mut Session) -> Result<()> {
    if s.frozen {
        return Ok(());
    }
    if let Some(t) = table(&s.record)?
        && s.proc.read_u64(t + FROZEN)? != 0
    {
        s.proc.write(t + FROZEN, &0u64.to_le_bytes())?;
    }
    Ok(())
}

/// Write the table and let the hook go, at the end of an operation that changed which
/// patches are active (also when `repair` finishes one).
pub fn settle(s: &mut Session) -> Result<()> {
    if s.frozen || in_use(&s.record) {
        freeze(s)?;
        commit(s)?;
    }
    s.thaw()
}

/// Objects pending at resolution that a thread loaded meanwhile, before the hook was
/// held: their copies are loaded objects now, patched in the same switch as the others
/// (with the consistency check), and handed to the hook like the copies `adopt` takes.
/// Returns their functions, at their addresses.
pub fn arrived(s: &mut Session, coming: &[ComingFunc]) -> Result<Vec<AppliedFunc>> {
    s.refresh()?;
    let mut out = Vec::new();
    for o in &s.objects.list {
        let Ok(file) = o.file() else { continue };
        let Some(id) = file.build_id_hex() else {
            continue;
        };
        let Ok(bias) = o.bias() else { continue };
        for cf in coming.iter().filter(|cf| cf.build_id == id) {
            let mut f = at(&cf.func, bias);
            f.copy = None;
            out.push(f);
        }
    }
    Ok(out)
}

/// Refuse to go on when an object a function was resolved in was unloaded since (a
/// `dlclose` before the hook was held): another may be at its place now. Called while
/// held, after [`refuse_arrived`] refreshed the objects.
pub fn refuse_gone(s: &Session, resolved: &[Resolved]) -> Result<()> {
    for r in resolved {
        let same = s
            .objects
            .by_addr(r.addr)
            .is_some_and(|o| o.path == r.object && o.bias().ok() == Some(r.bias));
        if !same {
            return Err(err!(
                Busy,
                "{} ({}) was unloaded by process {} (a dlclose) while the patch was being applied; nothing was changed: retry",
                r.symbol,
                r.object,
                s.proc.pid
            )
            .because(crate::error::Cause::Churn));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::hook_site;

    #[test]
    fn hook_shapes() {
        assert_eq!(hook_site(&[0xc3], 15), Ok(0));
        assert_eq!(hook_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0xc3], 11), Ok(4));
        assert!(hook_site(&[0xc3], 3).unwrap_err().contains("padding"));
        assert!(
            hook_site(&[0x31, 0xc0, 0xc3], 15)
                .unwrap_err()
                .contains("31c0c3")
        );
        assert!(hook_site(&[0xcc], 15).is_err());
        assert!(hook_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x90, 0xc3], 10).is_err());
    }
}
