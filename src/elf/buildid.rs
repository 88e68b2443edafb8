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
