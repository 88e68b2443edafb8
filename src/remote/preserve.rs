//! The preserving path: calls of an old function whose callers rely on registers it
//! leaves alone go to the new function through the runtime's thunk (`rlp_preserve` in
//! `runtime/rlivepatch-runtime.c`), which keeps those registers for the callers.
//!
//! Each such redirect has an entry in the runtime's table (the new function, the bytes of
//! stack arguments to copy for it, the registers to keep) and a stub of two island slots
//! next to the old code: `push $index; jmp *rlp_preserve`. The old entry jumps to the stub.

use crate::contract::Contract;
use crate::contract::regs::RegSet;
use crate::err;
use crate::error::Result;

/// Bytes of a stub: two island slots.
pub const STUB_SIZE: u64 = 2 * crate::remote::redirect::SLOT_SIZE;
/// Entries of the runtime's table (`RLP_PRESERVE_MAX`).
pub const TABLE_ENTRIES: u32 = 4096;
const ENTRY_SIZE: u64 = 32;
/// The mask bit of whole vector registers (ymm0-15, or zmm0-31 and k0-7); bit 32 + n
/// keeps register n.
const WIDE_STATE: u64 = 1 << 16;
/// The mask bit of the low halves of xmm0-15 (for objects that use nothing wider); bit
/// 32 + n keeps xmm n.
const SSE_STATE: u64 = 1 << 18;
/// The mask bit of the mask registers k0-7 (with `WIDE_STATE`, on AVX-512).
const MASK_REGS: u64 = 1 << 19;

/// The table mask of the registers `keeps` (see the runtime's thunk): bits 0-8 for rax,
/// rcx, rdx, rsi, rdi, r8, r9, r10, r11; 32 + n for vector register n, saved whole when
/// the object's code uses wide vectors (`wide`) and the CPU has them (`width`: 1 AVX,
/// 2 AVX-512), else only its low half: SSE code keeps nothing more in it. (XSAVE would
/// keep the lot but costs 130 ns a call here, ten times the explicit moves.)
pub fn mask(keeps: RegSet, wide: bool, width: u64) -> u64 {
    // The general registers in the thunk's order, by their machine numbers.
    const ORDER: [u32; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];
    let mut m = 0;
    for (bit, gpr) in ORDER.iter().enumerate() {
        if keeps.has_gpr(*gpr) {
            m |= 1 << bit;
        }
    }
    if !keeps.has_vector_state() {
        return m;
    }
    // Code for wider registers than the CPU has never runs (a variant for other CPUs).
    let regs = match (wide, width) {
        (true, 2) => {
            m |= WIDE_STATE;
            if keeps.has_masks() {
                m |= MASK_REGS;
            }
            32
        }
        (true, 1) => {
            m |= WIDE_STATE;
            16
        }
        _ => {
            m |= SSE_STATE;
            16
        }
    };
    for n in (0..regs).filter(|&n| keeps.has_vec(n)) {
        m |= 1 << (32 + n);
    }
    m
}

/// The bytes of a table entry.
pub fn entry_bytes(target: u64, contract: &Contract, width: u64) -> [u8; ENTRY_SIZE as usize] {
    let mut b = [0u8; ENTRY_SIZE as usize];
    b[0..8].copy_from_slice(&target.to_le_bytes());
    b[8..16].copy_from_slice(&(contract.stack_args.div_ceil(8) * 8).to_le_bytes());
    b[16..24].copy_from_slice(&mask(contract.keeps, contract.wide_vectors, width).to_le_bytes());
    b
}

/// The bytes of the stub of entry `index`: `push $index; jmp *0(%rip)` and the thunk's
/// address.
pub fn stub_bytes(index: u32, thunk: u64) -> [u8; STUB_SIZE as usize] {
    let mut b = [0xccu8; STUB_SIZE as usize];
    b[0] = 0x68;
    b[1..5].copy_from_slice(&index.to_le_bytes());
    b[5..11].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    b[11..19].copy_from_slice(&thunk.to_le_bytes());
    b
}

/// Where the runtime keeps the path: the table, the thunk, and the end of the thunk's
/// code that reads the table.
pub struct Runtime {
    /// The table.
    pub table: u64,
    /// The thunk.
    pub thunk: u64,
    /// Where the thunk returns from the new function (it reads its own frame from there).
    pub returned: u64,
    /// How wide the vector registers are that the thunk keeps: 0 SSE, 1 AVX, 2 AVX-512.
    pub vector_width: u64,
}

impl Runtime {
    /// The path of the runtime loaded at `base`; `vector_width` is read from the process.
    pub fn of(base: u64, proc: &crate::os::process::Process) -> Result<Runtime> {
        let l = crate::remote::runtime::layout()?;
        Ok(Runtime {
            table: base + l.preserve_table,
            thunk: base + l.preserve,
            returned: base + l.preserve_returned,
            vector_width: proc.read_u64(base + l.vector_width)?,
        })
    }

    /// The address of entry `index`.
    pub fn entry(&self, index: u32) -> u64 {
        self.table + index as u64 * ENTRY_SIZE
    }
}

/// A table entry that none of `used` is.
pub fn free_index(used: &[u32]) -> Result<u32> {
    (0..TABLE_ENTRIES)
        .find(|i| !used.contains(i))
        .ok_or_else(|| err!(Failed, "every one of the {TABLE_ENTRIES} preserving paths of the rlivepatch runtime is in use; disable some patches"))
}
#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Register;

    #[test]
    fn masks_and_stubs() {
        let keeps = RegSet::of(Register::RSI)
            .union(RegSet::of(Register::RDX))
            .union(RegSet::of(Register::R11));
        assert_eq!(mask(keeps, true, 2), (1 << 3) | (1 << 2) | (1 << 8));
        let v = RegSet::of(Register::XMM1)
            .union(RegSet::of(Register::XMM5))
            .union(RegSet::of(Register::ZMM20))
            .union(RegSet::of(Register::K1));
        let regs = (1 << 33) | (1 << 37);
        assert_eq!(mask(v, true, 2), WIDE_STATE | MASK_REGS | regs | (1 << 52));
        assert_eq!(mask(v, true, 1), WIDE_STATE | regs);
        assert_eq!(mask(v, false, 2), SSE_STATE | regs);
        assert_eq!(mask(v, true, 0), SSE_STATE | regs);
        let b = stub_bytes(7, 0x1122_3344_5566_7788);
        assert_eq!(&b[..5], &[0x68, 7, 0, 0, 0]);
        assert_eq!(&b[5..11], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(b[11..19].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
    }
}
