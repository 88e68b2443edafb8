//! Bind every reference of the code a patch carries: to the patch itself (changed and new
//! functions, copied strings and constants), to a library (symbols the binary imports
//! too, through the patch's own PLT and GOT), or to the running process (the binary's
//! unchanged functions and its variables), and how: only register-neutral forms, since
//! unchanged callers were built against the exact code (see the research note):
//!
//! | reference | in the patch |
//! |---|---|
//! | `call`/`jmp`/`jcc` | a stub in the patch, `jmp *slot(%rip)` |
//! | `lea x(%rip), %r` | `mov slot(%rip), %r` (same length, same register) |
//! | `mov x@GOTPCREL(%rip), %r`, `call *x@GOTPCREL(%rip)` | the slot instead of the GOT entry |
//! | any other RIP-relative operand (data read, written, compared) | the displacement written at apply time when the data is within 2 GiB, else the instruction moved into a thunk next to the data ([`crate::remote::relocate`]) |
//! | a 64-bit pointer in data | written at apply time |
//!
//! Slots are `RLIVEPATCH_SYMBOL` pointers, filled at apply time. A process symbol is
//! named by its name and file address (`name#0xADDR`): the patch carries the binary's
//! build-id, so the address is exact even for a `static` whose name is ambiguous. The
//! address of a function (as opposed to a call) always names the original entry, which
//! the patch redirects, so that a pointer stored in the process stays valid when the
//! patch is disabled (kpatch's rule).

use super::diff::Change;
use super::relobj::c;
use super::relobj::{Kind, RelObj, Target, insn_at, instructions};
use super::verify::{Binary, Bindings};
use crate::bail;
use crate::error::Result;

/// Where a symbol of the patched object lives once the patch is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// In the patch.
    Patch,
    /// In a library, found by the dynamic loader.
    Import,
    /// In the binary: its name there and file address.
    Process {
        /// The name in the binary.
        name: String,
        /// The file address.
        vaddr: u64,
    },
}

/// What to do with one relocation of the patched object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep it (the linker resolves it in the patch, or imports).
    Keep,
    /// A call or jump to the process: through stub `stub`.
    Stub(usize),
    /// `lea` turned into a load from slot `slot`.
    LeaToSlot(usize),
    /// A GOT reference turned into a load from slot `slot`.
    GotToSlot(usize),
    /// A RIP-relative operand on process data: bound at apply time (site `site`).
    DataRel32(usize),
    /// A 64-bit address of process code or data: written at apply time (site `site`).
    Abs64(usize),
}

/// A value the patch needs from the process: a symbol's address plus `x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The name in the binary.
    pub name: String,
    /// Its file address.
    pub vaddr: u64,
    /// The offset into it.
    pub x: i64,
}

/// A place in the patch's code or data written at apply time.
#[derive(Debug, Clone)]
pub struct Site {
    /// Section and offset of the 4 (RIP-relative) or 8 (pointer) bytes.
    pub section: usize,
    /// Offset in the section.
    pub offset: u64,
    /// What it refers to.
    pub want: Want,
    /// RIP-relative: bytes from the instruction's start to the field, and its length.
    pub insn: Option<(u64, u64)>,
    /// A call or jump through a stub, made direct at apply time when the function is
    /// within reach (the stub stays the way when it is not).
    pub call: bool,
}

/// The bindings of one unit's patched object.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per section, per relocation (same order as in the object): what to do.
    pub actions: Vec<Vec<Action>>,
    /// Slots (pointers filled at apply time).
    pub slots: Vec<Want>,
    /// Stubs: the slot each jumps through.
    pub stubs: Vec<usize>,
    /// Sites written at apply time.
    pub sites: Vec<Site>,
    /// What each reference went to, for the report: (kind, name).
    pub homes: Vec<(String, String)>,
    /// The sections the patch carries.
    pub need: Vec<bool>,
}

impl Plan {
    fn slot(&mut self, w: Want) -> usize {
        if let Some(i) = self.slots.iter().position(|s| *s == w) {
            return i;
        }
        self.slots.push(w);
        self.slots.len() - 1
    }

    fn stub(&mut self, w: Want) -> usize {
        let slot = self.slot(w);
        if let Some(i) = self.stubs.iter().position(|&s| s == slot) {
            return i;
        }
        self.stubs.push(slot);
        self.stubs.len() - 1
    }
}

/// The sections the patch carries from `o`: every allocated section but start-up tables
/// (constructors of the unit must not run again at load).
pub fn carried(o: &RelObj, i: usize) -> bool {
    let s = &o.sections[i];
    s.is_alloc()
        && !matches!(
            s.name.as_str(),
            ".init_array" | ".fini_array" | ".preinit_array" | ".ctors" | ".dtors"
        )
        && !s.name.starts_with(".init_array.")
        && !s.name.starts_with(".fini_array.")
        && s.sh_type != c::SHT_GROUP
}

/// Where symbol `i` of the patched object `q` lives: `changes` are the functions the
/// patch carries, `twin` its pristine counterpart, `bind` where the pristine unit's
/// symbols are in the binary, `block` the unit's file block there. With `original`, a
/// changed function's home is its original entry in the binary (for its address).
#[allow(clippy::too_many_arguments)]
pub fn home(
    q: &RelObj,
    i: usize,
    original: bool,
    changes: &[&Change],
    twin: Option<usize>,
    bind: &Bindings,
    bin: &Binary,
    block: Option<usize>,
) -> Home {
    let s = &q.symbols[i];
    if s.kind == Kind::Section || s.kind == Kind::File {
        return Home::Patch;
    }
    if !original && changes.iter().any(|c| c.sym == i) {
        return Home::Patch;
    }
    if super::correlate::is_special(&s.name) {
        return Home::Patch;
    }
    let in_binary = |name: &str| {
        let found = twin.and_then(|t| bind.get(&t).copied());
        let at = match found {
            Some(a) => bin
                .symbol_at(a)
                .filter(|b| b.value == a)
                .map(|b| (b.name.clone(), a)),
            None => None,
        };
        at.or_else(|| {
            let b = if s.global || s.undefined {
                bin.lookup(name, None)
            } else {
                bin.lookup(name, block)
            };
            b.map(|b| (b.name.clone(), b.value))
        })
    };
    if s.undefined {
        return match in_binary(&s.name) {
            Some((name, vaddr)) => Home::Process { name, vaddr },
            None => Home::Import,
        };
    }
    match in_binary(&s.name) {
        Some((name, vaddr)) if twin.is_some() || s.global => Home::Process { name, vaddr },
        // A function or variable the binary does not have: the patch carries it.
        _ => Home::Patch,
    }
}

/// The sections the patch needs from `q`: those of the functions it carries (`roots`),
/// and what they reach inside the patch (parts, strings, constants, jump tables, new
/// data), transitively; plus the unwind information.
pub fn needed(q: &RelObj, roots: &[usize], homes: &dyn Fn(usize, bool) -> Home) -> Vec<bool> {
    let mut need = vec![false; q.sections.len()];
    let mut todo: Vec<usize> = roots.iter().filter_map(|&i| q.symbols[i].section).collect();
    while let Some(si) = todo.pop() {
        if need[si] || !carried(q, si) {
            continue;
        }
        need[si] = true;
        let sec = &q.sections[si];
        let insns = if sec.is_text() {
            instructions(sec)
        } else {
            Vec::new()
        };
        for r in &sec.relocs {
            let target = match q.target(r, q.tail(si, &insns, r)) {
                Target::Anon { section, .. } => Some(section),
                Target::Sym { index, .. } => match homes(index, false) {
                    Home::Patch => q.symbols[index].section,
                    _ => None,
                },
            };
            if let Some(t) = target {
                todo.push(t);
            }
        }
    }
    if let Some(eh) = q.sections.iter().position(|s| s.name == ".eh_frame") {
        need[eh] = true;
    }
    need
}

/// Decide every relocation of the sections of `q` marked in `need`.
pub fn plan(
    q: &RelObj,
    source: &std::path::Path,
    homes: &dyn Fn(usize, bool) -> Home,
    changed_funcs: &[usize],
    need: &[bool],
) -> Result<Plan> {
    let mut plan = Plan {
        need: need.to_vec(),
        ..Plan::default()
    };
    for (si, sec) in q.sections.iter().enumerate() {
        let mut acts = Vec::with_capacity(sec.relocs.len());
        // Unwind information stays as the compiler wrote it: the linker drops the entries
        // of the functions the patch does not carry.
        if !need[si] || sec.name == ".eh_frame" {
            plan.actions.push(vec![Action::Keep; sec.relocs.len()]);
            continue;
        }
        let insns = if sec.is_text() {
            instructions(sec)
        } else {
            Vec::new()
        };
        for r in &sec.relocs {
            let tail = q.tail(si, &insns, r);
            let t = q.target(r, tail);
            let (index, x) = match t {
                Target::Sym { index, x } => (index, x),
                Target::Anon { .. } => {
                    acts.push(Action::Keep);
                    continue;
                }
            };
            let sym = &q.symbols[index];
            // A call or jump, direct or through the GOT (`call *f@GOTPCREL(%rip)`, as
            // -fno-plt builds make): it reaches the function's code, not its address.
            let code_ref = sec.is_text()
                && ((matches!(r.r_type, c::R_PLT32 | c::R_PC32) && is_branch(sec, r.offset))
                    || (matches!(r.r_type, c::R_GOTPCRELX | c::R_GOTPCREL)
                        && is_indirect_branch(sec, r.offset)));
            // The address of a changed function names the original entry. A place inside
            // it (a jump table's entry, a label's address) is the patch's own code: the
            // table goes with the function it belongs to.
            let home = match homes(index, false) {
                Home::Patch
                    if !code_ref
                        && x == 0
                        && sym.kind == Kind::Func
                        && changed_funcs.contains(&index) =>
                {
                    homes(index, true)
                }
                h => h,
            };
            let Home::Process { name, vaddr } = home else {
                if matches!(r.r_type, c::R_32 | c::R_32S) {
                    crate::refuse!(
                        NotPic,
                        "{} was compiled without -fPIC or -fPIE (a 32-bit absolute reference in {}): its code cannot move into a shared object",
                        source.display(),
                        sec.name
                    );
                }
                acts.push(Action::Keep);
                continue;
            };
            if sym.kind == Kind::Tls || is_tls(r.r_type) {
                crate::refuse!(
                    ThreadLocal,
                    "the changed code of {} uses the thread-local variable {name} of the process: not supported yet",
                    source.display()
                );
            }
            plan.homes.push((
                if sym.kind == Kind::Func {
                    "function"
                } else {
                    "data"
                }
                .into(),
                name.clone(),
            ));
            let want = Want { name, vaddr, x };
            let act = to_process(&mut plan, (si, sec), &insns, r, want, code_ref, source)?;
            acts.push(act);
        }
        plan.actions.push(acts);
    }
    Ok(plan)
}

/// What to do with a reference `r` of section `si` to the process's `want`: a call
/// through a stub (made direct at apply time when in reach), an address through a slot,
/// a data access or a pointer bound at apply time.
fn to_process(
    plan: &mut Plan,
    (si, sec): (usize, &super::relobj::Sec),
    insns: &[(u64, u64)],
    r: &super::relobj::Reloc,
    want: Want,
    code_ref: bool,
    source: &std::path::Path,
) -> Result<Action> {
    Ok(match r.r_type {
        c::R_PLT32 | c::R_PC32 if code_ref => {
            // The stub is the way; the apply makes the branch direct when the
            // patch lands within reach of the function.
            if let Some((start, len)) = insn_at(insns, r.offset)
                && r.offset + 4 == start + len
            {
                plan.sites.push(Site {
                    section: si,
                    offset: r.offset,
                    want: want.clone(),
                    insn: Some((r.offset - start, len)),
                    call: true,
                });
            }
            Action::Stub(plan.stub(want))
        }
        c::R_PC32 if sec.is_text() && is_lea(sec, r.offset) => Action::LeaToSlot(plan.slot(want)),
        c::R_GOTPCREL | c::R_GOTPCRELX | c::R_REX_GOTPCRELX => {
            Action::GotToSlot(plan.slot(Want { x: 0, ..want }))
        }
        c::R_PC32 if sec.is_text() => {
            let (start, len) = insn_at(insns, r.offset).unwrap_or((r.offset, 4));
            if len < 6 {
                bail!(
                    Build,
                    "a {len}-byte RIP-relative instruction at {}+{:#x}: cannot be bound",
                    sec.name,
                    r.offset
                );
            }
            plan.sites.push(Site {
                section: si,
                offset: r.offset,
                want,
                insn: Some((r.offset - start, len)),
                call: false,
            });
            Action::DataRel32(plan.sites.len() - 1)
        }
        c::R_64 => {
            plan.sites.push(Site {
                section: si,
                offset: r.offset,
                want,
                insn: None,
                call: false,
            });
            Action::Abs64(plan.sites.len() - 1)
        }
        c::R_32 | c::R_32S => crate::refuse!(
            NotPic,
            "{} was compiled without -fPIC or -fPIE (a 32-bit absolute reference to {}): its code cannot move into a shared object",
            source.display(),
            want.name
        ),
        other => crate::refuse!(
            Unsupported,
            "{}: a reference of type {other} to {} in {} is not supported",
            source.display(),
            want.name,
            sec.name
        ),
    })
}

fn is_tls(t: u32) -> bool {
    matches!(
        t,
        c::R_TPOFF32
            | c::R_GOTTPOFF
            | c::R_TLSGD
            | c::R_TLSLD
            | c::R_DTPOFF32
            | c::R_DTPOFF64
            | c::R_TPOFF64
            | c::R_GOTPC32_TLSDESC
            | c::R_TLSDESC_CALL
    )
}

/// Is the relocated field at `off` the operand of a `call`, `jmp` or `jcc rel32`?
fn is_branch(sec: &super::relobj::Sec, off: u64) -> bool {
    let d = &sec.data;
    let o = off as usize;
    (o >= 1 && matches!(d[o - 1], 0xe8 | 0xe9))
        || (o >= 2 && d[o - 2] == 0x0f && (0x80..=0x8f).contains(&d[o - 1]))
}

/// Is the relocated field at `off` the displacement of `call *disp32(%rip)` or
/// `jmp *disp32(%rip)`?
fn is_indirect_branch(sec: &super::relobj::Sec, off: u64) -> bool {
    let d = &sec.data;
    let o = off as usize;
    o >= 2 && d[o - 2] == 0xff && matches!(d[o - 1], 0x15 | 0x25)
}

/// Is the relocated field at `off` the displacement of `lea disp32(%rip), %reg`?
fn is_lea(sec: &super::relobj::Sec, off: u64) -> bool {
    let d = &sec.data;
    let o = off as usize;
    o >= 2 && d[o - 2] == 0x8d && d[o - 1] & 0xc7 == 0x05
}
