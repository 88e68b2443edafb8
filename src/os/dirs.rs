//! Where rlivepatch keeps files of its own.

use std::path::PathBuf;

/// rlivepatch's cache: what `build` learned of a project's build between runs, the SDK
/// header for compilers, the contracts of old functions (`crate::contract::kept`):
/// `$RLIVEPATCH_CACHE`, else `$XDG_CACHE_HOME/rlivepatch`, else `~/.cache/rlivepatch`.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("RLIVEPATCH_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("rlivepatch")))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/rlivepatch")
        });
    // Compiles run in the project's directories: a relative cache would move with them.
    if dir.is_relative() {
        std::env::current_dir().unwrap_or_default().join(dir)
    } else {
        dir
    }
}
