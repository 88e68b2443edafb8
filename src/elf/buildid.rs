//! GNU build-ids of ELF files: the line a patch pins itself with, and where the
//! bytes are in an image.

use crate::elf::symbols::ElfFile;
use crate::err;
use crate::error::Result;
use std::path::Path;

/// The `RLIVEPATCH_BUILD_ID(...)` line for the ELF file at `path`. The object is named
/// `object`, or "main" for an executable, or the library's soname (file name without one).
pub fn line(path: &Path, object: Option<&str>) -> Result<String> {
    // The message names the file already.
    let f = ElfFile::open(path).map_err(|e| err!(Failed, "{}", e.message))?;
    let id = f.build_id_hex().ok_or_else(|| {
        err!(
            Failed,
            "{} has no GNU build-id note; link it with -Wl,--build-id",
            path.display()
        )
    })?;
    let name = match object {
        Some(o) => o.to_string(),
        None if f.interp.is_some() && f.soname.is_none() => "main".to_string(),
        None => f.soname.clone().unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        }),
    };
    Ok(format!("RLIVEPATCH_BUILD_ID(\"{name}\", \"{id}\");"))
}

/// What names an ELF file from outside: its GNU build-id (hex) and its soname, read from
/// the program headers' notes and dynamic table only, without parsing its symbols (a
/// fleet run asks this of every file every process maps; the C library's symbol tables
/// alone take about a millisecond to parse).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The GNU build-id, in hex.
    pub build_id: Option<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// The `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// A 64-bit file (the rest is read only for one).
    pub is_64: bool,
    /// For x86-64 (`EM_X86_64`).
    pub is_x86_64: bool,
    /// It names a program interpreter (`PT_INTERP`): a dynamically linked program.
    pub has_interp: bool,
}

/// The [`Identity`] of the ELF file at `path`; `None` when it cannot be read or is not an
/// ELF file (only `is_64`, false, for a 32-bit one).
pub fn identity(path: &Path) -> Option<Identity> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a read-only private mapping; a file truncated meanwhile makes reads fault,
    // the hazard every ELF tool accepts.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let bytes: &[u8] = &map;
    let header = goblin::elf::Elf::parse_header(bytes).ok()?;
    let ctx = goblin::container::Ctx::new(
        goblin::container::Container::Big,
        goblin::container::Endian::Little,
    );
    if header.e_ident[goblin::elf::header::EI_CLASS] != goblin::elf::header::ELFCLASS64 {
        return Some(Identity::default());
    }
    let phdrs = goblin::elf::ProgramHeader::parse(
        bytes,
        header.e_phoff as usize,
        header.e_phnum as usize,
        ctx,
    )
    .ok()?;
    let (soname, needed) = crate::elf::symbols::read_dynamic_names(bytes).unwrap_or_default();
    Some(Identity {
        build_id: notes_build_id(bytes, &phdrs),
        soname,
        needed,
        is_64: true,
        is_x86_64: header.e_machine == goblin::elf::header::EM_X86_64,
        has_interp: phdrs
            .iter()
            .any(|p| p.p_type == goblin::elf::program_header::PT_INTERP),
    })
}

/// The build-id (hex) of the ELF file at `path`, from its note segments only: for a line
/// that names a program (the audit trail), without parsing its symbols.
pub fn of_file(path: &Path) -> Option<String> {
    identity(path)?.build_id
}

/// The GNU build-id in the note segments of `bytes`.
fn notes_build_id(bytes: &[u8], phdrs: &[goblin::elf::ProgramHeader]) -> Option<String> {
    let u32_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
    {
        let notes = bytes.get(p.p_offset as usize..(p.p_offset + p.p_filesz) as usize)?;
        let align = p.p_align.max(4) as usize;
        let mut at = 0;
        // Elf64_Nhdr: namesz, descsz, type; then the name and the descriptor, aligned.
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (
                u32_at(notes, at)?,
                u32_at(notes, at + 4)?,
                u32_at(notes, at + 8)?,
            );
            let name = at + 12;
            let desc = name + namesz.div_ceil(align) * align;
            if kind == 3 && notes.get(name..name + namesz) == Some(b"GNU\0") {
                return notes.get(desc..desc + descsz).map(crate::fmt::hex);
            }
            at = desc + descsz.div_ceil(align) * align;
        }
    }
    None
}

/// The build-id of `file` and the file address of its bytes.
pub fn note(file: &crate::elf::symbols::ElfFile) -> Option<(String, u64)> {
    let id = file.build_id.as_ref()?;
    let sec = file.section(".note.gnu.build-id")?;
    if sec.addr == 0 || id.is_empty() || id.len() > 32 {
        return None;
    }
    // Elf64_Nhdr (12 bytes), then "GNU\0", then the id.
    Some((crate::fmt::hex(id), sec.addr + 16))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_notes_give_the_same_id_as_the_whole_file() {
        let exe = std::path::Path::new("/proc/self/exe");
        let whole = crate::elf::symbols::ElfFile::open(exe)
            .unwrap()
            .build_id_hex();
        assert!(whole.is_some());
        assert_eq!(super::of_file(exe), whole);
    }

    #[test]
    fn the_dynamic_table_gives_the_same_soname_as_the_whole_file() {
        // The system's C library (the test binary is static, as rlivepatch is).
        let path = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
            .expect("the system has a C library");
        let whole = crate::elf::symbols::ElfFile::open(path).unwrap();
        let id = super::identity(path).unwrap();
        assert_eq!(id.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(id.soname, whole.soname);
        assert_eq!(id.needed, whole.needed);
        assert!(!id.needed.is_empty(), "libc needs the loader");
        assert_eq!(id.build_id, whole.build_id_hex());
        assert!(id.is_64 && id.is_x86_64);
        assert_eq!(id.has_interp, whole.interp.is_some());
        let exe = super::identity(std::path::Path::new("/proc/self/exe")).unwrap();
        // Static-pie (see .cargo/config.toml): no interpreter.
        assert!(exe.is_64 && exe.is_x86_64 && !exe.has_interp);
        assert_eq!(exe.soname, None);
    }
}
