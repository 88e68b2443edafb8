//! A relocatable object (`.o`) as the passes see it: its sections with their bytes and
//! relocations, and its symbols, indexed as in the file.

use crate::error::Result;
use object::elf;
use object::read::elf::{FileHeader, Rela as _, SectionHeader as _, Sym as _};
use std::path::{Path, PathBuf};

type Le = object::LittleEndian;

/// One section.
#[derive(Debug, Clone)]
pub struct Sec {
    /// Its name.
    pub name: String,
    /// `sh_type`.
    pub sh_type: u32,
    /// `sh_flags`.
    pub flags: u64,
    /// `sh_addralign`.
    pub align: u64,
    /// `sh_entsize`.
    pub entsize: u64,
    /// Its size (also for `SHT_NOBITS`).
    pub size: u64,
    /// Its bytes (empty for `SHT_NOBITS`).
    pub data: Vec<u8>,
    /// Its relocations, by offset.
    pub relocs: Vec<Reloc>,
}

impl Sec {
    /// Code.
    pub fn is_text(&self) -> bool {
        self.flags & c::SHF_EXECINSTR != 0
    }

    /// Allocated in memory at run time.
    pub fn is_alloc(&self) -> bool {
        self.flags & c::SHF_ALLOC != 0
    }

    /// Mergeable strings (`.rodata.str1.1`): compared by contents, never correlated.
    pub fn is_strings(&self) -> bool {
        self.flags & c::SHF_STRINGS != 0
    }

    /// Thread-local data.
    pub fn is_tls(&self) -> bool {
        self.flags & c::SHF_TLS != 0
    }
}

/// One relocation (RELA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloc {
    /// Offset in its section.
    pub offset: u64,
    /// `R_X86_64_*`.
    pub r_type: u32,
    /// Symbol index.
    pub sym: usize,
    /// Addend.
    pub addend: i64,
}

/// Symbol kinds that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `STT_FUNC`.
    Func,
    /// `STT_OBJECT` (or `STT_COMMON`).
    Object,
    /// `STT_SECTION`.
    Section,
    /// `STT_FILE`.
    File,
    /// `STT_TLS`.
    Tls,
    /// `STT_GNU_IFUNC`.
    Ifunc,
    /// `STT_NOTYPE` and the rest.
    Other,
}

/// One symbol.
#[derive(Debug, Clone)]
pub struct Sym {
    /// Its name (empty for section symbols).
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// `STB_GLOBAL` or `STB_WEAK`.
    pub global: bool,
    /// `STB_WEAK`.
    pub weak: bool,
    /// `st_other` (visibility).
    pub other: u8,
    /// The section defining it (`None`: undefined, absolute or common).
    pub section: Option<usize>,
    /// `st_shndx` is `SHN_UNDEF`.
    pub undefined: bool,
    /// Value: the offset in its section.
    pub value: u64,
    /// Size.
    pub size: u64,
}

/// A parsed relocatable object.
#[derive(Debug, Clone)]
pub struct RelObj {
    /// Where it was read from.
    pub path: PathBuf,
    /// Sections by ELF index (index 0 is the null section).
    pub sections: Vec<Sec>,
    /// Symbols by ELF index (index 0 is the null symbol).
    pub symbols: Vec<Sym>,
}

impl RelObj {
    /// Read the object at `path`.
    pub fn open(path: &Path) -> Result<RelObj> {
        let data = std::fs::read(path)
            .map_err(|e| crate::err!(Build, "cannot read {}: {e}", path.display()))?;
        Self::parse(path, &data).map_err(|e| {
            crate::err!(
                Build,
                "{} is not an x86_64 relocatable object: {e}",
                path.display()
            )
        })
    }

    fn parse(path: &Path, data: &[u8]) -> std::result::Result<RelObj, String> {
        let e = Le::default();
        let hdr = elf::FileHeader64::<Le>::parse(data).map_err(|x| x.to_string())?;
        if hdr.e_type(e) != elf::ET_REL || hdr.e_machine(e) != elf::EM_X86_64 {
            return Err("not ET_REL for x86_64".into());
        }
        let table = hdr.sections(e, data).map_err(|x| x.to_string())?;
        let mut sections = Vec::with_capacity(table.len());
        for s in table.iter() {
            let name = table
                .section_name(e, s)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            let sh_type = s.sh_type(e).0;
            let bytes = if sh_type == c::SHT_NOBITS {
                Vec::new()
            } else {
                s.data(e, data).map_err(|x| x.to_string())?.to_vec()
            };
            sections.push(Sec {
                name,
                sh_type,
                flags: s.sh_flags(e).0,
                align: s.sh_addralign(e),
                entsize: s.sh_entsize(e),
                size: s.sh_size(e),
                data: bytes,
                relocs: Vec::new(),
            });
        }
        for s in table.iter() {
            if s.sh_type(e).0 != c::SHT_RELA {
                continue;
            }
            let target = s.sh_info(e) as usize;
            let relas: &[elf::Rela64<Le>] = s.data_as_array(e, data).map_err(|x| x.to_string())?;
            let Some(sec) = sections.get_mut(target) else {
                continue;
            };
            for r in relas {
                sec.relocs.push(Reloc {
                    offset: r.r_offset(e),
                    r_type: r.r_type(e, false).0,
                    sym: r.r_sym(e, false) as usize,
                    addend: r.r_addend(e),
                });
            }
            sec.relocs.sort_by_key(|r| r.offset);
        }
        let syms = table
            .symbols(e, data, elf::SHT_SYMTAB)
            .map_err(|x| x.to_string())?;
        let mut symbols = Vec::with_capacity(syms.len());
        for s in syms.iter() {
            let name = syms
                .symbol_name(e, s)
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            let kind = match s.st_type() {
                elf::STT_FUNC => Kind::Func,
                elf::STT_OBJECT | elf::STT_COMMON => Kind::Object,
                elf::STT_SECTION => Kind::Section,
                elf::STT_FILE => Kind::File,
                elf::STT_TLS => Kind::Tls,
                elf::STT_GNU_IFUNC => Kind::Ifunc,
                _ => Kind::Other,
            };
            let shndx = s.st_shndx(e).0;
            let section =
                (shndx != elf::SHN_UNDEF.0 && shndx < elf::SHN_LORESERVE).then_some(shndx as usize);
            symbols.push(Sym {
                name,
                kind,
                global: matches!(s.st_bind(), elf::STB_GLOBAL | elf::STB_WEAK),
                weak: s.st_bind() == elf::STB_WEAK,
                other: s.st_other().0,
                section,
                undefined: shndx == elf::SHN_UNDEF.0,
                value: s.st_value(e),
                size: s.st_size(e),
            });
        }
        Ok(RelObj {
            path: path.to_path_buf(),
            sections,
            symbols,
        })
    }

    /// The functions and data objects defined in section `sec`, by offset.
    pub fn defined_in(&self, sec: usize) -> impl Iterator<Item = (usize, &Sym)> {
        self.symbols.iter().enumerate().filter(move |(_, s)| {
            s.section == Some(sec) && matches!(s.kind, Kind::Func | Kind::Object | Kind::Tls)
        })
    }

    /// The named symbol (function or object) at `offset` of section `sec`, or the one
    /// whose extent holds it.
    pub fn symbol_at(&self, sec: usize, offset: u64) -> Option<(usize, &Sym)> {
        self.defined_in(sec)
            .filter(|(_, s)| s.value <= offset && (offset < s.value + s.size.max(1)))
            .min_by_key(|(_, s)| (offset - s.value, s.name.len()))
    }

    /// The index of the function or object named `name` defined in the object.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| {
            s.name == name
                && s.section.is_some()
                && matches!(s.kind, Kind::Func | Kind::Object | Kind::Tls)
        })
    }
}

/// `name` without the numbers the compiler appends (`calls.0`, `foo.constprop.3`,
/// `bar.cold.1`): the same entity in two compilations may get other numbers.
pub fn base_name(name: &str) -> String {
    name.split('.')
        .filter(|p| !p.chars().all(|c| c.is_ascii_digit()) || p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// Refuse an object that is not what the passes can read.
pub fn check_plain(o: &RelObj) -> Result<()> {
    if o.sections
        .iter()
        .any(|s| s.name.starts_with(".gnu.lto_") || s.name == ".gnu.lto_.opts")
    {
        crate::refuse!(
            Lto,
            "{} holds LTO bytecode (built with -flto): link-time optimised programs are not supported; rebuild without -flto",
            o.path.display()
        );
    }
    Ok(())
}

/// The instructions of a code section: (offset, length) in order.
pub fn instructions(sec: &Sec) -> Vec<(u64, u64)> {
    use iced_x86::{Decoder, DecoderOptions, Instruction};
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, &sec.data, 0, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut ins);
        out.push((ins.ip(), ins.len() as u64));
    }
    out
}

/// The instruction of `insns` that holds byte `offset`.
pub fn insn_at(insns: &[(u64, u64)], offset: u64) -> Option<(u64, u64)> {
    let i = insns
        .partition_point(|(s, _)| *s <= offset)
        .checked_sub(1)?;
    let (s, l) = insns[i];
    (offset < s + l).then_some((s, l))
}

/// Is `r_type` relative to the place (its addend counts from the relocated field to the
/// end of the instruction)?
pub fn pc_relative(r_type: u32) -> bool {
    matches!(
        r_type,
        c::R_PC32
            | c::R_PLT32
            | c::R_GOTPCREL
            | c::R_GOTPCRELX
            | c::R_REX_GOTPCRELX
            | c::R_GOTPC32
            | c::R_TLSGD
            | c::R_TLSLD
            | c::R_GOTTPOFF
            | c::R_GOTPC32_TLSDESC
            | c::R_PC64
    )
}

/// What a relocation refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A named symbol of the object (defined or not), `x` bytes into it.
    Sym {
        /// Symbol index.
        index: usize,
        /// Offset into the symbol.
        x: i64,
    },
    /// Bytes of a section no named symbol covers (strings, constants, jump tables), at
    /// offset `x`.
    Anon {
        /// Section index.
        section: usize,
        /// Offset in the section.
        x: i64,
    },
}

impl RelObj {
    /// Does its code take addresses as 32-bit constants (built without `-fPIE`)?
    pub fn absolute_code_refs(&self) -> bool {
        self.sections.iter().filter(|s| s.is_text()).any(|s| {
            s.relocs
                .iter()
                .any(|r| matches!(r.r_type, c::R_32 | c::R_32S))
        })
    }

    /// The bytes from the relocated field of `r` to the end of its instruction, for a
    /// place-relative relocation in code (`insns` are those of its section); 0 otherwise.
    pub fn tail(&self, sec: usize, insns: &[(u64, u64)], r: &Reloc) -> i64 {
        if !pc_relative(r.r_type) || !self.sections[sec].is_text() {
            return 0;
        }
        match insn_at(insns, r.offset) {
            Some((s, l)) => (s + l - r.offset) as i64,
            None => 4,
        }
    }

    /// What `r` (a relocation of section `sec`) refers to, with `tail` (see
    /// [`RelObj::tail`]): a reference through a section symbol is turned into the named
    /// symbol it lands in, as `kpatch` normalises them.
    pub fn target(&self, r: &Reloc, tail: i64) -> Target {
        let sym = &self.symbols[r.sym];
        let x = r.addend + tail;
        if sym.kind == Kind::Section
            && let Some(sec) = sym.section
        {
            let off = sym.value as i64 + x;
            if off >= 0
                && let Some((i, s)) = self.symbol_at(sec, off as u64)
            {
                return Target::Sym {
                    index: i,
                    x: off - s.value as i64,
                };
            }
            return Target::Anon {
                section: sec,
                x: off,
            };
        }
        Target::Sym { index: r.sym, x }
    }

    /// The C string at offset `x` of section `sec`.
    pub fn cstr(&self, sec: usize, x: i64) -> Vec<u8> {
        let d = &self.sections[sec].data;
        let Some(rest) = usize::try_from(x).ok().and_then(|x| d.get(x..)) else {
            return Vec::new();
        };
        rest.iter().take_while(|&&b| b != 0).copied().collect()
    }
}

/// The ELF constants the passes compare raw fields with.
pub mod c {
    use object::elf;
    /// `R_X86_64_32`.
    pub const R_32: u32 = elf::R_X86_64_32.0;
    /// `R_X86_64_32S`.
    pub const R_32S: u32 = elf::R_X86_64_32S.0;
    /// `R_X86_64_64`.
    pub const R_64: u32 = elf::R_X86_64_64.0;
    /// `R_X86_64_DTPOFF32`.
    pub const R_DTPOFF32: u32 = elf::R_X86_64_DTPOFF32.0;
    /// `R_X86_64_DTPOFF64`.
    pub const R_DTPOFF64: u32 = elf::R_X86_64_DTPOFF64.0;
    /// `R_X86_64_GOTPC32`.
    pub const R_GOTPC32: u32 = elf::R_X86_64_GOTPC32.0;
    /// `R_X86_64_GOTPC32_TLSDESC`.
    pub const R_GOTPC32_TLSDESC: u32 = elf::R_X86_64_GOTPC32_TLSDESC.0;
    /// `R_X86_64_GOTPCREL`.
    pub const R_GOTPCREL: u32 = elf::R_X86_64_GOTPCREL.0;
    /// `R_X86_64_GOTPCRELX`.
    pub const R_GOTPCRELX: u32 = elf::R_X86_64_GOTPCRELX.0;
    /// `R_X86_64_GOTTPOFF`.
    pub const R_GOTTPOFF: u32 = elf::R_X86_64_GOTTPOFF.0;
    /// `R_X86_64_PC32`.
    pub const R_PC32: u32 = elf::R_X86_64_PC32.0;
    /// `R_X86_64_PC64`.
    pub const R_PC64: u32 = elf::R_X86_64_PC64.0;
    /// `R_X86_64_PLT32`.
    pub const R_PLT32: u32 = elf::R_X86_64_PLT32.0;
    /// `R_X86_64_RELATIVE`.
    pub const R_RELATIVE: u32 = elf::R_X86_64_RELATIVE.0;
    /// `R_X86_64_REX_GOTPCRELX`.
    pub const R_REX_GOTPCRELX: u32 = elf::R_X86_64_REX_GOTPCRELX.0;
    /// `R_X86_64_TLSDESC_CALL`.
    pub const R_TLSDESC_CALL: u32 = elf::R_X86_64_TLSDESC_CALL.0;
    /// `R_X86_64_TLSGD`.
    pub const R_TLSGD: u32 = elf::R_X86_64_TLSGD.0;
    /// `R_X86_64_TLSLD`.
    pub const R_TLSLD: u32 = elf::R_X86_64_TLSLD.0;
    /// `R_X86_64_TPOFF32`.
    pub const R_TPOFF32: u32 = elf::R_X86_64_TPOFF32.0;
    /// `R_X86_64_TPOFF64`.
    pub const R_TPOFF64: u32 = elf::R_X86_64_TPOFF64.0;
    /// `SHT_GROUP`.
    pub const SHT_GROUP: u32 = elf::SHT_GROUP.0;
    /// `SHT_NOBITS`.
    pub const SHT_NOBITS: u32 = elf::SHT_NOBITS.0;
    /// `SHT_PROGBITS`.
    pub const SHT_PROGBITS: u32 = elf::SHT_PROGBITS.0;
    /// `SHT_RELA`.
    pub const SHT_RELA: u32 = elf::SHT_RELA.0;
    /// `SHT_SYMTAB`.
    pub const SHT_SYMTAB: u32 = elf::SHT_SYMTAB.0;
    /// `SHT_X86_64_UNWIND`.
    pub const SHT_X86_64_UNWIND: u32 = elf::SHT_X86_64_UNWIND.0;
    /// `SHF_ALLOC`.
    pub const SHF_ALLOC: u64 = elf::SHF_ALLOC.0;
    /// `SHF_EXECINSTR`.
    pub const SHF_EXECINSTR: u64 = elf::SHF_EXECINSTR.0;
    /// `SHF_GROUP`.
    pub const SHF_GROUP: u64 = elf::SHF_GROUP.0;
    /// `SHF_MERGE`.
    pub const SHF_MERGE: u64 = elf::SHF_MERGE.0;
    /// `SHF_STRINGS`.
    pub const SHF_STRINGS: u64 = elf::SHF_STRINGS.0;
    /// `SHF_TLS`.
    pub const SHF_TLS: u64 = elf::SHF_TLS.0;
    /// `SHF_WRITE`.
    pub const SHF_WRITE: u64 = elf::SHF_WRITE.0;
}
