//! The preserving path: calls of an old function whose callers rely on registers it
//! leaves alone go to the new function through the runtime's thunk (`rlp_preserve` in
//! `runtime/rlivepatch-runtime.c`), which keeps those registers for the callers.
//!
//! Each such redirect has an entry in the runtime's table (the new function, the bytes of
//! stack arguments to copy for it, the registers to keep) and a stub of two island slots
//! next to the old code: `push $index; jmp *rlp_preserve`. The old entry jumps to the stub.

use crate::contract::Contract;
use crate::contract::regs::RegSet;
use crate::error::Result;
use crate::runtime::RuntimeRecord;
use crate::state::Record;
use crate::{bail, err};

/// Bytes of a stub: two island slots.
pub const STUB_SIZE: u64 = 2 * crate::redirect::SLOT_SIZE;
/// Entries of the runtime's table (`RLP_PRESERVE_MAX`).
pub const TABLE_ENTRIES: u32 = 4096;
const ENTRY_SIZE: u64 = 32;
/// The mask bit of the vector state.
const VECTOR_STATE: u64 = 1 << 16;

/// The table mask of the registers `keeps` (see the runtime's thunk): bits 0-8 for rax,
/// rcx, rdx, rsi, rdi, r8, r9, r10, r11; 9 and 10 for xmm0 and xmm1; 16 for the vector
/// state.
pub fn mask(keeps: RegSet) -> u64 {
    // The general registers in the thunk's order, by their machine numbers.
    const ORDER: [u32; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];
    let mut m = 0;
    for (bit, gpr) in ORDER.iter().enumerate() {
        if keeps.has_gpr(*gpr) {
            m |= 1 << bit;
        }
    }
    if keeps.has_vec(0) {
        m |= 1 << 9;
    }
    if keeps.has_vec(1) {
        m |= 1 << 10;
    }
    if keeps.has_vector_state() {
        m |= VECTOR_STATE;
    }
    m
}

/// The bytes of a table entry.
pub fn entry_bytes(target: u64, contract: &Contract) -> [u8; ENTRY_SIZE as usize] {
    let mut b = [0u8; ENTRY_SIZE as usize];
    b[0..8].copy_from_slice(&target.to_le_bytes());
    b[8..16].copy_from_slice(&(contract.stack_args.div_ceil(8) * 8).to_le_bytes());
    b[16..24].copy_from_slice(&mask(contract.keeps).to_le_bytes());
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
    /// Bytes of the XSAVE area the thunk uses; 0 when the CPU has no XSAVE.
    pub xsave_size: u64,
}

impl Runtime {
    /// The path of the loaded runtime `rt`; `xsave_size` is read from the process.
    pub fn of(rt: &RuntimeRecord, proc: &crate::process::Process) -> Result<Runtime> {
        let l = crate::runtime::layout()?;
        Ok(Runtime {
            table: rt.base + l.preserve_table,
            thunk: rt.base + l.preserve,
            returned: rt.base + l.preserve_returned,
            xsave_size: proc.read_u64(rt.base + l.xsave_size)?,
        })
    }

    /// The address of entry `index`.
    pub fn entry(&self, index: u32) -> u64 {
        self.table + index as u64 * ENTRY_SIZE
    }
}

/// A table entry no redirect of the record (nor `taken`) uses.
pub fn free_index(rec: &Record, taken: &[u32]) -> Result<u32> {
    let used: Vec<u32> = rec
        .patches
        .iter()
        .flat_map(|p| &p.funcs)
        .chain(
            rec.pending
                .iter()
                .flat_map(|p| p.loading.iter().flat_map(|a| &a.funcs)),
        )
        .filter_map(|f| f.preserve.as_ref().map(|p| p.index))
        .chain(taken.iter().copied())
        .collect();
    (0..TABLE_ENTRIES)
        .find(|i| !used.contains(i))
        .ok_or_else(|| err!(Failed, "every one of the {TABLE_ENTRIES} preserving paths of the rlivepatch runtime is in use; disable some patches"))
}

/// Refuse a function whose callers keep vector registers when the CPU cannot save them.
pub fn check_cpu(rt: &Runtime, sym: &str, keeps: RegSet) -> Result<()> {
    if keeps.has_vector_state() && rt.xsave_size == 0 {
        bail!(
            Target,
            "callers of {sym} keep values in vector registers across its calls, and this CPU has no XSAVE for rlivepatch to keep them with; patch its callers instead"
        );
    }
    Ok(())
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
        assert_eq!(mask(keeps), (1 << 3) | (1 << 2) | (1 << 8));
        let v = RegSet::of(Register::XMM1).union(RegSet::of(Register::XMM5));
        assert_eq!(mask(v), (1 << 10) | VECTOR_STATE);
        let b = stub_bytes(7, 0x1122_3344_5566_7788);
        assert_eq!(&b[..5], &[0x68, 7, 0, 0, 0]);
        assert_eq!(&b[5..11], &[0xff, 0x25, 0, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(b[11..19].try_into().unwrap()),
            0x1122_3344_5566_7788
        );
    }
}
