//! What rlivepatch shows: the views of `info`, `list` and `apply`, in JSON (`--json`) and
//! as text. Addresses are hex strings in JSON, so that no consumer rounds them.

use crate::elf::objects::Objects;
use crate::livepatch::record::{AppliedFunc, AppliedPatch, Record};
use crate::patch::{Patch, StateDecl};
use serde::Serialize;
use std::fmt::Write as _;

use crate::fmt::{hx, plural};

/// One redirected function.
#[derive(Debug, Clone, Serialize)]
pub struct FuncView {
    /// Object file name.
    pub object: String,
    /// Object path.
    pub object_path: String,
    /// Old symbol.
    pub symbol: String,
    /// Demangled name (C++).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// Old entry address.
    pub old_addr: String,
    /// New function's name in the patch.
    pub new_function: String,
    /// New function's address.
    pub new_addr: String,
    /// `jump` (direct `jmp rel32`), `island` (through an island slot) or `preserving`
    /// (through the preserving path, which keeps `keeps` for the callers).
    pub via: &'static str,
    /// The registers the preserving path keeps for the callers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keeps: Vec<String>,
    /// The island slot, when `via` is `island`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub island: Option<String>,
    /// For an IFUNC: the implementation that was patched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifunc_implementation: Option<String>,
    /// The separate debug file the symbol came from (stripped objects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// Parts of the old function split off from its body (`work.cold`): a thread there
    /// counts as inside the function.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartView>,
    /// Other names of the old function replaced with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// What callers rely on and what rlivepatch did or warns of (apply only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// `RLIVEPATCH_FUNC_WRAP`: what the new function calls as the code it replaces: the
    /// original through a trampoline, or the function of the patch below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_replaced: Option<String>,
}

/// How one reference of a generated patch's code into the process is bound: a data
/// access (a RIP-relative operand) or a call, written at apply time.
#[derive(Debug, Clone, Serialize)]
pub struct BindingView {
    /// `data` or `call`.
    pub kind: &'static str,
    /// The datum or function, as the patch names it.
    pub name: String,
    /// The instruction, in the loaded patch.
    pub at: String,
    /// The datum's or function's address in the process.
    pub target: String,
    /// `direct` (the instruction's own displacement, written in place: the patch was
    /// loaded within 2 GiB of it), `thunk` (a data access moved into a thunk next to the
    /// data, reached through two indirect jumps) or `stub` (a call through the patch's
    /// stub, an indirect jump).
    pub via: &'static str,
    /// Why the patch was not loaded near it, for a thunk or a stub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl BindingView {
    /// The view of the place `p` of the instruction at `at`.
    pub fn new(
        p: &crate::remote::relocate::RelocFill,
        at: u64,
        via: &'static str,
        why: Option<String>,
    ) -> BindingView {
        BindingView {
            kind: match p.kind {
                crate::patch::RelocKind::Call32 { .. } => "call",
                _ => "data",
            },
            name: p.name.clone(),
            at: hx(at),
            target: hx(p.value),
            via,
            why,
        }
    }

    /// One line of text for all of `views`: how many of each form, and why any is not
    /// direct.
    pub fn summary(views: &[BindingView]) -> Option<String> {
        if views.is_empty() {
            return None;
        }
        let count = |kind: &str, via: &str| {
            views
                .iter()
                .filter(|v| v.kind == kind && v.via == via)
                .count()
        };
        let mut parts = Vec::new();
        let (data, calls) = (count("data", "direct"), count("call", "direct"));
        let (thunks, stubs) = (count("data", "thunk"), count("call", "stub"));
        if data + thunks > 0 {
            parts.push(format!(
                "data accesses: {data} direct, {}",
                plural(thunks, "through a thunk", "through thunks")
            ));
        }
        if calls + stubs > 0 {
            parts.push(format!(
                "calls into the process: {calls} direct, {}",
                plural(stubs, "through a stub", "through stubs")
            ));
        }
        let mut t = parts.join("; ");
        if let Some(why) = views.iter().find_map(|v| v.why.as_deref()) {
            t.push_str(&format!(
                " (the patch could not be loaded within 2 GiB of the process's code and data: {why})"
            ));
        }
        Some(t)
    }
}

/// A part of a function split off from its body.
#[derive(Debug, Clone, Serialize)]
pub struct PartView {
    /// Its symbol (`work.cold`).
    pub name: String,
    /// First byte.
    pub start: String,
    /// One past the last byte.
    pub end: String,
}

impl FuncView {
    /// The view of an applied function.
    pub fn new(f: &AppliedFunc, objects: &Objects) -> FuncView {
        FuncView {
            object: f.object.rsplit('/').next().unwrap_or(&f.object).to_string(),
            object_path: f.object.clone(),
            symbol: f.symbol.clone(),
            demangled: crate::elf::demangle::demangle(&f.symbol),
            old_addr: hx(f.old_addr),
            new_function: f.new_name.clone(),
            new_addr: hx(f.new_addr),
            via: match (&f.preserve, f.island) {
                (Some(_), _) => "preserving",
                (None, Some(_)) => "island",
                (None, None) => "jump",
            },
            keeps: f
                .preserve
                .as_ref()
                .map(|p| p.keeps.clone())
                .unwrap_or_default(),
            island: f.island.or(f.preserve.as_ref().map(|p| p.stub)).map(hx),
            ifunc_implementation: f.implementation.clone(),
            debug_file: f.debug_file.clone(),
            parts: f
                .parts
                .iter()
                .map(|p| PartView {
                    name: p.name.clone(),
                    start: hx(p.start),
                    end: hx(p.end),
                })
                .collect(),
            aliases: f.aliases.clone(),
            notes: Vec::new(),
            calls_replaced: f.wrap.as_ref().map(|w| match w.trampoline {
                Some(t) => format!("the original, through a trampoline at {}", hx(t)),
                None => format!("{} at {}", objects.symbolize(w.target), hx(w.target)),
            }),
        }
    }

    /// One line of text.
    pub fn line(&self) -> String {
        let mut name = match &self.demangled {
            Some(d) => format!("{d} [{}]", self.symbol),
            None => self.symbol.clone(),
        };
        if let Some(i) = &self.ifunc_implementation {
            name.push_str(&format!(" (IFUNC, implementation {i})"));
        }
        if let Some(d) = &self.debug_file {
            name.push_str(&format!(" (symbols from {d})"));
        }
        if !self.aliases.is_empty() {
            name.push_str(&format!(" (also {})", self.aliases.join(", ")));
        }
        if !self.parts.is_empty() {
            let parts: Vec<String> = self
                .parts
                .iter()
                .map(|p| format!("{} at {}", p.name, p.start))
                .collect();
            name.push_str(&format!(" (with {})", parts.join(", ")));
        }
        let via = match (self.via, &self.island) {
            ("preserving", Some(i)) => format!(
                "through the preserving path at {i}, keeping {} for the callers",
                self.keeps.join(", ")
            ),
            (_, Some(i)) => format!("via island {i}"),
            _ => "direct jump".to_string(),
        };
        let wraps = match &self.calls_replaced {
            Some(c) => format!("; it calls {c}"),
            None => String::new(),
        };
        format!(
            "{name} in {} {} -> {} {} ({via}{wraps})",
            self.object, self.old_addr, self.new_function, self.new_addr
        )
    }
}

/// One applied patch.
#[derive(Debug, Clone, Serialize)]
pub struct PatchView {
    /// Position in the stack (1 = oldest).
    pub position: usize,
    /// Name.
    pub name: String,
    /// The file it was loaded from.
    pub path: String,
    /// `enabled`, or `disabled` (a forced patch whose code stays loaded).
    pub state: &'static str,
    /// Switched with --force: never unloaded.
    pub forced: bool,
    /// Atomic replace.
    pub replace: bool,
    /// System states.
    pub states: Vec<StateDecl>,
    /// When it was applied (seconds since the epoch).
    pub applied_at: u64,
    /// Load address of the patch.
    pub base: String,
    /// Its functions.
    pub functions: Vec<FuncView>,
    /// Objects it changes that were not loaded when it was applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coming: Vec<ComingView>,
}

/// An object a patch changes that was not loaded when the patch was applied.
#[derive(Debug, Clone, Serialize)]
pub struct ComingView {
    /// The object as the patch names it.
    pub object: String,
    /// Its build-id.
    pub build_id: String,
    /// The functions that change in it.
    pub functions: Vec<String>,
    /// The copies the process loaded since (none: still pending).
    pub copies: Vec<crate::livepatch::coming::table::Copy>,
}

/// The result of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListView {
    /// Process id.
    pub pid: i32,
    /// Its command name.
    pub command: String,
    /// Applied patches in stack order.
    pub patches: Vec<PatchView>,
    /// An operation that was interrupted (or is running now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Child processes running the same program: this list does not cover them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<i32>,
    /// Why the hook for objects that come last left a copy unpatched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coming_failure: Option<String>,
}

impl ListView {
    /// Build the view of a record.
    pub fn new(pid: i32, command: &str, rec: &Record, objects: &Objects) -> ListView {
        let pending = rec.pending.as_ref().map(|p| {
            let alive = crate::os::process::start_time(&format!("/proc/{}/stat", p.tool_pid))
                == Some(p.tool_start);
            if alive {
                format!(
                    "{} of patch {} in progress (rlivepatch pid {})",
                    p.op, p.patch, p.tool_pid
                )
            } else {
                format!(
                    "{} of patch {} was interrupted; run `rlivepatch repair {pid}`",
                    p.op, p.patch
                )
            }
        });
        ListView {
            pid,
            command: command.to_string(),
            patches: rec
                .patches
                .iter()
                .enumerate()
                .map(|(i, p)| patch_view(i + 1, p, objects))
                .collect(),
            pending,
            children: crate::os::process::same_program_children(pid),
            coming_failure: None,
        }
    }

    /// Text form.
    pub fn text(&self) -> String {
        let mut s = self.text_patches();
        let what = if self.patches.is_empty() {
            "this list does not cover"
        } else {
            "run without these patches"
        };
        if let Some(n) = crate::os::process::children_note(self.pid, &self.children, what) {
            let _ = writeln!(s, "{n}");
        }
        s
    }

    fn text_patches(&self) -> String {
        let mut s = String::new();
        if self.patches.is_empty() {
            let _ = writeln!(
                s,
                "process {} ({}): no patches applied",
                self.pid, self.command
            );
        } else {
            let _ = writeln!(
                s,
                "process {} ({}): {}, oldest first",
                self.pid,
                self.command,
                plural(self.patches.len(), "patch", "patches")
            );
        }
        for p in &self.patches {
            let mut flags = vec![p.state.to_string()];
            if p.forced {
                flags.push("forced".into());
            }
            if p.replace {
                flags.push("replace".into());
            }
            let _ = writeln!(
                s,
                "{}. {} [{}] loaded at {} from {}",
                p.position,
                p.name,
                flags.join(", "),
                p.base,
                p.path
            );
            if !p.states.is_empty() {
                let st: Vec<String> = p
                    .states
                    .iter()
                    .map(|x| format!("{} v{}", x.id, x.version))
                    .collect();
                let _ = writeln!(s, "   states: {}", st.join(", "));
            }
            for f in &p.functions {
                let _ = writeln!(s, "   {}", f.line());
            }
            for c in &p.coming {
                let copies: Vec<String> = c
                    .copies
                    .iter()
                    .map(|x| match x.state {
                        "other-namespace" => format!(
                            "a copy at {:#x} in namespace {} (dlmopen) is NOT patched",
                            x.address, x.namespace
                        ),
                        "patched" => format!("loaded at {:#x}, patched", x.address),
                        _ => format!("a copy at {:#x} is NOT patched", x.address),
                    })
                    .collect();
                let state = if copies.is_empty() {
                    "pending (not loaded; patched when it is)".to_string()
                } else {
                    copies.join("; ")
                };
                let _ = writeln!(s, "   {} in {}: {state}", c.functions.join(", "), c.object);
            }
        }
        if let Some(f) = &self.coming_failure {
            let _ = writeln!(s, "note: objects that came: {f}");
        }
        if let Some(p) = &self.pending {
            let _ = writeln!(s, "note: {p}");
        }
        s
    }
}

fn patch_view(position: usize, p: &AppliedPatch, objects: &Objects) -> PatchView {
    PatchView {
        position,
        name: p.name.clone(),
        path: p.path.clone(),
        state: if p.disabled { "disabled" } else { "enabled" },
        forced: p.forced,
        replace: p.replace,
        states: p.states.clone(),
        applied_at: p.applied_at,
        base: hx(p.base),
        functions: p
            .funcs
            .iter()
            .filter(|f| f.copy.is_none())
            .map(|f| FuncView::new(f, objects))
            .collect(),
        coming: {
            let mut v: Vec<ComingView> = Vec::new();
            for c in &p.coming {
                match v.iter_mut().find(|x| x.build_id == c.build_id) {
                    Some(x) => x.functions.push(c.func.symbol.clone()),
                    None => v.push(ComingView {
                        object: c.name.clone(),
                        build_id: c.build_id.clone(),
                        functions: vec![c.func.symbol.clone()],
                        copies: Vec::new(),
                    }),
                }
            }
            v
        },
    }
}

impl ListView {
    /// Add what the runtime's table says of the objects that came.
    pub fn add_coming(&mut self, proc: &crate::os::process::Process, rec: &Record) {
        if !crate::livepatch::coming::in_use(rec) {
            return;
        }
        let Ok(Some(view)) = crate::livepatch::coming::table::read(proc, rec) else {
            return;
        };
        for p in &mut self.patches {
            for c in &mut p.coming {
                c.copies = view
                    .copies
                    .iter()
                    .filter(|x| x.build_id == c.build_id)
                    .cloned()
                    .collect();
            }
        }
        self.coming_failure = view.last_failure;
    }
}

/// The result of `info`.
#[derive(Debug, Clone, Serialize)]
pub struct InfoView {
    /// Patch name.
    pub name: String,
    /// File.
    pub path: String,
    /// Atomic replace.
    pub replace: bool,
    /// Functions.
    pub functions: Vec<InfoFunc>,
    /// Callbacks present.
    pub callbacks: Vec<&'static str>,
    /// System states.
    pub states: Vec<StateDecl>,
    /// Build-ids it was built for.
    pub build_ids: Vec<InfoBuildId>,
    /// Target symbols it uses.
    pub symbols: Vec<crate::patch::SymbolRef>,
    /// Who signed it (the key's name in the keyring, or its id); the signature verified
    /// (one that does not is refused even here).
    pub signer: Option<String>,
}

/// A function in `info`.
#[derive(Debug, Clone, Serialize)]
pub struct InfoFunc {
    /// Object (`main` for the executable).
    pub object: String,
    /// Old symbol.
    pub old: String,
    /// Demangled name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// old_sympos.
    pub sympos: u64,
    /// New function.
    pub new: String,
    /// It calls the code it replaces (`RLIVEPATCH_FUNC_WRAP`).
    pub wraps: bool,
}

/// A build-id in `info`.
#[derive(Debug, Clone, Serialize)]
pub struct InfoBuildId {
    /// Object (`main` for the executable).
    pub object: String,
    /// Hex build-id.
    pub build_id: String,
}

impl InfoView {
    /// Build the view of a patch.
    pub fn new(p: &Patch) -> InfoView {
        let cb = &p.callbacks;
        let callbacks = [
            ("pre_patch", cb.pre_patch),
            ("post_patch", cb.post_patch),
            ("pre_unpatch", cb.pre_unpatch),
            ("post_unpatch", cb.post_unpatch),
        ]
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
        InfoView {
            name: p.name.clone(),
            path: p.path.display().to_string(),
            replace: p.replace,
            functions: p
                .funcs
                .iter()
                .map(|f| InfoFunc {
                    object: f.object.clone().unwrap_or_else(|| "main".into()),
                    old: f.old.clone(),
                    demangled: crate::elf::demangle::demangle(&f.old),
                    sympos: f.sympos,
                    new: f.new_name.clone(),
                    wraps: f.orig_slot.is_some(),
                })
                .collect(),
            callbacks,
            states: p.states.clone(),
            build_ids: p
                .build_ids
                .iter()
                .map(|(o, b)| InfoBuildId {
                    object: o.clone().unwrap_or_else(|| "main".into()),
                    build_id: b.clone(),
                })
                .collect(),
            symbols: p.symbols.clone(),
            signer: p.signer.clone(),
        }
    }

    /// Text form.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "patch {} ({})", self.name, self.path);
        let _ = writeln!(
            s,
            "  signed: {}",
            self.signer.as_deref().map_or("no".to_string(), |k| format!(
                "yes, by {k}; the signature verifies"
            ))
        );
        if self.replace {
            let _ = writeln!(
                s,
                "  atomic replace: replaces every patch applied before it"
            );
        }
        for f in &self.functions {
            let old = match &f.demangled {
                Some(d) => format!("{d} [{}]", f.old),
                None => f.old.clone(),
            };
            let pos = if f.sympos > 0 {
                format!(" (occurrence {})", f.sympos)
            } else {
                String::new()
            };
            let wraps = if f.wraps {
                " (calls the code it replaces)"
            } else {
                ""
            };
            let _ = writeln!(s, "  {}: {old}{pos} -> {}{wraps}", f.object, f.new);
        }
        if !self.callbacks.is_empty() {
            let _ = writeln!(s, "  callbacks: {}", self.callbacks.join(", "));
        }
        for st in &self.states {
            let _ = writeln!(s, "  state {} version {}", st.id, st.version);
        }
        for b in &self.build_ids {
            let _ = writeln!(s, "  built for {} with build-id {}", b.object, b.build_id);
        }
        for y in &self.symbols {
            let _ = writeln!(
                s,
                "  uses {} of {} as {}",
                y.symbol,
                y.object.as_deref().unwrap_or("main"),
                y.local
            );
        }
        s
    }
}
