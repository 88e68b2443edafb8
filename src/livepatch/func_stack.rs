//! The per-function stacks of implementations: which code runs now for a function, what
//! its entry holds, and what a switch away from it changes.

use crate::livepatch::record::{AppliedFunc, AppliedPatch, Record};
use crate::livepatch::transition::Changed;
use crate::remote::redirect::{self, JMP_LEN};

/// The bytes an entry holds now according to the record: a jump to the newest
/// implementation, or the original bytes.
pub fn expected_entry(rec: &Record, addr: u64, orig: &[u8]) -> Vec<u8> {
    match rec.stack_of(addr).last() {
        Some((_, f)) => redirect::jmp(addr, f.target())
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        None => orig.to_vec(),
    }
}

/// The code that runs today for the function at `addr`: what a switch away from it changes.
pub fn current_impl(rec: &Record, f: &AppliedFunc) -> Vec<Changed> {
    match rec.stack_of(f.old_addr).last() {
        Some((p, top)) => implementation_of(p, top),
        None => {
            let object = f.object.rsplit('/').next().unwrap_or(&f.object);
            let name = crate::elf::demangle::display(&f.symbol);
            let mut v = vec![Changed {
                start: f.old_addr,
                end: f.old_addr + f.old_size.max(JMP_LEN as u64),
                name: format!("{name} ({object})"),
            }];
            // Its split-off parts are the function too (a thread in `work.cold` is in
            // `work`).
            v.extend(f.parts.iter().map(|p| Changed {
                start: p.start,
                end: p.end,
                name: format!("{} (part of {name}, {object})", p.name),
            }));
            v
        }
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
    v.extend(f.new_parts.iter().map(|n| Changed {
        start: n.start,
        end: n.end,
        name: format!("{} (part of {}, patch {})", n.name, f.new_name, p.name),
    }));
    if let Some(s) = f.island {
        v.push(Changed {
            start: s,
            end: s + redirect::SLOT_SIZE,
            name: format!("the island of {}", f.symbol),
        });
    }
    if let Some(t) = f.wrap.as_ref().and_then(|w| w.trampoline) {
        // A thread running the original's first instructions there is inside the old
        // function, and the trampoline goes with the patch.
        v.push(Changed {
            start: t,
            end: t + 2 * redirect::SLOT_SIZE,
            name: format!("the trampoline into the original {}", f.symbol),
        });
    }
    if let Some(p) = &f.preserve {
        v.push(Changed {
            start: p.stub,
            end: p.stub + crate::remote::preserve::STUB_SIZE,
            name: format!("the preserving stub of {}", f.symbol),
        });
        v.push(Changed {
            start: p.thunk.0,
            end: p.thunk.1,
            name: crate::livepatch::transition::PRESERVING_PATH.to_string(),
        });
    }
    v
}

/// The wrappers' trampolines of the applied patches, for the unwinder: a thread stopped
/// in one unwinds with the original's CFI.
///
/// An island slot is one too: a thread stopped at its `jmp *0(%rip)` came from the jump
/// at the function's entry with nothing pushed, so it stands at the original's first
/// instruction (without this, a busy function's island made its stack unreliable, and
/// a switch on a process whose threads call it all the time never found its moment).
pub fn relocated_code(rec: &Record) -> Vec<crate::elf::unwind::Relocated> {
    let funcs = || rec.patches.iter().flat_map(|p| &p.funcs);
    let trampolines = funcs().filter_map(|f| {
        let w = f.wrap.as_ref()?;
        let t = w.trampoline?;
        Some(crate::elf::unwind::Relocated {
            start: t,
            end: t + 2 * redirect::SLOT_SIZE,
            orig: f.old_addr,
            points: w.points.clone(),
        })
    });
    let islands = funcs().filter_map(|f| {
        let s = f.island?;
        Some(crate::elf::unwind::Relocated {
            start: s,
            end: s + redirect::SLOT_SIZE,
            orig: f.old_addr,
            points: vec![(0, 0)],
        })
    });
    trampolines.chain(islands).collect()
}
