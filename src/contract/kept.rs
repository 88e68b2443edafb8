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

use super::Contract;
use super::code::Part;
use super::regs::RegSet;
use crate::elf::objects::LoadedObject;

/// A contract as kept: every field, registers as bit sets.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    parts: Vec<Part>,
    clobbers: u64,
    relied: u64,
    keeps: u64,
    wide_vectors: bool,
    stack_args: u64,
    stack_args_exact: bool,
    direct_callers: u32,
    folded: Vec<String>,
    aliases: Vec<String>,
    clones: Vec<String>,
    inlined_into: Vec<String>,
    inlined_unknown: bool,
    reached: bool,
    exported: bool,
    pure: bool,
    nothrow: bool,
    replacement_may_throw: bool,
    convention_unverified: Option<String>,
    convention_changed: Option<String>,
    /// The entry was checked to take the jump ([`crate::remote::redirect`]).
    entry_checked: bool,
}

impl Kept {
    fn of(c: &Contract, entry_checked: bool) -> Kept {
        Kept {
            parts: c.parts.clone(),
            clobbers: c.clobbers.0,
            relied: c.relied.0,
            keeps: c.keeps.0,
            wide_vectors: c.wide_vectors,
            stack_args: c.stack_args,
            stack_args_exact: c.stack_args_exact,
            direct_callers: c.direct_callers,
            folded: c.folded.clone(),
            aliases: c.aliases.clone(),
            clones: c.clones.clone(),
            inlined_into: c.inlined_into.clone(),
            inlined_unknown: c.inlined_unknown,
            reached: c.reached,
            exported: c.exported,
            pure: c.pure,
            nothrow: c.nothrow,
            replacement_may_throw: c.replacement_may_throw,
            convention_unverified: c.convention_unverified.clone(),
            convention_changed: c.convention_changed.clone(),
            entry_checked,
        }
    }

    fn contract(self) -> Contract {
        Contract {
            parts: self.parts,
            clobbers: RegSet(self.clobbers),
            relied: RegSet(self.relied),
            keeps: RegSet(self.keeps),
            wide_vectors: self.wide_vectors,
            stack_args: self.stack_args,
            stack_args_exact: self.stack_args_exact,
            direct_callers: self.direct_callers,
            folded: self.folded,
            aliases: self.aliases,
            clones: self.clones,
            inlined_into: self.inlined_into,
            inlined_unknown: self.inlined_unknown,
            reached: self.reached,
            exported: self.exported,
            pure: self.pure,
            nothrow: self.nothrow,
            replacement_may_throw: self.replacement_may_throw,
            convention_unverified: self.convention_unverified,
            convention_changed: self.convention_changed,
        }
    }
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
    pub(super) fn take(&mut self) -> Option<Contract> {
        self.kept.take().map(Kept::contract)
    }

    /// Keep `c` (whose entry was checked, or not) for the next runs.
    pub(super) fn keep(&self, c: &Contract, entry_checked: bool) {
        if let Some(key) = &self.key {
            crate::os::kept::store(key, &Kept::of(c, entry_checked));
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
