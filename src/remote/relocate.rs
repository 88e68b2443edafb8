//! The places of a generated patch bound to the process at apply time (`RLP_KIND_RELOC`,
//! written by `rlivepatch build`): a 64-bit address, or the displacement of a
//! RIP-relative operand on the process's data. A patch lands within 2 GiB of a shared
//! library but terabytes from a PIE executable: when the data is out of reach, the
//! instruction moves into a thunk in an island page next to the data (the same
//! instruction, re-encoded there, then a jump back), and the place becomes `jmp
//! *slot(%rip)` to it. Neither form touches a register, a flag or the stack.

use crate::elf::objects::Objects;
use crate::error::Result;
use crate::patch::{Patch, RelocKind};
use crate::{bail, err};
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionBlock,
};

/// For each instruction of relocated code: its offset, and the offset of the original
/// instruction it stands for.
pub type Points = Vec<(u32, u32)>;

/// A bound place, resolved.
#[derive(Debug, Clone)]
pub struct RelocFill {
    /// The place (patch file address).
    pub site_vaddr: u64,
    /// The patch's pointer for a thunk (patch file address).
    pub thunk_slot: Option<u64>,
    /// The run-time address the place refers to.
    pub value: u64,
    /// What the place is.
    pub kind: RelocKind,
    /// The symbol, for messages.
    pub name: String,
}

/// Resolve every bound place of `patch` in the process's objects.
pub fn resolve(patch: &Patch, objects: &Objects) -> Result<Vec<RelocFill>> {
    let mut out = Vec::new();
    for r in &patch.relocs {
        let obj = objects.by_name(r.object.as_deref())?;
        let file = obj.symbols_file()?;
        let sym = crate::elf::symbols::find_symbol(&file, &r.symbol)
            .map_err(|e| e.context(format!("{} (used by the patch)", r.local)))?;
        if sym.kind == crate::elf::symbols::SymKind::Tls {
            bail!(
                Patch,
                "{} is thread-local: a generated patch cannot bind it",
                r.local
            );
        }
        out.push(RelocFill {
            site_vaddr: r.site_vaddr,
            thunk_slot: r.thunk_slot,
            value: sym
                .value
                .wrapping_add(obj.bias()?)
                .wrapping_add(r.addend as u64),
            kind: r.kind,
            name: r.local.clone(),
        });
    }
    Ok(out)
}

/// The displacement that makes the RIP-relative instruction ending at `end` reach
/// `value`, when it fits.
pub fn near(value: u64, end: u64) -> Option<i32> {
    i32::try_from(value.wrapping_sub(end) as i64).ok()
}

/// The thunk at `at` for the instruction `insn` (its bytes, as it sits at `start`):
/// the instruction re-encoded to reach `value` from there, then `jmp *0(%rip)` back to
/// `back`.
pub fn thunk(insn: &[u8], start: u64, value: u64, at: u64, back: u64) -> Result<Vec<u8>> {
    let mut d = Decoder::with_ip(64, insn, start, DecoderOptions::NONE);
    let mut i = d.decode();
    if i.is_invalid() || i.len() != insn.len() || !i.is_ip_rel_memory_operand() {
        bail!(
            Failed,
            "the instruction at {start:#x} to bind is not a RIP-relative one"
        );
    }
    i.set_memory_displacement64(value);
    let insns = [i];
    let block = InstructionBlock::new(&insns, at);
    let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
        .map_err(|e| err!(Failed, "re-encoding the instruction at {start:#x}: {e}"))?;
    let mut out = encoded.code_buffer;
    out.extend([0xff, 0x25, 0, 0, 0, 0]);
    out.extend(back.to_le_bytes());
    if out.len() > 2 * crate::remote::redirect::SLOT_SIZE as usize {
        bail!(
            Failed,
            "the thunk for the instruction at {start:#x} does not fit"
        );
    }
    Ok(out)
}

/// A trampoline at `at` that runs the function `name` at `addr` as it was, for a
/// replacement that calls the code it replaces: the instructions the entry's jump
/// covers (`code` holds the function's first bytes, from its file) re-encoded there (a
/// RIP-relative operand or a branch keeps its target), then a jump back to the first
/// instruction after them. A call among them is refused: its return address would be
/// in code without unwind information.
pub fn trampoline(code: &[u8], addr: u64, at: u64, name: &str) -> Result<(Vec<u8>, Points)> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut insns = Vec::new();
    let mut end = addr;
    let mut ended = false;
    while end < addr + crate::remote::redirect::JMP_LEN as u64 {
        if !d.can_decode() {
            bail!(Failed, "the first instructions of {name} could not be read");
        }
        let i = d.decode();
        if i.is_invalid() {
            bail!(
                Mismatch,
                "{name} does not start with valid instructions at {addr:#x}"
            );
        }
        // A system call comes back to the next instruction with the stack as it was.
        let syscall = matches!(i.mnemonic(), iced_x86::Mnemonic::Syscall);
        match i.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall if !syscall => bail!(
                Mismatch,
                "{name} makes a call within its first 5 bytes: the code it replaces cannot be called from a trampoline; replace it with RLIVEPATCH_FUNC (and call what it calls)"
            ),
            FlowControl::Return
            | FlowControl::UnconditionalBranch
            | FlowControl::IndirectBranch => ended = true,
            _ => {}
        }
        end = i.next_ip();
        insns.push(i);
        if ended {
            break;
        }
    }
    if !ended {
        let back = Instruction::with_branch(Code::Jmp_rel32_64, end)
            .map_err(|e| err!(Failed, "the jump back into {name}: {e}"))?;
        insns.push(back);
    }
    // The original offset each instruction stands for; the jump back stands for the
    // original's next instruction.
    let mut orig_offsets: Vec<u32> = insns
        .iter()
        .map(|i| i.ip().wrapping_sub(addr) as u32)
        .collect();
    if !ended && let Some(last) = orig_offsets.last_mut() {
        *last = (end - addr) as u32;
    }
    let block = InstructionBlock::new(&insns, at);
    let encoded = BlockEncoder::encode(
        64,
        block,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )
    .map_err(|e| err!(Failed, "relocating the first instructions of {name}: {e}"))?;
    if encoded.code_buffer.len() > 2 * crate::remote::redirect::SLOT_SIZE as usize {
        bail!(
            Failed,
            "the trampoline into {name} does not fit its island slots"
        );
    }
    // Where each instruction went: an unwinder reads the original's CFI for a thread
    // stopped in the trampoline.
    let points: Points = encoded
        .new_instruction_offsets
        .iter()
        .zip(&orig_offsets)
        .map(|(&t, &o)| (t, o))
        .collect();
    Ok((encoded.code_buffer, points))
}

/// What replaces the instruction of `len` bytes at `start`: `jmp *slot(%rip)`, then
/// `int3` up to its end (never reached: the thunk comes back after it).
pub fn site_jump(start: u64, len: usize, slot: u64) -> Result<Vec<u8>> {
    let rel = near(slot, start + 6).ok_or_else(|| {
        err!(
            Failed,
            "the patch's own slot at {slot:#x} is out of reach of its code"
        )
    })?;
    let mut b = vec![0xff, 0x25];
    b.extend(rel.to_le_bytes());
    b.resize(len.max(6), 0xcc);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_access_moves_into_a_thunk() {
        // addl $1, 0x100(%rip) at 0x1000 (7 bytes: 83 05 disp32 imm8).
        let insn = [0x83, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01];
        let t = thunk(&insn, 0x1000, 0x7000_0000_2000, 0x7000_0000_0000, 0x1007).unwrap();
        let mut d = Decoder::with_ip(64, &t, 0x7000_0000_0000, DecoderOptions::NONE);
        let i = d.decode();
        assert!(i.is_ip_rel_memory_operand());
        assert_eq!(i.ip_rel_memory_address(), 0x7000_0000_2000);
        assert_eq!(i.immediate8(), 1);
        let j = d.decode();
        assert_eq!(j.mnemonic(), iced_x86::Mnemonic::Jmp);
        let back = &t[i.len() + 6..i.len() + 14];
        assert_eq!(u64::from_le_bytes(back.try_into().unwrap()), 0x1007);
        assert_eq!(
            site_jump(0x1000, 7, 0x2000).unwrap(),
            [0xff, 0x25, 0xfa, 0x0f, 0, 0, 0xcc]
        );
        assert_eq!(near(0x2000, 0x1007), Some(0xff9));
        assert_eq!(near(0x7000_0000_2000, 0x1007), None);
    }

    #[test]
    fn a_trampoline_runs_the_first_instructions_then_jumps_back() {
        // push %rbp; mov 0x100(%rip),%eax; ... at 0x1000
        let code = [0x55, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00, 0x5d, 0xc3];
        let (t, points) = trampoline(&code, 0x1000, 0x9000, "f").unwrap();
        // push at 0, mov at 1, the jump back stands for the original's byte 7.
        assert_eq!(points, [(0, 0), (1, 1), (7, 7)]);
        let mut d = Decoder::with_ip(64, &t, 0x9000, DecoderOptions::NONE);
        assert_eq!(d.decode().mnemonic(), iced_x86::Mnemonic::Push);
        let mov = d.decode();
        // The operand still names 0x1007 + 0x100.
        assert_eq!(mov.ip_rel_memory_address(), 0x1107);
        let back = d.decode();
        assert_eq!(back.mnemonic(), iced_x86::Mnemonic::Jmp);
        assert_eq!(back.near_branch_target(), 0x1007);
        // A call in the first bytes is refused.
        let call = [0xe8, 0, 0, 0, 0, 0xc3];
        assert!(trampoline(&call, 0x1000, 0x9000, "g").is_err());
        // A function that returns within them needs no jump back.
        let short = [0x8d, 0x47, 0x01, 0xc3, 0x90, 0x90];
        let (t, _) = trampoline(&short, 0x1000, 0x9000, "h").unwrap();
        assert_eq!(t, [0x8d, 0x47, 0x01, 0xc3]);
    }
}
