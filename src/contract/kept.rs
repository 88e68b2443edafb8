//! Contracts kept across runs ([`crate::os::kept`]): what callers of a function rely on
//! is a property of the object's files alone, so it is read from the code and debug
//! information once per version of them, not once per run.
//!
//! Reading it means decoding the whole object (every call and jump to the function, its
//! parts, its folded twins) and indexing its debug information: about 1 ms for a small
//! library and 150 ms for the C library, the larger part of an apply's own work. The key
//! names everything the analysis read: the versions of the object's file and of the
//! files its symbols and debug information came from, the function, the patch's other
//! functions in the object, and the test switches that change the answer. What depends
//! on the process (whether another loaded object calls the function by name) is not
//! kept; it is read each run. Kept with it: that the function's entry takes the jump
//! (decoding it is what makes a run build the decoder's tables).

use super::code::Part;
use crate::elf::objects::LoadedObject;

/// A contract as kept: every field of [`super::Contract`], registers as bit sets (the
/// conversions are the contract's).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub(super) parts: Vec<Part>,
    pub(super) clobbers: u64,
    pub(super) relied: u64,
    pub(super) keeps: u64,
    pub(super) wide_vectors: bool,
    pub(super) stack_args: u64,
    pub(super) stack_args_exact: bool,
    pub(super) direct_callers: u32,
    pub(super) folded: Vec<String>,
    pub(super) aliases: Vec<String>,
    pub(super) clones: Vec<String>,
    pub(super) inlined_into: Vec<String>,
    pub(super) inlined_unknown: bool,
    pub(super) reached: bool,
    pub(super) exported: bool,
    pub(super) pure: bool,
    pub(super) nothrow: bool,
    pub(super) replacement_may_throw: bool,
    pub(super) convention_unverified: Option<String>,
    pub(super) convention_changed: Option<String>,
    /// The entry was checked to take the jump.
    pub(super) entry_checked: bool,
}

/// The kept contract of one function, looked up before the function is analysed.
pub struct Lookup {
    key: Option<String>,
    kept: Option<Kept>,
}

impl Lookup {
    /// The kept contract of function `sym` of `obj` at file address `vaddr`, `size`
    /// bytes, analysed with `patched` (see [`super::Contracts::analyse`]), if any.
    pub fn of(obj: &LoadedObject, sym: &str, vaddr: u64, size: u64, patched: &[&str]) -> Lookup {
        let key = key(obj, sym, vaddr, size, patched);
        let kept = key.as_deref().and_then(crate::os::kept::load::<Kept>);
        Lookup { key, kept }
    }

    /// A kept contract says the function's entry takes the jump.
    pub fn entry_checked(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| k.entry_checked)
    }

    /// The kept contract, taken out.
    pub(super) fn take(&mut self) -> Option<Kept> {
        self.kept.take()
    }

    /// Keep `k` for the next runs.
    pub(super) fn keep(&self, k: &Kept) {
        if let Some(key) = &self.key {
            crate::os::kept::store(key, k);
        }
    }
}

/// The key of a contract; `None` when a file it depends on has no version (read from
/// memory) or nothing can be kept.
fn key(obj: &LoadedObject, sym: &str, vaddr: u64, size: u64, patched: &[&str]) -> Option<String> {
    let file = obj.file().ok()?.version()?;
    let symbols = obj.symbols_file().ok()?.version()?;
    let debug = match obj.debug_info_file() {
        Some(d) => d.version()?,
        None => "-".to_string(),
    };
    let mut patched: Vec<&str> = patched.to_vec();
    patched.sort_unstable();
    let (vaddr, size, patched) = (format!("{vaddr:#x}"), size.to_string(), patched.join(","));
    let switches = format!(
        "{}{}",
        crate::os::fault::switched_on("no-preserve"),
        crate::os::fault::switched_on("narrow-vectors")
    );
    crate::os::kept::key(
        "contract",
        &[
            &file, &symbols, &debug, sym, &vaddr, &size, &patched, &switches,
        ],
    )
}
