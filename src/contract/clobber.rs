//! Which caller-saved registers a function may change, as its callers in the same object
//! were compiled to assume.
//!
//! GCC's interprocedural register allocation (`-fipa-ra`, on at `-O2`) lets a caller keep
//! a value in a caller-saved register across `call f` when `f`, and everything `f` calls,
//! never writes that register. The set is read here from the code as built: every
//! register any instruction of the function (all its parts) writes, and the sets of the
//! functions it calls or tail-calls directly in the same object. A call through the PLT,
//! through a pointer, or into a function being analysed (recursion: GCC compiles those
//! before it knows their registers) counts as changing every caller-saved register, as
//! it does for the compiler.

use super::code::{CodeMap, is_frame_register};
use super::regs::RegSet;
use iced_x86::{FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, Register};
use std::collections::HashMap;

/// What the code of a function does that callers may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Caller-saved registers it may change (its callees' included).
    pub clobbers: RegSet,
    /// It writes memory outside its own stack frame.
    pub writes_memory: bool,
    /// It calls something (or makes a system call).
    pub calls: bool,
    /// It has an indirect jump that may be a tail call through a pointer (or a `switch`).
    pub indirect_jump: bool,
}

/// The effects of functions of one object, computed once each.
pub struct Analysis<'m> {
    map: &'m CodeMap,
    done: HashMap<u64, Effects>,
    running: Vec<u64>,
}

fn writes(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

impl<'m> Analysis<'m> {
    /// An analysis of the functions of `map`'s object.
    pub fn new(map: &'m CodeMap) -> Self {
        Analysis {
            map,
            done: HashMap::new(),
            running: Vec::new(),
        }
    }

    /// The effects of the function starting at `entry` (its size, and so its parts,
    /// from the symbols; a function without a symbol is its FDE range).
    pub fn effects(&mut self, entry: u64) -> Effects {
        if let Some(e) = self.done.get(&entry) {
            return *e;
        }
        let full = Effects {
            clobbers: RegSet::caller_saved(),
            writes_memory: true,
            calls: true,
            indirect_jump: false,
        };
        if self.running.contains(&entry) {
            return full;
        }
        let (name, end) = match self.map.functions_at(entry).next() {
            Some(f) => (f.name.clone(), f.end),
            None => match self.map.range_at(entry) {
                Some((s, e, _)) if s == entry => (format!("{entry:#x}"), e),
                _ => return full,
            },
        };
        self.running.push(entry);
        let parts = self.map.parts(&name, entry, end - entry);
        let e = self.effects_of_parts(&parts);
        self.running.pop();
        self.done.insert(entry, e);
        e
    }

    /// The effects of code made of `parts` (a function's body and split-off parts).
    pub fn effects_of_parts(&mut self, parts: &[super::code::Part]) -> Effects {
        let mut e = Effects {
            clobbers: RegSet::EMPTY,
            writes_memory: false,
            calls: false,
            indirect_jump: false,
        };
        let mut factory = InstructionInfoFactory::new();
        let inside = |t: u64| parts.iter().any(|p| p.start <= t && t < p.end);
        for p in parts {
            for ins in self.map.decode(p.start, p.end) {
                // vzeroupper keeps the low 128 bits of every register: callers' values in
                // xmm registers survive it, as the compiler knows.
                if ins.mnemonic() != Mnemonic::Vzeroupper {
                    let info = factory.info(&ins);
                    for r in info.used_registers() {
                        if writes(r.access()) {
                            e.clobbers = e.clobbers.union(RegSet::of(r.register()));
                        }
                    }
                    for m in info.used_memory() {
                        if writes(m.access()) && !is_frame_register(m.base()) {
                            e.writes_memory = true;
                        }
                    }
                }
                match ins.flow_control() {
                    FlowControl::Call => {
                        e.calls = true;
                        e.clobbers = e.clobbers.union(self.callee(ins.near_branch_target()));
                    }
                    FlowControl::IndirectCall => {
                        e.calls = true;
                        e.clobbers = RegSet::caller_saved();
                    }
                    FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                        let t = ins.near_branch_target();
                        if !inside(t) {
                            // A tail call: what the callee changes, the caller sees.
                            e.calls = true;
                            e.clobbers = e.clobbers.union(self.callee(t));
                        }
                    }
                    FlowControl::IndirectBranch => {
                        // A `switch` through a jump table, or a tail call through a
                        // pointer; the callee of the latter would set the return value.
                        e.indirect_jump = true;
                        e.clobbers = e.clobbers.union(RegSet::return_registers());
                    }
                    _ => {}
                }
                if matches!(ins.mnemonic(), Mnemonic::Syscall | Mnemonic::Sysenter) {
                    e.calls = true;
                    e.clobbers = e
                        .clobbers
                        .union(RegSet::of(Register::RCX))
                        .union(RegSet::of(Register::R11))
                        .union(RegSet::of(Register::RAX));
                }
            }
        }
        e.clobbers = e.clobbers.and(RegSet::caller_saved());
        e
    }

    /// The registers a direct call to `target` may change.
    fn callee(&mut self, target: u64) -> RegSet {
        if self.map.in_plt(target) || !self.map.is_function_start(target) {
            return RegSet::caller_saved();
        }
        self.effects(target).clobbers
    }
}
