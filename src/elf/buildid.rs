//! Build-ids: a patch built for one binary must not be applied to another.

use crate::bail;
use crate::elf::objects::Objects;
use crate::elf::symbols::ElfFile;
use crate::err;
use crate::error::Result;
use crate::patch::Patch;
use std::path::Path;

/// Refuse a process whose objects do not have the build-ids the patch names.
pub fn check(patch: &Patch, objects: &Objects) -> Result<()> {
    for (object, want) in &patch.build_ids {
        let obj = match objects.by_name(object.as_deref()) {
            Ok(o) => o,
            // Not loaded yet: checked against the file it would load (`coming`).
            Err(_) if object.as_deref().is_some_and(|o| o != "main") => continue,
            Err(e) => return Err(e),
        };
        let have = obj.file()?.build_id_hex();
        match have {
            Some(h) if &h == want => {}
            Some(h) => bail!(
                Mismatch,
                "patch {} was built for a {} with build-id {want}, but {} in this process has build-id {h}: another build; rebuild the patch for this binary",
                patch.name,
                match object.as_deref() {
                    None | Some("main") => "main executable",
                    Some(o) => o,
                },
                obj.display_name()
            ),
            None => bail!(
                Mismatch,
                "patch {} was built for {} with build-id {want}, but the process's file has no build-id",
                patch.name,
                obj.display_name()
            ),
        }
    }
    Ok(())
}

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
