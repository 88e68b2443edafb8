//! What callers rely on: the old function as the compiler built it, not only the one the
//! source declares.
//!
//! An optimising compiler builds callers against what it sees of the callee in the same
//! object: the registers it leaves alone (GCC's `-fipa-ra`, on at `-O2`), the parts it
//! split off (`work.cold`), the functions it folded into one (`-fipa-icf`), the
//! specialised copies it made (`.constprop`, `.isra`, `.part` clones), the copies it
//! inlined, the signatures it changed in place (LLVM), the calls it merged because the
//! callee has no side effects. A replacement written against the source prototype must
//! never corrupt such a caller: [`analyse`] reads all of this from the object's code and
//! debug information, before anything is touched, and says what rlivepatch will do about
//! each (keep the registers on a preserving path, treat the parts as the function's),
//! what it refuses, and what it can only warn of.

pub mod clobber;
pub mod code;
pub mod dwarf;
pub mod kept;
pub mod regs;

use crate::bail;
use crate::elf::objects::{LoadedObject, Objects};
use crate::error::Result;
use code::{CodeMap, Part, is_clone_of};
use regs::RegSet;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// Bytes of the caller's stack the preserving path copies for a function whose stack
/// arguments are unknown (no debug information, or variable arguments): 32 arguments.
pub const UNKNOWN_STACK_ARGS: u64 = 256;

/// What callers of one old function rely on, and what rlivepatch does about it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Contract {
    /// The function's code: its body, then the parts split off from it (file addresses
    /// of its object).
    pub parts: Vec<Part>,
    /// Caller-saved registers the old code (with its callees) may change.
    #[serde(serialize_with = "names")]
    pub clobbers: RegSet,
    /// Caller-saved registers callers in the object may keep across a call because the
    /// old code leaves them alone (empty when nothing calls the entry directly).
    #[serde(serialize_with = "names")]
    pub relied: RegSet,
    /// The registers of `relied` the replacement may change: calls go through a
    /// preserving path that keeps them. Empty when the replacement leaves every one of
    /// them alone too, or no caller relies on more than the ABI: the direct jump is used.
    #[serde(serialize_with = "names")]
    pub keeps: RegSet,
    /// The object's code uses vector registers wider than SSE's: callers may keep values
    /// in all of a vector register (the preserving path keeps the whole vector state
    /// rather than the low halves of xmm0-15).
    pub wide_vectors: bool,
    /// Bytes of stack arguments a call passes (copied for the replacement on the
    /// preserving path).
    pub stack_args: u64,
    /// `stack_args` comes from the debug information (otherwise a safe upper bound).
    pub stack_args_exact: bool,
    /// Calls and tail calls to the entry from the object's own code.
    pub direct_callers: u32,
    /// Other functions folded into the same code (identical code folding).
    pub folded: Vec<String>,
    /// Other names of the same function (aliases).
    pub aliases: Vec<String>,
    /// Specialised copies (`.constprop`, `.isra`, `.part`): calls to them do not reach the
    /// entry.
    pub clones: Vec<String>,
    /// Functions holding an inlined copy (from the debug information).
    pub inlined_into: Vec<String>,
    /// The object has no debug information: inlined copies cannot be listed.
    pub inlined_unknown: bool,
    /// Something reaches the entry: a call, a jump, a taken address, a relocation.
    pub reached: bool,
    /// The object exports it (objects loaded later may call it).
    pub exported: bool,
    /// It writes no memory and calls nothing: callers may have merged or hoisted calls.
    pub pure: bool,
    /// It cannot throw in this build (it calls nothing) and its object is C++: callers
    /// may have no handler for an exception from it.
    #[serde(skip)]
    pub nothrow: bool,
    /// ... and the replacement is C++ code that may throw.
    pub replacement_may_throw: bool,
    /// The calling convention could not be verified (no debug information, and the
    /// object was built by a compiler that changes signatures in place): its producer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convention_unverified: Option<String>,
    /// Why the function must not be patched with its source prototype, when it must not.
    #[serde(skip)]
    pub convention_changed: Option<String>,
}

impl Contract {
    /// This contract as kept ([`kept`]).
    fn kept(&self, entry_checked: bool) -> kept::Kept {
        let c = self;
        kept::Kept {
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

    /// A kept contract.
    fn from_kept(k: kept::Kept) -> Contract {
        Contract {
            parts: k.parts,
            clobbers: RegSet(k.clobbers),
            relied: RegSet(k.relied),
            keeps: RegSet(k.keeps),
            wide_vectors: k.wide_vectors,
            stack_args: k.stack_args,
            stack_args_exact: k.stack_args_exact,
            direct_callers: k.direct_callers,
            folded: k.folded,
            aliases: k.aliases,
            clones: k.clones,
            inlined_into: k.inlined_into,
            inlined_unknown: k.inlined_unknown,
            reached: k.reached,
            exported: k.exported,
            pure: k.pure,
            nothrow: k.nothrow,
            replacement_may_throw: k.replacement_may_throw,
            convention_unverified: k.convention_unverified,
            convention_changed: k.convention_changed,
        }
    }
}

fn names<S: serde::Serializer>(r: &RegSet, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(r.names())
}

impl Contract {
    /// Do calls need the preserving path?
    pub fn preserves(&self) -> bool {
        !self.keeps.is_empty()
    }

    /// Lines for the operator: what rlivepatch does about what callers rely on, and what
    /// it can only warn of. `sym` names the function.
    pub fn notes(&self, sym: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.parts.len() > 1 {
            let parts: Vec<&str> = self.parts[1..].iter().map(|p| p.name.as_str()).collect();
            out.push(format!(
                "{sym} has code split off as {}: a thread there counts as inside {sym}",
                parts.join(", ")
            ));
        }
        if self.preserves() {
            out.push(format!(
                "callers of {sym} keep values in {} across the call (the old code leaves them alone): calls go through a path that preserves them",
                self.keeps.names().join(", ")
            ));
        }
        if !self.aliases.is_empty() {
            out.push(format!(
                "{sym} is also named {}: those names are patched with it",
                self.aliases.join(", ")
            ));
        }
        if !self.clones.is_empty() {
            out.push(format!(
                "warning: {sym} has specialised copies the compiler made ({}): their callers call them, not {sym}, and keep the old code; patch the callers of those copies if the fix must reach them",
                self.clones.join(", ")
            ));
        }
        if !self.reached && !self.inlined_into.is_empty() {
            out.push(format!(
                "WARNING: nothing in the process reaches the entry of {sym} (no call, no jump, no address taken, no relocation): its callers have inlined copies of it, so patching {sym} changes nothing; patch {} instead",
                self.inlined_into.join(", ")
            ));
        } else if !self.reached && self.exported {
            out.push(format!(
                "warning: nothing in the process calls {sym} now (no call, no jump, no address taken, no relocation of a loaded object): the patch serves objects loaded later that call it, or callers that inlined it (patch those instead)"
            ));
        } else if !self.reached {
            let which = if self.inlined_unknown {
                " (no debug information to tell which)"
            } else {
                ""
            };
            out.push(format!(
                "WARNING: nothing in the process reaches the entry of {sym} (no call, no jump, no address taken, no relocation, no pointer in its data): its callers may have inlined it{which}, so patching {sym} may change nothing; patch its callers instead"
            ));
        } else if !self.inlined_into.is_empty() {
            out.push(format!(
                "warning: {sym} is inlined into {}: those copies keep the old code; patch them too if the fix must reach them",
                self.inlined_into.join(", ")
            ));
        } else if self.inlined_unknown {
            out.push(format!(
                "note: without debug information for its object, copies of {sym} the compiler inlined into callers cannot be listed: those keep the old code (install its debug symbols or pass --debug-dir to see them)"
            ));
        }
        if self.pure {
            out.push(format!(
                "note: {sym} writes no memory and calls nothing, so its callers may have merged or hoisted calls to it (GCC's ipa-pure-const): the new code runs only where a call remains"
            ));
        }
        if self.replacement_may_throw {
            out.push(format!(
                "warning: {sym} cannot throw in this build (it calls nothing), so its callers were built without handlers for an exception from it: a C++ exception leaving the replacement may end the program (std::terminate) instead of reaching a handler"
            ));
        }
        if let Some(p) = &self.convention_unverified {
            out.push(format!(
                "warning: {sym} was built by {p}, which can change a function's signature in place, and its object has no debug information to tell: check that callers pass every argument of the source prototype"
            ));
        }
        out
    }
}

/// The objects analysed in this run, by their parsed file (the analysis holds the `Arc`
/// alive, so that the address names one file for the whole run). Shared by a fleet run's
/// workers: each analysing the same file for itself cost 0.3–1 ms of CPU per worker for a
/// small library, and the index of the C library's callers about 150 ms.
static ANALYSED: LazyLock<crate::memo::Memo<usize, Arc<ObjectCode>>> =
    LazyLock::new(Default::default);

/// The code and debug information of the objects analysed in one run.
#[derive(Default)]
pub struct Contracts {
    maps: HashMap<String, Arc<ObjectCode>>,
}

struct ObjectCode {
    map: CodeMap,
    debug: Option<dwarf::DebugInfo>,
    /// A compiler that changes signatures in place, from `.comment` (LLVM's).
    llvm: Option<String>,
}

impl Contracts {
    /// A cache for one run.
    pub fn new() -> Contracts {
        Contracts::default()
    }

    fn object(&mut self, obj: &LoadedObject) -> Result<Arc<ObjectCode>> {
        if let Some(o) = self.maps.get(&obj.path) {
            return Ok(o.clone());
        }
        let file = obj.file()?;
        // The same file in another process of this run is the same parsed file (see
        // `Objects`): its code map, caller index and debug information are built once
        // per run, not once per process (the index of libc's callers takes about 150 ms).
        let key = Arc::as_ptr(&file) as usize;
        let o = ANALYSED.get_or_try(key, || Self::analyse_object(obj, file))?;
        self.maps.insert(obj.path.clone(), o.clone());
        Ok(o)
    }

    /// The code map and debug information of `obj`, whose parsed file is `file`.
    fn analyse_object(
        obj: &LoadedObject,
        file: Arc<crate::elf::symbols::ElfFile>,
    ) -> Result<Arc<ObjectCode>> {
        crate::os::fault::trace(&format!("contract analysis of {}", obj.path));
        let syms = obj.symbols_file()?;
        let debug = obj
            .debug_info_file()
            .and_then(|f| dwarf::DebugInfo::load(&f));
        let llvm = llvm_producer(&file);
        Ok(Arc::new(ObjectCode {
            map: CodeMap::new(file, &syms),
            debug,
            llvm,
        }))
    }

    /// The functions of `obj` holding inlined copies of a function named `name` that has
    /// no code of its own (from the debug information; empty without it).
    pub fn inlined_copies(&mut self, obj: &LoadedObject, name: &str) -> Vec<String> {
        match self.object(obj) {
            Ok(code) => code
                .debug
                .as_ref()
                .map(|d| d.inlined_by_name(name))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// What callers rely on for the function `sym` of `obj` at file address `vaddr`,
    /// `size` bytes. `patched` names every function the same patch replaces in `obj` (a
    /// folded function patched along with it is fine). Refuses (before anything is
    /// touched) a function folded with another that is not patched too; one whose calling
    /// convention the compiler changed is for the caller to judge
    /// ([`Contracts::refuse_changed_convention`]). `kept` is what an earlier run found
    /// ([`kept::Lookup`]), used instead of the analysis when there is one; a new answer is
    /// kept, with `entry_checked` (the caller checked the entry takes the jump).
    #[allow(clippy::too_many_arguments)]
    pub fn analyse(
        &mut self,
        obj: &LoadedObject,
        objects: &Objects,
        sym: &str,
        vaddr: u64,
        size: u64,
        patched: &[&str],
        mut kept: kept::Lookup,
        entry_checked: bool,
    ) -> Result<Contract> {
        let mut c = match kept.take() {
            Some(k) => {
                crate::os::fault::trace("contract kept");
                Contract::from_kept(k)
            }
            None => {
                let c = self.analyse_file(obj, sym, vaddr, size, patched)?;
                kept.keep(&c.kept(entry_checked));
                c
            }
        };
        // Whether another object calls it by name depends on the process.
        c.reached = c.reached || referenced_elsewhere(obj, objects, sym);
        if !c.folded.is_empty() {
            bail!(
                Mismatch,
                "function {sym} of {} shares its code with {} (the compiler folded identical functions into one): patching it alone would change {} too; patch {} in the same patch as well (one redirect then serves them all)",
                obj.display_name(),
                c.folded.join(", "),
                if c.folded.len() == 1 {
                    "that one"
                } else {
                    "those"
                },
                c.folded.join(", ")
            );
        }
        Ok(c)
    }

    /// What [`Contracts::analyse`] reads from the object's files alone (see [`kept`]):
    /// `reached` says only whether the object itself reaches the entry.
    fn analyse_file(
        &mut self,
        obj: &LoadedObject,
        sym: &str,
        vaddr: u64,
        size: u64,
        patched: &[&str],
    ) -> Result<Contract> {
        let code = self.object(obj)?;
        let map = &code.map;
        let mut c = Contract {
            parts: map.parts(sym, vaddr, size),
            ..Default::default()
        };
        let sub = code.debug.as_ref().and_then(|d| d.subprogram_at(vaddr));
        let effects = clobber::Analysis::new(map).effects_of_parts(&c.parts);
        c.clobbers = effects.clobbers;
        c.pure = !effects.writes_memory && !effects.calls;
        c.nothrow = !effects.calls && !effects.indirect_jump && uses_exceptions(map.file());
        let refs = map.refs_to(vaddr);
        c.direct_callers = refs.calls + refs.jumps;
        // The fault switch shows the hazard: callers' whole vector registers kept by halves.
        c.wide_vectors =
            map.uses_wide_vectors() && !crate::os::fault::switched_on("narrow-vectors");
        // Only callers that call the entry directly can have been built against its
        // registers; calls through the PLT or a pointer assume the ABI.
        if c.direct_callers > 0 && !crate::os::fault::switched_on("no-preserve") {
            c.relied = RegSet::caller_saved().minus(c.clobbers);
            c.keeps = c.relied;
        }
        match sub.as_ref().and_then(|s| s.stack_args) {
            Some(n) => (c.stack_args, c.stack_args_exact) = (n, true),
            None => c.stack_args = UNKNOWN_STACK_ARGS,
        }
        self.folded_and_aliases(&mut c, map, sub.as_ref(), sym, vaddr, patched);
        c.clones = map
            .functions()
            .iter()
            .filter(|f| is_clone_of(&f.name, sym))
            .map(|f| f.name.clone())
            .collect();
        c.clones.sort();
        c.clones.dedup();
        if let (Some(d), Some(s)) = (&code.debug, &sub) {
            c.inlined_into = d.inlined_into(s);
        }
        c.inlined_unknown = code.debug.is_none();
        c.exported = exports(obj, sym);
        c.reached = refs.calls + refs.jumps + refs.addresses > 0
            || relocated(map.file(), vaddr)
            || pointed_to(map.file(), vaddr);
        match &sub {
            Some(s) => c.convention_changed = convention(s),
            None => c.convention_unverified = code.llvm.clone(),
        }
        Ok(c)
    }

    /// Refuse a replacement with the source prototype of a function `sym` of `obj` whose
    /// calling convention the compiler changed ([`Contract::convention_changed`]).
    pub fn refuse_changed_convention(c: &Contract, sym: &str, obj: &LoadedObject) -> Result<()> {
        if let Some(why) = &c.convention_changed {
            let callers = if c.inlined_into.is_empty() {
                "its callers".to_string()
            } else {
                c.inlined_into.join(", ")
            };
            bail!(
                Mismatch,
                "function {sym} of {} cannot be replaced by a function with its source prototype: the compiler changed how it is called in this build ({why}); patch {callers} instead",
                obj.display_name()
            );
        }
        Ok(())
    }

    /// Narrow `c.keeps` to the registers the replacement at file address `vaddr` of
    /// `patch` may change (itself and what it calls): a replacement that leaves alone
    /// everything callers rely on takes the direct jump.
    pub fn narrow_to_replacement(
        &mut self,
        c: &mut Contract,
        patch: &crate::patch::Patch,
        vaddr: u64,
    ) -> Result<()> {
        if c.nothrow {
            c.replacement_may_throw = uses_exceptions(&patch.file);
        }
        if c.keeps.is_empty() {
            return Ok(());
        }
        let key = format!("patch:{}", patch.path.display());
        let code = match self.maps.get(&key) {
            Some(o) => o.clone(),
            None => {
                // The bytes that are loaded, never the path again (the file may have
                // changed since it was read and checked).
                let file = Arc::new(crate::elf::symbols::ElfFile::from_bytes(
                    &patch.path.display().to_string(),
                    patch.file.data().to_vec(),
                )?);
                let o = Arc::new(ObjectCode {
                    map: CodeMap::new(file.clone(), &file),
                    debug: None,
                    llvm: None,
                });
                self.maps.insert(key, o.clone());
                o
            }
        };
        let changes = clobber::Analysis::new(&code.map).effects(vaddr).clobbers;
        c.keeps = c.relied.and(changes);
        Ok(())
    }

    /// Other function symbols at the same address: functions the compiler folded into
    /// this one (each has debug information of its own, or is a `static` function when
    /// there is none) or other names of the same function (aliases).
    fn folded_and_aliases(
        &self,
        c: &mut Contract,
        map: &CodeMap,
        sub: Option<&dwarf::Subprogram>,
        sym: &str,
        vaddr: u64,
        patched: &[&str],
    ) {
        for f in map.functions_at(vaddr) {
            let name = f.name.as_str();
            let base = name.split('@').next().unwrap_or(name);
            if base == sym
                || name.ends_with(".localalias")
                || c.folded.iter().chain(&c.aliases).any(|n| n == name)
            {
                continue;
            }
            let distinct = match sub {
                Some(s) => s.unit_functions.contains(base) && base != s.name,
                // glibc's internal aliases (__GI_x) are local names of one function.
                None => !f.global && !base.starts_with("__GI_") && !base.starts_with("__EI_"),
            };
            if distinct && !patched.contains(&base) {
                c.folded.push(name.to_string());
            } else {
                c.aliases.push(name.to_string());
            }
        }
    }
}

/// Why the calling convention of `s` differs from a normal call of its source prototype.
fn convention(s: &dwarf::Subprogram) -> Option<String> {
    if s.nocall {
        return Some(
            "DW_CC_nocall: its callers do not pass what its source prototype says".to_string(),
        );
    }
    if !s.const_params.is_empty() {
        return Some(format!(
            "parameter {} in this build: callers no longer pass it",
            s.const_params.join(", ")
        ));
    }
    if !s.removed_params.is_empty() {
        return Some(format!("parameter {} removed", s.removed_params.join(", ")));
    }
    None
}

/// The producer of `file` when it is a compiler that changes signatures in place (LLVM:
/// clang, rustc), from `.comment`.
fn llvm_producer(file: &crate::elf::symbols::ElfFile) -> Option<String> {
    let s = file.section(".comment")?;
    let data = file.section_data(s)?;
    data.split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .find(|p| p.contains("clang version") || p.contains("rustc version"))
        .map(|p| p.trim().to_string())
}

/// Does the object's code take part in C++ exceptions (it uses the C++ personality
/// routine or throws)?
fn uses_exceptions(file: &crate::elf::symbols::ElfFile) -> bool {
    file.undefined()
        .iter()
        .any(|n| n == "__gxx_personality_v0" || n == "__cxa_throw")
}

/// Does the data of a position-dependent executable hold the address `vaddr` (a function
/// pointer in a table, which needs no relocation there)?
fn pointed_to(file: &crate::elf::symbols::ElfFile, vaddr: u64) -> bool {
    if file.is_dyn {
        return false;
    }
    let want = vaddr.to_le_bytes();
    file.sections
        .iter()
        .filter(|s| {
            matches!(
                s.name.as_str(),
                ".data" | ".data.rel.ro" | ".rodata" | ".init_array" | ".fini_array"
            )
        })
        .filter_map(|s| file.section_data(s))
        .any(|d| d.chunks_exact(8).any(|w| w == want))
}

/// Does a dynamic relocation of the object store the address `vaddr` (a function pointer
/// in its data)?
fn relocated(file: &crate::elf::symbols::ElfFile, vaddr: u64) -> bool {
    file.relocates_to(vaddr)
}

/// Does `obj` export `sym` (a global symbol of its dynamic symbol table)?
fn exports(obj: &LoadedObject, sym: &str) -> bool {
    obj.file().is_ok_and(|f| f.exports(sym))
}

/// Does another loaded object refer to `sym` of `obj` by name (a PLT or GOT entry, a
/// pointer in its data)? Only exported symbols can be.
fn referenced_elsewhere(obj: &LoadedObject, objects: &Objects, sym: &str) -> bool {
    if !exports(obj, sym) {
        return false;
    }
    objects
        .list
        .iter()
        .filter(|o| o.path != obj.path && o.path != "[vdso]")
        .any(|o| {
            // Only an object that leaves the name undefined can have a relocation
            // against it: its few undefined names first, then (rarely) its relocations.
            o.file().is_ok_and(|f| {
                f.undefined().iter().any(|n| n == sym)
                    && f.dyn_relocs()
                        .values()
                        .any(|r| r.sym_name.as_deref() == Some(sym) && r.sym_value.is_none())
            })
        })
}
