//! goblin's view of an ELF file without its eager string tables.
//!
//! `goblin::elf::Elf::parse` splits every string of `.strtab`, `.dynstr` and
//! `.shstrtab` into a vector, each checked as UTF-8: for the C library's 3,000 dynamic
//! names, and for every object of a process at each parse, most of the CPU an ELF parse
//! takes (a tenth of rlivepatch's own CPU in an apply). rlivepatch reads a name by its
//! offset when it needs it ([`str_at`]), so [`parse`] assembles the same `Elf` from
//! goblin's own parsers with the string tables left unparsed. A file it cannot read that way (no
//! section headers to size the dynamic symbols, a section index past the header's
//! 16 bits) is parsed by goblin in full.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{self, Dynamic};
use goblin::elf::program_header::{self, ProgramHeader};
use goblin::elf::reloc::RelocSection;
use goblin::elf::section_header::{self, SectionHeader};
use goblin::elf::sym::Symtab;
use goblin::elf::{Elf, symver};
use goblin::strtab::Strtab;

/// The parsed headers and tables of `bytes` (string tables unparsed).
pub fn parse(bytes: &[u8]) -> goblin::error::Result<Elf<'_>> {
    match lazily(bytes) {
        Some(elf) => Ok(elf),
        None => Elf::parse(bytes),
    }
}

/// The string table of `len` bytes at `offset`, when it lies within the file.
fn unparsed(bytes: &[u8], offset: usize, len: usize) -> Option<Strtab<'_>> {
    (offset.checked_add(len)? <= bytes.len())
        .then(|| Strtab::from_slice_unparsed(bytes, offset, len, 0))
}

/// The string at `offset` of a string table, read where it lies (goblin's `get`, which
/// its authors deprecated for `get_at`; `get_at` searches the index of all the strings
/// the full parse builds, and finds nothing in the tables [`parse`] leaves unparsed).
#[allow(deprecated)]
pub fn str_at<'a>(table: &Strtab<'a>, offset: usize) -> Option<&'a str> {
    table.get(offset)?.ok()
}

/// What [`parse`] makes, or `None` where goblin's full parse is needed.
fn lazily(bytes: &[u8]) -> Option<Elf<'_>> {
    let header = Elf::parse_header(bytes).ok()?;
    let mut elf = Elf::lazy_parse(header).ok()?;
    let container = if elf.is_64 {
        Container::Big
    } else {
        Container::Little
    };
    let endian = if elf.little_endian {
        Endian::Little
    } else {
        Endian::Big
    };
    let ctx = Ctx::new(container, endian);
    if header.e_shstrndx == section_header::SHN_XINDEX as u16 {
        return None;
    }
    let phdrs =
        ProgramHeader::parse(bytes, header.e_phoff as usize, header.e_phnum as usize, ctx).ok()?;
    elf.interpreter = phdrs
        .iter()
        .find(|p| p.p_type == program_header::PT_INTERP && p.p_filesz != 0)
        .and_then(|p| {
            let start = usize::try_from(p.p_offset).ok()?;
            let end = start.checked_add(usize::try_from(p.p_filesz - 1).ok()?)?;
            std::str::from_utf8(bytes.get(start..end)?).ok()
        });
    let shdrs =
        SectionHeader::parse(bytes, header.e_shoff as usize, header.e_shnum as usize, ctx).ok()?;
    let table_of = |idx: usize| -> Option<Strtab<'_>> {
        match shdrs.get(idx) {
            Some(s) => unparsed(bytes, s.sh_offset as usize, s.sh_size as usize),
            None => Some(Strtab::default()),
        }
    };
    elf.shdr_strtab = table_of(header.e_shstrndx as usize)?;
    let count = |s: &SectionHeader| match s.sh_entsize {
        0 => 0,
        n => (s.sh_size / n) as usize,
    };
    if let Some(s) = shdrs
        .iter()
        .rfind(|s| s.sh_type == section_header::SHT_SYMTAB)
    {
        elf.syms = Symtab::parse(bytes, s.sh_offset as usize, count(s), ctx).ok()?;
        elf.strtab = table_of(s.sh_link as usize)?;
    }
    elf.dynamic = Dynamic::parse(bytes, &phdrs, ctx).ok()?;
    if let Some(d) = &elf.dynamic {
        let info = &d.info;
        elf.is_lib = elf.is_lib && info.flags_1 & dynamic::DF_1_PIE == 0;
        elf.dynstrtab = unparsed(bytes, info.strtab, info.strsz)?;
        elf.soname = (info.soname != 0)
            .then(|| str_at(&elf.dynstrtab, info.soname))
            .flatten();
        elf.libraries = d
            .dyns
            .iter()
            .filter(|e| e.d_tag == dynamic::DT_NEEDED)
            .filter_map(|e| str_at(&elf.dynstrtab, e.d_val as usize))
            .collect();
        elf.dynrelas = RelocSection::parse(bytes, info.rela, info.relasz, true, ctx).ok()?;
        elf.dynrels = RelocSection::parse(bytes, info.rel, info.relsz, false, ctx).ok()?;
        let plt_rela = info.pltrel == dynamic::DT_RELA;
        elf.pltrelocs =
            RelocSection::parse(bytes, info.jmprel, info.pltrelsz, plt_rela, ctx).ok()?;
        // Sized by its section header, as readelf does (goblin walks the hash table).
        let dynsym = shdrs
            .iter()
            .find(|s| s.sh_type == section_header::SHT_DYNSYM)?;
        elf.dynsyms = Symtab::parse(bytes, info.symtab, count(dynsym), ctx).ok()?;
    }
    elf.versym = symver::VersymSection::parse(bytes, &shdrs, ctx).ok()?;
    elf.verdef = symver::VerdefSection::parse(bytes, &shdrs, ctx).ok()?;
    elf.verneed = symver::VerneedSection::parse(bytes, &shdrs, ctx).ok()?;
    elf.program_headers = phdrs;
    elf.section_headers = shdrs;
    Some(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same view as goblin's full parse, field by field, on the C library, the
    /// loader, a dynamic program (the shell) and this test program (static-pie).
    #[test]
    fn reads_what_goblins_full_parse_reads() {
        let exe = std::env::current_exe().unwrap();
        let mut files = vec![exe.clone(), std::path::PathBuf::from("/bin/sh")];
        for dir in ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"] {
            for name in ["libc.so.6", "ld-linux-x86-64.so.2", "libgcc_s.so.1"] {
                let p = std::path::Path::new(dir).join(name);
                if p.exists() {
                    files.push(p);
                }
            }
        }
        assert!(files.len() >= 4, "{files:?}");
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            let full = Elf::parse(&bytes).unwrap();
            let lazy = lazily(&bytes).unwrap_or_else(|| panic!("{}", path.display()));
            let what = path.display();
            assert_eq!(lazy.program_headers, full.program_headers, "{what}");
            assert_eq!(lazy.section_headers, full.section_headers, "{what}");
            assert_eq!(lazy.interpreter, full.interpreter, "{what}");
            assert_eq!(lazy.soname, full.soname, "{what}");
            assert_eq!(lazy.libraries, full.libraries, "{what}");
            assert_eq!(
                (lazy.is_lib, lazy.is_64),
                (full.is_lib, full.is_64),
                "{what}"
            );
            assert_eq!(lazy.syms.to_vec(), full.syms.to_vec(), "{what}");
            let (lazy_dyn, full_dyn) = (lazy.dynsyms.to_vec(), full.dynsyms.to_vec());
            if full_dyn.is_empty() {
                // Only the null symbol (a static-pie program, as rlivepatch is): the
                // section header counts it, goblin's walk of the empty hash table not.
                let null = |s: &goblin::elf::Sym| s.st_name == 0 && s.st_value == 0;
                assert!(lazy_dyn.len() <= 1 && lazy_dyn.iter().all(null), "{what}");
            } else {
                assert_eq!(lazy_dyn, full_dyn, "{what}");
            }
            for (table, lt, ft) in [
                (&full.syms, &lazy.strtab, &full.strtab),
                (&full.dynsyms, &lazy.dynstrtab, &full.dynstrtab),
            ] {
                for s in table.iter() {
                    assert_eq!(str_at(lt, s.st_name), ft.get_at(s.st_name), "{what}");
                }
            }
            for s in &full.section_headers {
                assert_eq!(
                    str_at(&lazy.shdr_strtab, s.sh_name),
                    full.shdr_strtab.get_at(s.sh_name),
                    "{what}"
                );
            }
            let relocs = |e: &Elf| {
                [&e.dynrelas, &e.dynrels, &e.pltrelocs].map(|r| {
                    r.iter()
                        .map(|r| (r.r_offset, r.r_sym, r.r_type))
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(relocs(&lazy), relocs(&full), "{what}");
            assert_eq!(
                (
                    lazy.versym.is_some(),
                    lazy.verdef.is_some(),
                    lazy.verneed.is_some()
                ),
                (
                    full.versym.is_some(),
                    full.verdef.is_some(),
                    full.verneed.is_some()
                ),
                "{what}"
            );
            assert!(
                !full.dynsyms.is_empty() || path == exe,
                "{what}: nothing compared"
            );
        }
    }
}
