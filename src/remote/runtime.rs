//! The rlivepatch runtime inside a patched process: the shadow-variable store and the
//! registry of system states (the kernel's `shadow.c` and `state.c`).
//!
//! Both must outlive any one patch, so they live in a small shared object of their own
//! (`runtime/rlivepatch-runtime.c`, built by `build.rs` and embedded in rlivepatch),
//! loaded once with `RTLD_GLOBAL` so that patches' `rlp_*` calls bind to it. It is loaded
//! with the first patch and unloaded when no patch is left and no shadow variable is
//! alive. It also keeps a thread parked for rlivepatch ([`Keeper`], and
//! `crate::livepatch::session::keeper`).

use crate::elf::symbols::ElfFile;
use crate::err;
use crate::error::Result;
use std::sync::OnceLock;

/// The runtime's image.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/librlivepatch-runtime.so"));

/// Most states in each half of the registry (`RLP_MAX_STATES` in the C source).
pub const MAX_STATES: usize = 256;

/// Where the runtime's symbols are, relative to its load address.
pub struct Layout {
    /// The registry of system states (`rlp_registry`).
    pub registry: u64,
    /// The count of live shadow variables (`rlp_shadow_count`).
    pub count: u64,
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
    /// The keeper thread ([`Keeper`]).
    pub keeper: Keeper,
}

/// Where the keeper's parts are in the runtime (`runtime/rlivepatch-keeper.c`). The
/// runtime's constructor starts it.
pub struct Keeper {
    /// `rlp_keeper_error`: what starting it returned (0, or an error).
    pub error: u64,
    /// `rlp_keeper_mapping`, `rlp_keeper_mapping_size` and `rlp_keeper_sem`: what it
    /// left to end and unmap it (`u64` each).
    pub vars: (u64, u64, u64),
    /// Where `rlp_keeper_wanted` (1: the constructor starts it) is in [`IMAGE`].
    pub wanted_offset: usize,
}

/// The runtime's layout.
pub fn layout() -> Result<&'static Layout> {
    static L: OnceLock<std::result::Result<Layout, String>> = OnceLock::new();
    L.get_or_init(|| {
        let f = ElfFile::from_bytes("librlivepatch-runtime.so", IMAGE.to_vec())
            .map_err(|e| e.message)?;
        // Through the hash table: the runtime's symbols are not read for a dozen names.
        let find = |n: &str| f.dynamic_symbol(n).ok_or(format!("no {n} in the runtime"));
        let sym = |n: &str| find(n).map(|(value, _)| value);
        Ok(Layout {
            registry: sym("rlp_registry")?,
            count: sym("rlp_shadow_count")?,
            preserve_table: sym("rlp_preserve_table")?,
            preserve: sym("rlp_preserve")?,
            preserve_end: find("rlp_preserve").map(|(value, size)| value + size)?,
            preserve_returned: sym("rlp_preserve_returned")?,
            vector_width: sym("rlp_vector_width")?,
            coming: sym("rlp_coming")?,
            dl_hook: sym("rlp_dl_hook")?,
            keeper: Keeper {
                error: sym("rlp_keeper_error")?,
                wanted_offset: file_offset(&f, sym("rlp_keeper_wanted")?)
                    .ok_or("rlp_keeper_wanted is not in the runtime's file")?,
                vars: (
                    sym("rlp_keeper_mapping")?,
                    sym("rlp_keeper_mapping_size")?,
                    sym("rlp_keeper_sem")?,
                ),
            },
        })
    })
    .as_ref()
    .map_err(|e| err!(Failed, "{e}"))
}

/// Where the byte at `vaddr` is in the file (a `PT_LOAD` segment's file part).
fn file_offset(f: &ElfFile, vaddr: u64) -> Option<usize> {
    let seg = f
        .segments
        .iter()
        .find(|s| (s.vaddr..s.vaddr + s.filesz).contains(&vaddr))?;
    usize::try_from(vaddr - seg.vaddr + seg.offset).ok()
}

/// The runtime's image, its constructor starting no keeper (`rlp_keeper_wanted` 0).
pub fn image_without_keeper() -> Result<Vec<u8>> {
    let at = layout()?.keeper.wanted_offset;
    let mut image = IMAGE.to_vec();
    image
        .get_mut(at..at + 8)
        .ok_or_else(|| err!(Failed, "rlp_keeper_wanted is past the runtime's image"))?
        .copy_from_slice(&0u64.to_le_bytes());
    Ok(image)
}

/// Is `pc` in the hook's code (the thread holds the loader's lock and may be changing
/// the table)?
pub fn in_hook(objects: &crate::elf::objects::Objects, pc: u64) -> bool {
    let Some(o) = objects.by_addr(pc) else {
        return false;
    };
    if !o.path.contains("rlp:runtime") {
        return false;
    }
    let (Ok(f), Ok(bias)) = (o.file(), o.bias()) else {
        return false;
    };
    f.section("rlp_hook_text")
        .is_some_and(|sec| (sec.addr..sec.addr + sec.size).contains(&pc.wrapping_sub(bias)))
}
