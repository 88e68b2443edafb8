//! Sets of registers, as far as callers can rely on them across a call: the general
//! registers, the vector registers (xmm/ymm/zmm as one register each: a callee that
//! writes any part of one is taken to change all of it, as GCC's interprocedural
//! register allocation takes it) and the AVX-512 mask registers. The x87 stack (and the
//! MMX registers on it) is not among them: the ABI has it empty at every call, so no
//! caller keeps a value there across one (GCC spills a `long double` to memory).

use iced_x86::Register;

/// A set of registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RegSet(pub u64);

/// Bit of general register `n` (0 = rax ... 15 = r15, in the machine encoding order).
const GPR: u32 = 0;
/// Bit of vector register 0; vector register `n` is `VEC + n` (32 of them).
const VEC: u32 = 16;
/// Bit of mask register 0 (8 of them).
const MASK: u32 = 48;

/// General registers in the machine's numbering, for messages and masks.
const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

impl RegSet {
    /// No register.
    pub const EMPTY: RegSet = RegSet(0);

    /// Every register the System V x86-64 ABI lets a function change: rax, rcx, rdx, rsi,
    /// rdi, r8-r11, all vector registers and the mask registers.
    pub fn caller_saved() -> RegSet {
        let mut s = RegSet::EMPTY;
        for g in [0, 1, 2, 6, 7, 8, 9, 10, 11] {
            s.0 |= 1 << (GPR + g);
        }
        for v in 0..32 {
            s.0 |= 1 << (VEC + v);
        }
        for k in 0..8 {
            s.0 |= 1 << (MASK + k);
        }
        s
    }

    /// The registers that can carry a return value: rax, rdx, xmm0, xmm1.
    pub fn return_registers() -> RegSet {
        RegSet((1 << GPR) | (1 << (GPR + 2)) | (1 << VEC) | (1 << (VEC + 1)))
    }

    /// The set holding the register `r` (any width), if it is one rlivepatch tracks.
    pub fn of(r: Register) -> RegSet {
        let full = r.full_register();
        if full.is_gpr64() {
            let n = full as u32 - Register::RAX as u32;
            return RegSet(1 << (GPR + n));
        }
        if full.is_zmm() {
            let n = full as u32 - Register::ZMM0 as u32;
            return RegSet(1 << (VEC + n));
        }
        if r.is_k() {
            let n = r as u32 - Register::K0 as u32;
            return RegSet(1 << (MASK + n));
        }
        RegSet::EMPTY
    }

    /// Union.
    pub fn union(self, o: RegSet) -> RegSet {
        RegSet(self.0 | o.0)
    }

    /// Difference.
    pub fn minus(self, o: RegSet) -> RegSet {
        RegSet(self.0 & !o.0)
    }

    /// Intersection.
    pub fn and(self, o: RegSet) -> RegSet {
        RegSet(self.0 & o.0)
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Does it hold every register of `o`?
    pub fn covers(self, o: RegSet) -> bool {
        o.0 & !self.0 == 0
    }

    /// Does it hold general register `n` (machine numbering)?
    pub fn has_gpr(self, n: u32) -> bool {
        self.0 & (1 << (GPR + n)) != 0
    }

    /// Does it hold vector register `n`?
    pub fn has_vec(self, n: u32) -> bool {
        self.0 & (1 << (VEC + n)) != 0
    }

    /// Does it hold any vector or mask register?
    pub fn has_vector_state(self) -> bool {
        self.0 >> VEC != 0
    }

    /// Does it hold any mask register?
    pub fn has_masks(self) -> bool {
        (self.0 >> MASK) & 0xff != 0
    }

    /// The registers by name, vector registers in ranges (`xmm0-15`): for messages.
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = (0..16)
            .filter(|&g| self.has_gpr(g))
            .map(|g| GPR_NAMES[g as usize].to_string())
            .collect();
        let mut v = 0;
        while v < 32 {
            if self.has_vec(v) {
                let start = v;
                while v + 1 < 32 && self.has_vec(v + 1) {
                    v += 1;
                }
                out.push(if start == v {
                    format!("xmm{start}")
                } else {
                    format!("xmm{start}-{v}")
                });
            }
            v += 1;
        }
        let masks = (self.0 >> MASK) & 0xff;
        if masks == 0xff {
            out.push("k0-7".to_string());
        } else {
            for k in 0..8 {
                if masks & (1 << k) != 0 {
                    out.push(format!("k{k}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_of_every_width_map_to_their_full_register() {
        assert_eq!(RegSet::of(Register::EAX), RegSet::of(Register::RAX));
        assert_eq!(RegSet::of(Register::CL), RegSet::of(Register::RCX));
        assert_eq!(RegSet::of(Register::R11D), RegSet::of(Register::R11));
        assert_eq!(RegSet::of(Register::XMM3), RegSet::of(Register::ZMM3));
        assert_eq!(RegSet::of(Register::YMM17), RegSet::of(Register::ZMM17));
        assert!(RegSet::of(Register::RIP).is_empty());
        let cs = RegSet::caller_saved();
        assert!(cs.covers(RegSet::return_registers()));
        assert!(!cs.covers(RegSet::of(Register::RBX)));
        assert_eq!(
            RegSet::of(Register::RSI)
                .union(RegSet::of(Register::XMM1))
                .union(RegSet::of(Register::XMM2))
                .names(),
            ["rsi", "xmm1-2"]
        );
    }
}
