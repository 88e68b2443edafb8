//! The proof against the running binary: every function of a rebuilt pristine unit is
//! compared, instruction by instruction, with the same function in the binary. Branch
//! and RIP-relative targets are compared through the symbols they land on (a jump the
//! linker or assembler shortened is the same jump); every other byte must be equal. A
//! difference means another compiler or other flags: the patch would be built from code
//! that is not what runs, and is refused. On the way, each symbol the unit refers to is
//! tied to its address in the binary: that is how a patch finds a `static` variable
//! whose name is ambiguous (`calls.0`), or has another number in the binary.

use super::relobj::{Kind, RelObj, Target, base_name, c, insn_at, instructions};
use crate::elf::symbols::ElfFile;
use crate::error::Result;
use crate::{bail, err};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic, OpKind,
};
use object::elf;
use object::read::elf::{FileHeader, Sym as _};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A symbol of the binary, in symbol-table order.
#[derive(Debug, Clone)]
pub struct BinSym {
    /// Its name.
    pub name: String,
    /// Its address (file address).
    pub value: u64,
    /// Its size.
    pub size: u64,
    /// `STT_FUNC`.
    pub func: bool,
    /// `STT_TLS`.
    pub tls: bool,
    /// Global or weak.
    pub global: bool,
    /// The `STT_FILE` block it follows (0: none).
    pub block: usize,
}

/// The binary a patch is for, with its symbols (from its debug file when stripped).
pub struct Binary {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub file: ElfFile,
    /// Its symbol table, in order.
    pub syms: Vec<BinSym>,
    /// The names of the `STT_FILE` blocks (index 0: before any).
    pub blocks: Vec<String>,
    /// Where the symbols came from (the binary or its debug file).
    pub symbols_from: PathBuf,
    /// How a patch names it: `None` for an executable, else its file name.
    pub object: Option<String>,
    /// Its build-id, in hex.
    pub build_id: Option<String>,
    /// The compiler that built it (`.comment`).
    pub comment: String,
}

fn read_symtab(
    path: &Path,
    data: &[u8],
) -> std::result::Result<(Vec<BinSym>, Vec<String>), String> {
    let e = object::LittleEndian;
    let hdr = elf::FileHeader64::<object::LittleEndian>::parse(data).map_err(|x| x.to_string())?;
    let table = hdr.sections(e, data).map_err(|x| x.to_string())?;
    let syms = table
        .symbols(e, data, elf::SHT_SYMTAB)
        .map_err(|x| x.to_string())?;
    if syms.is_empty() {
        return Err(format!("{} has no .symtab()", path.display()));
    }
    let mut out = Vec::new();
    let mut blocks = vec![String::new()];
    for s in syms.iter() {
        let name = syms
            .symbol_name(e, s)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        match s.st_type() {
            elf::STT_FILE => blocks.push(name),
            elf::STT_FUNC
            | elf::STT_OBJECT
            | elf::STT_TLS
            | elf::STT_GNU_IFUNC
            | elf::STT_NOTYPE
                if s.st_shndx(e) != elf::SHN_UNDEF && !name.is_empty() =>
            {
                out.push(BinSym {
                    name,
                    value: s.st_value(e),
                    size: s.st_size(e),
                    func: matches!(s.st_type(), elf::STT_FUNC | elf::STT_GNU_IFUNC),
                    tls: s.st_type() == elf::STT_TLS,
                    global: matches!(s.st_bind(), elf::STB_GLOBAL | elf::STB_WEAK),
                    block: blocks.len() - 1,
                });
            }
            _ => {}
        }
    }
    Ok((out, blocks))
}

impl Binary {
    /// Open the binary at `path`, its symbols from itself or from its debug file.
    pub fn open(path: &Path, debug_dirs: &[PathBuf]) -> Result<Binary> {
        let real = path
            .canonicalize()
            .map_err(|e| err!(Build, "--binary {}: {e}", path.display()))?;
        let file = ElfFile::open(&real)
            .map_err(|e| err!(Build, "--binary {}: {}", path.display(), e.message))?;
        if !file.is_x86_64 || !file.is_64 {
            bail!(
                Build,
                "--binary {} is not an x86_64 ELF file",
                path.display()
            );
        }
        let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
        let (syms_path, data) = if file.has_symtab() {
            (real.clone(), std::fs::read(&real).unwrap_or_default())
        } else {
            match crate::elf::objects::find_debug_file(&file, &dir, debug_dirs, &|p| {
                p.to_path_buf()
            }) {
                Ok(d) => (d.path.clone(), std::fs::read(&d.path).unwrap_or_default()),
                Err(tried) => crate::refuse!(
                    NoSymbols,
                    "{} has no symbol table and no debug file was found (looked at {}); install its debug symbols or pass --debug-dir DIR",
                    path.display(),
                    tried
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        };
        let (syms, blocks) = read_symtab(&syms_path, &data).map_err(|e| err!(Build, "{e}"))?;
        let comment = file
            .section(".comment")
            .and_then(|s| file.section_data(s))
            .map(|d| {
                d.split(|&b| b == 0)
                    .map(String::from_utf8_lossy)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let executable = !file.is_dyn || file.interp.is_some();
        let object = (!executable).then(|| {
            real.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Binary {
            path: real,
            build_id: file.build_id_hex(),
            file,
            syms,
            blocks,
            symbols_from: syms_path,
            object,
            comment,
        })
    }

    /// The `STT_FILE` block of the unit compiled from a file named `name` that defines
    /// the local symbols `locals` (several units may share a file name: the one holding
    /// the most of them).
    pub fn block_for(&self, name: &str, locals: &[String]) -> Option<usize> {
        let candidates: Vec<usize> = (1..self.blocks.len())
            .filter(|&b| self.blocks[b] == name)
            .collect();
        candidates.into_iter().max_by_key(|&b| {
            locals
                .iter()
                .filter(|l| {
                    self.syms
                        .iter()
                        .any(|s| s.block == b && !s.global && &s.name == *l)
                })
                .count()
        })
    }

    /// The symbol named `name`: a local of `block` (exactly, else modulo the numbers the
    /// compiler appends when that is unique), else a global.
    pub fn lookup(&self, name: &str, block: Option<usize>) -> Option<&BinSym> {
        if let Some(b) = block {
            let local = |exact: bool| {
                let found: Vec<&BinSym> = self
                    .syms
                    .iter()
                    .filter(|s| s.block == b && !s.global)
                    .filter(|s| {
                        if exact {
                            s.name == name
                        } else {
                            base_name(&s.name) == base_name(name)
                        }
                    })
                    .collect();
                (found.len() == 1).then(|| found[0])
            };
            if let Some(s) = local(true).or_else(|| local(false)) {
                return Some(s);
            }
        }
        // A copy of a library's variable in an executable is named with its version
        // (`stderr@GLIBC_2.2.5`).
        self.syms
            .iter()
            .find(|s| s.global && s.name == name)
            .or_else(|| {
                self.syms.iter().find(|s| {
                    s.global && s.name.split('@').next() == Some(name) && s.name.contains('@')
                })
            })
            .or_else(|| {
                // A hidden or internal global of another unit: the link made it local.
                // Only a name no other unit also has locally is taken, and never for a
                // static of this unit's own.
                if block.is_some() {
                    return None;
                }
                let mut found = self.syms.iter().filter(|s| !s.global && s.name == name);
                let first = found.next()?;
                found.next().is_none().then_some(first)
            })
    }

    /// The symbol whose extent holds `addr`.
    pub fn symbol_at(&self, addr: u64) -> Option<&BinSym> {
        self.syms
            .iter()
            .filter(|s| s.value <= addr && addr < s.value + s.size.max(1))
            .min_by_key(|s| addr - s.value)
    }
}

/// Where the symbols of a unit are in the binary: pristine symbol index → address of
/// its start.
pub type Bindings = HashMap<usize, u64>;

fn show(i: &Instruction) -> String {
    let mut f = GasFormatter::new();
    let mut s = String::new();
    f.format(i, &mut s);
    s
}

fn is_near_branch(i: &Instruction) -> bool {
    matches!(
        i.flow_control(),
        FlowControl::Call | FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
    ) && matches!(i.op0_kind(), OpKind::NearBranch64)
}

/// Compare function `sym` of `o` (a pristine object) with `b` in the binary; record what
/// its references land on in `bind`. The error is the first difference.
/// The compilers named in an object's `.comment`.
fn compilers(o: &RelObj) -> Vec<String> {
    o.sections
        .iter()
        .filter(|s| s.name == ".comment")
        .flat_map(|s| {
            s.data
                .split(|&b| b == 0)
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The rebuilt unit must come from a compiler that built the binary (its `.comment`
/// lists them all): another version makes other code, and the patch would be proven
/// against code the process does not run.
pub fn check_compiler(o: &RelObj, file_name: &str, bin: &Binary) -> Result<()> {
    if bin.comment.is_empty() {
        return Ok(());
    }
    let theirs: Vec<&str> = bin.comment.split("; ").collect();
    for c in compilers(o) {
        if !theirs.contains(&c.as_str()) {
            crate::refuse!(
                Compiler,
                "{file_name} was rebuilt by {c}, but {} was built by {}: build the patch with that compiler (first on PATH, or as CC in --build)",
                bin.path.display(),
                bin.comment
            );
        }
    }
    Ok(())
}

/// A refusal made clearer by the options each side was compiled with, from the
/// binary's debug information (`DW_AT_producer`) when it has some: `-O1` against `-O2`.
pub fn explain(
    e: crate::error::Error,
    o: &RelObj,
    obj_producer: &str,
    bin: &Binary,
) -> crate::error::Error {
    if obj_producer.is_empty() {
        return e;
    }
    let Ok(file) = ElfFile::open(&bin.symbols_from) else {
        return e;
    };
    let Some(info) = crate::contract::dwarf::DebugInfo::load(&file) else {
        return e;
    };
    let theirs = o
        .symbols
        .iter()
        .filter(|s| s.kind == super::relobj::Kind::Func && s.global && s.section.is_some())
        .filter_map(|s| bin.lookup(&s.name, None))
        .find_map(|b| info.subprogram_at(b.value))
        .map(|s| s.producer);
    let Some(theirs) = theirs.filter(|p| !p.is_empty()) else {
        return e;
    };
    // Options rlivepatch adds to every rebuild.
    let ours_only = |x: &str| {
        !matches!(x, "-ffunction-sections" | "-fdata-sections" | "-g")
            && !x.starts_with("-ffile-prefix-map")
    };
    let a: Vec<&str> = theirs.split_whitespace().collect();
    let b: Vec<&str> = obj_producer.split_whitespace().collect();
    let only_bin: Vec<&str> = a
        .iter()
        .copied()
        .filter(|x| !b.contains(x) && ours_only(x))
        .collect();
    let only_obj: Vec<&str> = b
        .iter()
        .copied()
        .filter(|x| !a.contains(x) && ours_only(x))
        .collect();
    if only_bin.is_empty() && only_obj.is_empty() {
        return e;
    }
    crate::error::Error::refused(
        e.refusal.unwrap_or(crate::error::Refusal::Differs),
        format!(
            "{}; the binary's unit was compiled with `{}`, the rebuild with `{}` (from DW_AT_producer)",
            e.message,
            if only_bin.is_empty() {
                "-".to_string()
            } else {
                only_bin.join(" ")
            },
            if only_obj.is_empty() {
                "-".to_string()
            } else {
                only_obj.join(" ")
            }
        ),
    )
}

/// For an address in a PLT section: the function its GOT slot is bound to, when defined
/// in this object (`Some(None)` for another object's); `None` outside the PLT.
fn through_plt(bin: &Binary, addr: u64) -> Option<Option<u64>> {
    bin.file
        .sections
        .iter()
        .find(|s| s.name.starts_with(".plt") && s.addr <= addr && addr < s.addr + s.size)?;
    let code = bin.file.bytes_at(addr, 16)?;
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    while d.can_decode() {
        let i = d.decode();
        if i.mnemonic() == Mnemonic::Jmp && i.is_ip_rel_memory_operand() {
            let slot = i.ip_rel_memory_address();
            return Some(bin.file.dyn_relocs().get(&slot).and_then(|r| {
                if r.r_type == c::R_RELATIVE {
                    Some(r.addend as u64)
                } else {
                    r.sym_value
                }
            }));
        }
    }
    Some(None)
}

/// The next instruction of `d` that is not padding (a no-op or `int3`), into `out`;
/// false at the end.
fn next_real(d: &mut Decoder, out: &mut Instruction) -> bool {
    while d.can_decode() {
        d.decode_out(out);
        if out.mnemonic() != Mnemonic::Nop && out.mnemonic() != Mnemonic::Int3 {
            return true;
        }
    }
    false
}

fn compare(
    o: &RelObj,
    sym: usize,
    bin: &Binary,
    b: &BinSym,
    bind: &mut Bindings,
) -> std::result::Result<(), String> {
    let s = &o.symbols[sym];
    let sec = s.section.ok_or("no section")?;
    let section = &o.sections[sec];
    let start = s.value as usize;
    let end = (s.value + s.size) as usize;
    let code = section.data.get(start..end).ok_or("outside its section")?;
    let bcode = bin
        .file
        .bytes_at(b.value, b.size as usize)
        .ok_or("the binary's code is not in the file")?;
    let insns = instructions(section);
    let mut pd = Decoder::with_ip(64, code, s.value, DecoderOptions::NONE);
    let mut bd = Decoder::with_ip(64, bcode, b.value, DecoderOptions::NONE);
    let (mut pi, mut bi) = (Instruction::default(), Instruction::default());
    let mut offsets: HashMap<u64, u64> = HashMap::new();
    let mut intra: Vec<(u64, u64, u64)> = Vec::new();
    let tie = |bind: &mut Bindings, t: Target, addr: u64, at: u64| tie(o, bind, t, addr, at);
    // Padding differs where a jump got shorter (the binary's assembler saw its target in
    // the same section): no-ops are skipped on both sides.
    loop {
        if !next_real(&mut pd, &mut pi) {
            break;
        }
        if !next_real(&mut bd, &mut bi) {
            return Err(format!(
                "+{:#x}: the binary's function ends first",
                pi.ip() - s.value
            ));
        }
        let at = pi.ip() - s.value;
        offsets.insert(pi.ip(), bi.ip());
        let rels: Vec<&super::relobj::Reloc> = section
            .relocs
            .iter()
            .filter(|r| r.offset >= pi.ip() && r.offset < pi.ip() + pi.len() as u64)
            .collect();
        let differ = || {
            format!(
                "+{at:#x}: `{}` here, `{}` in the binary",
                show(&pi),
                show(&bi)
            )
        };
        if is_near_branch(&pi) {
            if pi.mnemonic() != bi.mnemonic() || !is_near_branch(&bi) {
                return Err(differ());
            }
            match rels.first() {
                Some(r) => {
                    let t = o.target(r, o.tail(sec, &insns, r));
                    match through_plt(bin, bi.near_branch_target()) {
                        // A call through the object's PLT: the function its slot names
                        // (none for a function of another object).
                        Some(Some(a)) => tie(bind, t, a, at)?,
                        Some(None) => {}
                        None => tie(bind, t, bi.near_branch_target(), at)?,
                    }
                }
                None => intra.push((at, pi.near_branch_target(), bi.near_branch_target())),
            }
            continue;
        }
        // A GOT load the linker relaxed (`mov x@GOTPCREL(%rip)` became `lea x(%rip)`, or
        // an indirect call a direct one): the same reference.
        let relaxed = rels
            .iter()
            .any(|r| matches!(r.r_type, c::R_GOTPCRELX | c::R_REX_GOTPCRELX))
            && pi.len() == bi.len()
            && (bi.mnemonic() == Mnemonic::Lea || is_near_branch(&bi));
        let p_bytes = &code[(pi.ip() - s.value) as usize..][..pi.len()];
        let b_bytes = &bcode[(bi.ip() - b.value) as usize..][..bi.len()];
        if !relaxed && !same_but_relocated(p_bytes, b_bytes, pi.ip(), &rels) {
            return Err(differ());
        }
        for r in &rels {
            let t = o.target(r, o.tail(sec, &insns, r));
            let field = &b_bytes[(r.offset - pi.ip()) as usize..];
            if let Some(addr) = referenced(bin, &bi, field, r.r_type, relaxed) {
                tie(bind, t, addr, at)?;
            }
        }
    }
    for (at, pt, bt) in intra {
        if offsets.get(&pt) != Some(&bt) {
            return Err(format!(
                "+{at:#x}: a branch inside the function lands elsewhere in the binary"
            ));
        }
    }
    let _ = insn_at;
    Ok(())
}

/// Tie symbol target `t` of the pristine object to `addr` in the binary: one symbol has
/// one address, whichever reference says it.
fn tie(
    o: &RelObj,
    bind: &mut Bindings,
    t: Target,
    addr: u64,
    at: u64,
) -> std::result::Result<(), String> {
    if let Target::Sym { index, x } = t {
        let base = addr.wrapping_sub(x as u64);
        match bind.insert(index, base) {
            Some(old) if old != base => {
                return Err(format!(
                    "+{at:#x}: {} is at {old:#x} by one reference and {base:#x} by another",
                    o.symbols[index].name
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Are the instruction bytes `p` (at `ip` in the object, with relocations `rels`) and `b`
/// (in the binary) the same, the relocated fields aside?
fn same_but_relocated(p: &[u8], b: &[u8], ip: u64, rels: &[&super::relobj::Reloc]) -> bool {
    if p.len() != b.len() {
        return false;
    }
    let (mut p, mut b) = (p.to_vec(), b.to_vec());
    for r in rels {
        let k = (r.offset - ip) as usize;
        let n = if r.r_type == c::R_64 { 8 } else { 4 };
        for j in k..(k + n).min(p.len()) {
            p[j] = 0;
            b[j] = 0;
        }
    }
    p == b
}

/// The address the binary's instruction `bi` refers to where the object has a relocation
/// of type `r_type`, whose field starts `field` (the binary's bytes from there on).
fn referenced(
    bin: &Binary,
    bi: &Instruction,
    field: &[u8],
    r_type: u32,
    relaxed: bool,
) -> Option<u64> {
    let raw = |n: usize| -> u64 {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&field[..n]);
        u64::from_le_bytes(v)
    };
    if bi.is_ip_rel_memory_operand() {
        let a = bi.ip_rel_memory_address();
        match (relaxed || bi.mnemonic() == Mnemonic::Lea, r_type) {
            // A load from the GOT: what the GOT entry holds.
            (false, c::R_GOTPCREL | c::R_GOTPCRELX | c::R_REX_GOTPCRELX) => {
                match bin.file.dyn_relocs().get(&a) {
                    Some(d) if d.r_type == c::R_RELATIVE => Some(d.addend as u64),
                    Some(d) => d.sym_value,
                    None => bin.file.read_u64(a),
                }
            }
            _ => Some(a),
        }
    } else if is_near_branch(bi) {
        Some(bi.near_branch_target())
    } else {
        match r_type {
            c::R_32 | c::R_32S => Some(raw(4)),
            c::R_64 => Some(raw(8)),
            _ => None,
        }
    }
}

/// Prove the pristine unit `o` (compiled from `file_name`) against `bin`: every function
/// of it that the binary has must be the same code. Returns where its symbols are in the
/// binary, and its `STT_FILE` block.
pub fn verify(o: &RelObj, file_name: &str, bin: &Binary) -> Result<(Bindings, Option<usize>)> {
    let locals: Vec<String> = o
        .symbols
        .iter()
        .filter(|s| !s.global && s.section.is_some() && matches!(s.kind, Kind::Func | Kind::Object))
        .map(|s| s.name.clone())
        .collect();
    let block = bin.block_for(file_name, &locals);
    let mut bind = Bindings::new();
    let mut compared = 0;
    let mut functions = 0;
    for (i, s) in o.symbols.iter().enumerate() {
        if s.kind != Kind::Func || s.section.is_none() || s.size == 0 {
            continue;
        }
        functions += 1;
        let found = if s.global {
            bin.lookup(&s.name, None)
        } else {
            block.and_then(|b| bin.lookup(&s.name, Some(b)))
        };
        let Some(b) = found else { continue };
        if !b.func {
            continue;
        }
        // A function of a COMDAT group (a C++ template or inline function emitted in
        // every unit that uses it) or a weak one: the linker kept one copy, perhaps
        // another unit's, compiled in other surroundings. This unit's copy is no proof
        // either way; references to it go to the binary's copy.
        let shared = s.weak
            || s.section
                .is_some_and(|x| o.sections[x].flags & c::SHF_GROUP != 0);
        match compare(o, i, bin, b, &mut bind) {
            Ok(()) => {}
            Err(_) if shared => continue,
            Err(why) => {
                return Err(crate::error::Error::refused(
                    crate::error::Refusal::Differs,
                    format!(
                        "the rebuilt {} ({file_name}) differs from {} at {why}: the binary was built by another compiler or with other flags (binary: {}); build with the same compiler and the project's own command",
                        s.name,
                        bin.path.display(),
                        if bin.comment.is_empty() {
                            "no .comment"
                        } else {
                            &bin.comment
                        }
                    ),
                ));
            }
        }
        bind.insert(i, b.value);
        compared += 1;
    }
    // A unit of data only (a table of options) is in the binary when its data is.
    let data_there = || {
        o.symbols.iter().any(|s| {
            s.kind == Kind::Object
                && s.section.is_some()
                && if s.global {
                    bin.lookup(&s.name, None).is_some()
                } else {
                    block.and_then(|b| bin.lookup(&s.name, Some(b))).is_some()
                }
        })
    };
    if compared == 0 && (functions > 0 || !data_there()) {
        bail!(
            Build,
            "{file_name} is not compiled into {} (none of its functions is there); give the --binary it is part of",
            bin.path.display()
        );
    }
    Ok((bind, block))
}
