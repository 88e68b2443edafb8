//! The switch's writes: every entry checked to hold the bytes it should, written and read
//! back, a page at a time; all or none.

use super::plan::Write;
use crate::error::Result;
use crate::os::process::Process;
use crate::{bail, err};

/// Do the writes; on a failure, put back the ones done. Writes that share a page go in
/// one read, one write and one read-back of the bytes they span: a patch of 1000
/// functions is a few system calls while the world is stopped, not 3000.
pub fn write_all(proc: &Process, writes: &[Write]) -> Result<()> {
    let len = |w: &Write| w.old.len().max(w.new.len()) as u64;
    let mut order: Vec<&Write> = writes.iter().collect();
    order.sort_by_key(|w| w.addr);
    // Runs of writes within one page (a write crossing a page boundary is a run alone).
    let mut runs: Vec<Vec<&Write>> = Vec::new();
    for w in order {
        let page = w.addr & !0xfff;
        match runs.last_mut() {
            Some(r)
                if r[0].addr & !0xfff == page
                    && (w.addr + len(w) - 1) & !0xfff == page
                    && r.iter().all(|x| x.addr + len(x) <= w.addr) =>
            {
                r.push(w)
            }
            _ => runs.push(vec![w]),
        }
    }
    let mut done: Vec<(u64, Vec<u8>)> = Vec::new();
    for run in &runs {
        let start = run[0].addr;
        let end = run.iter().map(|w| w.addr + len(w)).max().unwrap();
        let written = prepare_run(proc, run, start, end).and_then(|(before, after)| {
            // A write can fail after some of its bytes landed (one that crosses into a
            // page it may not write): the run's own bytes go back too.
            done.push((start, before));
            write_span(proc, start, &after)
        });
        if let Err(e) = written {
            for (addr, bytes) in done.iter().rev() {
                let _ = proc.write(*addr, bytes);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Write `bytes` at `start`.
fn write_span(proc: &Process, start: u64, bytes: &[u8]) -> Result<()> {
    if crate::os::fault::fails("switch:write") {
        // As a write cut short: its first byte landed.
        proc.write(start, &bytes[..1])?;
        bail!(
            Failed,
            "writing the entry at {start:#x} failed after its first byte"
        );
    }
    proc.write(start, bytes)
}

/// One run: check that each write finds the bytes it expects. Returns the span's bytes
/// before and after the writes.
fn prepare_run(proc: &Process, run: &[&Write], start: u64, end: u64) -> Result<(Vec<u8>, Vec<u8>)> {
    let before = crate::elf::objects::read_code(proc, start, (end - start) as usize)?;
    let mut after = before.clone();
    for w in run {
        let off = (w.addr - start) as usize;
        let now = &before[off..off + w.old.len()];
        if now != w.old.as_slice() {
            let code_there = proc
                .maps()
                .is_ok_and(|m| m.iter().any(|m| m.exec && m.contains(w.addr)));
            if !code_there {
                return Err(err!(
                    Busy,
                    "the code at {:#x} was unloaded or replaced (a dlclose or dlopen) while rlivepatch worked; nothing was changed: retry",
                    w.addr
                )
                .because(crate::error::Cause::Churn));
            }
            bail!(
                Mismatch,
                "the code at {:#x} changed under rlivepatch (found {}, expected {}); another tool is writing the process, or it loaded and unloaded libraries meanwhile: retry",
                w.addr,
                crate::fmt::hex(now),
                crate::fmt::hex(&w.old)
            );
        }
        after[off..off + w.new.len()].copy_from_slice(&w.new);
    }
    Ok((before, after))
}
