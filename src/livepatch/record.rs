//! The record of a process's patches, as plain data: the applied patches with their
//! functions (the stack order), island pages, an operation in progress, the runtime and
//! the loader hook. [`crate::livepatch::store`] keeps it inside the process.

use crate::contract::code::Part;
use crate::patch::StateDecl;
use crate::remote::inject::Scratch;
use crate::remote::redirect::Island;
use crate::resolve::funcs::Resolved;
use serde::{Deserialize, Serialize};

/// Version of the record format.
pub const FORMAT: u32 = 2;

/// One replaced function of an applied patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedFunc {
    /// Path of the object the function is in.
    pub object: String,
    /// The old function's symbol.
    pub symbol: String,
    /// The old function's entry.
    pub old_addr: u64,
    /// The old function's size.
    pub old_size: u64,
    /// The original bytes at the entry (they equal the file's).
    #[serde(with = "crate::fmt::hex_bytes")]
    pub orig: Vec<u8>,
    /// The new function's name in the patch.
    pub new_name: String,
    /// The new function's address.
    pub new_addr: u64,
    /// The new function's size (0 when the patch does not say).
    pub new_size: u64,
    /// The island slot this patch's jump goes through, when the new function is out of
    /// reach of a 32-bit displacement.
    pub island: Option<u64>,
    /// For an IFUNC: the implementation the resolver picked, which is what was patched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// The separate debug file the old symbol came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// The parts of the old function split off from its body (`work.cold`), at run-time
    /// addresses: a thread there is inside the function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// The parts of the new function split off from its body, at run-time addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_parts: Vec<Part>,
    /// Other names of the old function the patch replaces with it (aliases, or functions
    /// the compiler folded into the same code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The preserving path the entry jumps to, when callers rely on registers the old
    /// function leaves alone (see [`crate::remote::preserve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve: Option<Preserve>,
    /// `RLIVEPATCH_FUNC_WRAP`: the new function calls the code it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<Wrap>,
    /// In a copy of an object loaded after the apply (its load address): the runtime's
    /// hook patched it, and the record knows it from the runtime's table
    /// ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<u64>,
}

/// A replacement that calls the code it replaces (`RLIVEPATCH_FUNC_WRAP`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wrap {
    /// The patch's function pointer (run-time address).
    pub slot: u64,
    /// What it holds: a trampoline into the original, or the function of the patch below.
    pub target: u64,
    /// The trampoline (two island slots), when it calls the original: the original's
    /// first instructions, relocated, then a jump back into it.
    pub trampoline: Option<u64>,
    /// For each instruction of the trampoline, its offset and the offset of the
    /// original instruction it stands for (the unwinder reads the original's CFI).
    #[serde(default)]
    pub points: Vec<(u32, u32)>,
}

/// A redirect through the preserving path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preserve {
    /// Its entry in the runtime's table.
    pub index: u32,
    /// Its stub: two island slots the entry jumps to.
    pub stub: u64,
    /// The registers kept for the callers, for messages.
    pub keeps: Vec<String>,
    /// The thunk's code up to its call of the new function, which reads the entry: a
    /// thread there is on its way into the new function. (The rest of the thunk is
    /// checked when the runtime may go: [`crate::ops::disable::plan`].)
    pub thunk: (u64, u64),
}

impl AppliedFunc {
    /// The record's form of the resolved function `r`, redirected to `new_name` at `new_addr`.
    pub fn redirected(r: &Resolved, new_name: &str, new_addr: u64, new_size: u64) -> AppliedFunc {
        AppliedFunc {
            object: r.object.clone(),
            symbol: r.symbol.clone(),
            old_addr: r.addr,
            old_size: r.size,
            orig: r.orig.clone(),
            new_name: new_name.to_string(),
            new_addr,
            new_size,
            island: None,
            implementation: r.ifunc_implementation.clone(),
            debug_file: r.debug_file.clone(),
            parts: r.split_parts(),
            new_parts: Vec::new(),
            aliases: r.aliases.clone(),
            preserve: None,
            wrap: None,
            copy: None,
        }
    }

    /// Where the old entry jumps: the preserving stub, an island slot, or the new function.
    pub fn target(&self) -> u64 {
        match (&self.preserve, self.island) {
            (Some(p), _) => p.stub,
            (None, Some(slot)) => slot,
            (None, None) => self.new_addr,
        }
    }

    /// The island slots the redirect uses.
    pub fn slots(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.island.into_iter().collect();
        if let Some(p) = &self.preserve {
            v.extend([p.stub, p.stub + crate::remote::redirect::SLOT_SIZE]);
        }
        if let Some(t) = self.wrap.as_ref().and_then(|w| w.trampoline) {
            v.extend([t, t + crate::remote::redirect::SLOT_SIZE]);
        }
        v
    }
}

/// One applied patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedPatch {
    /// Its name.
    pub name: String,
    /// The file it was loaded from.
    pub path: String,
    /// `dlopen` handle.
    pub handle: u64,
    /// Load bias of the patch.
    pub base: u64,
    /// The memfd holding the patch in the target (kept open while loaded, so that its
    /// `/proc/PID/fd/N` name is unique).
    pub fd: i32,
    /// Switched without the consistency check: its code is never unloaded.
    pub forced: bool,
    /// An atomic-replace patch.
    pub replace: bool,
    /// System states it declares.
    pub states: Vec<StateDecl>,
    /// Callbacks at run-time addresses: pre_patch, post_patch, pre_unpatch, post_unpatch.
    pub callbacks: [Option<u64>; 4],
    /// The functions it replaces.
    pub funcs: Vec<AppliedFunc>,
    /// When it was applied (seconds since the epoch).
    pub applied_at: u64,
    /// Disabled, but its code stays mapped because it was forced.
    #[serde(default)]
    pub disabled: bool,
    /// Run-time addresses of its `struct rlp_state`s, in declaration order.
    #[serde(default)]
    pub state_addrs: Vec<u64>,
    /// Island slot pairs holding the thunks of its bound places (`RLP_KIND_RELOC` out of
    /// reach of the patch): the patch's code uses them as long as it is loaded.
    #[serde(default)]
    pub thunks: Vec<u64>,
    /// Its functions in objects the process had not loaded when it was applied, at file
    /// addresses: the runtime's hook patches each copy that comes ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coming: Vec<ComingFunc>,
    /// Callbacks of objects it changes (`RLIVEPATCH_OBJECT_CALLBACKS`), at run-time
    /// addresses: pre_patch, post_patch, pre_unpatch, post_unpatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_callbacks: Vec<(String, [Option<u64>; 4])>,
}

impl AppliedPatch {
    /// The island slots the patch uses: its redirects', and its thunks' while its code
    /// stays (`unloading`).
    pub fn slots(&self, unloading: bool) -> Vec<u64> {
        let mut v: Vec<u64> = self.funcs.iter().flat_map(|f| f.slots()).collect();
        if unloading {
            for t in &self.thunks {
                v.extend([*t, t + crate::remote::redirect::SLOT_SIZE]);
            }
        }
        v
    }
}

/// One function of a patch in an object that was not loaded when the patch was applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComingFunc {
    /// The object as the patch names it.
    pub name: String,
    /// Its build-id, by which the hook recognises it.
    pub build_id: String,
    /// Where the build-id's bytes are in its image (file address).
    pub note_vaddr: u64,
    /// The function at file addresses (the entry, its parts); the new function at its
    /// run-time address.
    pub func: AppliedFunc,
}

/// The jump in the loader's `_dl_debug_state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hook {
    /// Where it is written.
    pub addr: u64,
    /// The loader's bytes there.
    #[serde(with = "crate::fmt::hex_bytes")]
    pub orig: Vec<u8>,
    /// The jump.
    #[serde(with = "crate::fmt::hex_bytes")]
    pub jump: Vec<u8>,
}

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

/// The keeper thread the runtime started (see `crate::livepatch::session::keeper`): what
/// ends it and what is unmapped after it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeeperRecord {
    /// Its mapping: guard page, semaphore, stack.
    pub mapping: u64,
    /// The mapping's size.
    pub size: u64,
    /// The semaphore it waits on.
    pub sem: u64,
    /// Its thread id, once found (0 before).
    #[serde(default)]
    pub tid: i32,
}

/// How far an operation got. Each stage is recorded before its step starts, so that a
/// run killed midway leaves enough for the next one to finish or undo it, running each
/// callback at most once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Apply: loading the patch (and the runtime).
    #[default]
    Loading,
    /// Apply: loaded, symbols and islands set up.
    Loaded,
    /// Apply: pre_patch is running or ran.
    PrePatching,
    /// Disable: pre_unpatch is running or ran.
    PreUnpatching,
    /// The switch is running or ran.
    Switching,
    /// Apply: post_patch is running or ran.
    PostPatching,
    /// Disable: post_unpatch is running or ran.
    PostUnpatching,
}

/// An operation in progress, recorded from its first step so that a run killed midway
/// can be recognised and finished or undone by the next one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// `apply` or `disable`.
    pub op: String,
    /// The patch.
    pub patch: String,
    /// rlivepatch's pid and start time.
    pub tool_pid: i32,
    /// rlivepatch's start time (ticks since boot), to tell a dead run from a live one.
    pub tool_start: u64,
    /// How far it got.
    #[serde(default)]
    pub stage: Stage,
    /// The patch being loaded (apply), once loaded.
    pub loading: Option<AppliedPatch>,
    /// Entry writes of the switch: address, bytes before, bytes after.
    pub writes: Vec<(u64, String, String)>,
    /// Scratch memory of the run.
    pub scratch: Option<Scratch>,
    /// Island pages mapped by this run.
    pub new_islands: Vec<u64>,
    /// Trampolines into originals a disable made for the wrappers above the patch it
    /// takes away (freed if it is undone, handed to the wrappers once it switched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trampolines: Vec<MadeTrampoline>,
}

/// A trampoline into an original function made by a disable (see
/// [`Pending::trampolines`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MadeTrampoline {
    /// The original function's entry.
    pub orig: u64,
    /// The trampoline (two island slots).
    pub at: u64,
    /// Its instructions' offsets and the original's (see [`Wrap::points`]).
    pub points: Vec<(u32, u32)>,
}

/// The whole record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Record {
    /// Format version.
    pub format: u32,
    /// Applied patches, oldest first (the stack order).
    pub patches: Vec<AppliedPatch>,
    /// Island pages.
    pub islands: Vec<Island>,
    /// An operation in progress.
    pub pending: Option<Pending>,
    /// The rlivepatch runtime, when loaded.
    #[serde(default)]
    pub runtime: Option<RuntimeRecord>,
    /// The keeper thread, while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper: Option<KeeperRecord>,
    /// The jump written into the loader's debugger notification point, while a patch
    /// waits for objects to come ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Hook>,
    /// rlivepatch's private memory, kept mapped while the runtime is loaded so that the
    /// next operation need not map it again (nor this one unmap it). Only ever set with
    /// a runtime; ours only while its header says idle (see
    /// [`crate::remote::inject::scratch_is_idle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<crate::remote::inject::Scratch>,
}

impl Pending {
    /// A new pending operation of this rlivepatch.
    pub fn new(op: &str, patch: &str) -> Pending {
        Pending {
            op: op.to_string(),
            patch: patch.to_string(),
            tool_pid: std::process::id() as i32,
            tool_start: crate::os::process::own_start_time(),
            stage: Stage::Loading,
            loading: None,
            writes: Vec::new(),
            scratch: None,
            new_islands: Vec::new(),
            trampolines: Vec::new(),
        }
    }

    /// Is the rlivepatch that recorded it still running?
    pub fn tool_alive(&self) -> bool {
        crate::os::process::start_time(&format!("/proc/{}/stat", self.tool_pid))
            == Some(self.tool_start)
    }
}

impl Record {
    /// A patch by name.
    pub fn patch(&self, name: &str) -> Option<&AppliedPatch> {
        self.patches.iter().find(|p| p.name == name)
    }

    /// The enabled patch an operator names: by its name, or by the file it was applied
    /// from (the path as given then, or its file name when one patch has it).
    pub fn enabled_named(&self, given: &str) -> Option<&AppliedPatch> {
        let enabled = || self.patches.iter().filter(|p| !p.disabled);
        if let Some(p) = enabled().find(|p| p.name == given) {
            return Some(p);
        }
        let abs = std::path::absolute(given)
            .map(|a| a.display().to_string())
            .unwrap_or_default();
        if let Some(p) = enabled().find(|p| p.path == given || p.path == abs) {
            return Some(p);
        }
        let file = |p: &str| std::path::Path::new(p).file_name().map(|f| f.to_owned());
        let by_file: Vec<&AppliedPatch> = enabled()
            .filter(|p| given.ends_with(".so") && file(&p.path) == file(given))
            .collect();
        match by_file.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// A patch whose name differs from `given` only in case: what the operator meant.
    pub fn name_like(&self, given: &str) -> Option<&str> {
        self.patches
            .iter()
            .find(|p| !p.disabled && p.name.eq_ignore_ascii_case(given))
            .map(|p| p.name.as_str())
    }

    /// The patches active on the function at `old_addr`, oldest first.
    pub fn stack_of(&self, old_addr: u64) -> Vec<(&AppliedPatch, &AppliedFunc)> {
        self.patches
            .iter()
            .filter(|p| !p.disabled)
            .filter_map(|p| {
                p.funcs
                    .iter()
                    .find(|f| f.old_addr == old_addr)
                    .map(|f| (p, f))
            })
            .collect()
    }

    /// Is there nothing left to remember?
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
            && self.islands.is_empty()
            && self.pending.is_none()
            && self.runtime.is_none()
            && self.keeper.is_none()
            && self.hook.is_none()
    }
}

impl Record {
    /// Release island slots; returns the pages left empty (to unmap after the switch).
    pub fn free_slots(&mut self, slots: &[u64]) -> Vec<u64> {
        let mut empty = Vec::new();
        for isl in self.islands.iter_mut() {
            isl.used.retain(|u| !slots.contains(u));
            if isl.used.is_empty() {
                empty.push(isl.addr);
            }
        }
        self.islands.retain(|i| !i.used.is_empty());
        empty
    }

    /// The preserving-path table entries the record's redirects use (applied patches
    /// and the one being loaded).
    pub fn preserve_indexes(&self) -> Vec<u32> {
        self.patches
            .iter()
            .flat_map(|p| &p.funcs)
            .chain(
                self.pending
                    .iter()
                    .flat_map(|p| p.loading.iter().flat_map(|a| &a.funcs)),
            )
            .filter_map(|f| f.preserve.as_ref().map(|p| p.index))
            .collect()
    }
}
