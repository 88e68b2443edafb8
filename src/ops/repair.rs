//! Repair: finish or undo what an interrupted rlivepatch run left in a process.
//!
//! Every operation records its stage in the process before each step (see
//! [`crate::livepatch::record::Stage`]), and everything rlivepatch maps is recognisable: patches are
//! memfds named `rlp:NAME` whose fd stays open while loaded, the private memory starts
//! with a magic string or with the call stub, island pages hold only island slots. So a run
//! killed at any moment leaves a state that the next run can read, and bring back to a
//! consistent one: an apply that switched is finished (post_patch runs unless it had
//! begun), one that did not is undone (post_unpatch runs if pre_patch had succeeded); the
//! same for a disable; leftovers nothing refers to are unloaded or unmapped; return
//! trampolines left on threads' stacks are taken off.

use crate::elf::unwind::StackMem;
use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::record::Stage;
use crate::livepatch::session::Session;
use crate::livepatch::transition::Plan;
use crate::remote::inject::{CODE_SIZE, TRAMPOLINE_SIZE};
use crate::remote::redirect::PAGE;
use crate::{bail, err};
use crate::{ops::apply, ops::disable};
use std::time::{Duration, Instant};

/// Repair when an earlier run left something; a note on stderr says what.
pub fn repair_if_needed(s: &mut Session) -> Result<()> {
    crate::livepatch::coming::clear_stale(s)?;
    crate::livepatch::coming::observe_hook(s)?;
    let found = crate::livepatch::leftovers::scan_before_operation(
        &s.proc,
        &s.maps,
        &s.record,
        s.scratch,
        s.store.is_some(),
    );
    crate::os::fault::trace("leftovers scanned");
    if found.is_empty() {
        return Ok(());
    }
    s.progress(&format!(
        "an earlier rlivepatch run was interrupted: {}; repairing first",
        found.describe()
    ));
    for a in repair(s)? {
        s.progress(&format!("repaired: {a}"));
    }
    Ok(())
}

/// Bring the process back to a consistent state. Returns what was done.
pub fn repair(s: &mut Session) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let found = crate::livepatch::leftovers::scan(&s.proc, &s.maps, &s.record, s.scratch);
    // 0. A thread of a killed run's call on its way back to its own code.
    wait_for_gate_leavers(s, &found.orphan_scratch)?;
    // 1. The interrupted operation, by what its stage and the entry bytes say.
    if let Some(p) = s.record.pending.clone() {
        done.push(repair_pending(s, &p)?);
    }
    // 2. Loaded objects nothing records.
    for (fd, name) in &found.orphan_fds {
        done.push(repair_orphan_fd(s, *fd, name)?);
    }
    // 3. Private memory and islands of a killed run, unless a thread still uses them.
    if !found.orphan_scratch.is_empty() || !found.orphan_islands.is_empty() {
        done.extend(repair_mappings(s, &found)?);
    }
    s.refresh()?;
    crate::livepatch::coming::observe_hook(s)?;
    // A run killed between the record and the runtime's table: the table follows the
    // record.
    if crate::livepatch::coming::in_use(&s.record) {
        crate::livepatch::coming::settle(s)?;
    }
    s.unload_runtime_if_idle()?;
    if found.orphan_keeper && s.record.keeper.is_none() {
        done.push("ended the keeper thread of the runtime an interrupted run unloaded".into());
    }
    s.save_record()?;
    Ok(done)
}

/// Threads still in a killed run's private code: one that finished its call waits at the
/// call's gate until the gate's timeout (see `crate::remote::inject`), then returns to
/// its own code by itself. Wait for that (a moment) before anything looks at stacks or
/// unmaps the memory; a thread still there after it is left to the steps below, which
/// keep memory a thread uses.
fn wait_for_gate_leavers(s: &mut Session, scratch: &[(u64, u64)]) -> Result<()> {
    if scratch.is_empty() {
        return Ok(());
    }
    let pid = s.proc.pid;
    let inside = |tid: i32| {
        crate::os::process::read_task_file(pid, tid, "syscall").is_some_and(|t| {
            let t = String::from_utf8_lossy(&t);
            // "NR args... SP PC" for a thread in a system call.
            t.split_whitespace()
                .last()
                .and_then(|pc| u64::from_str_radix(pc.trim_start_matches("0x"), 16).ok())
                .is_some_and(|pc| scratch.iter().any(|&(a, b)| (a..b).contains(&pc)))
        })
    };
    let deadline = Instant::now() + crate::remote::inject::GATE_TIMEOUT + Duration::from_secs(2);
    loop {
        let waiting: Vec<i32> = s.tr.tids().into_iter().filter(|&t| inside(t)).collect();
        // None seen waiting: make sure. A thread on its way out of the gate (woken, not
        // yet back in its own code) runs in the stub without a system call, and on a busy
        // machine it may wait for a CPU there: `/proc` says "running", not where. Stopped,
        // its registers say.
        if (waiting.is_empty() && !in_scratch_stopped(s, scratch)?) || Instant::now() >= deadline {
            return Ok(());
        }
        s.tr.pump(Instant::now() + Duration::from_millis(5))?;
    }
}

/// Stop every thread and look at where each one is: true when one runs, or waits, in
/// the scratch memory of a killed run. The threads are let go again either way.
fn in_scratch_stopped(s: &mut Session, scratch: &[(u64, u64)]) -> Result<bool> {
    s.tr.stop_all(Instant::now() + Duration::from_secs(10))?;
    let mut inside = false;
    for tid in s.tr.tids() {
        if let Ok(r) = s.tr.regs(tid) {
            inside |= scratch
                .iter()
                .any(|&(a, b)| (a..b).contains(&r.rip) || (a..b).contains(&r.rsp));
        }
    }
    s.tr.resume_all()?;
    Ok(inside)
}

/// The state of the switch of a pending operation, from the entry bytes.
enum Switched {
    None,
    All,
    Partly,
}

fn switched(s: &Session, writes: &[(u64, String, String)]) -> Result<Switched> {
    let (mut old, mut new) = (0, 0);
    for (addr, o, n) in writes {
        // An entry's jump, or a wrapper's 8-byte pointer (a disable's rewire).
        let now = hex(&s.proc.read(*addr, o.len() / 2)?);
        if &now == n {
            new += 1;
        } else if &now == o {
            old += 1;
        } else {
            bail!(
                Mismatch,
                "the entry at {addr:#x} holds {now}, which neither rlivepatch nor the interrupted run wrote; something else changed it"
            );
        }
    }
    Ok(match (old, new) {
        (_, 0) => Switched::None,
        (0, _) => Switched::All,
        _ => Switched::Partly,
    })
}

/// Finish a switch an interrupted run began: the writes not done yet, with the
/// consistency check for the functions they change.
fn complete_switch(s: &mut Session, full: Plan) -> Result<()> {
    let mut plan = Plan::default();
    for (i, w) in full.writes.iter().enumerate() {
        if s.proc.read(w.addr, w.old.len())? == w.old {
            plan.writes.push(w.clone());
            plan.entries.push(full.entries[i]);
        }
    }
    plan.changed = full.changed;
    s.switch(&plan).map(|_| ())
}

fn repair_pending(s: &mut Session, p: &crate::livepatch::record::Pending) -> Result<String> {
    let what = format!("{} of patch {}", p.op, p.patch);
    match (p.op.as_str(), switched(s, &p.writes)?) {
        ("apply", Switched::None) | ("apply", _) if p.loading.is_none() => {
            apply::unwind(s)?;
            Ok(format!(
                "undid the interrupted {what} (it had not switched)"
            ))
        }
        ("apply", Switched::None) => {
            apply::unwind(s)?;
            Ok(format!(
                "undid the interrupted {what} (it had not switched)"
            ))
        }
        ("apply", state) => {
            let applied = p.loading.clone().unwrap();
            if let Switched::Partly = state {
                complete_switch(s, apply::plan(&s.record, &applied))?;
            }
            apply::finish(s, applied, p.stage < Stage::PostPatching)?;
            Ok(format!("finished the interrupted {what} (it had switched)"))
        }
        ("disable", Switched::None) => {
            disable::unwind(s)?;
            Ok(format!(
                "undid the interrupted {what}: the patch stays applied"
            ))
        }
        ("disable", state) => {
            if let Switched::Partly = state {
                let patch = s
                    .record
                    .patches
                    .iter()
                    .find(|x| x.name == p.patch && !x.disabled)
                    .cloned()
                    .ok_or_else(|| err!(Failed, "the record lost patch {}", p.patch))?;
                complete_switch(s, disable::plan(&s.record, &patch))?;
            }
            disable::finish(s, p.stage < Stage::PostUnpatching)?;
            Ok(format!("finished the interrupted {what}"))
        }
        (op, _) => bail!(Failed, "unknown pending operation {op} in the record"),
    }
}

/// A memfd of a patch the record does not know: unload it if it is loaded, close it.
/// (It is from a run killed between loading and recording it, or after recording an
/// atomic replace and before unloading the patches it replaced: no code runs in it.) An
/// unrecorded runtime is adopted instead, since shadow variables may live in it.
fn repair_orphan_fd(s: &mut Session, fd: i32, name: &str) -> Result<String> {
    if name.starts_with("rlivepatch-") {
        // A memfd of rlivepatch's own memory, between its creation and its close.
        s.syscall(libc::SYS_close, &[fd as u64])?;
        return Ok(format!(
            "closed {name} (fd {fd}), left open by an interrupted run"
        ));
    }
    s.borrow()?;
    let path = s.proc.fd_path(fd);
    let p = s.inj.as_mut().unwrap().put_cstr(&s.proc, &path)?;
    let dlopen = s.inj.as_ref().unwrap().libc.dlopen;
    let flags = (libc::RTLD_LAZY | libc::RTLD_NOLOAD) as u64;
    let handle = s.call(dlopen, &[p, flags], "dlopen(RTLD_NOLOAD)")?;
    if name == "rlp:runtime" && handle != 0 && s.record.runtime.is_none() {
        s.inj.as_mut().unwrap().dlclose(&mut s.tr, handle)?;
        let base = s.proc.read_u64(handle)?;
        s.record.runtime = Some(crate::livepatch::record::RuntimeRecord { handle, base, fd });
        // Its constructor started a keeper thread, which the record must know to end it.
        let keeper = if s.adopt_keeper(base)? {
            " and its keeper thread"
        } else {
            ""
        };
        return Ok(format!(
            "recorded the rlivepatch runtime (fd {fd}){keeper} an interrupted run loaded"
        ));
    }
    if handle != 0 {
        // Once for our reference, once for the interrupted run's.
        s.inj.as_mut().unwrap().dlclose(&mut s.tr, handle)?;
        s.inj.as_mut().unwrap().dlclose(&mut s.tr, handle)?;
    }
    s.syscall(libc::SYS_close, &[fd as u64])?;
    Ok(format!(
        "unloaded {name} (fd {fd}), which an interrupted run had loaded"
    ))
}

/// Unmap private memory and island pages of killed runs. Return trampolines still on
/// threads' stacks get their real return address back first; memory a thread is still
/// executing or standing in (a call that runs on) is left for a later repair.
fn repair_mappings(
    s: &mut Session,
    found: &crate::livepatch::leftovers::Leftovers,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    s.unborrow()?;
    s.tr.stop_all(Instant::now() + Duration::from_secs(10))?;
    // A thread the killed run borrowed may still hold the malloc arena lent to it.
    for &(rw, _) in &found.orphan_scratch {
        if crate::remote::inject::restore_lent_arena(&s.proc, rw).unwrap_or(false) {
            done.push("gave back the malloc arena a killed run lent a thread".to_string());
        }
    }
    let ranges: Vec<(u64, u64)> = found
        .orphan_scratch
        .iter()
        .copied()
        .chain(found.orphan_islands.iter().map(|&a| (a, a + PAGE)))
        .collect();
    let code_pages: Vec<u64> = found
        .orphan_scratch
        .iter()
        .filter(|(a, b)| b - a == CODE_SIZE && s.maps.iter().any(|m| m.start == *a && m.exec))
        .map(|(a, _)| *a)
        .collect();
    let mut busy: Vec<(u64, u64)> = Vec::new();
    for tid in s.tr.tids() {
        let Ok(regs) = s.tr.regs(tid) else { continue };
        for &(a, b) in &ranges {
            if (a..b).contains(&regs.rip) || (a..b).contains(&regs.rsp) {
                busy.push((a, b));
            }
        }
        let mem = StackMem::of_thread(&s.proc, &s.maps, regs.rsp);
        let stack = s.unwinder.unwind(&s.objects, &mem, &regs);
        // A frame returning into an orphan trampoline: give it its return address back.
        for w in stack.frames.windows(2) {
            let (f, next) = (&w[0], &w[1]);
            let Some(&page) = code_pages
                .iter()
                .find(|&&c| (c..c + CODE_SIZE).contains(&next.pc))
            else {
                continue;
            };
            let Some(slot) = f.ra_slot else { continue };
            let t = next.pc;
            if t < page + 0x20 || (t - page - 0x20) % TRAMPOLINE_SIZE != 0 {
                busy.push((page, page + CODE_SIZE));
                continue;
            }
            let ret = s.proc.read_u64(t + 33)?;
            if s.proc.read_u64(slot)? == t {
                s.proc.write(slot, &ret.to_le_bytes())?;
                done.push(format!(
                    "thread {tid}: took an interrupted run's return trampoline off its stack"
                ));
            }
        }
    }
    for &(a, b) in &ranges {
        if busy.contains(&(a, b)) {
            done.push(format!("left {a:#x}-{b:#x}: a thread still uses it; run `rlivepatch repair {}` again later", s.proc.pid));
            continue;
        }
        s.syscall(libc::SYS_munmap, &[a, b - a])?;
        done.push(format!(
            "unmapped {a:#x}-{b:#x}, left by an interrupted run"
        ));
    }
    Ok(done)
}
