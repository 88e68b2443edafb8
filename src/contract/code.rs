//! The code of one object as the compiler laid it out: where functions start and end,
//! which split-off parts belong to a function (GCC's `.cold` fragments), and which code
//! refers to which address (direct calls, jumps, addresses taken).
//!
//! Everything is in the object's own (file) addresses. The code comes from the object
//! file; the function names from its symbols file (the object, or its separate debug
//! file when it is stripped).

use crate::elf::symbols::{ElfFile, SymKind};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind, Register};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;

/// A function symbol.
#[derive(Debug, Clone)]
pub struct Func {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The symbol.
    pub name: String,
    /// Global or weak (not `static`).
    pub global: bool,
}

/// One part of a function's code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// First byte.
    #[serde(
        serialize_with = "crate::fmt::ser_hex",
        deserialize_with = "crate::fmt::de_hex"
    )]
    pub start: u64,
    /// One past the last byte.
    #[serde(
        serialize_with = "crate::fmt::ser_hex",
        deserialize_with = "crate::fmt::de_hex"
    )]
    pub end: u64,
    /// What it is called (`work.cold`), or `work+0x..` for a part without a symbol.
    pub name: String,
}

/// How the code of an object reaches one address.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refs {
    /// `call` instructions to it.
    pub calls: u32,
    /// `jmp`/`jcc` instructions to it from other functions (tail calls).
    pub jumps: u32,
    /// Instructions that take its address (`lea`, a RIP-relative operand, an immediate).
    pub addresses: u32,
}

/// The code layout of one object.
pub struct CodeMap {
    file: Arc<ElfFile>,
    funcs: Vec<Func>,
    fdes: std::sync::Arc<Vec<(u64, u64)>>,
    plt: Vec<(u64, u64)>,
    /// How the code reaches each address, and whether it uses wide vector registers.
    refs: OnceLock<(HashMap<u64, Refs>, bool)>,
}

impl CodeMap {
    /// The layout of the object whose code is `file`, named by the symbols of `syms`.
    pub fn new(file: Arc<ElfFile>, syms: &ElfFile) -> CodeMap {
        let mut funcs: Vec<Func> = syms
            .symtab()
            .iter()
            .chain(syms.dynsym())
            .filter(|s| s.kind == SymKind::Func && s.size > 0)
            .map(|s| Func {
                start: s.value,
                end: s.value + s.size,
                name: s.name.clone(),
                global: s.global,
            })
            .collect();
        funcs.sort_by(|a, b| (a.start, &a.name).cmp(&(b.start, &b.name)));
        funcs.dedup_by(|a, b| a.start == b.start && a.name == b.name);
        let plt = file
            .sections
            .iter()
            .filter(|s| s.name.starts_with(".plt"))
            .map(|s| (s.addr, s.addr + s.size))
            .collect();
        CodeMap {
            fdes: crate::elf::unwind::fde_ranges(&file),
            file,
            funcs,
            plt,
            refs: OnceLock::new(),
        }
    }

    /// The function symbols starting at `vaddr`.
    pub fn functions_at(&self, vaddr: u64) -> impl Iterator<Item = &Func> {
        let i = self.funcs.partition_point(|f| f.start < vaddr);
        self.funcs[i..].iter().take_while(move |f| f.start == vaddr)
    }

    /// Every function symbol.
    pub fn functions(&self) -> &[Func] {
        &self.funcs
    }

    /// The object's code file.
    pub fn file(&self) -> &ElfFile {
        &self.file
    }

    /// Does a function start at `vaddr` (a symbol that is not a split-off part, or an FDE
    /// without a symbol)?
    pub fn is_function_start(&self, vaddr: u64) -> bool {
        let mut named = self.functions_at(vaddr).peekable();
        if named.peek().is_some() {
            return named.any(|f| !is_fragment_name(&f.name));
        }
        self.fdes.binary_search_by_key(&vaddr, |r| r.0).is_ok()
    }

    /// Is `vaddr` in a PLT section (a call through it goes to another object)?
    pub fn in_plt(&self, vaddr: u64) -> bool {
        self.plt.iter().any(|&(a, b)| a <= vaddr && vaddr < b)
    }

    /// The code range holding `vaddr`: the innermost function symbol, else its FDE.
    pub fn range_at(&self, vaddr: u64) -> Option<(u64, u64, Option<&str>)> {
        let i = self.funcs.partition_point(|f| f.start <= vaddr);
        if let Some(f) = self.funcs[..i]
            .iter()
            .rev()
            .take(64)
            .find(|f| vaddr < f.end)
        {
            return Some((f.start, f.end, Some(&f.name)));
        }
        let j = self.fdes.partition_point(|r| r.0 <= vaddr);
        let r = self.fdes.get(j.checked_sub(1)?)?;
        (vaddr < r.1).then_some((r.0, r.1, None))
    }

    /// The function of `name` at `entry` (size `size`) and every part split off from it:
    /// symbols named `name.cold` (and `name.cold.N`), and code the function jumps to that
    /// is no function's start (found by following its jumps, in the parts too). The body
    /// comes first.
    pub fn parts(&self, name: &str, entry: u64, size: u64) -> Vec<Part> {
        let mut parts = vec![Part {
            start: entry,
            end: entry + size.max(1),
            name: name.to_string(),
        }];
        let cold = format!("{name}.cold");
        for f in &self.funcs {
            let rest = f.name.strip_prefix(cold.as_str());
            if rest.is_some_and(|r| r.is_empty() || r.starts_with('.'))
                && !parts.iter().any(|p| p.start == f.start)
            {
                parts.push(Part {
                    start: f.start,
                    end: f.end,
                    name: f.name.clone(),
                });
            }
        }
        let mut i = 0;
        while i < parts.len() {
            let (s, e) = (parts[i].start, parts[i].end);
            for ins in self.decode(s, e) {
                if !matches!(
                    ins.flow_control(),
                    FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
                ) {
                    continue;
                }
                let t = ins.near_branch_target();
                let inside = parts.iter().any(|p| p.start <= t && t < p.end);
                if inside || self.is_function_start(t) || self.in_plt(t) {
                    continue;
                }
                if let Some((a, b, sym)) = self.range_at(t) {
                    // Code inside another named function (not one of its parts) is a
                    // jump into shared code: rare, and not ours.
                    if sym.is_some_and(|n| !is_fragment_name(n)) {
                        continue;
                    }
                    parts.push(Part {
                        start: a,
                        end: b,
                        name: sym
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("{name}+{:#x}", a.wrapping_sub(entry))),
                    });
                }
            }
            i += 1;
        }
        parts
    }

    /// The instructions of `[start, end)`, decoded from the file (none when the range is
    /// not in the file's loadable code).
    pub fn decode(&self, start: u64, end: u64) -> Vec<Instruction> {
        let Some(bytes) = self
            .file
            .bytes_at(start, end.saturating_sub(start) as usize)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut dec = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            if ins.is_invalid() {
                continue;
            }
            out.push(ins);
        }
        out
    }

    /// How the object's code reaches `vaddr`: built on first use by decoding every
    /// function and every FDE range of the object once.
    pub fn refs_to(&self, vaddr: u64) -> Refs {
        self.refs
            .get_or_init(|| self.scan())
            .0
            .get(&vaddr)
            .copied()
            .unwrap_or_default()
    }

    /// Does the object's code use vector registers wider than SSE's (ymm, zmm, xmm16-31,
    /// the mask registers) anywhere? If not, no caller keeps more than the low 128 bits
    /// of xmm0-15 across a call.
    pub fn uses_wide_vectors(&self) -> bool {
        self.refs.get_or_init(|| self.scan()).1
    }

    fn scan(&self) -> (HashMap<u64, Refs>, bool) {
        let mut regions: Vec<(u64, u64)> = self
            .funcs
            .iter()
            .map(|f| (f.start, f.end))
            .chain(self.fdes.iter().copied())
            .collect();
        regions.sort_unstable();
        // Merged, so that overlapping symbols and FDEs are decoded once.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in regions {
            match merged.last_mut() {
                Some(m) if a <= m.1 => m.1 = m.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let absolute = !self.file.is_dyn;
        let mut refs: HashMap<u64, Refs> = HashMap::new();
        let mut wide = false;
        for (a, b) in merged {
            for ins in self.decode(a, b) {
                wide = wide || is_wide(&ins);
                match ins.flow_control() {
                    FlowControl::Call => {
                        refs.entry(ins.near_branch_target()).or_default().calls += 1;
                    }
                    FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                        let t = ins.near_branch_target();
                        // A jump within the function holding it is control flow, not a
                        // tail call.
                        let within = self
                            .range_at(ins.ip())
                            .is_some_and(|(s, e, _)| s <= t && t < e);
                        if !within {
                            refs.entry(t).or_default().jumps += 1;
                        }
                    }
                    _ => {}
                }
                if ins.is_ip_rel_memory_operand() {
                    refs.entry(ins.ip_rel_memory_address())
                        .or_default()
                        .addresses += 1;
                }
                if absolute {
                    for i in 0..ins.op_count() {
                        if matches!(
                            ins.op_kind(i),
                            OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64
                        ) {
                            refs.entry(ins.immediate(i)).or_default().addresses += 1;
                        }
                    }
                }
            }
        }
        (refs, wide)
    }
}

/// Does the instruction name a vector register wider than SSE's (ymm, zmm, xmm16-31) or
/// a mask register?
fn is_wide(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|i| {
        let r = match ins.op_kind(i) {
            OpKind::Register => ins.op_register(i),
            OpKind::Memory => ins.memory_index(),
            _ => return false,
        };
        r.is_ymm() || r.is_zmm() || r.is_k() || (r.is_xmm() && r.number() >= 16)
    }) || ins.op_mask() != Register::None
}

/// The parts split off from function `name` that `syms` names (`name.cold`,
/// `name.cold.N`): for a patch's own new functions, which GCC splits like any other.
pub fn named_parts(syms: &ElfFile, name: &str) -> Vec<Part> {
    let cold = format!("{name}.cold");
    let mut out: Vec<Part> = syms
        .symtab()
        .iter()
        .filter(|s| s.kind == SymKind::Func && s.size > 0)
        .filter(|s| s.name == cold || s.name.starts_with(&format!("{cold}.")))
        .map(|s| Part {
            start: s.value,
            end: s.value + s.size,
            name: s.name.clone(),
        })
        .collect();
    out.sort_by_key(|p| p.start);
    out.dedup_by_key(|p| p.start);
    out
}

/// Is `name` a part split off from a function (GCC's `work.cold`, `work.cold.1`)?
pub fn is_fragment_name(name: &str) -> bool {
    fragment_parent(name).is_some()
}

/// The function a split-off part belongs to (`work.cold` → `work`, `work.part.0.cold.1`
/// → `work.part.0`), or `None` for a name that is no such part.
pub fn fragment_parent(name: &str) -> Option<&str> {
    let mut at = name.find('.')?;
    loop {
        let rest = &name[at + 1..];
        let seg = rest.split('.').next().unwrap_or("");
        if seg == "cold" {
            return Some(&name[..at]);
        }
        at += 1 + rest.find('.')?;
    }
}

/// Is `name` a specialised copy of function `base` that GCC or LLVM made
/// (`base.constprop.0`, `base.isra.0`, `base.part.0`, `base.specialized.1`)?
pub fn is_clone_of(name: &str, base: &str) -> bool {
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    !is_fragment_name(name)
        && rest
            .split('.')
            .any(|s| matches!(s, "constprop" | "isra" | "part" | "specialized"))
}

/// Is register `r` the stack or frame pointer (a memory write through it stays in the
/// function's own frame)?
pub fn is_frame_register(r: Register) -> bool {
    matches!(r, Register::RSP | Register::RBP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_parts_and_clones() {
        assert!(is_fragment_name("work.cold"));
        assert!(is_fragment_name("work.cold.3"));
        assert!(is_fragment_name("work.part.0.cold"));
        assert!(!is_fragment_name("cold"));
        assert!(!is_fragment_name("work.coldness"));
        assert_eq!(fragment_parent("work.cold"), Some("work"));
        assert_eq!(fragment_parent("work.part.0.cold.1"), Some("work.part.0"));
        assert_eq!(fragment_parent("work.coldness"), None);
        assert_eq!(fragment_parent(".cold"), Some(""));
        assert!(is_clone_of("scale.constprop.0", "scale"));
        assert!(is_clone_of("luaV_concat.part.0", "luaV_concat"));
        assert!(is_clone_of("f.isra.0.constprop.1", "f"));
        assert!(!is_clone_of("scale.cold", "scale"));
        assert!(!is_clone_of("scaled.constprop.0", "scale"));
        assert!(!is_clone_of("scale.localalias", "scale"));
    }
}
