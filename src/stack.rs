//! The per-function stacks of implementations: which code runs now for a function, what
//! its entry holds, and what a switch away from it changes.

use crate::redirect::{self, JMP_LEN};
use crate::state::{AppliedFunc, AppliedPatch, Record};
use crate::transition::Changed;

/// The bytes an entry holds now according to the record: a jump to the newest
/// implementation, or the original bytes.
pub fn expected_entry(rec: &Record, addr: u64, orig: &[u8]) -> Vec<u8> {
    match rec.stack_of(addr).last() {
        Some((_, f)) => redirect::jmp(addr, f.island.unwrap_or(f.new_addr))
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        None => orig.to_vec(),
    }
}

/// The code that runs today for the function at `addr`: what a switch away from it changes.
pub fn current_impl(rec: &Record, f: &AppliedFunc) -> Vec<Changed> {
    match rec.stack_of(f.old_addr).last() {
        Some((p, top)) => implementation_of(p, top),
        None => vec![Changed {
            start: f.old_addr,
            end: f.old_addr + f.old_size.max(JMP_LEN as u64),
            name: format!(
                "{} ({})",
                crate::demangle::display(&f.symbol),
                f.object.rsplit('/').next().unwrap_or(&f.object)
            ),
        }],
    }
}

/// The code of `p`'s new function for `f` (and its island): what a switch away from it
/// changes.
pub fn implementation_of(p: &AppliedPatch, f: &AppliedFunc) -> Vec<Changed> {
    let mut v = vec![Changed {
        start: f.new_addr,
        end: f.new_addr + f.new_size.max(1),
        name: format!("{} (new function of patch {})", f.new_name, p.name),
    }];
    if let Some(s) = f.island {
        v.push(Changed {
            start: s,
            end: s + redirect::SLOT_SIZE,
            name: format!("the island of {}", f.symbol),
        });
    }
    v
}

/// States of the enabled patches, oldest first (the registry's "previous" half).
pub fn installed_states(rec: &Record, until: Option<usize>) -> Vec<u64> {
    rec.patches[..until.unwrap_or(rec.patches.len())]
        .iter()
        .filter(|p| !p.disabled)
        .flat_map(|p| p.state_addrs.iter().copied())
        .collect()
}
