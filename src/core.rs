//! The lifecycle: apply, disable, list, check. Each operation runs in a `Session`: the
//! process attached (which is also the lock against a second rlivepatch), its record read,
//! a thread borrowed for injected calls when one is needed; and each operation either
//! completes or undoes every step it made, so that a failure leaves the target as it was.

use crate::error::Result;
use crate::inject::Libc;
use crate::objects::Objects;
use crate::patch::Patch;
use crate::process::{Mapping, Process};
use crate::redirect::{self, JMP_LEN};
use crate::session::Session;
use crate::state::{AppliedFunc, AppliedPatch, Island, Record, Stage, Store};
use crate::symbols::{ElfFile, SymKind, find_function, hex};
use crate::transition::{self, Changed, Plan, Write};
use crate::{bail, err};
use std::path::Path;
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(15),
            force: false,
            call_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(30),
            debug_dirs: Vec::new(),
        }
    }
}

/// Where progress lines go (stderr in the CLI).
pub type ProgressFn<'a> = &'a mut dyn FnMut(&str);

/// A function of a patch resolved against the process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolved {
    /// Path of the object.
    pub object: String,
    /// The old symbol.
    pub symbol: String,
    /// Its demangled form, for C++.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// Run-time entry.
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// The separate debug file its symbol came from, when the object is stripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// For an IFUNC symbol: the implementation the resolver picks in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifunc_implementation: Option<String>,
    /// The entry bytes in the file.
    #[serde(skip)]
    pub orig: Vec<u8>,
    /// Index in the patch's function list.
    #[serde(skip)]
    pub index: usize,
    /// The IFUNC resolver to call, until the implementation is known.
    #[serde(skip)]
    pub resolver: Option<u64>,
}

/// Check the target before touching it.
pub fn preflight(proc: &Process) -> Result<()> {
    let st = &proc.status;
    match st.state {
        'Z' | 'X' => bail!(
            Target,
            "process {} ({}) is a zombie: it has exited and waits for its parent to reap it",
            proc.pid,
            st.name
        ),
        'T' => bail!(
            Target,
            "process {} ({}) is stopped (job control, e.g. SIGSTOP or Ctrl-Z); continue it with `kill -CONT {}` and retry",
            proc.pid,
            st.name,
            proc.pid
        ),
        't' if st.tracer != 0 => {}
        _ => {}
    }
    if st.tracer != 0 && st.tracer != std::process::id() as i32 {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", st.tracer)).unwrap_or_default();
        if comm.trim() != "rlivepatch" {
            bail!(
                Target,
                "process {} is already traced by {} (pid {}); detach it (quit the debugger or tracer) and retry",
                proc.pid,
                comm.trim(),
                st.tracer
            );
        }
    }
    let (exe, _, _) = proc.exe().map_err(|e| {
        if std::fs::read_to_string(format!("/proc/{}/cmdline", proc.pid))
            .is_ok_and(|c| c.is_empty())
        {
            err!(
                Target,
                "process {} ({}) is a kernel thread; rlivepatch patches user processes",
                proc.pid,
                st.name
            )
        } else {
            e
        }
    })?;
    let exe_file = ElfFile::open(Path::new(&format!("/proc/{}/exe", proc.pid))).map_err(|e| {
        err!(
            Target,
            "cannot read the executable of process {}: {}",
            proc.pid,
            e.message
        )
    })?;
    if !exe_file.is_64 {
        bail!(
            Target,
            "process {} ({}) is a 32-bit program; rlivepatch patches x86_64 processes",
            proc.pid,
            exe.display()
        );
    }
    if !exe_file.is_x86_64 {
        bail!(
            Target,
            "process {} ({}) is not an x86_64 program",
            proc.pid,
            exe.display()
        );
    }
    if exe_file.interp.is_none() {
        bail!(
            Target,
            "process {} ({}) is statically linked: it has no dynamic loader, so no dlopen to load a patch",
            proc.pid,
            exe.display()
        );
    }
    Ok(())
}

/// Resolve every function of `patch` in the process: object, symbol, size, entry bytes.
/// IFUNC symbols are resolved later, in the process ([`resolve_ifuncs`]).
pub fn resolve(patch: &Patch, objects: &Objects) -> Result<Vec<Resolved>> {
    let mut out: Vec<Resolved> = Vec::new();
    for (index, f) in patch.funcs.iter().enumerate() {
        let obj = objects.by_name(f.object.as_deref())?;
        // A versioned name is looked up in the object's own dynamic symbols.
        let syms = if f.old.contains('@') {
            obj.file()?
        } else {
            obj.symbols_file()?
        };
        let bias = obj.bias()?;
        let sym = find_function(&syms, &f.old, f.sympos).map_err(|e| {
            if !e.message.contains("not found") {
                return e;
            }
            let looked = obj.debug_looked_at();
            let hint = if syms.has_symtab() {
                String::new()
            } else if looked.is_empty() {
                " (it has no .symtab: its static functions are only in a separate debug file)".to_string()
            } else {
                let l: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                format!(" (it has no .symtab, and no debug file was found at {})", l.join(", "))
            };
            err!(
                Mismatch,
                "function {} not found in {}{hint}; check the name with `nm {}`, or install its debug symbols or pass --debug-dir DIR",
                f.old,
                obj.display_name(),
                obj.path
            )
        })?;
        let mut r = Resolved {
            object: obj.path.clone(),
            symbol: f.old.clone(),
            demangled: crate::demangle::demangle(&f.old),
            addr: 0,
            size: 0,
            debug_file: obj.debug_file(),
            ifunc_implementation: None,
            orig: Vec::new(),
            index,
            resolver: None,
        };
        if sym.kind == SymKind::Ifunc {
            // The symbol is a resolver: what runs is the implementation it picks.
            r.resolver = Some(sym.value.wrapping_add(bias));
        } else {
            resolve_code(objects, &mut r, sym.value.wrapping_add(bias), sym.size)?;
        }
        out.push(r);
    }
    Ok(out)
}

/// Fill in the code of a resolved function at run-time address `addr`: size (from the
/// symbol, else the unwind table), entry bytes, and the entry checks.
fn resolve_code(objects: &Objects, r: &mut Resolved, addr: u64, sym_size: u64) -> Result<()> {
    let obj = objects.by_addr(addr).ok_or_else(|| {
        err!(
            Mismatch,
            "{} at {addr:#x} is not in any loaded object",
            r.symbol
        )
    })?;
    let file = obj.file()?;
    let bias = obj.bias()?;
    let vaddr = addr.wrapping_sub(bias);
    let mut size = sym_size;
    if size == 0 {
        size = crate::unwind::fde_range(&file, vaddr)
            .map(|(s, e)| e.saturating_sub(vaddr).min(e - s))
            .unwrap_or(0);
    }
    let code = file.bytes_at(vaddr, size as usize).ok_or_else(|| {
        err!(
            Mismatch,
            "function {} in {} is not in the file's loadable code",
            r.symbol,
            obj.display_name()
        )
    })?;
    if !obj.is_code(addr) {
        bail!(
            Mismatch,
            "{} in {} is not code ({addr:#x} is not in an executable mapping)",
            r.symbol,
            obj.display_name()
        );
    }
    redirect::check_function(&r.symbol, addr, code).map_err(|e| e.context(obj.display_name()))?;
    r.object = obj.path.clone();
    r.addr = addr;
    r.size = size;
    r.orig = code[..JMP_LEN].to_vec();
    Ok(())
}

/// Call each IFUNC resolver in the process and resolve the implementation it returns,
/// which is what every call of the function runs. The resolver itself is never written.
pub fn resolve_ifuncs(s: &mut Session, resolved: &mut [Resolved]) -> Result<()> {
    for r in resolved.iter_mut() {
        let Some(resolver) = r.resolver.take() else {
            continue;
        };
        let implementation = s.call(
            resolver,
            &[],
            &format!("the IFUNC resolver of {}", r.symbol),
        )?;
        let name = s.objects.symbolize(implementation);
        resolve_code(&s.objects, r, implementation, 0).map_err(|e| {
            e.context(format!(
                "{} is an IFUNC; its implementation in this process is {name}",
                r.symbol
            ))
        })?;
        r.ifunc_implementation = Some(name);
    }
    for (i, r) in resolved.iter().enumerate() {
        if resolved[..i].iter().any(|o| o.addr == r.addr) {
            bail!(
                Patch,
                "two declarations of the patch replace the same function at {:#x} ({})",
                r.addr,
                r.symbol
            );
        }
    }
    Ok(())
}

/// The bytes an entry holds now according to the record: a jump to the newest
/// implementation, or the original bytes.
fn expected_entry(rec: &Record, addr: u64, orig: &[u8]) -> Vec<u8> {
    match rec.stack_of(addr).last() {
        Some((_, f)) => redirect::jmp(addr, f.island.unwrap_or(f.new_addr))
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        None => orig.to_vec(),
    }
}

/// The code that runs today for the function at `addr`: what a switch away from it changes.
fn current_impl(rec: &Record, f: &AppliedFunc) -> Vec<Changed> {
    match rec.stack_of(f.old_addr).last() {
        Some((p, top)) => implementation_of(p, top),
        None => vec![Changed {
            start: f.old_addr,
            end: f.old_addr + f.old_size.max(JMP_LEN as u64),
            name: format!(
                "{} ({})",
                crate::demangle::display(&f.symbol),
                f.object.rsplit('/').next().unwrap_or(&f.object)
            ),
        }],
    }
}

fn implementation_of(p: &AppliedPatch, f: &AppliedFunc) -> Vec<Changed> {
    let mut v = vec![Changed {
        start: f.new_addr,
        end: f.new_addr + f.new_size.max(1),
        name: format!("{} (new function of patch {})", f.new_name, p.name),
    }];
    if let Some(s) = f.island {
        v.push(Changed {
            start: s,
            end: s + redirect::SLOT_SIZE,
            name: format!("the island of {}", f.symbol),
        });
    }
    v
}

/// What `apply` did.
#[derive(Debug, serde::Serialize)]
pub struct ApplyReport {
    /// Process id.
    pub pid: i32,
    /// Patch name.
    pub patch: String,
    /// Functions redirected.
    pub functions: Vec<crate::report::FuncView>,
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
}

/// A target symbol a patch uses, resolved.
struct SymbolFill {
    slot_vaddr: u64,
    value: Fill,
}

/// What a symbol slot of the patch receives.
enum Fill {
    /// An address.
    Addr(u64),
    /// A thread-local variable: its object (`None` for the executable) and its offset in
    /// that object's TLS block; the module id is asked of the dynamic loader.
    Tls(Option<String>, u64),
}

/// Resolve the target symbols a patch declares with `RLIVEPATCH_SYMBOL` and
/// `RLIVEPATCH_TLS`.
fn resolve_symbols(patch: &Patch, objects: &Objects) -> Result<Vec<SymbolFill>> {
    let mut out = Vec::new();
    for r in &patch.symbols {
        let obj = objects.by_name(r.object.as_deref())?;
        let file = obj.symbols_file()?;
        let sym = crate::symbols::find_symbol(&file, &r.symbol).map_err(|e| {
            err!(
                Mismatch,
                "symbol {} (used by the patch as {}) cannot be resolved in {}: {}; check it with `nm {}`",
                r.symbol,
                r.local,
                obj.display_name(),
                e.message,
                obj.path
            )
        })?;
        let value = match (sym.kind == SymKind::Tls, r.tls) {
            (false, false) => Fill::Addr(sym.value.wrapping_add(obj.bias()?)),
            (true, true) => Fill::Tls((!obj.is_main).then(|| obj.path.clone()), sym.value),
            (true, false) => bail!(
                Mismatch,
                "symbol {} of {} is thread-local; declare it with RLIVEPATCH_TLS",
                r.symbol,
                obj.display_name()
            ),
            (false, true) => bail!(
                Mismatch,
                "symbol {} of {} is not thread-local; declare it with RLIVEPATCH_SYMBOL",
                r.symbol,
                obj.display_name()
            ),
        };
        out.push(SymbolFill {
            slot_vaddr: r.slot_vaddr,
            value,
        });
    }
    Ok(out)
}

/// Fill the patch's symbol slots (the patch is loaded at `base`).
fn fill_symbols(s: &mut Session, base: u64, symbols: &[SymbolFill]) -> Result<()> {
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

/// The kernel's rule: a patch must carry each installed state at the same or a higher
/// version, and a replace patch must carry all of them.
fn check_states(rec: &Record, patch: &Patch) -> Result<()> {
    for p in rec.patches.iter().filter(|p| !p.disabled) {
        for st in &p.states {
            let why = match patch.states.iter().find(|x| x.id == st.id) {
                None if patch.replace => format!(
                    "it replaces every patch but does not carry state {} (installed by {} at version {})",
                    st.id, p.name, st.version
                ),
                Some(x) if x.version < st.version => format!(
                    "it carries state {} at version {}, lower than version {} installed by {}",
                    st.id, x.version, st.version, p.name
                ),
                _ => continue,
            };
            bail!(
                Mismatch,
                "patch {} is not compatible with the already installed livepatches: {why}",
                patch.name
            );
        }
    }
    Ok(())
}

/// Apply the patch file at `path` to process `pid`.
pub fn apply(pid: i32, path: &Path, opts: &Options, progress: ProgressFn) -> Result<ApplyReport> {
    let t0 = Instant::now();
    let patch = Patch::load(path)?;
    let proc = Process::open(pid)?;
    preflight(&proc)?;
    let maps = proc.maps()?;
    let objects = Objects::new(&proc, &maps, &opts.debug_dirs)?;
    crate::buildid::check(&patch, &objects)?;
    let resolved = resolve(&patch, &objects)?;
    let symbols = resolve_symbols(&patch, &objects)?;
    let libc = Libc::find(pid, &objects)?;
    crate::fault::trace("resolved");
    let mut s = Session::attach_with(proc, opts, progress, Some(objects))?;
    s.set_libc(libc);
    crate::fault::point("apply:attached");
    let mut resolved = resolved;
    let r = resolve_ifuncs(&mut s, &mut resolved)
        .and_then(|()| apply_attached(&mut s, &patch, &resolved, &symbols));
    let (functions, replaced, report) = s.conclude(r).map_err(|e| continued(e, pid))?;
    Ok(ApplyReport {
        pid,
        patch: patch.name.clone(),
        functions,
        replaced,
        switch: report,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        stopped_by: stopped_note(pid, progress),
    })
}

type Applied = (
    Vec<crate::report::FuncView>,
    Vec<String>,
    transition::Report,
);

fn refuse_pending(s: &Session) -> Result<()> {
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

fn apply_attached(
    s: &mut Session,
    patch: &Patch,
    resolved: &[Resolved],
    symbols: &[SymbolFill],
) -> Result<Applied> {
    crate::repair::repair_if_needed(s)?;
    refuse_pending(s)?;
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
    check_states(&s.record, patch)?;
    // Someone else's bytes at an entry (a breakpoint, another tool's jump) mean someone
    // else owns it.
    for r in resolved {
        let expected = expected_entry(&s.record, r.addr, &r.orig);
        let now = s.proc.read(r.addr, JMP_LEN)?;
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
    // From here on the record says what is going on, so that a failure, or the death of
    // rlivepatch, can be undone from it.
    s.borrow()?;
    let mut pending = crate::state::Pending::new("apply", &patch.name);
    pending.scratch = s.scratch;
    s.record.pending = Some(pending);
    s.save_record()?;
    crate::fault::point("apply:pending");
    match apply_steps(s, patch, resolved, symbols) {
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
                if let Err(e2) = unwind_apply(s) {
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

/// The pending operation.
fn pending<'s>(s: &'s mut Session<'_>) -> &'s mut crate::state::Pending {
    s.record.pending.as_mut().expect("an operation is pending")
}

/// Record that the pending operation reaches `stage`.
fn set_stage(s: &mut Session, stage: Stage) -> Result<()> {
    pending(s).stage = stage;
    s.save_record()
}

/// States of the enabled patches, oldest first (the registry's "previous" half).
fn installed_states(rec: &Record, until: Option<usize>) -> Vec<u64> {
    rec.patches[..until.unwrap_or(rec.patches.len())]
        .iter()
        .filter(|p| !p.disabled)
        .flat_map(|p| p.state_addrs.iter().copied())
        .collect()
}

/// Run a callback; `Ok(None)` when the patch has none.
fn callback(s: &mut Session, addr: Option<u64>, what: &str, patch: &str) -> Result<Option<i32>> {
    let Some(a) = addr else { return Ok(None) };
    let rax = s.call(a, &[], &format!("the {what} callback of patch {patch}"))?;
    Ok(Some(rax as u32 as i32))
}

fn apply_steps(
    s: &mut Session,
    patch: &Patch,
    resolved: &[Resolved],
    symbols: &[SymbolFill],
) -> Result<Applied> {
    let pid = s.proc.pid;
    let bytes = std::fs::read(&patch.path)
        .map_err(|e| err!(Patch, "cannot read {}: {e}", patch.path.display()))?;
    // 1. The runtime first when the patch uses shadow variables or states: its rlp_*
    //    references must resolve when the patch loads.
    if crate::runtime::needed_by(patch) && s.record.runtime.is_none() {
        s.ensure_runtime()?;
        s.save_record()?;
    }
    s.tr.check_interrupted()?;
    // 2. Load the patch, from a memfd so that the target needs no access to our file.
    let (handle, fd) = match s.load(&format!("rlp:{}", patch.name), &bytes, libc::RTLD_NOW)? {
        Ok(v) => v,
        Err(text) => bail!(
            Patch,
            "process {pid} could not load the patch: {text}; build it with cc -shared -fPIC against libraries the process has"
        ),
    };
    let base = s.proc.read_u64(handle)?;
    let callbacks = [
        patch.callbacks.pre_patch.map(|v| v + base),
        patch.callbacks.post_patch.map(|v| v + base),
        patch.callbacks.pre_unpatch.map(|v| v + base),
        patch.callbacks.post_unpatch.map(|v| v + base),
    ];
    let state_addrs: Vec<u64> = patch.states.iter().map(|st| st.vaddr + base).collect();
    let mut applied = AppliedPatch {
        name: patch.name.clone(),
        path: patch.path.display().to_string(),
        handle,
        base,
        fd,
        forced: s.opts.force,
        replace: patch.replace,
        states: patch.states.clone(),
        callbacks,
        funcs: Vec::new(),
        applied_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        disabled: false,
        state_addrs: state_addrs.clone(),
    };
    pending(s).loading = Some(applied.clone());
    set_stage(s, Stage::Loaded)?;
    crate::fault::point("apply:loaded");
    s.tr.check_interrupted()?;
    s.refresh()?;
    crate::fault::trace("refreshed");
    // 3. Target symbols the patch's code uses.
    fill_symbols(s, base, symbols)?;
    crate::fault::trace("symbols filled");
    // 4. Where the new functions are, as the loader resolved them.
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
        applied.funcs.push(AppliedFunc {
            object: r.object.clone(),
            symbol: r.symbol.clone(),
            old_addr: r.addr,
            old_size: r.size,
            orig: r.orig.clone(),
            new_name: f.new_name.clone(),
            new_addr: expected,
            new_size: new_function_size(&patch.file, f.new_vaddr),
            island: None,
            implementation: r.ifunc_implementation.clone(),
            debug_file: r.debug_file.clone(),
        });
    }
    crate::fault::trace("new functions found");
    // 5. Islands for new functions out of reach of a 32-bit jump. Each slot is recorded
    //    as used by the pending patch.
    let mut pool = redirect::SlotPool::new(&s.record.islands);
    let mut slot_writes = Vec::new();
    for i in 0..applied.funcs.len() {
        let f = &applied.funcs[i];
        if redirect::jmp(f.old_addr, f.new_addr).is_some() {
            continue;
        }
        let slot = match pool.take(f.old_addr) {
            Some(slot) => slot,
            None => {
                let (entry, name) = (f.old_addr, f.symbol.clone());
                let page = map_island(s, entry, &name)?;
                pending(s).new_islands.push(page);
                s.record.islands.push(Island {
                    addr: page,
                    used: Vec::new(),
                });
                pool.add_page(page, &[]);
                pool.take(entry).unwrap_or(page)
            }
        };
        slot_writes.push((slot, redirect::slot_bytes(applied.funcs[i].new_addr)));
        let page = slot & !(redirect::PAGE - 1);
        s.record
            .islands
            .iter_mut()
            .find(|i| i.addr == page)
            .unwrap()
            .used
            .push(slot);
        applied.funcs[i].island = Some(slot);
    }
    // The slots, one write per island page (a patch of 1000 far functions fills 4).
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
    // 6. The plan. An atomic replace also sends every function that only older patches
    //    change back to the original, in the same switch.
    crate::fault::trace("islands");
    let plan = apply_plan(&s.record, &applied);
    crate::fault::trace("plan built");
    pending(s).loading = Some(applied.clone());
    pending(s).writes = plan
        .writes
        .iter()
        .map(|w| (w.addr, hex(&w.old), hex(&w.new)))
        .collect();
    s.save_record()?;
    crate::fault::point("apply:planned");
    s.tr.check_interrupted()?;
    // 7. pre_patch may cancel; then no other callback runs.
    set_stage(s, Stage::PrePatching)?;
    let prev = installed_states(&s.record, None);
    s.set_states(&state_addrs, &prev)?;
    if let Some(code) = callback(s, callbacks[0], "pre_patch", &patch.name)?
        && code != 0
    {
        s.set_states(&[], &[])?;
        pending(s).stage = Stage::Loaded;
        bail!(
            Failed,
            "the pre_patch callback of patch {} returned {code}: the patch refused to apply and was unloaded",
            patch.name
        );
    }
    // 8. The switch. If it fails, the transition is reversed (post_unpatch runs while
    //    the record is undone).
    crate::fault::point("apply:pre_patched");
    set_stage(s, Stage::Switching)?;
    if s.opts.force {
        s.progress("warning: --force: switching without checking that no thread is inside the changed functions; this patch can never be unloaded");
    }
    let report = s.switch(&plan)?;
    // Past the switch, the apply finishes whatever comes.
    s.tr.finishing = true;
    crate::fault::point("apply:switched");
    // 9. post_patch, the record, and the replaced patches unloaded.
    let replaced = finish_apply(s, applied.clone(), true)?;
    let views = applied
        .funcs
        .iter()
        .map(|f| crate::report::FuncView::new(f, &s.objects))
        .collect();
    Ok((views, replaced, report))
}

/// The switch that makes `applied` the newest patch: its functions jump to it; with
/// atomic replace, functions that only older patches change go back to the original.
pub(crate) fn apply_plan(rec: &Record, applied: &AppliedPatch) -> Plan {
    let mut plan = Plan::default();
    for f in &applied.funcs {
        plan.changed.extend(current_impl(rec, f));
        plan.entries.push((f.old_addr, JMP_LEN as u64));
        plan.writes.push(Write {
            addr: f.old_addr,
            old: expected_entry(rec, f.old_addr, &f.orig),
            new: redirect::jmp(f.old_addr, f.island.unwrap_or(f.new_addr))
                .unwrap()
                .to_vec(),
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
pub(crate) fn finish_apply(
    s: &mut Session,
    applied: AppliedPatch,
    run_post_patch: bool,
) -> Result<Vec<String>> {
    if run_post_patch {
        set_stage(s, Stage::PostPatching)?;
        let prev = installed_states(&s.record, None);
        s.set_states(&applied.state_addrs, &prev)?;
        callback(s, applied.callbacks[1], "post_patch", &applied.name)?;
        s.set_states(&[], &[])?;
        crate::fault::point("apply:post_patched");
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
    let freed: Vec<u64> = to_unload
        .iter()
        .flat_map(|p| p.funcs.iter().filter_map(|f| f.island))
        .collect();
    let empty_pages = free_slots(&mut s.record, &freed);
    s.record.patches.push(applied);
    s.record.pending = None;
    s.save_record()?;
    crate::fault::point("apply:committed");
    for p in to_unload.iter().filter(|p| !p.forced) {
        s.unload(p.handle, p.fd)?;
    }
    for page in empty_pages {
        s.syscall(libc::SYS_munmap, &[page, redirect::PAGE])?;
    }
    Ok(to_unload.iter().map(|p| p.name.clone()).collect())
}

/// Undo an apply that did not switch, from what the record says: post_unpatch if
/// pre_patch ran (the kernel's reversed transition), unload the patch, free its islands.
pub(crate) fn unwind_apply(s: &mut Session) -> Result<()> {
    let Some(p) = s.record.pending.clone() else {
        return Ok(());
    };
    if let Some(applied) = &p.loading {
        if p.stage >= Stage::Switching {
            let prev = installed_states(&s.record, None);
            s.set_states(&applied.state_addrs, &prev)?;
            if let Err(e) = callback(s, applied.callbacks[3], "post_unpatch", &applied.name) {
                s.progress(&format!("warning: {}", e.message));
            }
            s.set_states(&[], &[])?;
        }
        s.unload(applied.handle, applied.fd)?;
        let slots: Vec<u64> = applied.funcs.iter().filter_map(|f| f.island).collect();
        free_slots(&mut s.record, &slots);
    }
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

/// Release island slots; returns the pages left empty (to unmap after the switch).
pub(crate) fn free_slots(rec: &mut Record, slots: &[u64]) -> Vec<u64> {
    let mut empty = Vec::new();
    for isl in rec.islands.iter_mut() {
        isl.used.retain(|u| !slots.contains(u));
        if isl.used.is_empty() {
            empty.push(isl.addr);
        }
    }
    rec.islands.retain(|i| !i.used.is_empty());
    empty
}

fn new_function_size(file: &ElfFile, vaddr: u64) -> u64 {
    let from_sym = file
        .symtab
        .iter()
        .chain(&file.dynsym)
        .find(|s| s.value == vaddr && s.kind == SymKind::Func && s.size > 0)
        .map(|s| s.size);
    from_sym
        .or_else(|| crate::unwind::fde_range(file, vaddr).map(|(a, b)| b - a))
        .unwrap_or_else(|| {
            // Unknown: the rest of the patch's code segment, which is conservative.
            file.segments
                .iter()
                .find(|s| s.exec && s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.memsz))
                .map(|s| s.vaddr.saturating_add(s.memsz) - vaddr)
                .unwrap_or(1)
        })
}

/// Map a new island page within reach of `entry`: a private mapping of a memfd named
/// `rlivepatch-island`, so that it is recognisable in the maps (and never merged with a
/// neighbour).
fn map_island(s: &mut Session, entry: u64, name: &str) -> Result<u64> {
    let obj_start = s.objects.by_addr(entry).map(|o| o.start).unwrap_or(entry);
    let min = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(65536);
    let candidates = redirect::island_candidates(&s.maps, entry, obj_start, min);
    s.borrow()?;
    let fd = {
        let inj = s.inj.as_mut().unwrap();
        inj.memfd_with(
            &mut s.tr,
            &s.proc,
            crate::inject::ISLAND_NAME,
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

/// After an operation that completed: if job control stopped the process meanwhile (it
/// is stopped, or a stop signal waits for it), say so; returns the signal's name.
fn stopped_note(pid: i32, progress: ProgressFn) -> Option<String> {
    let sig = crate::process::job_stop(pid)?;
    progress(&format!(
        "process {pid} was stopped by {sig} (job control) while rlivepatch worked; it stays stopped, as job control asked: `kill -CONT {pid}` resumes it"
    ));
    Some(sig)
}

/// An operation undone because job control stopped the process: if a `SIGCONT` came
/// meanwhile, the process runs again and the message says so.
fn continued(e: crate::error::Error, pid: i32) -> crate::error::Error {
    if e.kind != crate::error::ErrorKind::Stopped || crate::process::job_stop(pid).is_some() {
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
        && crate::state::find_mapping(&maps).is_none()
    {
        bail!(Mismatch, "no patch is applied to process {pid}");
    }
    let mut s = Session::attach(proc, opts, progress)?;
    let r = disable_attached(&mut s, name);
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

fn disable_attached(s: &mut Session, name: &str) -> Result<(bool, transition::Report)> {
    let pid = s.proc.pid;
    crate::repair::repair_if_needed(s)?;
    refuse_pending(s)?;
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
        let names: Vec<&str> = s.record.patches.iter().map(|p| p.name.as_str()).collect();
        bail!(
            Mismatch,
            "no patch named {name} is applied to process {pid} (applied: {}); see `rlivepatch list {pid}`",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let p = s.record.patches[idx].clone();
    let plan = disable_plan(&s.record, &p);
    for w in &plan.writes {
        let now = s.proc.read(w.addr, JMP_LEN)?;
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
    let mut pending = crate::state::Pending::new("disable", name);
    pending.stage = Stage::PreUnpatching;
    pending.writes = plan
        .writes
        .iter()
        .map(|w| (w.addr, hex(&w.old), hex(&w.new)))
        .collect();
    pending.scratch = s.scratch;
    s.record.pending = Some(pending);
    s.save_record()?;
    crate::fault::point("disable:pending");
    // pre_unpatch, the switch, post_unpatch. A switch that fails is reversed: the patch
    // stays, and post_patch runs (the kernel's reversed transition).
    let prev = installed_states(&s.record, Some(idx));
    s.set_states(&p.state_addrs, &prev)?;
    callback(s, p.callbacks[2], "pre_unpatch", &p.name)?;
    crate::fault::point("disable:pre_unpatched");
    set_stage(s, Stage::Switching)?;
    let report = match s.switch(&plan) {
        Ok(r) => r,
        Err(e) => {
            s.tr.finishing = true;
            if let Err(e2) = unwind_disable(s) {
                return Err(s.left_behind(&e, "undoing the disable", &e2));
            }
            return Err(e);
        }
    };
    s.tr.finishing = true;
    crate::fault::point("disable:switched");
    let unloaded = finish_disable(s, true)?;
    Ok((unloaded, report))
}

/// The switch that takes `p` away: each function whose newest implementation is `p`'s
/// falls back to the one below it, or to the original.
pub(crate) fn disable_plan(rec: &Record, p: &AppliedPatch) -> Plan {
    let mut plan = Plan::default();
    for f in &p.funcs {
        let stack = rec.stack_of(f.old_addr);
        let Some((top, _)) = stack.last() else {
            continue;
        };
        if top.name != p.name {
            continue;
        }
        let below = stack.len().checked_sub(2).map(|i| stack[i].1);
        let new = match below {
            Some(b) => redirect::jmp(f.old_addr, b.island.unwrap_or(b.new_addr))
                .unwrap()
                .to_vec(),
            None => f.orig.clone(),
        };
        plan.changed.extend(implementation_of(p, f));
        plan.entries.push((f.old_addr, JMP_LEN as u64));
        plan.writes.push(Write {
            addr: f.old_addr,
            old: expected_entry(rec, f.old_addr, &f.orig),
            new,
        });
    }
    plan
}

/// Finish a disable whose switch is done: post_unpatch (when `run_post_unpatch`), the
/// record, the islands, and the patch unloaded (unless it was forced). Returns whether it
/// was unloaded.
pub(crate) fn finish_disable(s: &mut Session, run_post_unpatch: bool) -> Result<bool> {
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
        let prev = installed_states(&s.record, Some(idx));
        s.set_states(&p.state_addrs, &prev)?;
        callback(s, p.callbacks[3], "post_unpatch", &p.name)?;
        s.set_states(&[], &[])?;
    }
    let slots: Vec<u64> = p.funcs.iter().filter_map(|f| f.island).collect();
    let empty_pages = free_slots(&mut s.record, &slots);
    let unload = !p.forced;
    if unload {
        s.record.patches.remove(idx);
    } else {
        s.record.patches[idx].disabled = true;
    }
    s.record.pending = None;
    s.save_record()?;
    crate::fault::point("disable:committed");
    for page in empty_pages {
        s.syscall(libc::SYS_munmap, &[page, redirect::PAGE])?;
    }
    if unload {
        s.unload(p.handle, p.fd)?;
        s.unload_runtime_if_idle()?;
        s.save_record()?;
    } else {
        s.progress(&format!(
            "patch {name} was forced: its functions are restored, but its code stays loaded because a thread may still be inside it"
        ));
    }
    Ok(unload)
}

/// Undo a disable that did not switch: the patch stays; if pre_unpatch ran, post_patch
/// runs (the kernel's reversed transition).
pub(crate) fn unwind_disable(s: &mut Session) -> Result<()> {
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
        let prev = installed_states(&s.record, Some(idx));
        s.set_states(&p.state_addrs, &prev)?;
        if let Err(e) = callback(s, p.callbacks[1], "post_patch", &p.name) {
            s.progress(&format!("warning: {}", e.message));
        }
        s.set_states(&[], &[])?;
    }
    s.record.pending = None;
    s.save_record()
}

/// Repair what an interrupted run left in process `pid`.
pub fn repair(pid: i32, opts: &Options, progress: ProgressFn) -> Result<Vec<String>> {
    let proc = Process::open(pid)?;
    let mut s = Session::attach(proc, opts, progress)?;
    // A repair brings the process to a consistent state: it is not interrupted midway.
    s.tr.finishing = true;
    let r = crate::repair::repair(&mut s);
    s.conclude(r)
}

/// Read the record of a process without attaching to it.
pub fn read_record(pid: i32) -> Result<(Process, Vec<Mapping>, Record)> {
    let proc = Process::open(pid)?;
    let maps = proc.maps()?;
    let rec = Store::load(&proc, &maps)?
        .map(|(_, r)| r)
        .unwrap_or_default();
    Ok((proc, maps, rec))
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
    crate::buildid::check(&patch, &objects)?;
    let mut resolved = resolve(&patch, &objects)?;
    let mut s = Session::attach_with(proc, opts, progress, Some(objects))?;
    let r = (|| -> Result<CheckReport> {
        resolve_ifuncs(&mut s, &mut resolved)?;
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
            let f = AppliedFunc {
                object: r.object.clone(),
                symbol: r.symbol.clone(),
                old_addr: r.addr,
                old_size: r.size,
                orig: r.orig.clone(),
                new_name: String::new(),
                new_addr: 0,
                new_size: 0,
                island: None,
                implementation: None,
                debug_file: None,
            };
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
            safe: blockers.is_empty(),
            functions: resolved.clone(),
            threads: s.tr.threads.len(),
            blockers,
        })
    })();
    s.conclude(r)
}
