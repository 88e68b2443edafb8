//! Calls inside the target, run on one borrowed thread: system calls, `dlopen`,
//! `dlclose`, callbacks.
//!
//! Design for the tool's death. Every call runs with a real `rt_sigreturn` frame beneath
//! it that holds the thread's own context (registers with the kernel's syscall-restart
//! adjustment, the XSAVE area, the signal mask): the call's code ends in `rt_sigreturn`,
//! so if rlivepatch is killed mid-call the thread finishes the call and returns by itself
//! to exactly where it was. While rlivepatch lives, it catches that `rt_sigreturn` at its
//! syscall-enter stop (no `int3`, which would kill an untraced process), reads the result
//! and restores the registers itself, which keeps the kernel's restart block of an
//! interrupted `nanosleep` intact (a real `rt_sigreturn` would turn it into `EINTR`).
//!
//! Before rlivepatch has memory of its own in the target, system calls go through the C
//! library's `syscall()` with a return address at libc's `__restore_rt` (the sigreturn
//! trampoline of every signal handler) and the frame on the thread's own stack, below the
//! red zone. That maps a private stack and a small code page; everything else runs from
//! there. Both are unmapped before rlivepatch detaches.
//!
//! Notified calls. Caught at its `rt_sigreturn`, a call makes the thread run with syscall
//! stops: two ptrace round trips for every system call the call makes (a `dlopen` makes
//! dozens). So once the private memory exists (its first page shared: rlivepatch maps the
//! same memfd page through a copy of the target's descriptor, `pidfd_getfd`), calls run
//! without them: the stub stores the result, sets a done word and wakes it (a shared
//! futex rlivepatch sleeps on), then waits at a gate, a `FUTEX_WAIT` on a command word
//! with a short timeout ([`GATE_TIMEOUT`]). The next call is posted there (its function
//! and arguments, then the word), so consecutive calls cost two futex wake-ups and no
//! ptrace stop; before anything else touches the thread, rlivepatch interrupts it at the
//! gate and gives it its context back itself, exactly as at the `rt_sigreturn` stop
//! ([`Injector::settle`]). Killed meanwhile, rlivepatch leaves a thread that returns to
//! its own code by itself when the gate times out (the next run waits for that before it
//! repairs); too slow, it finds the thread back in its own code (the thread marked the
//! word as left, so no call is posted to a thread that is not there) and borrows it
//! again where it is. The gate is a `futex_waitv` with an absolute deadline (Linux
//! 5.16): interrupted, it returns `ERESTARTSYS` and writes no restart block, so a thread
//! borrowed out of a system call the kernel continues through that block (`nanosleep`,
//! `clock_nanosleep`, `poll`) waits there too and its sleep resumes exactly as it was.
//! Without it (an older kernel, or a seccomp filter that refuses it), the gate is a
//! timed `FUTEX_WAIT`, whose interruption does write the block: then such a thread waits
//! in a `ppoll` (which writes none) and is taken back after each call.
//! Without the shared page (a kernel before 5.6), calls are caught at `rt_sigreturn`.
//!
//! Batches ([`Injector::batch`]). Calls whose arguments are known up front (the memfds
//! of an apply, a mapping and the close of its descriptor, `dlclose` and a close) are
//! posted together: the stub runs them one after the other from a queue in the notify
//! block and wakes rlivepatch once, after the last or the first that failed its
//! [`Check`]. Each hand-over between the two processes waits for a CPU on a busy machine;
//! a batch makes one of several.

use crate::elf::objects::Objects;
use crate::elf::symbols::SymKind;
use crate::error::{Context, Result};
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::{Catch, Regs, Stop, Tid, Tracer};
use crate::{bail, err};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the private read-write area: data, then the call stack, then the frame.
pub const RW_SIZE: u64 = 1 << 20;
/// Bytes at the start of the read-write area for strings and results.
const DATA_SIZE: u64 = 60 << 10;
/// Then a page of 8-byte slots where return trampolines save `%rax`.
const TRAMPOLINE_DATA: u64 = DATA_SIZE;
/// The code page.
pub const CODE_SIZE: u64 = 4096;
/// The first bytes of rlivepatch's read-write area, so that a later run recognises one
/// left behind by a run that was killed.
pub const SCRATCH_MAGIC: &[u8; 16] = b"rlivepatch-scr2\0";
/// The first bytes of the read-write area while no run uses it: kept mapped between
/// operations (see [`crate::livepatch::record::Record::scratch`]). A run that adopts it
/// writes [`SCRATCH_MAGIC`] back first, so a run killed while using it leaves the
/// memory recognisable as a leftover, as one it mapped itself.
const IDLE_MAGIC: &[u8; 16] = b"rlivepatch-idle\0";
/// After the magic: the thread whose malloc arena is lent while borrowed (the arena
/// slot, the main arena, the thread id), or zeros; a run killed while borrowing leaves it
/// for `repair` to give back ([`restore_lent_arena`]).
const LENT_NOTE: u64 = 16;
const LENT_NOTE_LEN: u64 = 24;
/// Then the block a notified call reports through (see [`Injector::call`]): the done
/// word (a futex), the call's result, and the gate's timeout (a `timespec`).
const NOTIFY: u64 = 40;
const NOTIFY_RESULT: u64 = NOTIFY + 8;
const NOTIFY_TIMEOUT: u64 = NOTIFY + 16;
/// Then the next call for a thread waiting at the gate (see [`Injector::settle`]): the
/// command word (a futex: [`CMD_SYSCALL`], [`CMD_CALL`], or [`CMD_LEAVE`] once the thread
/// gave up waiting), the function or system call number, and six arguments.
const NOTIFY_CMD: u64 = NOTIFY + 32;
/// How the thread waits after a call ([`Gate`]).
const NOTIFY_MODE: u64 = NOTIFY + 36;
const NOTIFY_FN: u64 = NOTIFY + 40;
const NOTIFY_ARGS: u64 = NOTIFY + 48;
/// Then the `struct futex_waitv` of the [`Gate::Waitv`] gate (the command word, 0
/// expected, a shared 32-bit futex) and its absolute deadline (a `timespec`).
const NOTIFY_WAITV: u64 = NOTIFY_ARGS + 6 * 8;
const NOTIFY_DEADLINE: u64 = NOTIFY_WAITV + 24;
/// Then a batch ([`Injector::batch`]): the index of the call running now and the
/// number of calls (0: a single call), the calls ([`QUEUE_ENTRY`] bytes each: kind,
/// check, function or number, six arguments) and their results. The stub runs them one
/// after the other and wakes rlivepatch once, after the last or the first that failed.
const NOTIFY_QCUR: u64 = NOTIFY_DEADLINE + 16;
const NOTIFY_QLEN: u64 = NOTIFY_QCUR + 4;
const NOTIFY_QUEUE: u64 = NOTIFY_QLEN + 4;
const QUEUE_ENTRY: u64 = 64;
/// The most calls one batch holds.
pub const MAX_BATCH: usize = 8;
const NOTIFY_QRESULTS: u64 = NOTIFY_QUEUE + QUEUE_ENTRY * MAX_BATCH as u64;
/// Where strings and results start.
const DATA_START: u64 = NOTIFY_QRESULTS + 8 * MAX_BATCH as u64;
// `futex_waitv` reads its waiter and deadline as 8-byte-aligned structures, and the
// command word is a 4-byte futex; the block ends before the data.
const _: () = assert!(
    NOTIFY_WAITV.is_multiple_of(8)
        && NOTIFY_DEADLINE.is_multiple_of(8)
        && NOTIFY_CMD.is_multiple_of(4)
        && NOTIFY_QUEUE.is_multiple_of(8)
        && NOTIFY_DEADLINE + 16 <= DATA_START
        && DATA_START <= 4096
);
/// `FUTEX2_SIZE_U32`: a 32-bit futex, shared (no `FUTEX2_PRIVATE`: rlivepatch wakes it
/// through its own mapping).
const FUTEX2_SIZE_U32: u32 = 2;

/// Where a thread waits after a notified call (the notify block's mode word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Gate {
    /// A `ppoll` with nothing to poll, which writes no restart block when interrupted:
    /// the thread is taken back after each call.
    Poll = 0,
    /// A timed `FUTEX_WAIT` on the command word, which may take the next call; an
    /// interrupted one writes the restart block, so only for a thread that does not go
    /// on through its own.
    Futex = 1,
    /// `futex_waitv` on the command word with an absolute deadline (Linux 5.16): it
    /// writes no restart block, so any thread may wait there for the next call.
    Waitv = 2,
}
/// Commands at the gate: a system call, a function call, and the thread's own mark that
/// it left (no command can be taken after it).
const CMD_SYSCALL: u32 = 1;
const CMD_CALL: u32 = 2;
// Written only by the stub itself (in its bytes, see `NOTIFY_STUB_CODE`).
#[cfg_attr(not(test), allow(dead_code))]
const CMD_LEAVE: u32 = 3;
/// When a call of a batch counts as failed, which ends the batch there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Check {
    /// Never: its result says nothing of failure.
    Never = 0,
    /// A system call's `-errno`: -4095 to -1.
    Errno = 1,
    /// A null pointer (`dlopen`).
    Null = 2,
}

impl Check {
    /// Did a call with this check fail, returning `v`?
    pub fn failed(self, v: u64) -> bool {
        match self {
            Check::Never => false,
            Check::Errno => v >= (-4095i64) as u64,
            Check::Null => v == 0,
        }
    }
}

/// One call of a batch ([`Injector::batch`]).
#[derive(Debug, Clone)]
pub struct Step {
    /// A system call (else a function call).
    syscall: bool,
    /// The system call number or the function's address.
    target: u64,
    args: [u64; 6],
    check: Check,
}

impl Step {
    /// System call `nr` with `args`; it fails with `-errno`.
    pub fn syscall(nr: i64, args: &[u64]) -> Step {
        Step::new(true, nr as u64, args, Check::Errno)
    }

    /// A call of the function at `func` with `args`, failed as `check` says.
    pub fn call(func: u64, args: &[u64], check: Check) -> Step {
        Step::new(false, func, args, check)
    }

    fn new(syscall: bool, target: u64, args: &[u64], check: Check) -> Step {
        let mut a = [0u64; 6];
        for (d, v) in a.iter_mut().zip(args) {
            *d = *v;
        }
        Step {
            syscall,
            target,
            args: a,
            check,
        }
    }

    /// Did this call fail, returning `v`?
    pub fn failed(&self, v: u64) -> bool {
        self.check.failed(v)
    }
}

/// How long a thread that finished a notified call waits at the gate for rlivepatch to
/// take it back before it returns by itself (its `rt_sigreturn` frame): the stall a
/// thread sees when rlivepatch is killed right then. A thread that went on meanwhile is
/// recognised and taken back where it is.
pub const GATE_TIMEOUT: Duration = Duration::from_millis(100);
/// The memfd name of rlivepatch's private memory (`/memfd:rlivepatch-scratch` in maps).
pub const SCRATCH_NAME: &str = "rlivepatch-scratch";
/// The memfd name of island pages.
pub const ISLAND_NAME: &str = "rlivepatch-island";
/// In [`Injector::bootstrap_syscall_data`] arguments: the address of the data.
pub const BOOT_DATA: u64 = 0xffff_ffff_ffff_ff00;
const MFD_CLOEXEC: u64 = 1;
const MFD_EXEC: u64 = 0x10;

/// `call *%rax; mov %rax,%rdi; mov $15,%eax; syscall; ud2` at 0, and
/// `syscall; mov %rax,%rdi; mov $15,%eax; syscall; ud2` at 0x10.
pub const STUB: [u8; 0x1e] = [
    0xff, 0xd0, 0x48, 0x89, 0xc7, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b, 0x90,
    0x90, //
    0x0f, 0x05, 0x48, 0x89, 0xc7, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b,
];
/// Offset of the function-call entry in the stub.
const STUB_CALL: u64 = 0;
/// Instruction pointer at the syscall-enter stop of the call's `rt_sigreturn`.
const STUB_CALL_DONE: u64 = 0x0c;
/// Offset of the raw-syscall entry.
const STUB_SYSCALL: u64 = 0x10;
/// Instruction pointer at the syscall-enter stop of the raw syscall's `rt_sigreturn`.
const STUB_SYSCALL_DONE: u64 = 0x1c;
/// Code page bytes from here on hold the transition's return trampolines.
const TRAMPOLINES: u64 = 0x20;
/// Size of one return trampoline.
pub const TRAMPOLINE_SIZE: u64 = 48;
/// The notified-call stub ([`notify_stub`]) at the end of the code page.
const NOTIFY_STUB: u64 = CODE_SIZE - 0x200;
/// How many return trampolines fit in the code page.
pub const MAX_TRAMPOLINES: usize = ((NOTIFY_STUB - TRAMPOLINES) / TRAMPOLINE_SIZE) as usize;

/// The notified-call stub and its entry points (offsets in the code page).
struct NotifyStub<B> {
    bytes: B,
    /// `syscall` with the arguments as set, then the report.
    syscall: u64,
    /// `call *%rax`, then the report.
    call: u64,
}

/// What [`assemble_notify_stub`] makes, kept as its bytes: the stub never changes, and
/// the assembler's first use in a run builds its tables, 0.66 ms of every operation (a
/// tenth of an apply). A unit test assembles it and compares; its failure message has
/// the bytes to put here when the stub changes.
const NOTIFY_STUB_CODE: NotifyStub<&[u8]> = NotifyStub {
    bytes: &[
        0x0f, 0x05, 0xeb, 0x02, 0xff, 0xd0, 0x49, 0x89, 0x47, 0x08, 0x41, 0x8b, 0x8f, 0x88, 0x00,
        0x00, 0x00, 0x41, 0x3b, 0x8f, 0x8c, 0x00, 0x00, 0x00, 0x73, 0x7b, 0x49, 0x89, 0x84, 0xcf,
        0x90, 0x02, 0x00, 0x00, 0x89, 0xca, 0xc1, 0xe2, 0x06, 0x45, 0x8b, 0x84, 0x17, 0x94, 0x00,
        0x00, 0x00, 0x41, 0x83, 0xf8, 0x01, 0x75, 0x0a, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73,
        0x58, 0xeb, 0x0b, 0x41, 0x83, 0xf8, 0x02, 0x75, 0x05, 0x48, 0x85, 0xc0, 0x74, 0x4b, 0xff,
        0xc1, 0x41, 0x3b, 0x8f, 0x8c, 0x00, 0x00, 0x00, 0x73, 0x40, 0x41, 0x89, 0x8f, 0x88, 0x00,
        0x00, 0x00, 0xc1, 0xe1, 0x06, 0x4d, 0x8d, 0x9c, 0x0f, 0x90, 0x00, 0x00, 0x00, 0x49, 0x8b,
        0x43, 0x08, 0x49, 0x8b, 0x7b, 0x10, 0x49, 0x8b, 0x73, 0x18, 0x49, 0x8b, 0x53, 0x20, 0x4d,
        0x8b, 0x53, 0x28, 0x4d, 0x8b, 0x43, 0x30, 0x4d, 0x8b, 0x4b, 0x38, 0x41, 0x83, 0x3b, 0x01,
        0x0f, 0x84, 0x73, 0xff, 0xff, 0xff, 0x4c, 0x89, 0xd1, 0xe9, 0x6f, 0xff, 0xff, 0xff, 0x41,
        0xc7, 0x07, 0x01, 0x00, 0x00, 0x00, 0x4c, 0x89, 0xff, 0xbe, 0x01, 0x00, 0x00, 0x00, 0xba,
        0x01, 0x00, 0x00, 0x00, 0xb8, 0xca, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x41, 0x83, 0x7f, 0x24,
        0x00, 0x0f, 0x84, 0xec, 0x00, 0x00, 0x00, 0x41, 0x83, 0x7f, 0x24, 0x02, 0x74, 0x73, 0x49,
        0x8d, 0x7f, 0x20, 0xbe, 0x00, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x4d, 0x8d, 0x57, 0x10, 0x45,
        0x31, 0xc0, 0xb8, 0xca, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x41, 0x8b, 0x4f, 0x20, 0x85, 0xc9,
        0x75, 0x1d, 0x48, 0x3d, 0x92, 0xff, 0xff, 0xff, 0x75, 0xd7, 0x31, 0xc0, 0xb9, 0x03, 0x00,
        0x00, 0x00, 0xf0, 0x41, 0x0f, 0xb1, 0x4f, 0x20, 0x0f, 0x84, 0xbe, 0x00, 0x00, 0x00, 0x89,
        0xc1, 0x41, 0xc7, 0x47, 0x20, 0x00, 0x00, 0x00, 0x00, 0x49, 0x8b, 0x47, 0x28, 0x49, 0x8b,
        0x7f, 0x30, 0x49, 0x8b, 0x77, 0x38, 0x49, 0x8b, 0x57, 0x40, 0x4d, 0x8b, 0x57, 0x48, 0x4d,
        0x8b, 0x47, 0x50, 0x4d, 0x8b, 0x4f, 0x58, 0x83, 0xf9, 0x01, 0x0f, 0x84, 0xd3, 0xfe, 0xff,
        0xff, 0x4c, 0x89, 0xd1, 0xe9, 0xcf, 0xfe, 0xff, 0xff, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x49,
        0x8d, 0x77, 0x78, 0xb8, 0xe4, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49, 0x8b, 0x47, 0x10, 0x49,
        0x01, 0x47, 0x78, 0x49, 0x8b, 0x47, 0x18, 0x49, 0x03, 0x87, 0x80, 0x00, 0x00, 0x00, 0x48,
        0x3d, 0x00, 0xca, 0x9a, 0x3b, 0x72, 0x0b, 0x48, 0x2d, 0x00, 0xca, 0x9a, 0x3b, 0x49, 0x83,
        0x47, 0x78, 0x01, 0x49, 0x89, 0x87, 0x80, 0x00, 0x00, 0x00, 0x49, 0x8d, 0x7f, 0x60, 0xbe,
        0x01, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x4d, 0x8d, 0x57, 0x78, 0x41, 0xb8, 0x01, 0x00, 0x00,
        0x00, 0xb8, 0xc1, 0x01, 0x00, 0x00, 0x0f, 0x05, 0x41, 0x8b, 0x4f, 0x20, 0x85, 0xc9, 0x0f,
        0x85, 0x66, 0xff, 0xff, 0xff, 0x48, 0x3d, 0x92, 0xff, 0xff, 0xff, 0x75, 0xd0, 0xe9, 0x44,
        0xff, 0xff, 0xff, 0x31, 0xff, 0x31, 0xf6, 0x49, 0x8d, 0x57, 0x10, 0x45, 0x31, 0xd2, 0x45,
        0x31, 0xc0, 0xb8, 0x0f, 0x01, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0xba, 0x00, 0x00, 0x00, 0x0f,
        0x05, 0x41, 0x3b, 0x47, 0xf8, 0x75, 0x16, 0x49, 0x8b, 0x47, 0xe8, 0x49, 0x8b, 0x4f, 0xf0,
        0x48, 0x39, 0x08, 0x75, 0x04, 0x48, 0x83, 0x20, 0x00, 0x49, 0x83, 0x67, 0xf8, 0x00, 0xb8,
        0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b,
    ],
    syscall: 0,
    call: 4,
};

/// The stub of a notified call, with `%r15` pointing at the notify block: the call (or
/// system call); its result stored; the done word set and woken (a shared futex, which
/// rlivepatch waits on through its own mapping of the page); then the gate, a
/// `FUTEX_WAIT` on the command word with the block's timeout, where the thread takes the
/// next call rlivepatch posts (no ptrace stop between consecutive calls) or is stopped
/// and given its context back ([`Injector::settle`]). When the wait times out with no
/// command (rlivepatch gone, or busy elsewhere), the thread marks the word
/// [`CMD_LEAVE`] with a locked compare-and-exchange, so that a command posted at that
/// very moment is either taken or refused, never lost, and returns through its frame's
/// `rt_sigreturn` to where it was. So calls run without a ptrace stop per system call
/// they make, and a thread whose rlivepatch dies returns to its own code on its own.
fn notify_stub() -> &'static NotifyStub<&'static [u8]> {
    &NOTIFY_STUB_CODE
}

/// The stub's source (see [`NOTIFY_STUB_CODE`]).
#[cfg(test)]
fn assemble_notify_stub() -> std::result::Result<NotifyStub<Vec<u8>>, iced_x86::IcedError> {
    use iced_x86::BlockEncoderOptions;
    use iced_x86::code_asm::*;
    // (The lent-arena note lies below the block: negative displacements.)
    let at = |off: u64| off.wrapping_sub(NOTIFY) as i64 as i32;
    let mut a = CodeAssembler::new(64)?;
    let mut syscall_entry = a.create_label();
    let mut call_entry = a.create_label();
    let mut report = a.create_label();
    let mut gate = a.create_label();
    let mut take = a.create_label();
    let mut leave = a.create_label();
    let mut poll_gate = a.create_label();
    let mut waitv_gate = a.create_label();
    let mut timed_out = a.create_label();
    let mut notify = a.create_label();
    a.set_label(&mut syscall_entry)?;
    a.syscall()?;
    a.jmp(report)?;
    a.set_label(&mut call_entry)?;
    a.call(rax)?;
    a.set_label(&mut report)?;
    a.mov(qword_ptr(r15 + at(NOTIFY_RESULT)), rax)?;
    batch_next_code(&mut a, &at, syscall_entry, call_entry, &mut notify)?;
    a.set_label(&mut notify)?;
    a.mov(dword_ptr(r15), 1u32)?;
    a.mov(rdi, r15)?;
    a.mov(esi, libc::FUTEX_WAKE as u32)?;
    a.mov(edx, 1u32)?;
    a.mov(eax, libc::SYS_futex as u32)?;
    a.syscall()?;
    a.cmp(dword_ptr(r15 + at(NOTIFY_MODE)), Gate::Poll as u32)?;
    a.je(poll_gate)?;
    a.cmp(dword_ptr(r15 + at(NOTIFY_MODE)), Gate::Waitv as u32)?;
    a.je(waitv_gate)?;
    // The gate: wait for a command while the word is 0.
    a.set_label(&mut gate)?;
    a.lea(rdi, ptr(r15 + at(NOTIFY_CMD)))?;
    a.mov(esi, libc::FUTEX_WAIT as u32)?;
    a.xor(edx, edx)?;
    a.lea(r10, ptr(r15 + at(NOTIFY_TIMEOUT)))?;
    a.xor(r8d, r8d)?;
    a.mov(eax, libc::SYS_futex as u32)?;
    a.syscall()?;
    take_or_wait_again(&mut a, &at, take, gate)?;
    a.set_label(&mut timed_out)?;
    a.xor(eax, eax)?;
    a.mov(ecx, CMD_LEAVE)?;
    a.lock().cmpxchg(dword_ptr(r15 + at(NOTIFY_CMD)), ecx)?;
    a.je(leave)?;
    // A command came just then: take it.
    a.mov(ecx, eax)?;
    a.set_label(&mut take)?;
    a.mov(dword_ptr(r15 + at(NOTIFY_CMD)), 0u32)?;
    a.mov(rax, qword_ptr(r15 + at(NOTIFY_FN)))?;
    a.mov(rdi, qword_ptr(r15 + at(NOTIFY_ARGS)))?;
    a.mov(rsi, qword_ptr(r15 + at(NOTIFY_ARGS + 8)))?;
    a.mov(rdx, qword_ptr(r15 + at(NOTIFY_ARGS + 16)))?;
    a.mov(r10, qword_ptr(r15 + at(NOTIFY_ARGS + 24)))?;
    a.mov(r8, qword_ptr(r15 + at(NOTIFY_ARGS + 32)))?;
    a.mov(r9, qword_ptr(r15 + at(NOTIFY_ARGS + 40)))?;
    a.cmp(ecx, CMD_SYSCALL)?;
    a.je(syscall_entry)?;
    // A function takes its fourth argument in %rcx, a system call in %r10.
    a.mov(rcx, r10)?;
    a.jmp(call_entry)?;
    waitv_gate_code(&mut a, at, &mut waitv_gate, take, timed_out)?;
    // The gate of a thread whose restart block must stay as it is: a `ppoll` with nothing
    // to poll (it writes no restart block when interrupted), where rlivepatch takes it
    // back; after its timeout, the frame.
    a.set_label(&mut poll_gate)?;
    a.xor(edi, edi)?;
    a.xor(esi, esi)?;
    a.lea(rdx, ptr(r15 + at(NOTIFY_TIMEOUT)))?;
    a.xor(r10d, r10d)?;
    a.xor(r8d, r8d)?;
    a.mov(eax, libc::SYS_ppoll as u32)?;
    a.syscall()?;
    a.set_label(&mut leave)?;
    // Back to its own code, maybe for good (rlivepatch gone): the main arena lent to this
    // thread for the loader goes back first, if the note names this thread and its slot
    // still holds it. A thread that exited holding the loan would leave an arena it never
    // joined (glibc aborts the process at the second such exit); `repair` comes too late
    // for a thread that ends at once (a thread-per-request server's, the keeper).
    let mut sigreturn = a.create_label();
    let mut clear = a.create_label();
    a.mov(eax, libc::SYS_gettid as u32)?;
    a.syscall()?;
    a.cmp(eax, dword_ptr(r15 + at(LENT_NOTE + 16)))?;
    a.jne(sigreturn)?;
    a.mov(rax, qword_ptr(r15 + at(LENT_NOTE)))?;
    a.mov(rcx, qword_ptr(r15 + at(LENT_NOTE + 8)))?;
    a.cmp(qword_ptr(rax), rcx)?;
    a.jne(clear)?;
    a.and(qword_ptr(rax), 0)?;
    a.set_label(&mut clear)?;
    a.and(qword_ptr(r15 + at(LENT_NOTE + 16)), 0)?;
    a.set_label(&mut sigreturn)?;
    a.mov(eax, SYS_RT_SIGRETURN as u32)?;
    a.syscall()?;
    a.ud2()?;
    let r = a.assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let at = |l: &CodeLabel| r.label_ip(l);
    Ok(NotifyStub {
        syscall: at(&syscall_entry)?,
        call: at(&call_entry)?,
        bytes: r.inner.code_buffer,
    })
}
/// After a call of a batch: its result kept; unless it failed its check or was the
/// last, the next call is loaded from the queue and run (to `syscall` or `call`); else
/// on to `notify`. A single call (the count 0) goes straight on.
#[cfg(test)]
fn batch_next_code(
    a: &mut iced_x86::code_asm::CodeAssembler,
    at: &impl Fn(u64) -> i32,
    syscall: iced_x86::code_asm::CodeLabel,
    call: iced_x86::code_asm::CodeLabel,
    notify: &mut iced_x86::code_asm::CodeLabel,
) -> std::result::Result<(), iced_x86::IcedError> {
    use iced_x86::code_asm::*;
    let mut not_errno = a.create_label();
    let mut next = a.create_label();
    a.mov(ecx, dword_ptr(r15 + at(NOTIFY_QCUR)))?;
    a.cmp(ecx, dword_ptr(r15 + at(NOTIFY_QLEN)))?;
    a.jae(*notify)?;
    a.mov(qword_ptr(r15 + rcx * 8 + at(NOTIFY_QRESULTS)), rax)?;
    a.mov(edx, ecx)?;
    a.shl(edx, 6)?;
    a.mov(r8d, dword_ptr(r15 + rdx + at(NOTIFY_QUEUE + 4)))?;
    a.cmp(r8d, Check::Errno as u32)?;
    a.jne(not_errno)?;
    // -4095..-1, unsigned: at least -4095.
    a.cmp(rax, -4095)?;
    a.jae(*notify)?;
    a.jmp(next)?;
    a.set_label(&mut not_errno)?;
    a.cmp(r8d, Check::Null as u32)?;
    a.jne(next)?;
    a.test(rax, rax)?;
    a.jz(*notify)?;
    a.set_label(&mut next)?;
    a.inc(ecx)?;
    a.cmp(ecx, dword_ptr(r15 + at(NOTIFY_QLEN)))?;
    a.jae(*notify)?;
    a.mov(dword_ptr(r15 + at(NOTIFY_QCUR)), ecx)?;
    a.shl(ecx, 6)?;
    a.lea(r11, ptr(r15 + rcx + at(NOTIFY_QUEUE)))?;
    a.mov(rax, qword_ptr(r11 + 8))?;
    a.mov(rdi, qword_ptr(r11 + 16))?;
    a.mov(rsi, qword_ptr(r11 + 24))?;
    a.mov(rdx, qword_ptr(r11 + 32))?;
    a.mov(r10, qword_ptr(r11 + 40))?;
    a.mov(r8, qword_ptr(r11 + 48))?;
    a.mov(r9, qword_ptr(r11 + 56))?;
    a.cmp(dword_ptr(r11), CMD_SYSCALL)?;
    a.je(syscall)?;
    a.mov(rcx, r10)?;
    a.jmp(call)
}

/// The [`Gate::Waitv`] gate: the deadline (now on the monotonic clock, plus the
/// block's timeout), then `futex_waitv` on the command word until a command comes (to
/// `take`) or the deadline passes (to `timed_out`); woken for nothing or interrupted and
/// restarted, it waits again for the same deadline.
#[cfg(test)]
fn waitv_gate_code(
    a: &mut iced_x86::code_asm::CodeAssembler,
    at: impl Fn(u64) -> i32,
    gate: &mut iced_x86::code_asm::CodeLabel,
    take: iced_x86::code_asm::CodeLabel,
    timed_out: iced_x86::code_asm::CodeLabel,
) -> std::result::Result<(), iced_x86::IcedError> {
    use iced_x86::code_asm::*;
    const NS: i32 = 1_000_000_000;
    let mut carried = a.create_label();
    let mut wait = a.create_label();
    a.set_label(gate)?;
    a.mov(edi, libc::CLOCK_MONOTONIC as u32)?;
    a.lea(rsi, ptr(r15 + at(NOTIFY_DEADLINE)))?;
    a.mov(eax, libc::SYS_clock_gettime as u32)?;
    a.syscall()?;
    a.mov(rax, qword_ptr(r15 + at(NOTIFY_TIMEOUT)))?;
    a.add(qword_ptr(r15 + at(NOTIFY_DEADLINE)), rax)?;
    a.mov(rax, qword_ptr(r15 + at(NOTIFY_TIMEOUT + 8)))?;
    a.add(rax, qword_ptr(r15 + at(NOTIFY_DEADLINE + 8)))?;
    a.cmp(rax, NS)?;
    a.jb(carried)?;
    a.sub(rax, NS)?;
    a.add(qword_ptr(r15 + at(NOTIFY_DEADLINE)), 1)?;
    a.set_label(&mut carried)?;
    a.mov(qword_ptr(r15 + at(NOTIFY_DEADLINE + 8)), rax)?;
    a.set_label(&mut wait)?;
    a.lea(rdi, ptr(r15 + at(NOTIFY_WAITV)))?;
    a.mov(esi, 1u32)?;
    a.xor(edx, edx)?;
    a.lea(r10, ptr(r15 + at(NOTIFY_DEADLINE)))?;
    a.mov(r8d, libc::CLOCK_MONOTONIC as u32)?;
    a.mov(eax, libc::SYS_futex_waitv as u32)?;
    a.syscall()?;
    take_or_wait_again(a, &at, take, wait)?;
    a.jmp(timed_out)
}

/// After a wait at a gate: a command posted, to `take` (in `%ecx`); none, back to
/// `again` unless the wait timed out (woken for nothing, or interrupted and restarted);
/// timed out, on to what follows.
#[cfg(test)]
fn take_or_wait_again(
    a: &mut iced_x86::code_asm::CodeAssembler,
    at: &impl Fn(u64) -> i32,
    take: iced_x86::code_asm::CodeLabel,
    again: iced_x86::code_asm::CodeLabel,
) -> std::result::Result<(), iced_x86::IcedError> {
    use iced_x86::code_asm::*;
    a.mov(ecx, dword_ptr(r15 + at(NOTIFY_CMD)))?;
    a.test(ecx, ecx)?;
    a.jnz(take)?;
    a.cmp(rax, -libc::ETIMEDOUT)?;
    a.jne(again)
}

/// Offset in a trampoline of the instruction after its marker `syscall`: the
/// instruction pointer at the marker's syscall-enter stop.
pub const TRAMPOLINE_STOP: u64 = 17;
/// The marker system call of a trampoline: harmless if nobody watches (getppid).
pub const TRAMPOLINE_MARKER: u64 = 110;

const SYS_RT_SIGRETURN: u64 = 15;
/// `mov $15,%rax; syscall`: glibc's and musl's `__restore_rt`.
const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UCONTEXT_SIZE: u64 = 304;

/// Addresses in the target's C library.
#[derive(Debug, Clone)]
pub struct Libc {
    /// `syscall(long nr, ...)`.
    pub syscall_fn: u64,
    /// `__restore_rt`: `mov $15,%rax; syscall`.
    pub restore_rt: u64,
    /// `dlopen`.
    pub dlopen: u64,
    /// `dlerror`.
    pub dlerror: Option<u64>,
    /// `dlclose`.
    pub dlclose: u64,
    /// `dlinfo` (for thread-local variables).
    pub dlinfo: Option<u64>,
    /// The GOT slot holding the thread-pointer offset of malloc's `thread_arena` (the
    /// arena a thread allocates from), when rlivepatch recognised it in `malloc`'s code.
    pub thread_arena_slot: Option<u64>,
    /// `sem_post` (ends the keeper thread, which waits in `sem_wait`).
    pub sem_post: Option<u64>,
}

impl Libc {
    /// Find the functions rlivepatch calls, in glibc (>= 2.34 has dl* in libc.so.6;
    /// older ones in libdl.so.2).
    pub fn find(pid: i32, objects: &Objects) -> Result<Libc> {
        let Some(libc) = objects.libc() else {
            bail!(
                Target,
                "process {pid} has no C library mapped (statically linked, or a Go program): rlivepatch loads patches with glibc's dlopen and cannot patch it"
            );
        };
        let n = libc.file_name();
        if n.starts_with("ld-musl") || n.starts_with("libc.musl") || n == "libc.so" {
            bail!(
                Target,
                "process {pid} uses musl libc, whose dlclose never unloads code: rlivepatch supports glibc targets only"
            );
        }
        let file = libc.file()?;
        let bias = libc.bias()?;
        // What the C library's file says is the same for every process that maps it:
        // found once per worker thread (the file's address names it while the cache
        // holds it), then moved by each process's load bias.
        let key = Arc::as_ptr(&file) as usize;
        let cached = FOUND.with(|f| f.borrow().get(&key).map(|(_, v)| v.clone()));
        let in_file = match cached {
            Some(v) => v,
            None => {
                // Kept across runs too: finding `malloc`'s arena slot decodes its code.
                let version = file.version();
                let parts = version.as_deref().map(|v| [v]);
                let v =
                    crate::os::kept::get_or_make("libc", parts.as_ref().map(|p| &p[..]), || {
                        Self::in_file(&file, &libc.path)
                    })?;
                FOUND.with(|f| f.borrow_mut().insert(key, (file.clone(), v.clone())));
                v
            }
        };
        let mut l = in_file.moved(bias);
        if l.dlopen.is_none()
            && let Ok(libdl) = objects.by_name(Some("libdl.so.2"))
        {
            let f = libdl.file()?;
            let b = libdl.bias()?;
            let g = |name: &str| f.dynamic_function(name).map(|(v, _, _)| v + b);
            (l.dlopen, l.dlerror, l.dlclose) = (g("dlopen"), g("dlerror"), g("dlclose"));
            l.dlinfo = g("dlinfo");
        }
        if l.dlopen.is_none() {
            (l.dlopen, l.dlerror, l.dlclose) = (
                in_file.libc_dlopen_mode.map(|a| a + bias),
                None,
                in_file.libc_dlclose.map(|a| a + bias),
            );
        }
        match (l.dlopen, l.dlclose) {
            (Some(dlopen), Some(dlclose)) => Ok(Libc {
                syscall_fn: l.syscall_fn,
                restore_rt: l.restore_rt,
                dlopen,
                dlerror: l.dlerror,
                dlclose,
                dlinfo: l.dlinfo,
                thread_arena_slot: l.thread_arena_slot,
                sem_post: l.sem_post,
            }),
            _ => bail!(
                Target,
                "process {pid} has no dlopen (glibc older than 2.34 without libdl.so.2 loaded)"
            ),
        }
    }

    /// The entry points in the C library's file (file addresses).
    fn in_file(file: &crate::elf::symbols::ElfFile, path: &str) -> Result<LibcInFile> {
        // A handful of names, looked up through the hash table: the C library's
        // thousands of symbols are not read for them.
        let func = |name: &str| -> Option<u64> {
            file.dynamic_function(name)
                .filter(|&(_, _, kind)| kind == SymKind::Func)
                .map(|(value, _, _)| value)
        };
        let syscall_fn = func("syscall").ok_or_else(|| err!(Target, "no syscall() in {path}"))?;
        let restore_rt = match func("__restore_rt") {
            Some(a) => a,
            None => find_restore_rt(file).ok_or_else(|| {
                err!(Target, "cannot find the signal return trampoline in {path}")
            })?,
        };
        let thread_arena_slot = ["__libc_malloc", "malloc"]
            .iter()
            .find_map(|n| file.dynamic_function(n))
            .and_then(|(value, size, _)| {
                let code = file.bytes_at(value, size.min(1024) as usize)?;
                thread_arena_slot(code, value)
            });
        Ok(LibcInFile {
            syscall_fn,
            restore_rt,
            dlopen: func("dlopen"),
            dlerror: func("dlerror"),
            dlclose: func("dlclose"),
            dlinfo: func("dlinfo"),
            libc_dlopen_mode: func("__libc_dlopen_mode"),
            libc_dlclose: func("__libc_dlclose"),
            thread_arena_slot,
            sem_post: func("sem_post"),
        })
    }
}

/// What [`Libc::find`] finds in the C library's file, at file addresses (or, after
/// [`LibcInFile::moved`], at a process's).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LibcInFile {
    syscall_fn: u64,
    restore_rt: u64,
    dlopen: Option<u64>,
    dlerror: Option<u64>,
    dlclose: Option<u64>,
    dlinfo: Option<u64>,
    libc_dlopen_mode: Option<u64>,
    libc_dlclose: Option<u64>,
    thread_arena_slot: Option<u64>,
    sem_post: Option<u64>,
}

impl LibcInFile {
    /// The same entry points in a process that loaded the file at `bias`.
    fn moved(&self, bias: u64) -> LibcInFile {
        let m = |a: Option<u64>| a.map(|a| a + bias);
        LibcInFile {
            syscall_fn: self.syscall_fn + bias,
            restore_rt: self.restore_rt + bias,
            dlopen: m(self.dlopen),
            dlerror: m(self.dlerror),
            dlclose: m(self.dlclose),
            dlinfo: m(self.dlinfo),
            libc_dlopen_mode: m(self.libc_dlopen_mode),
            libc_dlclose: m(self.libc_dlclose),
            thread_arena_slot: m(self.thread_arena_slot),
            sem_post: m(self.sem_post),
        }
    }
}

thread_local! {
    /// [`Libc::find`]'s findings, by the parsed C library file (held alive here, so that
    /// its address names one file).
    static FOUND: std::cell::RefCell<std::collections::HashMap<usize, (Arc<crate::elf::symbols::ElfFile>, LibcInFile)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Give back the arena a killed run lent, as the note in its scratch memory at `rw`
/// says: the thread's `thread_arena` goes back to none if it still holds the lent arena
/// and the thread still runs. Returns whether one was given back.
pub fn restore_lent_arena(proc: &Process, rw: u64) -> Result<bool> {
    let note = proc.read(rw, (LENT_NOTE + LENT_NOTE_LEN) as usize)?;
    if &note[..16] != SCRATCH_MAGIC {
        return Ok(false);
    }
    let word = |i: usize| u64::from_le_bytes(note[i..i + 8].try_into().unwrap());
    let (slot, arena, tid) = (word(16), word(24), word(32) as i32);
    if slot == 0 || !std::path::Path::new(&format!("/proc/{}/task/{tid}", proc.pid)).exists() {
        return Ok(false);
    }
    if proc.read_u64(slot)? != arena {
        return Ok(false);
    }
    proc.write(slot, &0u64.to_le_bytes())?;
    proc.write(rw + LENT_NOTE, &[0u8; LENT_NOTE_LEN as usize])?;
    Ok(true)
}

/// In glibc's `malloc` code (at file address `ip`), the GOT slot of `thread_arena`'s
/// thread-pointer offset: the initial-exec load `mov slot(%rip), %a; mov %fs:(%a), %b`
/// whose value is tested and then locked (`lock cmpxchg` on `0(%b)`: an arena's first
/// field is its mutex). `None` when the code does not have that shape.
fn thread_arena_slot(code: &[u8], ip: u64) -> Option<u64> {
    use iced_x86::{Code, Decoder, DecoderOptions, Register};
    let insns: Vec<iced_x86::Instruction> = Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .collect();
    for (i, w) in insns.windows(2).enumerate() {
        let (load, tls) = (&w[0], &w[1]);
        if load.code() != Code::Mov_r64_rm64 || !load.is_ip_rel_memory_operand() {
            continue;
        }
        let a = load.op0_register();
        if tls.code() != Code::Mov_r64_rm64
            || tls.segment_prefix() != Register::FS
            || tls.memory_base() != a
            || tls.memory_displacement64() != 0
        {
            continue;
        }
        let b = tls.op0_register();
        let locked = insns[i + 2..].iter().take(6).any(|x| {
            x.has_lock_prefix()
                && x.mnemonic() == iced_x86::Mnemonic::Cmpxchg
                && x.memory_base() == b
                && x.memory_displacement64() == 0
        });
        if locked {
            return Some(load.ip_rel_memory_address());
        }
    }
    None
}

/// Is the signal a thread is stopped for a fault of its own code (raised by the kernel:
/// `si_code > 0`), rather than one sent by a process (`kill`, `tgkill`, `sigqueue`)?
/// An error when the process exited or called execve during the call `what`.
fn still_there(tr: &Tracer, what: &str) -> Result<()> {
    if tr.exec_seen || tr.exited {
        return Err(err!(
            Target,
            "process {} exited or called execve during {what}",
            tr.pid
        )
        .because(crate::error::Cause::Gone));
    }
    Ok(())
}

fn is_fault(tid: Tid) -> bool {
    nix::sys::ptrace::getsiginfo(nix::unistd::Pid::from_raw(tid)).is_ok_and(|si| si.si_code > 0)
}

fn find_restore_rt(file: &crate::elf::symbols::ElfFile) -> Option<u64> {
    for seg in file.segments.iter().filter(|s| s.exec) {
        let bytes = file
            .data()
            .get(seg.offset as usize..(seg.offset + seg.filesz) as usize)?;
        if let Some(i) = bytes
            .windows(RESTORE_RT.len())
            .position(|w| w == RESTORE_RT)
        {
            return Some(seg.vaddr + i as u64);
        }
    }
    None
}

/// Is `s` rlivepatch's memory, mapped where it says and marked idle (kept by an earlier
/// run that finished with it)? Reads `/proc` and the memory only.
pub fn scratch_is_idle(proc: &Process, maps: &[Mapping], s: &Scratch) -> bool {
    let path = format!("/memfd:{SCRATCH_NAME}");
    let mapped = |at: u64, len: u64| {
        crate::os::process::mapping_at(maps, at)
            .is_some_and(|m| m.start == at && m.end == at + len && m.path == path)
    };
    mapped(s.rw, RW_SIZE)
        && mapped(s.code, CODE_SIZE)
        && proc
            .read(s.rw, IDLE_MAGIC.len())
            .is_ok_and(|head| head[..] == IDLE_MAGIC[..])
}

/// Mark `s` idle, to be kept for a later run: no thread runs on it any more (the
/// borrowed thread was given back) and it holds no note for `repair` (the lent arena,
/// given back, is noted as none).
pub fn mark_idle(proc: &Process, s: &Scratch) -> Result<()> {
    let mut head = IDLE_MAGIC.to_vec();
    head.resize((LENT_NOTE + LENT_NOTE_LEN) as usize, 0);
    proc.write_unverified(s.rw, &head)
}

/// The private memory rlivepatch maps in the target for one run.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Scratch {
    /// Read-write area (data, stack, frame).
    pub rw: u64,
    /// Read-execute code page (the call stub and return trampolines).
    pub code: u64,
}

impl Scratch {
    /// The code address of return trampoline `i`.
    pub fn trampoline(&self, i: usize) -> u64 {
        self.code + TRAMPOLINES + i as u64 * TRAMPOLINE_SIZE
    }

    /// The 8-byte slot where trampoline `i` saves `%rax`.
    pub fn trampoline_data(&self, i: usize) -> u64 {
        self.rw + TRAMPOLINE_DATA + i as u64 * 8
    }

    /// The bytes of return trampoline `i` returning to `ret`: save `%rax`, make the marker
    /// system call (a syscall-enter stop for a watching rlivepatch, a harmless getppid
    /// otherwise), restore `%rax`, jump to `ret`. Only `%rcx` and `%r11`, dead at a return,
    /// are clobbered.
    pub fn trampoline_code(&self, i: usize, ret: u64) -> Vec<u8> {
        let d = self.trampoline_data(i).to_le_bytes();
        let mut b = vec![0x48, 0xa3];
        b.extend(d);
        b.extend([
            0xb8,
            TRAMPOLINE_MARKER as u8,
            0,
            0,
            0,
            0x0f,
            0x05,
            0x48,
            0xa1,
        ]);
        b.extend(d);
        b.extend([0xff, 0x25, 0, 0, 0, 0]);
        b.extend(ret.to_le_bytes());
        b.resize(TRAMPOLINE_SIZE as usize, 0xcc);
        b
    }
}

/// A thread borrowed to run calls. Create with [`Injector::borrow`], end with
/// [`Injector::release`].
pub struct Injector {
    /// The borrowed thread.
    pub tid: Tid,
    /// Its context to return to: registers as the kernel would resume them.
    ctx: Regs,
    xstate: Vec<u8>,
    mask: u64,
    /// The C library's functions.
    pub libc: Libc,
    /// The private memory, once mapped.
    pub scratch: Option<Scratch>,
    frame_at: u64,
    data_next: u64,
    ran: bool,
    /// The thread holds its own context again (registers and XSAVE area) since its last
    /// run: giving it back writes them no second time.
    restored: bool,
    /// A call that did not return in time is still running on the private stack: the
    /// scratch memory must stay mapped.
    pub leaked: bool,
    /// The thread ended on its own: its wait at the gate timed out before rlivepatch took
    /// it back, and its own code, where the gate returns it, ended it (the keeper, once
    /// posted; a thread-per-request server's thread). Nothing is left to give back, and
    /// no call can run on it: the session borrows another thread.
    pub gone: bool,
    /// Longest time one call may take.
    pub call_timeout: Duration,
    /// The thread was judged at a safe point for the loader and the C library (else it
    /// runs system calls only).
    pub safe: bool,
    /// The thread's `thread_arena` slot, set to the main arena while it is borrowed
    /// because it had none: reset to none when it is given back.
    pub lent_arena: Option<(u64, u64)>,
    /// rlivepatch's own mapping of the notify block's page, when it could map it: calls
    /// then run notified (no stop per system call they make).
    pub notify: Option<std::sync::Arc<crate::os::shared::SharedPage>>,
    /// The thread finished a notified call and waits at the gate for the next one: it
    /// runs (in our code, every signal blocked) until [`Injector::settle`] takes it back.
    parked: bool,
    /// Where the thread waits after a notified call ([`Injector::gate`]).
    gate: Gate,
    /// The thread may wait in `futex_waitv` (the kernel has it and no seccomp filter
    /// stands in the way): set by [`Injector::allow_waitv`].
    waitv: bool,
    /// In a bootstrap frame ([`Injector::boot_begin`]) whose calls have blocked every
    /// signal: the mask stays so from stop to stop until [`Injector::boot_end`] (a
    /// rlivepatch killed meanwhile leaves the thread to the frame's `rt_sigreturn`, which
    /// gives it its own mask back).
    frame_blocked: Option<bool>,
    /// Lent to rlivepatch while borrowed: its runs are not others' a pause would let run
    /// (see `crate::os::pace`).
    _lent: crate::os::pace::Lent,
}

enum Outcome {
    /// At a kept stop (its registers: [`Tracer::regs`], read only if needed).
    Caught,
    Crashed(i32, Box<Regs>),
}

/// The frame bootstrap system calls return through, on the borrowed thread's stack
/// ([`Injector::boot_begin`]).
struct BootFrame {
    /// Its lowest address: the return address (libc's `__restore_rt`), then the frame.
    low: u64,
    /// Where the calls' data goes, and how much fits.
    data_at: u64,
    data_len: usize,
    /// What the frame covers of the thread's stack.
    saved: Vec<u8>,
}

impl Injector {
    /// Borrow `tid`, which must be stopped at an interrupt stop (or a job-control stop)
    /// with no pending signal. Saves its registers, XSAVE area and signal mask. Each call
    /// runs with every signal blocked (they stay pending and are delivered after it);
    /// between calls the thread holds its own mask, so that it is exactly itself if
    /// rlivepatch dies there. With `rewind`, a system call that failed with `EINTR` only
    /// because of rlivepatch's stop runs again when the thread gets its context back.
    pub fn borrow(tr: &mut Tracer, tid: Tid, libc: Libc, rewind: bool) -> Result<Injector> {
        let regs = tr.regs(tid)?;
        let xstate = tr.xstate(tid)?;
        let mask = tr.sigmask(tid)?;
        let ctx = crate::os::restart::restart_adjusted(&regs, rewind);
        let mut inj = Injector {
            tid,
            gate: Gate::Poll,
            waitv: false,
            ctx,
            xstate,
            mask,
            libc,
            scratch: None,
            frame_at: 0,
            data_next: 0,
            ran: false,
            restored: false,
            leaked: false,
            gone: false,
            call_timeout: Duration::from_secs(10),
            safe: false,
            lent_arena: None,
            notify: None,
            parked: false,
            frame_blocked: None,
            _lent: crate::os::pace::Lent::new(tr.pid, tid),
        };
        inj.gate = inj.gate();
        Ok(inj)
    }

    /// Let the thread wait in `futex_waitv` between calls, when the kernel has it:
    /// `allowed` says a seccomp filter lets it (and `clock_gettime`) through.
    pub fn allow_waitv(&mut self, allowed: bool) {
        // `no-waitv`: as on a kernel before 5.16, for the tests of the other gates.
        self.waitv = allowed
            && crate::os::shared::futex_waitv_supported()
            && !crate::os::fault::switched_on("no-waitv");
        self.gate = self.gate();
    }

    /// Where the thread waits after a notified call. At the command word, to take the
    /// next call with no ptrace stop, unless the only wait there is a timed
    /// `FUTEX_WAIT` and the thread goes on through its restart block (borrowed out of a
    /// `nanosleep`, say): interrupted, that wait would overwrite the block and the
    /// sleep would end early. Such a thread waits in a `ppoll` and is taken back after
    /// each call.
    fn gate(&self) -> Gate {
        if self.waitv {
            Gate::Waitv
        } else if crate::os::restart::continues_through_restart_block(&self.ctx) {
            Gate::Poll
        } else {
            Gate::Futex
        }
    }

    /// The borrowed thread's context (registers it will resume with).
    pub fn context(&self) -> &Regs {
        &self.ctx
    }

    /// Give the thread back: its registers, XSAVE area and signal mask as they were. It
    /// stays stopped.
    pub fn release(&mut self, tr: &mut Tracer, proc: &Process) -> Result<()> {
        if self.leaked {
            return Ok(());
        }
        self.settle(tr)?;
        if self.gone {
            return Ok(());
        }
        self.return_arena(proc)?;
        if self.ran && !self.restored {
            self.restore(tr)?;
        }
        Ok(())
    }

    /// The signal frame: a ucontext at `uc` holding the thread's context, then the XSAVE
    /// area (64-byte aligned) with the kernel's end marker.
    fn frame(&self, uc: u64) -> Vec<u8> {
        let fp_off = (UCONTEXT_SIZE + 63) & !63;
        let mut fp = self.xstate.clone();
        let sw_ok = fp.len() >= 512
            && u32::from_le_bytes(fp[464..468].try_into().unwrap()) == FP_XSTATE_MAGIC1;
        let xsize = if sw_ok {
            u32::from_le_bytes(fp[480..484].try_into().unwrap()) as usize
        } else {
            fp.len()
        };
        if !sw_ok && fp.len() >= 512 {
            // Describe the area as the kernel does in its own signal frames.
            let xfeatures = fp
                .get(512..520)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .unwrap_or(3);
            fp[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
            fp[468..472].copy_from_slice(&((xsize + 4) as u32).to_le_bytes());
            fp[472..480].copy_from_slice(&xfeatures.to_le_bytes());
            fp[480..484].copy_from_slice(&(xsize as u32).to_le_bytes());
        }
        fp.resize(xsize, 0);
        fp.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
        let mut b = vec![0u8; fp_off as usize];
        let put =
            |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        let c = &self.ctx;
        // uc_flags = 0, uc_link = 0. uc_stack with an invalid mode (3): the kernel's
        // restore_altstack then leaves the thread's alternate signal stack alone.
        b[24..28].copy_from_slice(&3u32.to_le_bytes());
        let sc = 40;
        for (i, v) in [
            c.r8, c.r9, c.r10, c.r11, c.r12, c.r13, c.r14, c.r15, c.rdi, c.rsi, c.rbp, c.rbx,
            c.rdx, c.rax, c.rcx, c.rsp, c.rip, c.eflags,
        ]
        .iter()
        .enumerate()
        {
            put(&mut b, sc + 8 * i, *v);
        }
        b[sc + 144..sc + 146].copy_from_slice(&(c.cs as u16).to_le_bytes());
        b[sc + 146..sc + 148].copy_from_slice(&(c.gs as u16).to_le_bytes());
        b[sc + 148..sc + 150].copy_from_slice(&(c.fs as u16).to_le_bytes());
        b[sc + 150..sc + 152].copy_from_slice(&(c.ss as u16).to_le_bytes());
        put(&mut b, sc + 184, uc + fp_off);
        put(&mut b, 296, self.mask);
        b.extend_from_slice(&fp);
        b
    }

    fn frame_len(&self) -> u64 {
        self.frame(0).len() as u64
    }

    /// Run the thread from `regs` until a kept syscall stop or a fault.
    fn run(
        &mut self,
        tr: &mut Tracer,
        regs: Option<&Regs>,
        catch: Catch,
        what: &str,
    ) -> Result<Outcome> {
        self.settle_to_run(tr, what)?;
        self.start_run(tr, regs, true, catch)?;
        crate::os::fault::trace(what);
        let deadline = Instant::now() + self.call_timeout;
        loop {
            let Some(th) = tr.threads.get(&self.tid) else {
                bail!(Target, "thread {} exited during {what}", self.tid);
            };
            match th.stop {
                Some(Stop::Syscall) => {
                    self.end_run(tr);
                    return Ok(Outcome::Caught);
                }
                Some(Stop::Signal(sig)) if !is_fault(self.tid) => {
                    // Not the call's doing: a stop signal sent to the process (the only
                    // one a blocked mask lets through). It goes on to the process; the
                    // call goes on too.
                    let _ = sig;
                    tr.resume(self.tid)?;
                }
                Some(Stop::Signal(sig)) => {
                    let r = tr.regs(self.tid)?;
                    self.end_run(tr);
                    if let Some(th) = tr.threads.get_mut(&self.tid) {
                        th.pending_signal = None;
                    }
                    return Ok(Outcome::Crashed(sig, Box::new(r)));
                }
                Some(_) => {
                    // A stray stop (our earlier interrupt, a group stop): keep going.
                    tr.resume(self.tid)?;
                }
                None => {}
            }
            still_there(tr, what)?;
            if !tr.pump(deadline)? {
                // The call is stuck (a lock it waits for, a slow constructor). It cannot be
                // abandoned safely: let it finish on its own; its rt_sigreturn frame
                // brings the thread back to where it was.
                return Err(self.left_running(tr, what));
            }
        }
    }

    /// Set the thread off on a call from `regs`: every signal blocked (the frame's mask,
    /// the thread's own, comes back with rt_sigreturn, or with `end_run`), marked as in
    /// a call, resumed with syscall stops or without.
    fn start_run(
        &mut self,
        tr: &mut Tracer,
        regs: Option<&Regs>,
        syscall_mode: bool,
        catch: Catch,
    ) -> Result<()> {
        self.ran = true;
        self.restored = false;
        if let Some(regs) = regs {
            tr.set_regs(self.tid, regs)?;
        }
        if self.frame_blocked != Some(true) {
            tr.set_sigmask(self.tid, !0u64)?;
        }
        if self.frame_blocked.is_some() {
            self.frame_blocked = Some(true);
        }
        {
            let th = tr
                .threads
                .get_mut(&self.tid)
                .ok_or_else(|| err!(Target, "thread {} exited", self.tid))?;
            th.syscall_mode = syscall_mode;
            th.in_call = true;
            th.catch = catch;
        }
        tr.resume(self.tid)?;
        crate::os::fault::point("inject:in_call");
        Ok(())
    }

    fn end_run(&self, tr: &mut Tracer) {
        if !self.leaked && self.frame_blocked.is_none() {
            let _ = tr.set_sigmask(self.tid, self.mask);
        }
        self.end_run_keeping_mask(tr);
    }

    /// [`Injector::end_run`] of a thread that is back in its own code, with its own mask.
    fn end_run_keeping_mask(&self, tr: &mut Tracer) {
        if let Some(th) = tr.threads.get_mut(&self.tid) {
            th.syscall_mode = false;
            th.in_call = false;
            th.catch = Catch::Nothing;
        }
    }

    /// Put the context back after a call (the thread is stopped at a syscall stop).
    fn restore(&mut self, tr: &mut Tracer) -> Result<()> {
        tr.set_regs(self.tid, &self.ctx)?;
        tr.set_xstate(self.tid, &self.xstate)?;
        self.restored = true;
        Ok(())
    }

    /// A system call through libc's `syscall()`, with the frame on the thread's own stack.
    /// Used before rlivepatch has its own memory in the target, and to unmap it.
    pub fn bootstrap_syscall(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        maps: &[Mapping],
        nr: i64,
        args: &[u64],
    ) -> Result<i64> {
        self.bootstrap_syscall_data(tr, proc, maps, nr, args, &[])
    }

    /// [`Injector::bootstrap_syscall`] with `data` copied next to the frame; an argument
    /// equal to [`BOOT_DATA`] is replaced by its address. A sixth argument goes where
    /// libc's `syscall()` reads it, the frame's `uc_flags` (whose bits it must not set:
    /// offsets are page multiples).
    pub fn bootstrap_syscall_data(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        maps: &[Mapping],
        nr: i64,
        args: &[u64],
        data: &[u8],
    ) -> Result<i64> {
        let frame = self.boot_begin(proc, maps, data.len())?;
        let result = self.boot_call(tr, proc, &frame, nr, args, data);
        self.boot_end(tr, proc, frame)?;
        result
    }

    /// Put the frame of bootstrap system calls on the thread's stack, below the red zone,
    /// with room for `data_len` bytes of data: what it covers is saved, for
    /// [`Injector::boot_end`]. Several calls ([`Injector::boot_call`]) may run on one
    /// frame: each returns through it, so a rlivepatch killed in any of them leaves the
    /// thread to come back to its own code by itself.
    fn boot_begin(
        &mut self,
        proc: &Process,
        maps: &[Mapping],
        data_len: usize,
    ) -> Result<BootFrame> {
        let len = self.frame_len();
        let top = self.ctx.rsp.wrapping_sub(128 + 256) & !63;
        let data_at = top.wrapping_sub(data_len as u64) & !15;
        let uc = data_at.wrapping_sub(len) & !63;
        let low = uc - 8;
        // A thread started after the maps were read (a thread-per-request server starts
        // them all the time) has its stack in a mapping they do not show: read them again.
        let below = self.ctx.rsp.wrapping_sub(1);
        let fresh;
        let stack = match crate::os::process::mapping_at(maps, below) {
            Some(m) => m,
            None => {
                fresh = proc.maps()?;
                let Some(m) = crate::os::process::mapping_at(&fresh, below) else {
                    bail!(
                        Failed,
                        "thread {} has no mapped stack at {:#x}",
                        self.tid,
                        self.ctx.rsp
                    );
                };
                m
            }
        };
        if low < stack.start || !stack.write {
            bail!(
                Failed,
                "thread {} has too little stack left for an injected call",
                self.tid
            );
        }
        let saved = proc.read(low, (top - low) as usize)?;
        let mut image = self.libc.restore_rt.to_le_bytes().to_vec();
        image.extend(self.frame(uc));
        proc.write_unverified(low, &image)?;
        self.frame_blocked = Some(false);
        Ok(BootFrame {
            low,
            data_at,
            data_len,
            saved,
        })
    }

    /// One system call on the frame of [`Injector::boot_begin`]: caught at its entry and
    /// exit stops, its result read at the exit; the thread stays there for the next call.
    fn boot_call(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        frame: &BootFrame,
        nr: i64,
        args: &[u64],
        data: &[u8],
    ) -> Result<i64> {
        if data.len() > frame.data_len {
            bail!(
                Failed,
                "bootstrap data of {} bytes does not fit",
                data.len()
            );
        }
        // The sixth argument, in the frame's uc_flags (just above the return address).
        proc.write_unverified(
            frame.low + 8,
            &args.get(5).copied().unwrap_or(0).to_le_bytes(),
        )?;
        if !data.is_empty() {
            proc.write_unverified(frame.data_at, data)?;
        }
        let mut r = self.ctx;
        r.rip = self.libc.syscall_fn;
        r.rsp = frame.low;
        r.rdi = nr as u64;
        let a = |i: usize| match args.get(i).copied().unwrap_or(0) {
            BOOT_DATA => frame.data_at,
            v => v,
        };
        (r.rsi, r.rdx, r.rcx, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4));
        r.rax = 0;
        r.orig_rax = u64::MAX;
        r.eflags &= !(0x400 | 0x100); // DF, TF
        let what = format!("system call {nr}");
        // The syscall-enter stop of our call, then its syscall-exit stop with the
        // result. A thread resumed from a syscall-enter stop first reports that
        // (skipped) syscall's exit: pass it.
        let mut regs = Some(&r);
        let mut entered = false;
        loop {
            if let Outcome::Crashed(sig, r) = self.run(tr, regs.take(), Catch::All, &what)? {
                bail!(Failed, "{what} faulted with signal {sig} at {:#x}", r.rip)
            }
            // What the stop says of the call: no need for the registers.
            use crate::os::ptrace::SyscallStop;
            match (entered, crate::os::ptrace::syscall_stop(self.tid)?) {
                (false, SyscallStop::Entry(n)) if n == nr => entered = true,
                (false, SyscallStop::Entry(n)) => {
                    bail!(Failed, "{what}: unexpected system call {n}")
                }
                (false, _) => {}
                (true, SyscallStop::Exit(rval)) => return Ok(rval),
                (true, SyscallStop::Entry(n)) => {
                    bail!(Failed, "{what}: a second system call {n}")
                }
                (true, SyscallStop::Other) => {
                    bail!(Failed, "{what}: an unexpected stop")
                }
            }
        }
    }

    /// After the bootstrap calls: the thread's context back, and its stack as it was.
    fn boot_end(&mut self, tr: &mut Tracer, proc: &Process, frame: BootFrame) -> Result<()> {
        let blocked = self.frame_blocked.take() == Some(true);
        if self.leaked {
            return Ok(());
        }
        if blocked {
            tr.set_sigmask(self.tid, self.mask)?;
        }
        self.restore(tr)?;
        proc.write_unverified(frame.low, &frame.saved)
    }

    /// Map the private stack and code page. After this, calls and system calls run from
    /// rlivepatch's own memory. The empty memfds named `memfds` are made in the same
    /// hand-over as the page's set-up, for the steps of the run that fill them; returned
    /// with their descriptors in the target, or none when one could not be made (none is
    /// left open then: the caller makes them the usual way, which says why it fails).
    pub fn map_scratch(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        maps: &[Mapping],
        memfds: &[String],
    ) -> Result<(Scratch, Vec<(String, i32)>)> {
        // One memfd holds both: named in the maps from the first moment (a run killed
        // midway leaves something the next one recognises), and never merged with a
        // neighbouring anonymous mapping. The system calls that make it share one frame.
        let name = format!("{SCRATCH_NAME}\0");
        let frame = self.boot_begin(proc, maps, name.len())?;
        let made = self.scratch_calls(tr, proc, &frame, name.as_bytes());
        self.boot_end(tr, proc, frame)?;
        let (fd, scratch) = made?;
        self.scratch = Some(scratch);
        if let Err(e) = self.install(proc) {
            self.bootstrap_syscall(tr, proc, maps, libc::SYS_close, &[fd])?;
            return Err(e);
        }
        // Installed: the rest goes through the stub, in one batch when the page is
        // shared. The memory may stay mapped while patches are loaded (see
        // `Record::scratch`): a child forked meanwhile must not share it (a run on the
        // child would use the parent's stack and notify block), so it is not inherited at
        // all (one call when the two lie next to each other). Then the target's
        // descriptor is closed.
        let dontfork = libc::MADV_DONTFORK as u64;
        let madvise = |lo: u64, len: u64| Step::syscall(libc::SYS_madvise, &[lo, len, dontfork]);
        let Scratch { rw, code } = scratch;
        let mut steps = if code + CODE_SIZE == rw {
            vec![madvise(code, CODE_SIZE + RW_SIZE)]
        } else {
            vec![madvise(rw, RW_SIZE), madvise(code, CODE_SIZE)]
        };
        steps.push(Step::syscall(libc::SYS_close, &[fd]));
        let setup = steps.len();
        // Their names go on rlivepatch's page; a name that cannot be written there
        // leaves them all to the caller.
        let names: Option<Vec<u64>> = memfds.iter().map(|n| self.put_cstr(proc, n).ok()).collect();
        let memfds = if names.is_some() { memfds } else { &[] };
        for at in names.unwrap_or_default() {
            let flags = MFD_CLOEXEC | MFD_EXEC;
            steps.push(Step::syscall(libc::SYS_memfd_create, &[at, flags]));
        }
        let done = self.batch(tr, &steps, "setting up rlivepatch's memory")?;
        let made = self.made_memfds(tr, memfds, done.get(setup..).unwrap_or_default())?;
        let done = &done[..done.len().min(setup)];
        if done.len() < setup {
            let failed = *done.last().unwrap_or(&0) as i64;
            let closed = self.syscall(tr, libc::SYS_close, &[fd]);
            self.unmap_scratch(tr, proc, maps)?;
            closed?;
            returned(
                failed,
                "madvise(MADV_DONTFORK) of rlivepatch's memory",
                proc.pid,
            )?;
        }
        let closed = *done.last().unwrap_or(&0) as i64;
        returned(closed, "closing rlivepatch's memfd", proc.pid)?;
        Ok((scratch, made))
    }

    /// The memfds of [`Injector::map_scratch`]'s batch, named `names`, from what their
    /// `memfd_create` steps returned (`fds`: as many as ran). All or none: when one
    /// failed or did not run, those made are closed.
    fn made_memfds(
        &mut self,
        tr: &mut Tracer,
        names: &[String],
        fds: &[u64],
    ) -> Result<Vec<(String, i32)>> {
        let failed = fds.iter().any(|&v| Check::Errno.failed(v));
        if fds.len() == names.len() && !failed {
            let fds = fds.iter().map(|&fd| fd as i32);
            return Ok(names.iter().cloned().zip(fds).collect());
        }
        let closes: Vec<Step> = fds
            .iter()
            .filter(|&&v| !Check::Errno.failed(v))
            .map(|&fd| Step::syscall(libc::SYS_close, &[fd]))
            .collect();
        if !closes.is_empty() {
            self.batch(tr, &closes, "close")?;
        }
        Ok(Vec::new())
    }

    /// The system calls of [`Injector::map_scratch`], on one bootstrap frame: the memfd,
    /// its size, the read-write mapping (shared: rlivepatch maps its first page too, the
    /// notify block) and the code page. Returns the target's descriptor and the memory;
    /// on a failure after the memfd, it is closed.
    fn scratch_calls(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        frame: &BootFrame,
        name: &[u8],
    ) -> Result<(u64, Scratch)> {
        let memfd = libc::SYS_memfd_create;
        let mut fd = self.boot_call(
            tr,
            proc,
            frame,
            memfd,
            &[BOOT_DATA, MFD_CLOEXEC | MFD_EXEC],
            name,
        )?;
        if fd == -(libc::EINVAL as i64) {
            fd = self.boot_call(tr, proc, frame, memfd, &[BOOT_DATA, MFD_CLOEXEC], name)?;
        }
        if fd < 0 {
            return Err(memfd_error(proc.pid, fd));
        }
        let fd = fd as u64;
        // A copy of the descriptor (Linux 5.6): it sizes the file from here (a call fewer
        // in the target) and maps the notify block for us.
        let own = crate::os::shared::fd_of(proc.pid, fd as i32)
            .map_err(|e| crate::os::fault::trace(&format!("no copy of the scratch memfd: {e}")))
            .ok();
        let r = (|| -> Result<Scratch> {
            let sized = own
                .as_ref()
                .is_some_and(|f| nix::unistd::ftruncate(f, (CODE_SIZE + RW_SIZE) as i64).is_ok());
            let t = if sized {
                0
            } else {
                let size = [fd, CODE_SIZE + RW_SIZE];
                self.boot_call(tr, proc, frame, libc::SYS_ftruncate, &size, &[])?
            };
            returned(t, "ftruncate", proc.pid)?;
            let prot_x = (libc::PROT_READ | libc::PROT_EXEC) as u64;
            let prot_rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let private = libc::MAP_PRIVATE as u64;
            let shared = libc::MAP_SHARED as u64;
            let rw_args = [0, RW_SIZE, prot_rw, shared, fd, CODE_SIZE];
            let rw = self.boot_call(tr, proc, frame, libc::SYS_mmap, &rw_args, &[])?;
            let rw = returned(rw, "mapping rlivepatch's memory", proc.pid)?;
            // The code page right below, when free (a hint: the kernel put the memory at
            // the top of a free range): then one call unmaps both.
            let code_args = [rw - CODE_SIZE, CODE_SIZE, prot_x, private, fd, 0];
            let code = self.boot_call(tr, proc, frame, libc::SYS_mmap, &code_args, &[])?;
            let code = match returned(code, "mapping rlivepatch's code", proc.pid) {
                Ok(c) => c,
                Err(e) => {
                    let unmap = [rw, RW_SIZE];
                    let _ = self.boot_call(tr, proc, frame, libc::SYS_munmap, &unmap, &[]);
                    return Err(e);
                }
            };
            // Our own view of the notify block, through a copy of the target's memfd
            // descriptor; without it (an old kernel), calls stop at each system call.
            self.notify = own
                .as_ref()
                .and_then(|f| crate::os::shared::SharedPage::map(f, CODE_SIZE).ok())
                .map(std::sync::Arc::new);
            Ok(Scratch { rw, code })
        })();
        match r {
            Ok(s) => Ok((fd, s)),
            Err(e) => {
                self.boot_call(tr, proc, frame, libc::SYS_close, &[fd], &[])?;
                Err(e)
            }
        }
    }

    /// Use scratch memory that is already mapped (left by an earlier step of this run).
    pub fn adopt_scratch(
        &mut self,
        proc: &Process,
        scratch: Scratch,
        notify: Option<std::sync::Arc<crate::os::shared::SharedPage>>,
    ) -> Result<()> {
        self.scratch = Some(scratch);
        self.notify = notify;
        self.install(proc)
    }

    fn install(&mut self, proc: &Process) -> Result<()> {
        let s = self.scratch.unwrap();
        proc.write_unverified(s.code, &STUB)?;
        proc.write_unverified(s.code + NOTIFY_STUB, notify_stub().bytes)?;
        let len = self.frame_len();
        self.frame_at = (s.rw + RW_SIZE - len) & !63;
        proc.write_unverified(self.frame_at, &self.frame(self.frame_at))?;
        let mut head = SCRATCH_MAGIC.to_vec();
        head.resize(DATA_START as usize, 0);
        proc.write_unverified(s.rw, &head)?;
        self.data_next = s.rw + DATA_START;
        Ok(())
    }

    /// Lend the main arena `arena` to the borrowed thread through its `thread_arena`
    /// `slot`: noted in the scratch memory first, so that a run killed meanwhile leaves
    /// what `repair` needs to give it back.
    pub fn lend_arena(&mut self, proc: &Process, slot: u64, arena: u64) -> Result<()> {
        let s = self
            .scratch
            .ok_or_else(|| err!(Failed, "no scratch memory"))?;
        let mut note = slot.to_le_bytes().to_vec();
        note.extend(arena.to_le_bytes());
        note.extend((self.tid as u64).to_le_bytes());
        proc.write(s.rw + LENT_NOTE, &note)?;
        proc.write(slot, &arena.to_le_bytes())?;
        self.lent_arena = Some((slot, arena));
        Ok(())
    }

    /// Take back the main arena lent to the borrowed thread (see [`Injector::lend_arena`]),
    /// if it is: its `thread_arena` goes back to none, then the note for `repair` goes.
    /// Before a call after which the thread may exit without rlivepatch (the keeper's
    /// end): a thread that exits holding the loan leaves an arena it never joined, and
    /// glibc aborts the process at the second such exit.
    pub fn return_arena(&mut self, proc: &Process) -> Result<()> {
        if let Some((slot, arena)) = self.lent_arena.take() {
            // (Given back already if the thread went past the gate: see `reborrow`.)
            if proc.read_u64(slot)? == arena {
                proc.write(slot, &0u64.to_le_bytes())?;
            }
            if let Some(s) = self.scratch {
                proc.write(s.rw + LENT_NOTE, &[0u8; LENT_NOTE_LEN as usize])?;
            }
        }
        Ok(())
    }

    /// Unmap the private memory (unless a call still runs on it).
    pub fn unmap_scratch(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        maps: &[Mapping],
    ) -> Result<()> {
        if self.leaked {
            return Ok(());
        }
        self.settle_to_run(tr, "unmapping rlivepatch's memory")?;
        if let Some(s) = self.scratch.take() {
            // The kernel usually puts the two next to each other: then one call (each
            // costs two stops) unmaps both, and nothing else lies between them.
            let (lo, hi) = if s.rw + RW_SIZE == s.code {
                (s.rw, s.code + CODE_SIZE)
            } else if s.code + CODE_SIZE == s.rw {
                (s.code, s.rw + RW_SIZE)
            } else {
                self.bootstrap_syscall(tr, proc, maps, libc::SYS_munmap, &[s.code, CODE_SIZE])?;
                (s.rw, s.rw + RW_SIZE)
            };
            crate::os::fault::trace(&format!(
                "unmap scratch code {:#x} rw {:#x}: {lo:#x}-{hi:#x}",
                s.code, s.rw
            ));
            self.bootstrap_syscall(tr, proc, maps, libc::SYS_munmap, &[lo, hi - lo])?;
        }
        Ok(())
    }

    /// Copy bytes into the data area; returns their address in the target.
    pub fn put_data(&mut self, proc: &Process, bytes: &[u8]) -> Result<u64> {
        let s = self
            .scratch
            .ok_or_else(|| err!(Failed, "no scratch memory"))?;
        let at = (self.data_next + 15) & !15;
        if at + bytes.len() as u64 > s.rw + DATA_SIZE {
            self.data_next = s.rw + DATA_START;
            return self.put_data(proc, bytes);
        }
        proc.write_unverified(at, bytes)?;
        self.data_next = at + bytes.len() as u64;
        Ok(at)
    }

    /// Copy a C string into the data area.
    pub fn put_cstr(&mut self, proc: &Process, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put_data(proc, &b)
    }

    /// A system call in the target through the stub. Returns the raw result (negative
    /// errno on failure).
    pub fn syscall(&mut self, tr: &mut Tracer, nr: i64, args: &[u64]) -> Result<i64> {
        let what = format!("system call {nr}");
        self.one(tr, &Step::syscall(nr, args), &what)
            .map(|v| v as i64)
    }

    /// Call `func(args...)` in the target; returns `%rax`.
    pub fn call(&mut self, tr: &mut Tracer, func: u64, args: &[u64], what: &str) -> Result<u64> {
        self.one(tr, &Step::call(func, args, Check::Never), what)
    }

    /// Run `steps` one after the other on the borrowed thread, up to the first that
    /// fails its check; returns the results of those that ran (all of them, or up to and
    /// including the one that failed). Notified, the thread runs them all in one go and
    /// wakes rlivepatch once: one hand-over between the two processes instead of one per
    /// call, each of which waits for a CPU on a busy machine.
    pub fn batch(&mut self, tr: &mut Tracer, steps: &[Step], what: &str) -> Result<Vec<u64>> {
        let page = match &self.notify {
            Some(p) if steps.len() > 1 && steps.len() <= MAX_BATCH => p.clone(),
            _ => {
                let mut out = Vec::with_capacity(steps.len());
                for st in steps {
                    let v = self.one(tr, st, what)?;
                    out.push(v);
                    if st.failed(v) {
                        break;
                    }
                }
                return Ok(out);
            }
        };
        for (i, st) in steps.iter().enumerate() {
            let at = (NOTIFY_QUEUE + QUEUE_ENTRY * i as u64) as usize;
            let kind = if st.syscall { CMD_SYSCALL } else { CMD_CALL };
            page.store_u32(at, kind);
            page.store_u32(at + 4, st.check as u32);
            page.store_u64(at + 8, st.target);
            for (j, v) in st.args.iter().enumerate() {
                page.store_u64(at + 16 + 8 * j, *v);
            }
        }
        self.run_step(tr, &steps[0], what, steps.len() as u32)?;
        let ran = (page.load_u32(NOTIFY_QCUR as usize) as usize + 1).min(steps.len());
        Ok((0..ran)
            .map(|i| page.load_u64(NOTIFY_QRESULTS as usize + 8 * i))
            .collect())
    }

    /// One call on its own.
    fn one(&mut self, tr: &mut Tracer, step: &Step, what: &str) -> Result<u64> {
        self.run_step(tr, step, what, 0)
    }

    /// Run `step`, the first of a batch of `batch` calls (0: a single call); returns its
    /// result (of a batch: the last call's that ran).
    fn run_step(&mut self, tr: &mut Tracer, step: &Step, what: &str, batch: u32) -> Result<u64> {
        let s = self
            .scratch
            .ok_or_else(|| err!(Failed, "no scratch memory"))?;
        let mut r = self.ctx;
        r.rsp = self.frame_at;
        r.rax = step.target;
        let a = step.args;
        (r.rdi, r.rsi, r.rdx, r.r8, r.r9) = (a[0], a[1], a[2], a[4], a[5]);
        // A function takes its fourth argument in %rcx, a system call in %r10.
        if step.syscall {
            r.r10 = a[3];
        } else {
            r.rcx = a[3];
        }
        r.orig_rax = u64::MAX;
        r.eflags &= !(0x400 | 0x100);
        let kind = if step.syscall { CMD_SYSCALL } else { CMD_CALL };
        if self.notify.is_some() {
            r.rip = s.code
                + NOTIFY_STUB
                + if step.syscall {
                    notify_stub().syscall
                } else {
                    notify_stub().call
                };
            r.r15 = s.rw + NOTIFY;
            return self.run_notified(tr, &r, kind, what, batch);
        }
        let (entry, done) = if step.syscall {
            (STUB_SYSCALL, STUB_SYSCALL_DONE)
        } else {
            (STUB_CALL, STUB_CALL_DONE)
        };
        r.rip = s.code + entry;
        let out = self.run(tr, Some(&r), Catch::At(vec![s.code + done]), what)?;
        self.finish(tr, out, what)
    }

    /// Run a notified call from `regs` (at the notify stub, `%r15` at the block, `kind`
    /// [`CMD_SYSCALL`] or [`CMD_CALL`]): the thread runs without syscall stops; the
    /// stub's futex wake says it is done; then it waits at the gate, where the next
    /// call is handed to it, or [`Injector::settle`] takes it back. Returns the call's
    /// result.
    fn run_notified(
        &mut self,
        tr: &mut Tracer,
        regs: &Regs,
        kind: u32,
        what: &str,
        batch: u32,
    ) -> Result<u64> {
        let page = self.notify.clone().expect("a notify page");
        // The page is the read-write area's first: the block at its own offsets.
        page.store_u32(NOTIFY as usize, 0);
        page.store_u64(NOTIFY_RESULT as usize, 0);
        page.store_u32(NOTIFY_QCUR as usize, 0);
        page.store_u32(NOTIFY_QLEN as usize, batch);
        let posted = self.parked && post(&page, regs, kind);
        if posted {
            crate::os::fault::point("inject:posted");
        } else {
            // Not waiting at the gate (first call, or it left): started from its stop.
            self.settle_to_run(tr, what)?;
            page.store_u32(NOTIFY_CMD as usize, 0);
            page.store_u32(NOTIFY_MODE as usize, self.gate as u32);
            if let Some(s) = self.scratch {
                page.store_u64(NOTIFY_WAITV as usize, 0);
                page.store_u64(NOTIFY_WAITV as usize + 8, s.rw + NOTIFY_CMD);
                page.store_u64(NOTIFY_WAITV as usize + 16, FUTEX2_SIZE_U32 as u64);
            }
            page.store_u64(NOTIFY_TIMEOUT as usize, GATE_TIMEOUT.as_secs());
            page.store_u64(
                NOTIFY_TIMEOUT as usize + 8,
                GATE_TIMEOUT.subsec_nanos() as u64,
            );
            self.start_run(tr, Some(regs), false, Catch::Nothing)?;
        }
        self.parked = false;
        crate::os::fault::trace(what);
        let deadline = Instant::now() + self.call_timeout;
        // The futex wakes us when the call is done, but not for the thread's ptrace
        // events (a clone in the call waits for us): those are looked for between
        // slices that start short and grow, and start short again after one.
        const FIRST_SLICE: Duration = Duration::from_micros(50);
        let mut slice = FIRST_SLICE;
        while page.load_u32(NOTIFY as usize) == 0 {
            if let Some(out) = self.check_in_call(tr, what)? {
                let Outcome::Crashed(sig, r) = out else {
                    unreachable!("check_in_call reports crashes only")
                };
                return self.crashed(tr, sig, *r, what);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.left_running(tr, what));
            }
            page.wait_while(NOTIFY as usize, 0, (deadline - now).min(slice));
            slice = if tr.pump(Instant::now())? {
                FIRST_SLICE
            } else {
                (slice * 2).min(Duration::from_millis(2))
            };
        }
        let result = page.load_u64(NOTIFY_RESULT as usize);
        self.parked = true;
        crate::os::fault::point("inject:notified");
        if self.gate == Gate::Poll {
            // In the `ppoll` gate: taken back now.
            self.settle(tr)?;
        }
        Ok(result)
    }

    /// Take back a thread that waits at the gate after a notified call: stopped there
    /// and given its context back, as at the `rt_sigreturn` stop of [`Injector::run`];
    /// found back in its own code (the gate timed out), borrowed again where it stops.
    /// Everything that stops, reads or lets go of the borrowed thread, or stops every
    /// thread, comes after this (the injector's own steps call it; the session's switch
    /// and its giving the thread back do too).
    pub fn settle(&mut self, tr: &mut Tracer) -> Result<()> {
        if !self.parked {
            return Ok(());
        }
        self.parked = false;
        let Some(s) = self.scratch else {
            bail!(
                Failed,
                "thread {} waits at a gate with no scratch memory",
                self.tid
            );
        };
        // No longer in a call: an interrupt stop is kept.
        if let Some(th) = tr.threads.get_mut(&self.tid) {
            th.in_call = false;
        }
        tr.stop_these(&[self.tid], Instant::now() + self.call_timeout)?;
        if !tr.threads.contains_key(&self.tid) {
            self.ended();
            return Ok(());
        }
        let r = tr.regs(self.tid)?;
        let stub = s.code + NOTIFY_STUB;
        let Some(th) = tr.threads.get_mut(&self.tid) else {
            bail!(Target, "thread {} exited at the gate", self.tid);
        };
        if (stub..stub + notify_stub().bytes.len() as u64).contains(&r.rip) {
            // At the gate (or on its way in or out). Signals are blocked and no call
            // runs, so the only stops are ours, or job control's: the thread took its
            // part in such a stop during the call (resumed to finish it, as a thread in
            // a call is), so a group stop reported here is our interrupt's. It is ours as
            // the old end of a call at its `rt_sigreturn` stop was: resumed by a plain
            // continue, not left listening.
            if let Some(Stop::Group(_)) = th.stop {
                th.stop = Some(Stop::Interrupt);
            }
            self.end_run(tr);
            self.restore(tr)
        } else {
            // Past the gate: it returned by itself (its frame's rt_sigreturn) and ran
            // its own code; it is borrowed again where it stops next with nothing to
            // deliver (a stop of its own, a fault or a signal, is its own). Its mask is
            // its own code's now, not the one it had when borrowed: a signal it unblocked
            // since and took is delivered under it (set back to the old mask, the kernel
            // would queue that signal again, behind those sent after it).
            self.end_run_keeping_mask(tr);
            self.reborrow(tr)
        }
    }

    /// While a notified call runs: a fault of the call (as a crash), a stop signal for
    /// the process (passed on), a stray stop (resumed), the process gone (an error).
    fn check_in_call(&mut self, tr: &mut Tracer, what: &str) -> Result<Option<Outcome>> {
        let Some(th) = tr.threads.get(&self.tid) else {
            bail!(Target, "thread {} exited during {what}", self.tid);
        };
        match th.stop {
            Some(Stop::Signal(sig)) if is_fault(self.tid) => {
                let r = tr.regs(self.tid)?;
                return Ok(Some(Outcome::Crashed(sig, Box::new(r))));
            }
            Some(_) => tr.resume(self.tid)?,
            None => {}
        }
        still_there(tr, what)?;
        Ok(None)
    }

    /// A notified call that crashed: the thread restored, the error.
    fn crashed(&mut self, tr: &mut Tracer, sig: i32, r: Regs, what: &str) -> Result<u64> {
        self.end_run(tr);
        if let Some(th) = tr.threads.get_mut(&self.tid) {
            th.pending_signal = None;
        }
        self.finish(tr, Outcome::Crashed(sig, Box::new(r)), what)
    }

    /// A call that did not return in time: left to finish on its own (see `run`).
    fn left_running(&mut self, tr: &mut Tracer, what: &str) -> crate::error::Error {
        self.end_run(tr);
        self.leaked = true;
        err!(
            Incomplete,
            "{what} did not return within {}s in thread {}; it was left to finish on its own; run `rlivepatch list {}` later to see the outcome",
            self.call_timeout.as_secs(),
            self.tid,
            tr.pid
        )
    }

    /// [`Injector::settle`], for a call to run next on the thread.
    fn settle_to_run(&mut self, tr: &mut Tracer, what: &str) -> Result<()> {
        self.settle(tr)?;
        if self.gone {
            // Its wait at the gate ran out while rlivepatch waited for a CPU: a busy
            // machine, which a retry may not meet.
            bail!(
                Busy,
                "thread {} of process {} ended on its own before {what} (rlivepatch was slow to take it back on a busy machine); retry",
                self.tid,
                tr.pid
            );
        }
        Ok(())
    }

    /// The thread ended in its own code after its gate timed out. Leaving the gate, the
    /// stub gave back the arena lent to it; nothing of rlivepatch's is on its stack.
    fn ended(&mut self) {
        crate::os::fault::trace("borrowed thread ended in its own code");
        self.lent_arena = None;
        self.gone = true;
    }

    /// The thread went past the gate and back to its own code: take its context where
    /// it is stopped now, and write the frame for the next call.
    fn reborrow(&mut self, tr: &mut Tracer) -> Result<()> {
        // A signal its own code got meanwhile is delivered first (a borrow starts at a
        // stop with nothing pending): let it go and stop it again.
        for _ in 0..100 {
            let Some(th) = tr.threads.get(&self.tid) else {
                self.ended();
                return Ok(());
            };
            if !matches!(th.stop, Some(Stop::Signal(_))) {
                break;
            }
            tr.resume(self.tid)?;
            tr.stop_these(&[self.tid], Instant::now() + self.call_timeout)?;
        }
        if tr
            .threads
            .get(&self.tid)
            .is_some_and(|t| matches!(t.stop, Some(Stop::Signal(_))))
        {
            bail!(
                Busy,
                "thread {} keeps receiving signals; it could not be borrowed again",
                self.tid
            );
        }
        let regs = tr.regs(self.tid)?;
        let rewind =
            crate::os::restart::Signals::of(tr.pid, self.tid).is_some_and(|s| !s.interrupting());
        self.ctx = crate::os::restart::restart_adjusted(&regs, rewind);
        self.restored = false;
        self.gate = self.gate();
        self.xstate = tr.xstate(self.tid)?;
        self.mask = tr.sigmask(self.tid)?;
        // The frame beneath the next calls holds this context now.
        let proc = Process::open(tr.pid)?;
        proc.write_unverified(self.frame_at, &self.frame(self.frame_at))?;
        // Leaving the gate, the thread gave back the arena lent to it: lent again unless
        // its own code made it one of its own meanwhile (then the loader uses that one).
        if let (Some((slot, arena)), Some(s)) = (self.lent_arena, self.scratch) {
            if proc.read_u64(slot)? == 0 {
                self.lend_arena(&proc, slot, arena)?;
            } else {
                self.lent_arena = None;
                proc.write(s.rw + LENT_NOTE, &[0u8; LENT_NOTE_LEN as usize])?;
            }
        }
        crate::os::fault::trace("borrowed thread went past the gate: borrowed again");
        Ok(())
    }

    fn finish(&mut self, tr: &mut Tracer, out: Outcome, what: &str) -> Result<u64> {
        match out {
            Outcome::Caught => {
                let r = tr.regs(self.tid)?;
                if r.orig_rax != SYS_RT_SIGRETURN {
                    self.restore(tr)?;
                    bail!(
                        Failed,
                        "{what}: stopped at an unexpected system call {}",
                        r.orig_rax as i64
                    );
                }
                self.restore(tr)?;
                Ok(r.rdi)
            }
            Outcome::Crashed(sig, r) => {
                self.restore(tr)?;
                bail!(
                    Failed,
                    "{what} crashed with signal {sig} ({}) at {:#x}; the call was abandoned and the thread restored",
                    nix::sys::signal::Signal::try_from(sig)
                        .map(|s| s.as_str())
                        .unwrap_or("?"),
                    r.rip
                )
            }
        }
    }

    /// `dlopen(path, flags)`; `Ok(Err(text))` carries `dlerror()`'s text when it fails.
    pub fn dlopen(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        path: &str,
        flags: i32,
    ) -> Result<std::result::Result<u64, String>> {
        let p = self.put_cstr(proc, path)?;
        let handle = self.call(tr, self.libc.dlopen, &[p, flags as u64], "dlopen")?;
        if handle != 0 {
            return Ok(Ok(handle));
        }
        Ok(Err(self.dlerror(tr, proc)?))
    }

    /// `dlerror()`'s text, after a `dlopen` that failed.
    pub fn dlerror(&mut self, tr: &mut Tracer, proc: &Process) -> Result<String> {
        Ok(match self.libc.dlerror {
            Some(f) => {
                let msg = self.call(tr, f, &[], "dlerror")?;
                if msg == 0 {
                    "unknown error".to_string()
                } else {
                    proc.read_cstr(msg, 4096)?
                }
            }
            None => "dlopen failed (no dlerror in this C library)".to_string(),
        })
    }

    /// `dlclose(handle)`.
    pub fn dlclose(&mut self, tr: &mut Tracer, handle: u64) -> Result<i32> {
        Ok(self.call(tr, self.libc.dlclose, &[handle], "dlclose")? as i32)
    }

    /// Open a new memfd in the target holding `bytes`; returns its fd number there.
    pub fn memfd_with(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        name: &str,
        bytes: &[u8],
    ) -> Result<i32> {
        self.memfd_sized(tr, proc, name, bytes, None)
    }

    /// [`Injector::memfd_with`], the file then sized to `size` bytes (from here: a call
    /// fewer in the target).
    pub fn memfd_sized(
        &mut self,
        tr: &mut Tracer,
        proc: &Process,
        name: &str,
        bytes: &[u8],
        size: Option<u64>,
    ) -> Result<i32> {
        let fd = self.memfds(tr, proc, &[name])?[0];
        if let Err(e) = fill_memfd(proc, fd, name, bytes, size) {
            let _ = self.syscall(tr, libc::SYS_close, &[fd as u64]);
            return Err(e);
        }
        Ok(fd)
    }

    /// New empty memfds in the target, named `names`, made in one batch; returns their
    /// descriptors there. On a failure none is left open.
    pub fn memfds(&mut self, tr: &mut Tracer, proc: &Process, names: &[&str]) -> Result<Vec<i32>> {
        let mut at = Vec::with_capacity(names.len());
        for n in names {
            at.push(self.put_cstr(proc, n)?);
        }
        let made = |inj: &mut Injector, tr: &mut Tracer, flags: u64| {
            let steps: Vec<Step> = at
                .iter()
                .map(|&n| Step::syscall(libc::SYS_memfd_create, &[n, flags]))
                .collect();
            inj.batch(tr, &steps, "memfd_create")
        };
        let mut fds = made(self, tr, MFD_CLOEXEC | MFD_EXEC)?;
        if fds.first() == Some(&(-(libc::EINVAL as i64) as u64)) {
            // Kernels before 6.3 do not know MFD_EXEC (and their memfds are executable).
            fds = made(self, tr, MFD_CLOEXEC)?;
        }
        if fds.len() == names.len() && !fds.iter().any(|&v| Check::Errno.failed(v)) {
            return Ok(fds.into_iter().map(|v| v as i32).collect());
        }
        let failed = fds.pop().unwrap_or(-(libc::EIO as i64) as u64) as i64;
        let closes: Vec<Step> = fds
            .iter()
            .map(|&fd| Step::syscall(libc::SYS_close, &[fd]))
            .collect();
        self.batch(tr, &closes, "close")?;
        Err(memfd_error(proc.pid, failed))
    }
}

/// Write `bytes` into the target's memfd `fd` (named `name`, for messages), then size it
/// to `size` bytes, from here through `/proc/PID/fd`.
pub fn fill_memfd(
    proc: &Process,
    fd: i32,
    name: &str,
    bytes: &[u8],
    size: Option<u64>,
) -> Result<()> {
    let path = format!("/proc/{}/fd/{fd}", proc.pid);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, bytes)?;
            size.map_or(Ok(()), |n| f.set_len(n))
        })
        .with_context(|| format!("writing {name} into {path}"))
}

/// Hand the call `regs` describes (`kind`: [`CMD_SYSCALL`] or [`CMD_CALL`]) to a thread
/// waiting at the gate: the function or number and arguments first, then the command
/// word, claimed with a compare-and-exchange and woken. False when the thread left the
/// gate (the word says [`CMD_LEAVE`]): then it is taken back where it is.
fn post(page: &crate::os::shared::SharedPage, regs: &Regs, kind: u32) -> bool {
    let fourth = if kind == CMD_CALL { regs.rcx } else { regs.r10 };
    page.store_u64(NOTIFY_FN as usize, regs.rax);
    for (i, v) in [regs.rdi, regs.rsi, regs.rdx, fourth, regs.r8, regs.r9]
        .into_iter()
        .enumerate()
    {
        page.store_u64(NOTIFY_ARGS as usize + 8 * i, v);
    }
    if page.compare_exchange_u32(NOTIFY_CMD as usize, 0, kind) != 0 {
        return false;
    }
    page.wake(NOTIFY_CMD as usize);
    true
}

/// The result of a system call made in process `pid` (`what` it did), or the error that
/// names it and its errno.
pub fn returned(ret: i64, what: &str, pid: i32) -> Result<u64> {
    if ret < 0 {
        bail!(
            Failed,
            "{what} in process {pid} failed: {}",
            std::io::Error::from_raw_os_error(-ret as i32)
        );
    }
    Ok(ret as u64)
}

/// The error for a failed `memfd_create` in the target (`ret` is its -errno).
fn memfd_error(pid: i32, ret: i64) -> crate::error::Error {
    if ret == -(libc::EACCES as i64) {
        // vm.memfd_noexec = 2 in the target's pid namespace forbids executable memfds,
        // which is how rlivepatch maps its own code and loads patches.
        return err!(
            Target,
            "process {pid} may not create executable memory files (vm.memfd_noexec is 2 for its pid namespace), which rlivepatch needs for its code and the patch; set it to 1 for that namespace and its parents, then retry"
        );
    }
    if ret == -(libc::EMFILE as i64) {
        return err!(
            Target,
            "process {pid} has as many files open as its limit allows (RLIMIT_NOFILE), and rlivepatch needs a few more for the patch; raise its limit (prlimit --pid {pid} --nofile=SOFT:HARD) or let it close some, then retry"
        );
    }
    err!(
        Failed,
        "memfd_create in process {pid} failed: {}",
        std::io::Error::from_raw_os_error(-ret as i32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notify_stub_is_what_the_assembler_makes() {
        let a = assemble_notify_stub().unwrap();
        assert_eq!(
            a.bytes, NOTIFY_STUB_CODE.bytes,
            "the stub changed: NOTIFY_STUB_CODE's bytes are now {:#04x?}",
            a.bytes
        );
        assert_eq!(
            (a.syscall, a.call),
            (NOTIFY_STUB_CODE.syscall, NOTIFY_STUB_CODE.call)
        );
        assert!(a.bytes.len() as u64 <= CODE_SIZE - NOTIFY_STUB);
    }

    /// The notified-call stub sits at the end of the code page: it must end inside it
    /// (a longer stub runs off the page and the borrowed thread faults).
    #[test]
    fn the_notify_stub_fits_at_the_end_of_the_code_page() {
        let len = notify_stub().bytes.len() as u64;
        assert!(
            NOTIFY_STUB + len <= CODE_SIZE,
            "stub of {len} bytes at {NOTIFY_STUB:#x}"
        );
    }
}
