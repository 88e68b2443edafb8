//! Build-ids: a patch built for one binary must not be applied to another.

use crate::bail;
use crate::error::Result;
use crate::objects::Objects;
use crate::patch::Patch;

/// Refuse a process whose objects do not have the build-ids the patch names.
pub fn check(patch: &Patch, objects: &Objects) -> Result<()> {
    for (object, want) in &patch.build_ids {
        let obj = objects.by_name(object.as_deref())?;
        let have = obj.file()?.build_id_hex();
        match have {
            Some(h) if &h == want => {}
            Some(h) => bail!(
                Mismatch,
                "patch {} was built for {} with build-id {want}, but process has build-id {h}; rebuild the patch for this binary",
                patch.name,
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
