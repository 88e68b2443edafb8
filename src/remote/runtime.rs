//! The rlivepatch runtime inside a patched process: the shadow-variable store and the
//! registry of system states (the kernel's `shadow.c` and `state.c`).
//!
//! Both must outlive any one patch, so they live in a small shared object of their own
//! (`runtime/rlivepatch-runtime.c`, built by `build.rs` and embedded in rlivepatch),
//! loaded once with `RTLD_GLOBAL` so that patches' `rlp_*` calls bind to it. It is loaded
//! when a patch first needs it and unloaded when no patch is left and no shadow variable
//! is alive.

use crate::elf::symbols::ElfFile;
use crate::err;
use crate::error::Result;
use crate::livepatch::session::Session;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The runtime's image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/librlivepatch-runtime.so"));

/// Most states in each half of the registry (`RLP_MAX_STATES` in the C source).
const MAX_STATES: usize = 256;

/// The loaded runtime, as the record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeRecord {
    /// `dlopen` handle.
    pub handle: u64,
    /// Load bias.
    pub base: u64,
    /// Its memfd in the target.
    pub fd: i32,
}

/// Where the runtime's symbols are, relative to its load address.
pub struct Layout {
    registry: u64,
    count: u64,
    /// The preserving path's table (`rlp_preserve_table`).
    pub preserve_table: u64,
    /// The preserving path's thunk (`rlp_preserve`).
    pub preserve: u64,
    /// The end of its code.
    pub preserve_end: u64,
    /// Where the thunk returns from the new function (`rlp_preserve_returned`).
    pub preserve_returned: u64,
    /// How wide the vector registers are that the thunk keeps, set by the runtime at
    /// load (`rlp_vector_width`).
    pub vector_width: u64,
    /// The table of objects that come later (`rlp_coming`).
    pub coming: u64,
    /// The hook the loader's debugger notification jumps to (`rlp_dl_hook`).
    pub dl_hook: u64,
}

/// The runtime's layout.
pub fn layout() -> Result<&'static Layout> {
    static L: OnceLock<std::result::Result<Layout, String>> = OnceLock::new();
    L.get_or_init(|| {
        let f = ElfFile::from_bytes("librlivepatch-runtime.so", IMAGE.to_vec())
            .map_err(|e| e.message)?;
        let find = |n: &str| {
            f.dynsym
                .iter()
                .find(|s| s.name == n)
                .ok_or(format!("no {n} in the runtime"))
        };
        let sym = |n: &str| find(n).map(|s| s.value);
        Ok(Layout {
            registry: sym("rlp_registry")?,
            count: sym("rlp_shadow_count")?,
            preserve_table: sym("rlp_preserve_table")?,
            preserve: sym("rlp_preserve")?,
            preserve_end: find("rlp_preserve").map(|s| s.value + s.size)?,
            preserve_returned: sym("rlp_preserve_returned")?,
            vector_width: sym("rlp_vector_width")?,
            coming: sym("rlp_coming")?,
            dl_hook: sym("rlp_dl_hook")?,
        })
    })
    .as_ref()
    .map_err(|e| err!(Failed, "{e}"))
}

/// Does a patch need the runtime? (It declares states or calls `rlp_*` functions.)
pub fn needed_by(patch: &crate::patch::Patch) -> bool {
    !patch.states.is_empty() || patch.file.undefined.iter().any(|n| n.starts_with("rlp_"))
}

impl Session<'_> {
    /// Load the runtime if it is not loaded yet.
    pub fn ensure_runtime(&mut self) -> Result<RuntimeRecord> {
        if let Some(r) = &self.record.runtime {
            return Ok(r.clone());
        }
        layout()?;
        let (handle, fd) =
            match self.load("rlp:runtime", IMAGE, libc::RTLD_NOW | libc::RTLD_GLOBAL)? {
                Ok(v) => v,
                Err(text) => {
                    return Err(err!(
                        Failed,
                        "process {} could not load the rlivepatch runtime: {text}",
                        self.proc.pid
                    ));
                }
            };
        let base = self.proc.read_u64(handle)?;
        let r = RuntimeRecord { handle, base, fd };
        self.record.runtime = Some(r.clone());
        Ok(r)
    }

    /// Tell the runtime which states belong to the patch whose callbacks run next
    /// (`current`) and to the patches installed before it (`prev`, oldest first).
    pub fn set_states(&mut self, current: &[u64], prev: &[u64]) -> Result<()> {
        let Some(rt) = &self.record.runtime else {
            return Ok(());
        };
        let at = rt.base + layout()?.registry;
        let mut b = Vec::with_capacity(8 + 8 * (2 + 2 * MAX_STATES));
        let mut half = |list: &[u64]| {
            let list = &list[..list.len().min(MAX_STATES)];
            b.extend((list.len() as u64).to_le_bytes());
            for i in 0..MAX_STATES {
                b.extend(list.get(i).copied().unwrap_or(0).to_le_bytes());
            }
        };
        half(current);
        half(prev);
        self.proc.write(at + 8, &b)
    }

    /// Live shadow variables in the process.
    pub fn shadow_count(&self) -> Result<u64> {
        match &self.record.runtime {
            Some(rt) => self.proc.read_u64(rt.base + layout()?.count),
            None => Ok(0),
        }
    }

    /// Unload the runtime when no patch is left and no shadow variable lives.
    pub fn unload_runtime_if_idle(&mut self) -> Result<()> {
        let idle = self.record.patches.is_empty()
            && self.record.hook.is_none()
            && self.record.runtime.is_some()
            && self.shadow_count()? == 0;
        if idle {
            let rt = self.record.runtime.take().unwrap();
            self.unload(rt.handle, rt.fd)?;
        }
        Ok(())
    }
}
