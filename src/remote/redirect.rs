//! Redirection of an old function to its new one: the entry checks, the 5-byte
//! `jmp rel32`, and islands (absolute jumps in a page within reach of the entry) for new
//! functions more than 2 GiB away.

use crate::error::Result;
use crate::os::process::Mapping;
use crate::{bail, err};
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use serde::{Deserialize, Serialize};

/// Length of the jump written at an entry.
pub const JMP_LEN: usize = 5;
/// Size of one island slot: `jmp *0(%rip)` and the 8-byte target, padded.
pub const SLOT_SIZE: u64 = 16;
/// Size of an island page.
pub const PAGE: u64 = 4096;
const REACH: i64 = i32::MAX as i64;

/// The bytes of `jmp rel32` at `from` to `to`, if `to` is within reach.
pub fn jmp(from: u64, to: u64) -> Option<[u8; JMP_LEN]> {
    let rel = (to as i64).wrapping_sub(from as i64 + JMP_LEN as i64);
    if rel < i32::MIN as i64 || rel > i32::MAX as i64 {
        return None;
    }
    let mut b = [0xe9, 0, 0, 0, 0];
    b[1..].copy_from_slice(&(rel as i32).to_le_bytes());
    Some(b)
}

/// Where a 5-byte jump at `from` goes, if these bytes are one.
pub fn jmp_target(from: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.len() < JMP_LEN || bytes[0] != 0xe9 {
        return None;
    }
    let rel = i32::from_le_bytes(bytes[1..5].try_into().unwrap());
    Some((from as i64 + JMP_LEN as i64 + rel as i64) as u64)
}

/// The bytes of an island slot jumping to `target`: `jmp *0(%rip)` then the address.
pub fn slot_bytes(target: u64) -> [u8; SLOT_SIZE as usize] {
    let mut b = [0xccu8; SLOT_SIZE as usize];
    b[..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    b[6..14].copy_from_slice(&target.to_le_bytes());
    b
}

/// The alignment padding after a function of `size` bytes at `vaddr` that the jump may
/// cover when the function is shorter than it: no-ops or `int3` up to the jump's end,
/// where no symbol and no unwind entry starts (nothing runs or jumps there). 0 when the
/// function is long enough or the bytes are anything else.
pub fn padding_after(file: &crate::elf::symbols::ElfFile, vaddr: u64, size: u64) -> usize {
    let end = vaddr + JMP_LEN as u64;
    if size >= JMP_LEN as u64 || size == 0 {
        return 0;
    }
    let start = vaddr + size;
    let Some(bytes) = file.bytes_at(start, 16) else {
        return 0;
    };
    let mut d = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut at = start;
    while at < end {
        let i = d.decode();
        if i.is_invalid()
            || !matches!(
                i.mnemonic(),
                iced_x86::Mnemonic::Nop | iced_x86::Mnemonic::Int3
            )
        {
            return 0;
        }
        at = i.next_ip();
    }
    let starts_inside = |v: u64| v >= start && v < end;
    if file
        .symtab()
        .iter()
        .chain(file.dynsym())
        .any(|s| starts_inside(s.value))
        || crate::elf::unwind::fde_ranges(file)
            .iter()
            .any(|r| starts_inside(r.0))
    {
        return 0;
    }
    (end - start) as usize
}

/// Check that a function can take a 5-byte jump at its entry: it is at least 5 bytes
/// long, its first 5 bytes are whole instructions that do not end the function, and no
/// branch inside it lands in bytes 1..4 of the entry (they will be overwritten).
/// `code` is the function's bytes from the file, `addr` its run-time address.
pub fn check_function(name: &str, addr: u64, code: &[u8]) -> Result<()> {
    check_function_padded(name, addr, code, 0)
}

/// [`check_function`] for a function followed by `padding` bytes of alignment padding
/// (no-ops or `int3` that nothing runs or jumps to): a function shorter than the jump
/// (`lea 1(%rdi),%eax; ret`) takes it over its padding.
pub fn check_function_padded(name: &str, addr: u64, code: &[u8], padding: usize) -> Result<()> {
    if code.len() + padding < JMP_LEN {
        bail!(
            Mismatch,
            "function {name} is {} bytes long, shorter than the 5-byte jump; patch its caller instead",
            code.len()
        );
    }
    let mut dec = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut covered = 0usize;
    for ins in &mut dec {
        let off = (ins.ip() - addr) as usize;
        if ins.is_invalid() {
            if off < JMP_LEN {
                bail!(
                    Mismatch,
                    "function {name} does not start with valid instructions at {addr:#x}; is it data?"
                );
            }
            // Padding or data after the code: stop looking for branches.
            break;
        }
        if off < JMP_LEN {
            covered = off + ins.len();
            let last_then_padding = covered == code.len() && covered + padding >= JMP_LEN;
            if covered < JMP_LEN
                && !last_then_padding
                && matches!(
                    ins.flow_control(),
                    FlowControl::Return
                        | FlowControl::UnconditionalBranch
                        | FlowControl::IndirectBranch
                )
            {
                bail!(
                    Mismatch,
                    "function {name} ends within its first 5 bytes; it is too short for the jump, patch its caller instead"
                );
            }
        }
        if matches!(
            ins.flow_control(),
            FlowControl::ConditionalBranch
                | FlowControl::UnconditionalBranch
                | FlowControl::Call
                | FlowControl::XbeginXabortXend
        ) {
            let t = ins.near_branch_target();
            if t > addr && t < addr + JMP_LEN as u64 {
                bail!(
                    Mismatch,
                    "function {name} has a branch at +{off:#x} into byte {} of its entry, which the jump overwrites; patch its caller instead",
                    t - addr
                );
            }
        }
    }
    if covered < JMP_LEN && !(covered == code.len() && covered + padding >= JMP_LEN) {
        bail!(
            Mismatch,
            "function {name} is too short to decode 5 bytes of instructions"
        );
    }
    Ok(())
}

/// Can an island slot at `slot` be reached by a `jmp rel32` at `entry`?
pub fn reachable(entry: u64, slot: u64) -> bool {
    let d = slot as i64 - (entry as i64 + JMP_LEN as i64);
    (-REACH..=REACH - SLOT_SIZE as i64).contains(&d)
}

/// A page of island slots near some code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Island {
    /// Page address.
    pub addr: u64,
    /// Slots in use.
    pub used: Vec<u64>,
}

/// The free slots of the island pages, handed out lowest first.
pub struct SlotPool {
    /// Per page: its address and its free slots, highest first (so `pop` gives the lowest).
    pages: Vec<(u64, Vec<u64>)>,
}

impl SlotPool {
    /// The free slots of `islands`.
    pub fn new(islands: &[Island]) -> SlotPool {
        let mut pool = SlotPool { pages: Vec::new() };
        for isl in islands {
            pool.add_page(isl.addr, &isl.used);
        }
        pool
    }

    /// A page whose slots in `used` are taken.
    pub fn add_page(&mut self, page: u64, used: &[u64]) {
        let free = (0..PAGE / SLOT_SIZE)
            .rev()
            .map(|i| page + i * SLOT_SIZE)
            .filter(|s| !used.contains(s))
            .collect();
        self.pages.push((page, free));
    }

    /// Take two adjacent free slots (32 bytes, 32-byte aligned) within reach of `entry`:
    /// room for a preserving stub. Returns the first.
    pub fn take_pair(&mut self, entry: u64) -> Option<u64> {
        for (_, free) in &mut self.pages {
            let first = free.iter().copied().filter(|&s| {
                s % (2 * SLOT_SIZE) == 0
                    && free.contains(&(s + SLOT_SIZE))
                    && reachable(entry, s)
                    && reachable(entry, s + SLOT_SIZE)
            });
            if let Some(s) = first.min() {
                free.retain(|&x| x != s && x != s + SLOT_SIZE);
                return Some(s);
            }
        }
        None
    }

    /// Take a free slot within reach of `entry`.
    pub fn take(&mut self, entry: u64) -> Option<u64> {
        for (_, free) in &mut self.pages {
            // Every slot of a page is reachable, or none is, but for pages at the very
            // edge of the reach: look at each then.
            if let Some(i) = free.iter().rposition(|&s| reachable(entry, s)) {
                return Some(free.remove(i));
            }
        }
        None
    }
}

/// Page addresses, best first, where a new island page for `entry` can go: free gaps
/// within reach, below the object `obj_start` first (a page just above `[heap]` would
/// stop the brk heap from growing, and the stack grows down into the gap below it).
pub fn island_candidates(maps: &[Mapping], entry: u64, obj_start: u64, min_addr: u64) -> Vec<u64> {
    // Pages whose every slot is reachable from the entry.
    let lo = (entry as i64 + JMP_LEN as i64 - REACH).max(0) as u64;
    let lo = (lo + PAGE - 1) & !(PAGE - 1);
    let hi = (entry + JMP_LEN as u64 + REACH as u64 - PAGE) & !(PAGE - 1); // last page start
    let gaps = crate::os::process::free_ranges(maps, min_addr);
    let heap = crate::os::process::heap_growth(maps);
    let mut below = Vec::new();
    let mut above = Vec::new();
    for &(s, e) in &gaps {
        // Keep a free page on each side of the island (guard against growth into it).
        let (s, e) = (s + PAGE, e.saturating_sub(PAGE));
        let (s, e) = (s.max(lo), e.min(hi + PAGE));
        if s >= e || e - s < PAGE {
            continue;
        }
        if e <= obj_start {
            // Below the object: the highest pages.
            let mut p = (e - PAGE) & !(PAGE - 1);
            for _ in 0..2 {
                if p < s {
                    break;
                }
                below.push(p);
                p -= PAGE;
            }
        } else {
            let mut p = (s + PAGE - 1) & !(PAGE - 1);
            if let Some((h0, h1)) = heap
                && p >= h0
                && p < h1
            {
                p = h1;
            }
            for _ in 0..2 {
                if p + PAGE > e {
                    break;
                }
                above.push(p);
                p += PAGE;
            }
        }
    }
    // Closest to the object first.
    below.sort_by_key(|p| std::cmp::Reverse(*p));
    above.sort();
    below
        .into_iter()
        .chain(above)
        .filter(|&p| reachable(entry, p) && reachable(entry, p + PAGE - SLOT_SIZE))
        .collect()
}

/// The error when no page within reach is free.
pub fn no_island_error(name: &str, entry: u64) -> crate::error::Error {
    err!(
        Failed,
        "no free page within 2 GiB of {name} at {entry:#x} for a jump island; the address space near it is full"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_encode_and_decode() {
        let b = jmp(0x1000, 0x2000).unwrap();
        assert_eq!(b[0], 0xe9);
        assert_eq!(jmp_target(0x1000, &b), Some(0x2000));
        let back = jmp(0x2000, 0x1000).unwrap();
        assert_eq!(jmp_target(0x2000, &back), Some(0x1000));
        assert!(jmp(0x1000, 0x1000 + (1u64 << 32)).is_none());
    }

    #[test]
    fn function_checks() {
        // push rbp; mov rbp,rsp; mov eax,1; pop rbp; ret
        let f = [0x55, 0x48, 0x89, 0xe5, 0xb8, 1, 0, 0, 0, 0x5d, 0xc3];
        assert!(check_function("f", 0x1000, &f).is_ok());
        // xor eax,eax; ret: too short
        assert!(check_function("g", 0x1000, &[0x31, 0xc0, 0xc3]).is_err());
        // lea 1(%rdi),%eax; ret, then alignment padding: the jump covers a padding byte.
        let lea = [0x8d, 0x47, 0x01, 0xc3];
        assert!(check_function("op", 0x1000, &lea).is_err());
        assert!(check_function_padded("op", 0x1000, &lea, 1).is_ok());
        // A return before the end is not made safe by padding after the end.
        let early = [0xc3, 0x8d, 0x47, 0x01];
        assert!(check_function_padded("e", 0x1000, &early, 1).is_err());
        // A loop back to byte 2: nop; nop; nop(target); ...; jmp -> 0x1002
        let h = [0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0xeb, 0xfa, 0xc3];
        assert!(
            check_function("h", 0x1000, &h)
                .unwrap_err()
                .message
                .contains("byte 2")
        );
    }
}
