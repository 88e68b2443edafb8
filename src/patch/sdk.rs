//! The C SDK: the header, embedded (`rlivepatch build` compiles the records of the
//! patches it generates against the very header this rlivepatch reads), and where a
//! patch author's compiler finds it (`rlivepatch sdk --cflags`, as pkg-config answers).

use crate::err;
use crate::error::Result;
use std::path::{Path, PathBuf};

/// `patches/include/rlivepatch.h`.
pub const HEADER: &str = include_str!("../../patches/include/rlivepatch.h");

/// The directory holding `rlivepatch.h` for this rlivepatch: the installed one next to
/// the binary (`PREFIX/bin/rlivepatch` → `PREFIX/include`) when it is this version's,
/// else a copy of the embedded header written under the cache directory.
pub fn include_dir() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| err!(Failed, "cannot find rlivepatch itself: {e}"))?;
    if let Some(prefix) = exe.parent().and_then(Path::parent) {
        let installed = prefix.join("include");
        if std::fs::read_to_string(installed.join("rlivepatch.h")).is_ok_and(|h| h == HEADER) {
            return Ok(installed);
        }
    }
    let dir = crate::os::dirs::cache_dir()
        .join("sdk")
        .join(env!("CARGO_PKG_VERSION"));
    let header = dir.join("rlivepatch.h");
    if std::fs::read_to_string(&header).ok().as_deref() != Some(HEADER) {
        std::fs::create_dir_all(&dir)
            .map_err(|e| err!(Failed, "cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".rlivepatch.h.{}", std::process::id()));
        std::fs::write(&tmp, HEADER)
            .and_then(|()| std::fs::rename(&tmp, &header))
            .map_err(|e| err!(Failed, "cannot write {}: {e}", header.display()))?;
    }
    Ok(dir)
}

/// The compiler flags that build a patch: `cc $(rlivepatch sdk --cflags) -o fix.so fix.c`.
pub fn cflags() -> Result<String> {
    let dir = include_dir()?;
    Ok(format!("-shared -fPIC -O2 -I{}", dir.display()))
}
