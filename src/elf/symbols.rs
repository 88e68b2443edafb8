//! ELF files and their symbols: what an object on disk says about the code mapped in a
//! process.
//!
//! An [`ElfFile`] is parsed once and keeps only what rlivepatch needs (segments, sections,
//! symbols, soname, build-id). Symbols come from `.symtab` first (it has the `static`
//! functions) and `.dynsym` otherwise.

use super::headers::str_at;
use crate::elf::dynhash::{DynHash, DynSym};
use crate::error::{Context, Result};
use crate::{bail, err};
use goblin::elf::{Elf, header, program_header, section_header, sym};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The bytes of an ELF file: a read-only file mapping, or a copy read from memory (vDSO).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A loadable segment (`PT_LOAD`).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Virtual address in the file's own address space.
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Size in the file.
    pub filesz: u64,
    /// Executable.
    pub exec: bool,
    /// Writable.
    pub write: bool,
}

/// A section header, by name.
#[derive(Debug, Clone)]
pub struct Section {
    /// The name (`.eh_frame`, `.text`...).
    pub name: String,
    /// Address (0 for sections that are not loaded).
    pub addr: u64,
    /// Offset in the file.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// `SHT_NOBITS` sections have no bytes in the file.
    pub nobits: bool,
}

/// What a symbol is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SymKind {
    /// `STT_FUNC`.
    Func,
    /// `STT_GNU_IFUNC`: the address is a resolver that returns the implementation.
    Ifunc,
    /// `STT_OBJECT` (data).
    Object,
    /// `STT_TLS`: the value is an offset in the object's TLS block.
    Tls,
    /// Anything else defined (`STT_NOTYPE`...).
    Other,
}

/// A defined symbol.
#[derive(Debug, Clone)]
pub struct Symbol {
    /// Name without version.
    pub name: String,
    /// Version from `.gnu.version` (dynsym only), e.g. `GLIBC_2.14`: one string shared
    /// by every symbol of the version (a copy each made the C library's symbols cost
    /// twice the allocations).
    pub version: Option<std::sync::Arc<str>>,
    /// `true` for a non-default version (`name@VER`), `false` for `name@@VER`.
    pub version_hidden: bool,
    /// Value: the address in the file's address space (TLS: offset in the TLS block).
    pub value: u64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
    /// Kind.
    pub kind: SymKind,
    /// Global or weak (as opposed to local, like a C `static`).
    pub global: bool,
}

/// Which file, and which version of it: device, inode, size, modification and change
/// times. A file written in place gets a new change time (which no user can set back),
/// a file put in its place a new inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    /// The identity of the file `m` describes.
    pub fn of(m: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}.{:09}:{}.{:09}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

/// A parsed ELF file.
pub struct ElfFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file opened, when read from one (not from memory).
    pub identity: Option<FileIdentity>,
    bytes: Bytes,
    /// `ET_DYN` (shared object or PIE) rather than `ET_EXEC`.
    pub is_dyn: bool,
    /// `EM_X86_64` and ELFCLASS64.
    pub is_x86_64: bool,
    /// 64-bit class.
    pub is_64: bool,
    /// The program interpreter (`PT_INTERP`), for executables.
    pub interp: Option<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// GNU build-id note.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink` file name.
    pub debuglink: Option<String>,
    /// `PT_LOAD` segments.
    pub segments: Vec<Segment>,
    /// Section headers.
    pub sections: Vec<Section>,
    /// `DT_NEEDED` entries.
    pub needed: Vec<String>,
    /// `.symtab` and `.dynsym` ([`ElfFile::symtab`], [`ElfFile::dynsym`]), read on first
    /// use: most objects of a process are only asked a name or two (see
    /// [`ElfFile::exports`]), or nothing.
    tables: OnceLock<[Vec<Symbol>; 2]>,
    /// There is a `.symtab` with symbols in it.
    symtab_present: bool,
    /// Undefined dynamic symbols (what the file needs from other objects): a few names
    /// even in a large library, read with the headers.
    undefined: Vec<String>,
    /// [`ElfFile::dyn_relocs`], read on first use.
    dyn_relocs: OnceLock<HashMap<u64, Reloc>>,
    /// The dynamic symbols' hash table, for lookups by name without reading them.
    hash: Option<DynHash>,
    /// The code symbols of `.symtab` and `.dynsym` by address, names unread
    /// ([`ElfFile::symbolize_name`]).
    code_by_addr: OnceLock<[CodeIndex; 2]>,
    /// Names found by scanning the tables, before [`ElfFile::code_by_addr`] is built
    /// ([`SCANS_BEFORE_INDEX`]).
    scans: std::sync::atomic::AtomicUsize,
    /// Lookup indexes of `symtab` and `dynsym`, built on first use: a patch of 1000
    /// functions and the stack checks look up thousands of names and addresses.
    indexes: [OnceLock<SymIndex>; 2],
    /// The code ranges of `.eh_frame`'s FDEs, sorted, read on first use
    /// ([`crate::elf::unwind::fde_ranges`]): a run asks for them several times per
    /// function (its size, the padding after it, the caller index).
    pub(crate) fde_ranges: OnceLock<std::sync::Arc<Vec<(u64, u64)>>>,
}

/// How many names [`ElfFile::symbolize_name`] finds by scanning the symbol tables before
/// it sorts them into [`CodeIndex`]es: judging a borrowed thread names the few C-library
/// frames on top of its stack, and sorting the C library's thousands of code symbols for
/// them cost a quarter of a millisecond of every apply (5 names: 0.25 ms against 0.03 by
/// scanning); a run that names more (a fleet's judges) sorts once.
const SCANS_BEFORE_INDEX: usize = 16;

/// Lookup index of one symbol table.
#[derive(Default)]
struct SymIndex {
    /// Positions sorted by name, table order among equal names (the order `old_sympos`
    /// counts in).
    by_name: Vec<u32>,
    /// Positions of the code symbols, by address.
    by_addr: Vec<u32>,
    /// The largest code symbol, bounding how far below an address a container may start.
    max_size: u64,
}

impl SymIndex {
    fn build(syms: &[Symbol]) -> SymIndex {
        let mut ix = SymIndex {
            by_name: (0..syms.len() as u32).collect(),
            ..Default::default()
        };
        ix.by_name
            .sort_by(|&a, &b| syms[a as usize].name.cmp(&syms[b as usize].name));
        for (i, s) in syms.iter().enumerate() {
            if matches!(s.kind, SymKind::Func | SymKind::Ifunc) {
                ix.by_addr.push(i as u32);
                ix.max_size = ix.max_size.max(s.size.max(1));
            }
        }
        ix.by_addr.sort_by_key(|&i| syms[i as usize].value);
        ix
    }
}

/// The code symbols (functions and IFUNCs) of one symbol table by address, in the order
/// [`SymIndex`] keeps them, with where each name lies in the string table section, read
/// only for the symbol found.
#[derive(Default)]
struct CodeIndex {
    /// (value, size, name offset, global), by value, table order among equal values.
    syms: Vec<(u64, u64, usize, bool)>,
    max_size: u64,
    /// The string table section (offset, size in the file).
    names: (usize, usize),
}

impl CodeIndex {
    fn of(table: &sym::Symtab, names: &str, file: &ElfFile) -> CodeIndex {
        let Some(sec) = file.section(names) else {
            return CodeIndex::default();
        };
        let mut ix = CodeIndex {
            names: (sec.offset as usize, sec.size as usize),
            ..Default::default()
        };
        for s in table.iter() {
            let code = matches!(s.st_type(), sym::STT_FUNC | sym::STT_GNU_IFUNC);
            if code && s.st_shndx != section_header::SHN_UNDEF as usize && s.st_name != 0 {
                ix.syms.push((
                    s.st_value,
                    s.st_size,
                    s.st_name,
                    s.st_bind() != sym::STB_LOCAL,
                ));
                ix.max_size = ix.max_size.max(s.st_size.max(1));
            }
        }
        ix.syms.sort_by_key(|s| s.0);
        ix
    }

    /// [`ElfFile::containing`] over these symbols: the innermost (highest start), the first
    /// global one in table order among those starting there, else the first.
    fn containing(&self, vaddr: u64, file: &ElfFile) -> Option<(String, u64)> {
        let upto = self.syms.partition_point(|s| s.0 <= vaddr);
        let mut best: Option<&(u64, u64, usize, bool)> = None;
        for s in self.syms[..upto].iter().rev() {
            if s.0.saturating_add(self.max_size) <= vaddr || best.is_some_and(|b| b.0 != s.0) {
                break;
            }
            if vaddr < s.0.saturating_add(s.1.max(1)) && best.is_none_or(|b| s.3 || !b.3) {
                best = Some(s);
            }
        }
        let b = best?;
        let (at, len) = self.names;
        let table = file.data().get(at..at.checked_add(len)?)?;
        let tail = table.get(b.2..)?;
        let end = tail.iter().position(|&c| c == 0)?;
        let name = std::str::from_utf8(&tail[..end]).ok()?;
        Some((name.to_string(), vaddr - b.0))
    }
}

/// One dynamic relocation.
#[derive(Debug, Clone)]
pub struct Reloc {
    /// `R_X86_64_*` type.
    pub r_type: u32,
    /// The symbol's name, if any.
    pub sym_name: Option<String>,
    /// The symbol's value when it is defined in this file.
    pub sym_value: Option<u64>,
    /// Addend (for RELR: the value stored in the file).
    pub addend: i64,
}

const R_X86_64_64: u32 = 1;
const R_X86_64_RELATIVE: u32 = 8;

/// The soname of an ELF shared object, read from its program headers and dynamic
/// section alone: finding a library by soname looks at every object of a process, and
/// parsing each in full (symbols, relocations) cost a large program a fifth of a second.
pub fn read_soname(bytes: &[u8]) -> Option<String> {
    read_dynamic_names(bytes)?.0
}

/// `DT_SONAME` and the `DT_NEEDED` names of an ELF image, from its dynamic segment only
/// (no section headers, no symbols).
pub fn read_dynamic_names(bytes: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    use goblin::container::{Container, Ctx, Endian};
    let h = Elf::parse_header(bytes).ok()?;
    if h.e_ident[header::EI_CLASS] != header::ELFCLASS64
        || h.e_ident[header::EI_DATA] != header::ELFDATA2LSB
    {
        return None;
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let phoff = usize::try_from(h.e_phoff).ok()?;
    let phdrs = program_header::ProgramHeader::parse(bytes, phoff, h.e_phnum as usize, ctx).ok()?;
    let Some(dynamic) = goblin::elf::dynamic::Dynamic::parse(bytes, &phdrs, ctx).ok()? else {
        return Some((None, Vec::new()));
    };
    let info = &dynamic.info;
    // Offsets into the dynamic string table (already a file offset here).
    let strings = bytes.get(info.strtab..info.strtab.checked_add(info.strsz)?)?;
    let name = |off: usize| -> Option<String> {
        let tail = strings.get(off..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&tail[..end]).ok().map(str::to_string)
    };
    let soname = (info.soname != 0).then(|| name(info.soname)).flatten();
    let needed = dynamic
        .dyns
        .iter()
        .filter(|d| d.d_tag == goblin::elf::dynamic::DT_NEEDED)
        .filter_map(|d| name(d.d_val as usize))
        .collect();
    Some((soname, needed))
}

impl ElfFile {
    /// Map and parse the ELF file at `path`.
    pub fn open(path: &Path) -> Result<ElfFile> {
        crate::os::pace::point();
        let file = std::fs::File::open(path).map_err(|e| {
            let cause = match e.kind() {
                std::io::ErrorKind::NotFound => crate::error::Cause::NotFound,
                std::io::ErrorKind::PermissionDenied => crate::error::Cause::Permission,
                _ => crate::error::Cause::Other,
            };
            err!(
                Failed,
                "cannot open {}: {}",
                path.display(),
                crate::error::io_text(&e)
            )
            .because(cause)
        })?;
        // SAFETY: the mapping is read-only and private; if the file is truncated while
        // mapped, reads fault, which is the same hazard every ELF tool accepts.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        let identity = file.metadata().ok().map(|m| FileIdentity::of(&m));
        let mut f = Self::parse(path.to_path_buf(), Bytes::Mapped(map))?;
        f.identity = identity;
        Ok(f)
    }

    /// This version of the file, for facts kept across runs ([`crate::os::kept`]): its
    /// identity and build-id; `None` for an image read from memory.
    pub fn version(&self) -> Option<String> {
        let id = self.identity.as_ref()?;
        let build_id: String = self
            .build_id
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(format!("{id}:{build_id}"))
    }

    /// The entry point (`e_entry`), when there is one.
    pub fn entry(&self) -> Option<u64> {
        let b = self.data().get(24..32)?;
        let e = u64::from_le_bytes(b.try_into().ok()?);
        (e != 0).then_some(e)
    }

    /// An object file (`ET_REL`, a `.o`), not linked yet.
    pub fn is_relocatable(&self) -> bool {
        self.data().get(16..18) == Some(&[1, 0][..])
    }

    /// Parse an ELF image copied from memory (the vDSO).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<ElfFile> {
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<ElfFile> {
        // The parser's own words ("Malformed entity: Too small") say nothing to a user.
        let elf = super::headers::parse(&bytes).map_err(|_| {
            err!(
                Patch,
                "{} is not an ELF file (a program, a shared library or an object file)",
                path.display()
            )
        })?;
        let segments = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == program_header::PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr,
                memsz: p.p_memsz,
                offset: p.p_offset,
                filesz: p.p_filesz,
                exec: p.p_flags & program_header::PF_X != 0,
                write: p.p_flags & program_header::PF_W != 0,
            })
            .collect();
        let sections: Vec<Section> = elf
            .section_headers
            .iter()
            .map(|s| Section {
                name: str_at(&elf.shdr_strtab, s.sh_name)
                    .unwrap_or("")
                    .to_string(),
                addr: s.sh_addr,
                offset: s.sh_offset,
                size: s.sh_size,
                nobits: s.sh_type == section_header::SHT_NOBITS,
            })
            .collect();
        let build_id = elf.iter_note_headers(&bytes).and_then(|notes| {
            notes
                .filter_map(|n| n.ok())
                .find(|n| n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU")
                .map(|n| n.desc.to_vec())
        });
        let debuglink = sections
            .iter()
            .find(|s| s.name == ".gnu_debuglink")
            .and_then(|s| {
                let end = usize::try_from(s.offset.checked_add(s.size)?).ok()?;
                let b = bytes.get(usize::try_from(s.offset).ok()?..end)?;
                let end = b.iter().position(|&c| c == 0)?;
                Some(String::from_utf8_lossy(&b[..end]).into_owned())
            });
        let needed = elf.libraries.iter().map(|s| s.to_string()).collect();
        let undefined = elf
            .dynsyms
            .iter()
            .filter(|s| s.st_shndx == section_header::SHN_UNDEF as usize && s.st_name != 0)
            .filter_map(|s| str_at(&elf.dynstrtab, s.st_name).map(str::to_string))
            .collect();
        let f = ElfFile {
            path,
            identity: None,
            is_dyn: elf.header.e_type == header::ET_DYN,
            is_x86_64: elf.header.e_machine == header::EM_X86_64 && elf.is_64,
            is_64: elf.is_64,
            interp: elf.interpreter.map(str::to_string),
            soname: elf.soname.map(str::to_string),
            build_id,
            debuglink,
            segments,
            sections,
            needed,
            // What `.symtab()` would keep (a table of section and file symbols only is no
            // table): the first such symbol comes within a few entries.
            symtab_present: elf.syms.iter().any(|s| {
                s.st_shndx != section_header::SHN_UNDEF as usize
                    && s.st_name != 0
                    && !matches!(s.st_type(), sym::STT_SECTION | sym::STT_FILE)
                    && str_at(&elf.strtab, s.st_name).is_some()
            }),
            tables: OnceLock::new(),
            undefined,
            dyn_relocs: OnceLock::new(),
            hash: DynHash::of(&elf),
            code_by_addr: OnceLock::new(),
            scans: Default::default(),
            indexes: Default::default(),
            fde_ranges: OnceLock::new(),
            bytes,
        };
        Ok(f)
    }

    /// The parser's view of the file again, for a table read on first use (the headers
    /// were parsed once already: this cannot fail where that did not).
    fn elf(&self) -> Option<Elf<'_>> {
        super::headers::parse(&self.bytes).ok()
    }

    /// Symbols from `.symtab` (empty when stripped).
    pub fn symtab(&self) -> &[Symbol] {
        &self.tables()[0]
    }

    /// Symbols from `.dynsym`.
    pub fn dynsym(&self) -> &[Symbol] {
        &self.tables()[1]
    }

    fn tables(&self) -> &[Vec<Symbol>; 2] {
        self.tables.get_or_init(|| {
            let Some(elf) = self.elf() else {
                return Default::default();
            };
            let versions = symbol_versions(&elf);
            [
                collect_syms(&elf.syms, &elf.strtab, None),
                collect_syms(&elf.dynsyms, &elf.dynstrtab, Some(&versions)),
            ]
        })
    }

    /// Undefined dynamic symbols (what the file needs from other objects).
    pub fn undefined(&self) -> &[String] {
        &self.undefined
    }

    /// Does the file export `name` (a defined global or weak dynamic symbol)? From the
    /// `.gnu.hash` table when the symbols were not read (a few reads of the file), else
    /// from them.
    pub fn exports(&self, name: &str) -> bool {
        match self.hashed(name) {
            Some(found) => found.iter().any(|s| s.defined() && s.global()),
            None => self.named(1, name).any(|s| s.global),
        }
    }

    /// The one function (or IFUNC, or untyped code symbol) the dynamic symbols name
    /// `name` (its versions at one address count once), as [`find_function`] finds it
    /// in a file without `.symtab`; from the `.gnu.hash` table when the symbols were not
    /// read. `None` when there is none or several.
    pub fn dynamic_function(&self, name: &str) -> Option<(u64, u64, SymKind)> {
        if self.symtab_present {
            return find_function(self, name, 0)
                .ok()
                .map(|s| (s.value, s.size, s.kind));
        }
        let Some(hashed) = self.hashed(name) else {
            return find_function(self, name, 0)
                .ok()
                .map(|s| (s.value, s.size, s.kind));
        };
        let mut found: Vec<(u64, u64, SymKind)> = Vec::new();
        for s in hashed {
            let kind = match s.info & 0xf {
                sym::STT_FUNC => SymKind::Func,
                sym::STT_GNU_IFUNC => SymKind::Ifunc,
                sym::STT_NOTYPE => SymKind::Other,
                _ => continue,
            };
            if s.defined() && !found.iter().any(|f| f.0 == s.value) {
                found.push((s.value, s.size, kind));
            }
        }
        match found[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The dynamic symbols named `name`, through the hash table, while the symbols are
    /// not read (after, their index answers as fast).
    /// The value and size of the one defined dynamic symbol named `name`, through the
    /// hash table when there is one (the symbols are not read for it).
    pub fn dynamic_symbol(&self, name: &str) -> Option<(u64, u64)> {
        match self.hashed(name) {
            Some(found) => match found.iter().filter(|s| s.defined()).collect::<Vec<_>>()[..] {
                [one] => Some((one.value, one.size)),
                _ => None,
            },
            None => {
                let mut it = self.named(1, name);
                let first = it.next()?;
                it.next().is_none().then_some((first.value, first.size))
            }
        }
    }

    fn hashed(&self, name: &str) -> Option<Vec<DynSym>> {
        match (&self.hash, self.tables.get()) {
            (Some(h), None) => h.find(&self.bytes, name),
            _ => None,
        }
    }

    /// Relocations of the dynamic section, by offset: (type, symbol value if the symbol is
    /// defined here, symbol name, addend). RELR entries appear as `R_X86_64_RELATIVE`.
    pub fn dyn_relocs(&self) -> &HashMap<u64, Reloc> {
        self.dyn_relocs.get_or_init(|| match self.elf() {
            Some(elf) => self.read_relocs(&elf),
            None => HashMap::new(),
        })
    }

    /// Does a dynamic relocation store the address `vaddr` (a relative one whose addend
    /// it is, or one against a symbol defined here at it)? Read from the relocation
    /// tables themselves while [`ElfFile::dyn_relocs`] is not built: asked once of the
    /// object a patch changes, where building the map was most of the cost.
    pub fn relocates_to(&self, vaddr: u64) -> bool {
        let stores = |r: &Reloc| {
            (r.r_type == R_X86_64_RELATIVE && r.addend as u64 == vaddr)
                || (r.sym_value == Some(vaddr) && matches!(r.r_type, 1 | 6 | 7))
        };
        if let Some(map) = self.dyn_relocs.get() {
            return map.values().any(stores);
        }
        let Some(elf) = self.elf() else {
            return false;
        };
        let defined_at = |sym: usize| {
            elf.dynsyms
                .get(sym)
                .filter(|s| sym != 0 && s.st_shndx != section_header::SHN_UNDEF as usize)
                .map(|s| s.st_value)
        };
        let listed = elf
            .dynrelas
            .iter()
            .chain(elf.dynrels.iter())
            .chain(elf.pltrelocs.iter())
            .any(|r| {
                stores(&Reloc {
                    r_type: r.r_type,
                    sym_name: None,
                    sym_value: defined_at(r.r_sym),
                    addend: r.r_addend.unwrap_or(0),
                })
            });
        listed
            || self
                .relr_offsets(&elf)
                .into_iter()
                .any(|off| self.read_u64(off) == Some(vaddr))
    }

    /// The places `DT_RELR` relocates (each gets the file's address stored there).
    fn relr_offsets(&self, elf: &Elf) -> Vec<u64> {
        relr_table(elf)
            .and_then(|(addr, size)| self.bytes_at(addr, size as usize))
            .map(|b| {
                decode_relr(
                    &b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default()
    }

    fn read_relocs(&self, elf: &Elf) -> HashMap<u64, Reloc> {
        let mut dyn_relocs = HashMap::new();
        for r in elf
            .dynrelas
            .iter()
            .chain(elf.dynrels.iter())
            .chain(elf.pltrelocs.iter())
        {
            let s = elf.dynsyms.get(r.r_sym);
            let (sym_name, sym_value) = match s {
                Some(s) if r.r_sym != 0 => (
                    str_at(&elf.dynstrtab, s.st_name).map(str::to_string),
                    (s.st_shndx != section_header::SHN_UNDEF as usize).then_some(s.st_value),
                ),
                _ => (None, None),
            };
            dyn_relocs.insert(
                r.r_offset,
                Reloc {
                    r_type: r.r_type,
                    sym_name,
                    sym_value,
                    addend: r.r_addend.unwrap_or(0),
                },
            );
        }
        for off in self.relr_offsets(elf) {
            let addend = self.read_u64(off).unwrap_or(0) as i64;
            dyn_relocs.insert(
                off,
                Reloc {
                    r_type: R_X86_64_RELATIVE,
                    sym_name: None,
                    sym_value: None,
                    addend,
                },
            );
        }
        dyn_relocs
    }

    /// The whole file.
    pub fn data(&self) -> &[u8] {
        &self.bytes
    }

    /// A section by name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The bytes of a section in the file.
    pub fn section_data(&self, s: &Section) -> Option<&[u8]> {
        if s.nobits {
            return None;
        }
        let end = usize::try_from(s.offset.checked_add(s.size)?).ok()?;
        self.bytes.get(usize::try_from(s.offset).ok()?..end)
    }

    /// The file bytes that are loaded at `vaddr` (file address space), `len` of them.
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        // Every value here comes from the file: none may overflow.
        let end = vaddr.checked_add(len as u64)?;
        let seg = self.segments.iter().find(|s| {
            s.vaddr <= vaddr && s.vaddr.checked_add(s.filesz).is_some_and(|e| end <= e)
        })?;
        let off = usize::try_from(seg.offset.checked_add(vaddr - seg.vaddr)?).ok()?;
        self.bytes.get(off..off.checked_add(len)?)
    }

    /// A little-endian u64 at file address `vaddr`.
    pub fn read_u64(&self, vaddr: u64) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.bytes_at(vaddr, 8)?.try_into().ok()?,
        ))
    }

    /// A NUL-terminated string at file address `vaddr`.
    pub fn cstr_at(&self, vaddr: u64) -> Option<String> {
        let seg = self.segments.iter().find(|s| {
            s.vaddr <= vaddr && s.vaddr.checked_add(s.filesz).is_some_and(|e| vaddr < e)
        })?;
        let off = usize::try_from(seg.offset.checked_add(vaddr - seg.vaddr)?).ok()?;
        let end = usize::try_from(seg.offset.checked_add(seg.filesz)?).ok()?;
        let b = self.bytes.get(off..end)?;
        let n = b.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&b[..n]).into_owned())
    }

    /// The pointer-sized value the dynamic loader stores at `vaddr`: the file's own
    /// address for relative relocations, the symbol's address for symbol relocations
    /// against symbols defined here. `Err(name)` when it points to another object.
    pub fn pointer_at(&self, vaddr: u64) -> std::result::Result<Option<u64>, String> {
        match self.dyn_relocs().get(&vaddr) {
            Some(r) if r.r_type == R_X86_64_RELATIVE => Ok(Some(r.addend as u64)),
            Some(r) if r.r_type == R_X86_64_64 || r.r_type == 6 /* GLOB_DAT */ => match r.sym_value {
                Some(v) => Ok(Some(v.wrapping_add(r.addend as u64))),
                None => Err(r.sym_name.clone().unwrap_or_default()),
            },
            Some(r) => Err(format!("relocation type {}", r.r_type)),
            None => Ok(self.read_u64(vaddr).filter(|&v| v != 0)),
        }
    }

    /// The symbols to search for a name: `.symtab` when present (it is a superset), else
    /// `.dynsym`.
    pub fn best_symbols(&self) -> &[Symbol] {
        if self.symtab().is_empty() {
            self.dynsym()
        } else {
            self.symtab()
        }
    }

    /// Is there a symbol table with local (static) symbols?
    pub fn has_symtab(&self) -> bool {
        self.symtab_present
    }

    /// The lowest `PT_LOAD` address, page-aligned: the load bias is the mapped address of
    /// the first segment minus this.
    pub fn first_vaddr(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.vaddr & !0xfff)
            .min()
            .unwrap_or(0)
    }

    /// The build-id as lowercase hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_ref().map(|b| crate::fmt::hex(b))
    }

    /// The function symbol whose range contains `vaddr` (file address space), preferring
    /// `.symtab`, for symbolizing addresses in messages.
    pub fn symbolize(&self, vaddr: u64) -> Option<(&Symbol, u64)> {
        for (n, syms) in [self.symtab(), self.dynsym()].into_iter().enumerate() {
            if let Some(i) = self.containing(n, syms, vaddr) {
                return Some((&syms[i], vaddr - syms[i].value));
            }
        }
        None
    }

    /// The name of the function symbol containing `vaddr` and the offset in it, as
    /// [`ElfFile::symbolize`] finds them, without reading every symbol's name while the
    /// symbols were not read: judging a thread names the C-library functions on its stack,
    /// and reading the C library's thousands of names for that was most of the cost.
    pub fn symbolize_name(&self, vaddr: u64) -> Option<(String, u64)> {
        // (Without section headers the names are found through the dynamic section only.)
        if self.tables.get().is_some() || self.section(".dynstr").is_none() {
            return self.symbolize(vaddr).map(|(s, off)| (s.name.clone(), off));
        }
        if self.code_by_addr.get().is_none()
            && self
                .scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                < SCANS_BEFORE_INDEX
            && let Ok(found) = self.scan_name(vaddr)
        {
            return found;
        }
        let ix = self.code_by_addr.get_or_init(|| match self.elf() {
            Some(elf) => [
                CodeIndex::of(&elf.syms, ".strtab", self),
                CodeIndex::of(&elf.dynsyms, ".dynstr", self),
            ],
            None => Default::default(),
        });
        ix.iter().find_map(|t| t.containing(vaddr, self))
    }

    /// [`ElfFile::symbolize_name`] by scanning `.symtab`, then `.dynsym`.
    fn scan_name(&self, vaddr: u64) -> Result<Option<(String, u64)>, ()> {
        for (table, names) in [(".symtab", ".strtab"), (".dynsym", ".dynstr")] {
            if let Some(found) = self.scan_containing(table, names, vaddr)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// [`CodeIndex::containing`] by one pass over the symbol table section `table` (names
    /// in section `names`), without sorting it: the same symbol, the highest start among
    /// those containing `vaddr`, the first global one in table order among those starting
    /// there, else the first. `Err` when the table cannot be read in place (misaligned).
    fn scan_containing(
        &self,
        table: &str,
        names: &str,
        vaddr: u64,
    ) -> Result<Option<(String, u64)>, ()> {
        use goblin::elf64::sym::Sym;
        // (An ELF64 little-endian file's entries only: others go to the index.)
        if !self.is_x86_64 {
            return Err(());
        }
        let (Some(table), Some(names)) = (self.section(table), self.section(names)) else {
            return Ok(None);
        };
        let bytes = self.section_data(table).unwrap_or_default();
        let syms: &[Sym] = plain::slice_from_bytes(bytes).map_err(|_| ())?;
        let global = |x: &Sym| x.st_info >> 4 != sym::STB_LOCAL;
        let mut best: Option<&Sym> = None;
        for s in syms {
            let code = matches!(s.st_info & 0xf, sym::STT_FUNC | sym::STT_GNU_IFUNC);
            if !code
                || s.st_shndx == section_header::SHN_UNDEF as u16
                || s.st_name == 0
                || s.st_value > vaddr
                || vaddr >= s.st_value.saturating_add(s.st_size.max(1))
            {
                continue;
            }
            if best.is_none_or(|b| {
                s.st_value > b.st_value || (s.st_value == b.st_value && global(s) && !global(b))
            }) {
                best = Some(s);
            }
        }
        let Some(b) = best else {
            return Ok(None);
        };
        let name = (|| {
            let (at, len) = (names.offset as usize, names.size as usize);
            let tail = self
                .data()
                .get(at..at.checked_add(len)?)?
                .get(b.st_name as usize..)?;
            let end = tail.iter().position(|&c| c == 0)?;
            Some(std::str::from_utf8(&tail[..end]).ok()?.to_string())
        })();
        Ok(name.map(|n| (n, vaddr - b.st_value)))
    }

    /// The symbols of table `n` (0 = `.symtab`, 1 = `.dynsym`) named `name`, in table order.
    fn named<'a>(&'a self, n: usize, name: &str) -> impl Iterator<Item = &'a Symbol> + 'a {
        let syms = if n == 0 { self.symtab() } else { self.dynsym() };
        let ix = self.indexes[n].get_or_init(|| SymIndex::build(syms));
        let from = ix
            .by_name
            .partition_point(|&i| syms[i as usize].name.as_str() < name);
        let to = ix
            .by_name
            .partition_point(|&i| syms[i as usize].name.as_str() <= name);
        ix.by_name[from..to.max(from)]
            .iter()
            .map(move |&i| &syms[i as usize])
    }

    /// The innermost code symbol of `syms` containing `vaddr`: the highest start, a global
    /// one when several start there.
    fn containing(&self, n: usize, syms: &[Symbol], vaddr: u64) -> Option<usize> {
        let ix = self.indexes[n].get_or_init(|| SymIndex::build(syms));
        let upto = ix
            .by_addr
            .partition_point(|&i| syms[i as usize].value <= vaddr);
        let mut best: Option<usize> = None;
        for &i in ix.by_addr[..upto].iter().rev() {
            let s = &syms[i as usize];
            if s.value.saturating_add(ix.max_size) <= vaddr {
                break;
            }
            if best.is_some_and(|b| syms[b].value != s.value) {
                break;
            }
            // Among symbols starting at the same address, the first global one in table
            // order, else the first one (the walk goes backwards).
            if vaddr < s.value.saturating_add(s.size.max(1))
                && best.is_none_or(|b| s.global || !syms[b].global)
            {
                best = Some(i as usize);
            }
        }
        best
    }
}

fn collect_syms(
    syms: &sym::Symtab,
    strtab: &goblin::strtab::Strtab,
    versions: Option<&[SymVersion]>,
) -> Vec<Symbol> {
    syms.iter()
        .enumerate()
        .filter(|(_, s)| s.st_shndx != section_header::SHN_UNDEF as usize && s.st_name != 0)
        .filter_map(|(i, s)| {
            let name = str_at(strtab, s.st_name)?;
            let kind = match s.st_type() {
                sym::STT_FUNC => SymKind::Func,
                sym::STT_GNU_IFUNC => SymKind::Ifunc,
                sym::STT_OBJECT | sym::STT_COMMON => SymKind::Object,
                sym::STT_TLS => SymKind::Tls,
                sym::STT_SECTION | sym::STT_FILE => return None,
                _ => SymKind::Other,
            };
            let (version, version_hidden) = versions
                .and_then(|v| v.get(i).cloned())
                .unwrap_or((None, false));
            Some(Symbol {
                name: name.to_string(),
                version,
                version_hidden,
                value: s.st_value,
                size: s.st_size,
                kind,
                global: s.st_bind() != sym::STB_LOCAL,
            })
        })
        .collect()
}

/// A dynamic symbol's version name and whether it is hidden (`name@VER`).
type SymVersion = (Option<std::sync::Arc<str>>, bool);

/// Version name and "hidden" flag of each dynsym entry, from `.gnu.version` and
/// `.gnu.version_d`.
fn symbol_versions(elf: &Elf) -> Vec<SymVersion> {
    let (Some(versym), Some(verdef)) = (&elf.versym, &elf.verdef) else {
        return Vec::new();
    };
    let mut names: HashMap<u16, std::sync::Arc<str>> = HashMap::new();
    for def in verdef.iter() {
        if let Some(aux) = def.iter().next()
            && let Some(n) = str_at(&elf.dynstrtab, aux.vda_name)
        {
            names.insert(def.vd_ndx, n.into());
        }
    }
    versym
        .iter()
        .map(|v| {
            let idx = v.version();
            let name = if idx > 1 {
                names.get(&idx).cloned()
            } else {
                None
            };
            (name, v.is_hidden())
        })
        .collect()
}

/// Where the `DT_RELR` table (packed relative relocations) is: (address, size).
fn relr_table(elf: &Elf) -> Option<(u64, u64)> {
    const DT_RELR: u64 = 36;
    const DT_RELRSZ: u64 = 35;
    let dynamic = elf.dynamic.as_ref()?;
    let get = |tag| {
        dynamic
            .dyns
            .iter()
            .find(|d| d.d_tag == tag)
            .map(|d| d.d_val)
    };
    Some((get(DT_RELR)?, get(DT_RELRSZ)?))
}

/// Decode a `DT_RELR` table: even entries are addresses, odd entries are bitmaps of the
/// following 63 words.
pub fn decode_relr(entries: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut base = 0u64;
    for &e in entries {
        if e & 1 == 0 {
            out.push(e);
            base = e + 8;
        } else {
            let mut bits = e >> 1;
            let mut addr = base;
            while bits != 0 {
                if bits & 1 != 0 {
                    out.push(addr);
                }
                bits >>= 1;
                addr += 8;
            }
            base += 63 * 8;
        }
    }
    out
}

/// A symbol given as `name#0xADDR` (what `rlivepatch build` writes): the symbol of that
/// name at that file address, which must exist (the patch carries the object's
/// build-id, so the address is exact). `None` for a plain name.
fn at_address<'a>(file: &'a ElfFile, spec: &str) -> Result<Option<&'a Symbol>> {
    let Some((name, addr)) = spec.rsplit_once('#') else {
        return Ok(None);
    };
    let Some(vaddr) = addr
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
    else {
        bail!(Mismatch, "bad symbol {spec}: expected name#0xADDRESS");
    };
    let found = file.symtab().iter().chain(file.dynsym()).find(|s| {
        s.value == vaddr && (s.name == name || s.name == name.split('@').next().unwrap_or(name))
    });
    match found {
        Some(s) => Ok(Some(s)),
        None => bail!(
            Mismatch,
            "{} has no symbol {name} at {vaddr:#x}: the patch was built for another build of it (rebuild the patch against this binary)",
            file.path.display()
        ),
    }
}

/// Find a function by name in `file`, with the kernel's `old_sympos` rule: `pos == 0`
/// means the name must be unique; `pos == N` picks the Nth occurrence in symbol-table
/// order. `name` may carry a version (`memcpy@@GLIBC_2.14`, `name@VER`).
pub fn find_function<'a>(file: &'a ElfFile, name: &str, pos: u64) -> Result<&'a Symbol> {
    if let Some(s) = at_address(file, name)? {
        return Ok(s);
    }
    let (base, version) = match name.find('@') {
        Some(i) => (&name[..i], Some(name[i..].trim_start_matches('@'))),
        None => (name, None),
    };
    let pick = |n: usize| -> Vec<&'a Symbol> {
        let mut seen = Vec::new();
        let mut out: Vec<&Symbol> = Vec::new();
        for s in file.named(n, base) {
            if !matches!(s.kind, SymKind::Func | SymKind::Ifunc | SymKind::Other) {
                continue;
            }
            if let Some(v) = version
                && s.version.as_deref().is_some_and(|sv| sv != v)
            {
                continue;
            }
            if !seen.contains(&s.value) {
                seen.push(s.value);
                out.push(s);
            }
        }
        out
    };
    // Versions are only known for dynamic symbols.
    let mut found = match version {
        Some(_) => pick(1),
        None => {
            let f = pick(0);
            if f.is_empty() { pick(1) } else { f }
        }
    };
    if found.is_empty() && version.is_none() {
        // Link-time optimisation renames a static function `name.lto_priv.N` when it
        // makes it visible across units: the same function, under another name.
        found = file
            .symtab()
            .iter()
            .filter(|s| {
                s.kind == SymKind::Func
                    && s.name
                        .strip_prefix(base)
                        .and_then(|r| r.strip_prefix(".lto_priv."))
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        found.sort_by_key(|s| s.value);
        found.dedup_by_key(|s| s.value);
    }
    if found.is_empty() {
        return Err(err!(
            Mismatch,
            "symbol {name} not found in {}",
            file.path.display()
        )
        .because(crate::error::Cause::NotFound));
    }
    match pos {
        0 if found.len() == 1 => Ok(found[0]),
        0 => {
            let list: Vec<String> = found
                .iter()
                .enumerate()
                .map(|(i, s)| format!("#{} at {:#x}", i + 1, s.value))
                .collect();
            bail!(
                Mismatch,
                "symbol {name} is ambiguous in {}: {} occurrences ({}); name one with RLIVEPATCH_FUNC_POS(old, N, new)",
                file.path.display(),
                found.len(),
                list.join(", ")
            )
        }
        n => found.get(n as usize - 1).copied().ok_or_else(|| {
            err!(
                Mismatch,
                "symbol {name} has {} occurrence(s) in {}, not {n}",
                found.len(),
                file.path.display()
            )
        }),
    }
}

/// Find a data or code symbol by name (for a patch's `RLIVEPATCH_SYMBOL`): `.symtab` first,
/// then `.dynsym`; the name must be unique (an optional `@VERSION` picks a version).
pub fn find_symbol<'a>(file: &'a ElfFile, name: &str) -> Result<&'a Symbol> {
    if let Some(s) = at_address(file, name)? {
        return Ok(s);
    }
    let (base, version) = match name.find('@') {
        Some(i) => (&name[..i], Some(name[i..].trim_start_matches('@'))),
        None => (name, None),
    };
    let pick = |n: usize| -> Vec<&'a Symbol> {
        let mut out: Vec<&Symbol> = Vec::new();
        for s in file.named(n, base) {
            if version.is_some_and(|v| s.version.as_deref().is_some_and(|sv| sv != v)) {
                continue;
            }
            if !out.iter().any(|o| o.value == s.value) {
                out.push(s);
            }
        }
        out
    };
    let mut found = pick(0);
    if found.is_empty() {
        found = pick(1);
    }
    match found.len() {
        1 => Ok(found[0]),
        0 => bail!(Mismatch, "no symbol {name}"),
        n => bail!(
            Mismatch,
            "{n} symbols named {name}; the name must be unique"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_an_address_as_the_symbols_do_without_reading_them() {
        let path = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let light = ElfFile::open(path).unwrap();
        let full = ElfFile::open(path).unwrap();
        let mut probes: Vec<u64> = full
            .dynsym()
            .iter()
            .flat_map(|s| {
                [
                    s.value,
                    s.value + s.size / 2,
                    s.value + s.size,
                    s.value.wrapping_sub(1),
                ]
            })
            .collect();
        probes.extend((0..4000u64).map(|i| i * 613));
        let mut named = 0;
        for v in probes {
            let want = full.symbolize(v).map(|(s, off)| (s.name.clone(), off));
            assert_eq!(light.symbolize_name(v), want, "at {v:#x}");
            named += want.is_some() as usize;
        }
        assert!(named > 1000, "{named}");
        // The first answers came from scanning the tables, the rest from the index.
        assert!(light.code_by_addr.get().is_some());
        let mut scanned = 0;
        for v in full.dynsym().iter().map(|s| s.value + s.size / 2).take(600) {
            let want = full.symbolize(v).map(|(s, off)| (s.name.clone(), off));
            assert_eq!(light.scan_name(v), Ok(want.clone()), "scanned at {v:#x}");
            scanned += want.is_some() as usize;
        }
        assert!(scanned > 300, "{scanned}");
        // It read no symbol table for that.
        assert!(light.tables.get().is_none());
    }

    #[test]
    fn answers_names_as_the_symbols_do_without_reading_them() {
        let path = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let light = ElfFile::open(path).unwrap();
        let full = ElfFile::open(path).unwrap();
        let mut names: Vec<String> = full.dynsym().iter().map(|s| s.name.clone()).collect();
        names.extend(["rlivepatch_none".into(), "__libc_start_call_main".into()]);
        for n in &names {
            assert_eq!(
                light.exports(n),
                full.named(1, n).any(|s| s.global),
                "exports {n}"
            );
            let want = find_function(&full, n, 0)
                .ok()
                .map(|s| (s.value, s.size, s.kind));
            assert_eq!(light.dynamic_function(n), want, "function {n}");
        }
        assert!(light.exports("dlopen") && light.dynamic_function("syscall").is_some());
        assert!(light.tables.get().is_none());
    }

    #[test]
    fn finds_a_relocated_address_with_or_without_the_map() {
        for path in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        ] {
            let light = ElfFile::open(Path::new(path)).unwrap();
            let full = ElfFile::open(Path::new(path)).unwrap();
            let stored: Vec<u64> = full
                .dyn_relocs()
                .values()
                .filter_map(|r| match r.r_type {
                    R_X86_64_RELATIVE => Some(r.addend as u64),
                    _ => r.sym_value,
                })
                .take(500)
                .collect();
            let probes = stored
                .iter()
                .copied()
                .chain(full.dynsym().iter().map(|s| s.value).take(500));
            let mut hits = 0;
            for v in probes {
                let want = full.relocates_to(v);
                assert_eq!(light.relocates_to(v), want, "{path} {v:#x}");
                hits += want as usize;
            }
            assert!(hits > 0, "{path}");
            assert!(light.dyn_relocs.get().is_none());
        }
    }

    #[test]
    fn a_symbol_table_is_one_with_symbols_in_it() {
        for path in ["/lib/x86_64-linux-gnu/libc.so.6", "/proc/self/exe"] {
            let light = ElfFile::open(Path::new(path)).unwrap();
            let full = ElfFile::open(Path::new(path)).unwrap();
            assert_eq!(light.has_symtab(), !full.symtab().is_empty(), "{path}");
        }
        // The test binary has its own symbols.
        assert!(
            ElfFile::open(Path::new("/proc/self/exe"))
                .unwrap()
                .has_symtab()
        );
    }

    #[test]
    fn reads_the_soname_from_the_dynamic_section_alone() {
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        assert_eq!(read_soname(&libc).as_deref(), Some("libc.so.6"));
        // Agrees with the full parse.
        let full = ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert_eq!(full.soname.as_deref(), Some("libc.so.6"));
        // An executable has none; garbage is no answer, not a panic.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(read_soname(&exe), None);
        assert_eq!(read_soname(&libc[..100]), None);
        assert_eq!(read_soname(b"not an ELF file at all"), None);
    }
}
