//! System states (the kernel's `state.c`): a patch declares the states it handles, the
//! runtime's registry tells its callbacks which are installed, and a new patch must
//! carry each installed state at the same or a higher version.

use crate::bail;
use crate::error::Result;
use crate::livepatch::record::Record;
use crate::patch::Patch;

/// The kernel's rule: a patch must carry each installed state at the same or a higher
/// version, and a replace patch must carry all of them.
pub fn check(rec: &Record, patch: &Patch) -> Result<()> {
    for p in rec.patches.iter().filter(|p| !p.disabled) {
        for st in &p.states {
            let why = match patch.states.iter().find(|x| x.id == st.id) {
                None if patch.replace => format!(
                    "it replaces every patch but does not carry state {} (installed by {} at version {})",
                    st.id, p.name, st.version
                ),
                Some(x) if x.version < st.version => format!(
                    "it carries state {} at version {}, lower than version {} installed by {}",
                    st.id, x.version, st.version, p.name
                ),
                _ => continue,
            };
            bail!(
                Mismatch,
                "patch {} is not compatible with the already installed livepatches: {why}",
                patch.name
            );
        }
    }
    Ok(())
}

/// States of the enabled patches, oldest first (the registry's "previous" half).
pub fn installed(rec: &Record, until: Option<usize>) -> Vec<u64> {
    rec.patches[..until.unwrap_or(rec.patches.len())]
        .iter()
        .filter(|p| !p.disabled)
        .flat_map(|p| p.state_addrs.iter().copied())
        .collect()
}
