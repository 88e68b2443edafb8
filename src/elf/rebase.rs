//! Moving a linked x86-64 shared object to another link-time address: every address the
//! file holds grows by the same page-aligned amount, so that the dynamic loader, which
//! asks the kernel for the first segment's address (an `mmap` hint, honoured when the
//! range is free), maps it there.
//!
//! What a linked shared object holds as addresses, and so what moves: the entry, the
//! segments' and allocated sections' addresses, the dynamic section's address entries,
//! the defined symbols (not thread-local ones: theirs are offsets in the TLS block), the
//! places of the dynamic relocations and the addends that are addresses (`RELATIVE`,
//! `IRELATIVE`), the words a `DT_RELR` table names, and the words the loader adds its
//! bias to without a relocation (lazy `JUMP_SLOT` entries, the `.got.plt` header). Code
//! and the rest of the data are position-independent, or reached through those
//! relocations. Anything the file holds that is not understood refuses the move: the
//! caller then loads the object as it is.

use goblin::elf::Elf;
use std::fmt;

/// Why an object cannot be moved (it is then loaded where the loader puts it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebaseError {
    /// Not a 64-bit little-endian x86-64 shared object.
    NotSharedObject,
    /// The file does not parse, or a table lies outside it.
    Malformed(String),
    /// A dynamic entry of this tag, whose meaning is not known here.
    UnknownDynamicTag(u64),
    /// A dynamic relocation of this type, whose meaning is not known here.
    UnknownRelocation(u32),
    /// The amount is not a multiple of the segments' alignment.
    Misaligned(u64),
}

impl fmt::Display for RebaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RebaseError::NotSharedObject => write!(f, "not an x86-64 shared object"),
            RebaseError::Malformed(why) => write!(f, "malformed: {why}"),
            RebaseError::UnknownDynamicTag(t) => write!(f, "dynamic entry {t:#x} is not known"),
            RebaseError::UnknownRelocation(t) => write!(f, "relocation type {t} is not known"),
            RebaseError::Misaligned(a) => write!(f, "the segments are aligned to {a:#x}"),
        }
    }
}

const PT_LOAD: u32 = 1;
const PT_GNU_STACK: u32 = 0x6474_e551;
const SHF_ALLOC: u64 = 2;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_DYNAMIC: u32 = 6;
const SHT_REL: u32 = 9;
const SHT_DYNSYM: u32 = 11;
const SHT_RELR: u32 = 19;
const STT_TLS: u8 = 6;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;

/// The largest alignment the segments ask for: a move must be a multiple of it.
pub fn alignment(bytes: &[u8]) -> Result<u64, RebaseError> {
    let elf = parse(bytes)?;
    Ok(elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD)
        .map(|p| p.p_align.max(4096))
        .max()
        .unwrap_or(4096))
}

/// The lowest and one past the highest address of the segments (page-rounded).
pub fn span(bytes: &[u8]) -> Result<(u64, u64), RebaseError> {
    let elf = parse(bytes)?;
    let loads = elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD);
    let lo = loads.clone().map(|p| p.p_vaddr & !4095).min();
    let hi = loads.map(|p| (p.p_vaddr + p.p_memsz + 4095) & !4095).max();
    match (lo, hi) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(RebaseError::Malformed("no loadable segment".into())),
    }
}

/// A copy of the shared object `bytes` linked `delta` bytes higher.
pub fn rebase(bytes: &[u8], delta: u64) -> Result<Vec<u8>, RebaseError> {
    let align = alignment(bytes)?;
    if !delta.is_multiple_of(align) {
        return Err(RebaseError::Misaligned(align));
    }
    let elf = parse(bytes)?;
    // The tables are found through the section headers: a file without them (or whose
    // dynamic segment has no section) is not moved.
    let has = |t: u32| elf.section_headers.iter().any(|s| s.sh_type == t);
    if elf.dynamic.is_some() && !(has(SHT_DYNAMIC) && has(SHT_DYNSYM)) {
        return Err(RebaseError::Malformed(
            "its dynamic tables have no section headers".into(),
        ));
    }
    let mut w = Writer {
        out: bytes.to_vec(),
        delta,
        loads: elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| (p.p_vaddr, p.p_offset, p.p_filesz))
            .collect(),
    };
    w.header(&elf)?;
    for sh in &elf.section_headers {
        let at = sh.sh_offset as usize;
        let len = sh.sh_size as usize;
        match sh.sh_type {
            SHT_DYNAMIC => w.dynamic(at, len)?,
            SHT_DYNSYM | SHT_SYMTAB => w.symbols(at, len)?,
            SHT_RELA if sh.sh_flags & SHF_ALLOC != 0 => w.relocations(at, len)?,
            SHT_REL if sh.sh_flags & SHF_ALLOC != 0 => {
                return Err(RebaseError::Malformed("REL relocations on x86-64".into()));
            }
            SHT_RELR => w.relr(at, len)?,
            _ => {}
        }
    }
    if let Some(got) = got_plt(&elf) {
        // The `.got.plt` header's first word is the link-time address of `_DYNAMIC`.
        if let Some(dynamic) = elf.dynamic.as_ref().map(|_| dynamic_vaddr(&elf)) {
            w.add_at_vaddr_if(got, dynamic)?;
        }
    }
    Ok(w.out)
}

fn parse(bytes: &[u8]) -> Result<Elf<'_>, RebaseError> {
    let elf = Elf::parse(bytes).map_err(|e| RebaseError::Malformed(e.to_string()))?;
    if !elf.is_64
        || !elf.little_endian
        || elf.header.e_machine != goblin::elf::header::EM_X86_64
        || elf.header.e_type != goblin::elf::header::ET_DYN
    {
        return Err(RebaseError::NotSharedObject);
    }
    Ok(elf)
}

fn got_plt(elf: &Elf) -> Option<u64> {
    elf.dynamic
        .as_ref()?
        .dyns
        .iter()
        .find(|d| d.d_tag == 3)
        .map(|d| d.d_val)
}

fn dynamic_vaddr(elf: &Elf) -> u64 {
    elf.program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_DYNAMIC)
        .map(|p| p.p_vaddr)
        .unwrap_or(0)
}

/// Does the dynamic tag hold an address? `None`: not known.
fn tag_is_address(tag: u64) -> Option<bool> {
    Some(match tag {
        // DT_PLTGOT, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_INIT, DT_FINI, DT_REL,
        // DT_JMPREL, DT_INIT_ARRAY, DT_FINI_ARRAY, DT_PREINIT_ARRAY, DT_SYMTAB_SHNDX,
        // DT_RELR.
        3..=7 | 12 | 13 | 17 | 23 | 25 | 26 | 32 | 34 | 36 => true,
        // DT_ADDRRNGLO..=DT_ADDRRNGHI (DT_GNU_HASH, DT_TLSDESC_PLT, DT_TLSDESC_GOT...),
        // DT_VERSYM, DT_VERDEF, DT_VERNEED.
        0x6fff_fe00..=0x6fff_feff | 0x6fff_fff0 | 0x6fff_fffc | 0x6fff_fffe => true,
        // DT_NULL, DT_NEEDED, DT_PLTRELSZ, DT_RELASZ, DT_RELAENT, DT_STRSZ, DT_SYMENT,
        // DT_SONAME, DT_RPATH, DT_SYMBOLIC, DT_RELSZ, DT_RELENT, DT_PLTREL, DT_DEBUG (the
        // loader writes it), DT_TEXTREL, DT_BIND_NOW, DT_INIT_ARRAYSZ, DT_FINI_ARRAYSZ,
        // DT_RUNPATH, DT_FLAGS, DT_PREINIT_ARRAYSZ, DT_RELRSZ, DT_RELRENT.
        0..=2 | 8..=11 | 14..=16 | 18..=22 | 24 | 27..=30 | 33 | 35 | 37 => false,
        // DT_VALRNGLO..=DT_VALRNGHI (sizes, checksums, flags), DT_RELACOUNT, DT_RELCOUNT,
        // DT_FLAGS_1, DT_VERDEFNUM, DT_VERNEEDNUM.
        0x6fff_fd00..=0x6fff_fdff | 0x6fff_fff9..=0x6fff_fffb | 0x6fff_fffd | 0x6fff_ffff => false,
        _ => return None,
    })
}

struct Writer {
    out: Vec<u8>,
    delta: u64,
    /// The loadable segments: address, file offset, file size.
    loads: Vec<(u64, u64, u64)>,
}

impl Writer {
    fn get(&self, at: usize) -> Result<u64, RebaseError> {
        self.out
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| RebaseError::Malformed(format!("offset {at:#x} is outside the file")))
    }

    fn add(&mut self, at: usize) -> Result<(), RebaseError> {
        let v = self.get(at)?.wrapping_add(self.delta);
        self.out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn offset_of(&self, vaddr: u64) -> Option<usize> {
        self.loads
            .iter()
            .find(|&&(a, _, size)| vaddr >= a && vaddr + 8 <= a + size)
            .map(|&(a, off, _)| (vaddr - a + off) as usize)
    }

    /// Move the word at `vaddr` (a place the loader adds its bias to).
    fn add_at_vaddr(&mut self, vaddr: u64) -> Result<(), RebaseError> {
        match self.offset_of(vaddr) {
            Some(at) => self.add(at),
            // In the zero-filled part of a segment: nothing is written there.
            None => Ok(()),
        }
    }

    /// Move the word at `vaddr` if it holds `old` (and is not zero).
    fn add_at_vaddr_if(&mut self, vaddr: u64, old: u64) -> Result<(), RebaseError> {
        if let Some(at) = self.offset_of(vaddr)
            && old != 0
            && self.get(at)? == old
        {
            self.add(at)?;
        }
        Ok(())
    }

    fn header(&mut self, elf: &Elf) -> Result<(), RebaseError> {
        if elf.header.e_entry != 0 {
            self.add(24)?;
        }
        let (phoff, phsize) = (elf.header.e_phoff as usize, elf.header.e_phentsize as usize);
        for (i, p) in elf.program_headers.iter().enumerate() {
            if p.p_type == PT_GNU_STACK || (p.p_vaddr == 0 && p.p_memsz == 0) {
                continue;
            }
            let at = phoff + i * phsize;
            self.add(at + 16)?;
            self.add(at + 24)?;
        }
        let (shoff, shsize) = (elf.header.e_shoff as usize, elf.header.e_shentsize as usize);
        for (i, s) in elf.section_headers.iter().enumerate() {
            if s.sh_flags & SHF_ALLOC != 0 && s.sh_addr != 0 {
                self.add(shoff + i * shsize + 16)?;
            }
        }
        Ok(())
    }

    fn dynamic(&mut self, at: usize, len: usize) -> Result<(), RebaseError> {
        for e in (at..at + len).step_by(16) {
            let tag = self.get(e)?;
            if tag == 0 {
                break;
            }
            match tag_is_address(tag) {
                Some(true) => self.add(e + 8)?,
                Some(false) => {}
                None => return Err(RebaseError::UnknownDynamicTag(tag)),
            }
        }
        Ok(())
    }

    fn symbols(&mut self, at: usize, len: usize) -> Result<(), RebaseError> {
        for s in (at..at + len).step_by(24) {
            let b = self
                .out
                .get(s..s + 24)
                .ok_or_else(|| RebaseError::Malformed("symbol table outside the file".into()))?;
            let kind = b[4] & 0xf;
            let shndx = u16::from_le_bytes([b[6], b[7]]);
            if shndx != SHN_UNDEF && shndx < SHN_LORESERVE && kind != STT_TLS {
                self.add(s + 8)?;
            }
        }
        Ok(())
    }

    fn relocations(&mut self, at: usize, len: usize) -> Result<(), RebaseError> {
        use goblin::elf::reloc::*;
        for r in (at..at + len).step_by(24) {
            let place = self.get(r)?;
            let kind = (self.get(r + 8)? & 0xffff_ffff) as u32;
            self.add(r)?;
            match kind {
                R_X86_64_RELATIVE | R_X86_64_IRELATIVE => self.add(r + 16)?,
                // With lazy binding the loader adds its bias to what the place holds.
                R_X86_64_JUMP_SLOT => self.add_at_vaddr(place)?,
                R_X86_64_NONE | R_X86_64_64 | R_X86_64_GLOB_DAT | R_X86_64_DTPMOD64
                | R_X86_64_DTPOFF64 | R_X86_64_TPOFF64 | R_X86_64_TLSDESC | R_X86_64_COPY => {}
                k => return Err(RebaseError::UnknownRelocation(k)),
            }
        }
        Ok(())
    }

    fn relr(&mut self, at: usize, len: usize) -> Result<(), RebaseError> {
        let mut entries = Vec::with_capacity(len / 8);
        for e in (at..at + len).step_by(8) {
            entries.push(self.get(e)?);
        }
        // The words named hold their own addends: they move too.
        for place in crate::elf::symbols::decode_relr(&entries) {
            self.add_at_vaddr(place)?;
        }
        for (i, e) in entries.iter().enumerate() {
            if e & 1 == 0 {
                self.add(at + 8 * i)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_tag_is_not_guessed() {
        assert_eq!(tag_is_address(0x6fff_fff0), Some(true));
        assert_eq!(tag_is_address(0x6fff_fef5), Some(true));
        assert_eq!(tag_is_address(0x6fff_fffb), Some(false));
        assert_eq!(tag_is_address(0x7000_0001), None);
    }

    #[test]
    fn only_shared_objects_move() {
        assert!(matches!(
            rebase(b"not an elf file at all, long enough", 4096),
            Err(RebaseError::Malformed(_))
        ));
        let exe = std::fs::read("/proc/self/exe").unwrap();
        // A test binary is a PIE (ET_DYN) too: what moves is checked on it.
        let delta = 0x40_0000_0000;
        let moved = rebase(&exe, delta).unwrap();
        let (a, b) = (Elf::parse(&exe).unwrap(), Elf::parse(&moved).unwrap());
        assert_eq!(a.header.e_entry + delta, b.header.e_entry);
        for (x, y) in a.program_headers.iter().zip(&b.program_headers) {
            if x.p_type == PT_LOAD {
                assert_eq!(x.p_vaddr + delta, y.p_vaddr);
            }
        }
        let defined = |e: &Elf| -> Vec<u64> {
            e.syms
                .iter()
                .filter(|s| s.st_shndx != 0 && s.st_type() != STT_TLS && s.st_shndx < 0xff00)
                .map(|s| s.st_value)
                .collect()
        };
        let (da, db) = (defined(&a), defined(&b));
        assert!(!da.is_empty());
        assert!(da.iter().zip(&db).all(|(x, y)| x + delta == *y));
        let relative = |e: &Elf| -> Vec<(u64, i64)> {
            e.dynrelas
                .iter()
                .filter(|r| r.r_type == goblin::elf::reloc::R_X86_64_RELATIVE)
                .map(|r| (r.r_offset, r.r_addend.unwrap_or(0)))
                .collect()
        };
        let (ra, rb) = (relative(&a), relative(&b));
        assert!(!ra.is_empty());
        assert!(
            ra.iter()
                .zip(&rb)
                .all(|(x, y)| x.0 + delta == y.0 && x.1 + delta as i64 == y.1)
        );
        assert!(matches!(
            rebase(&exe, 4097),
            Err(RebaseError::Misaligned(_))
        ));
        // Without section headers (e_shnum = 0) the tables cannot be found: not moved.
        let mut bare = exe.clone();
        bare[60..62].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            rebase(&bare, delta),
            Err(RebaseError::Malformed(_))
        ));
    }
}
