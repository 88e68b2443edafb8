//! Seccomp: would the target's filter let rlivepatch's injected system calls through?
//!
//! A process under a seccomp filter (systemd's `SystemCallFilter=`, container profiles,
//! sandboxes) is killed, or sent SIGSYS, by a system call the filter does not allow, and
//! an injected call is no exception. So before the first injected call, the borrowed
//! thread's filters are read (`PTRACE_SECCOMP_GET_FILTER`) and run, here, on the system
//! calls that loading a patch makes: rlivepatch's own (memory files, mappings) and those
//! of `dlopen`. Any answer but "allow" (or "log") refuses the operation before anything
//! changed. A filter that cannot be read (no `CAP_SYS_ADMIN`) refuses too: guessing would
//! risk the process.

use crate::error::Result;
use crate::{bail, err};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Insn {
    /// Operation.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// What a filter sees of a system call (`struct seccomp_data`).
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// System call number.
    pub nr: i32,
    /// Where the `syscall` instruction is.
    pub ip: u64,
    /// The arguments.
    pub args: [u64; 6],
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const DATA_LEN: u32 = 64;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const ACTION: u32 = 0xffff_0000;

impl Call {
    /// The bytes of `struct seccomp_data` for this call, as the filter loads them.
    fn data(&self) -> [u8; DATA_LEN as usize] {
        let mut d = [0u8; DATA_LEN as usize];
        d[0..4].copy_from_slice(&self.nr.to_le_bytes());
        d[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
        d[8..16].copy_from_slice(&self.ip.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }
}

/// Run one filter on one call, as the kernel does. `None` for an instruction the kernel
/// would not have accepted in a filter (the program cannot be judged).
pub fn run(prog: &[Insn], call: &Call) -> Option<u32> {
    let data = call.data();
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    loop {
        let i = *prog.get(pc)?;
        pc += 1;
        let src = if i.code & 0x08 != 0 { x } else { i.k };
        match i.code & 0x07 {
            // LD
            0x00 => match i.code & 0xf8 {
                0x20 => {
                    // W | ABS: the kernel only accepts aligned loads inside seccomp_data.
                    let o = i.k as usize;
                    if !o.is_multiple_of(4) || o + 4 > data.len() {
                        return None;
                    }
                    a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                0x80 => a = DATA_LEN,
                0x00 => a = i.k,
                0x60 => a = *mem.get(i.k as usize)?,
                _ => return None,
            },
            // LDX
            0x01 => match i.code & 0xf8 {
                0x80 => x = DATA_LEN,
                0x00 => x = i.k,
                0x60 => x = *mem.get(i.k as usize)?,
                _ => return None,
            },
            // ST, STX
            0x02 => *mem.get_mut(i.k as usize)? = a,
            0x03 => *mem.get_mut(i.k as usize)? = x,
            // ALU
            0x04 => {
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    // Division by a zero X ends the program with 0, as in the kernel.
                    0x30 => match a.checked_div(src) {
                        Some(v) => v,
                        None => return Some(0),
                    },
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => match a.checked_rem(src) {
                        Some(v) => v,
                        None => return Some(0),
                    },
                    0xa0 => a ^ src,
                    _ => return None,
                }
            }
            // JMP
            0x05 => {
                let taken = match i.code & 0xf0 {
                    0x00 => {
                        pc = pc.checked_add(i.k as usize)?;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    _ => return None,
                };
                pc += if taken { i.jt } else { i.jf } as usize;
            }
            // RET
            0x06 => {
                return match i.code & 0x18 {
                    0x00 => Some(i.k),
                    0x10 => Some(a),
                    _ => None,
                };
            }
            // MISC
            _ => match i.code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return None,
            },
        }
    }
}

/// The action of several filters on one call: the one with the highest precedence wins
/// (kill first, allow last), as in the kernel.
pub fn action(filters: &[Vec<Insn>], call: &Call) -> Option<u32> {
    let mut best = RET_ALLOW;
    for f in filters {
        let r = run(f, call)? & ACTION;
        if (r as i32) < (best as i32) {
            best = r;
        }
    }
    Some(best)
}

fn action_name(a: u32) -> &'static str {
    match a {
        RET_KILL_PROCESS => "kill the process",
        RET_KILL_THREAD => "kill the thread",
        RET_TRAP => "send SIGSYS",
        RET_ERRNO => "fail with an error",
        RET_USER_NOTIF => "ask a supervisor",
        RET_TRACE => "stop for a tracer",
        _ => "not run it",
    }
}

/// Read the filters of a stopped, traced thread, newest first.
pub fn filters(tid: i32) -> std::result::Result<Vec<Vec<Insn>>, std::io::Error> {
    let mut out = Vec::new();
    for index in 0usize.. {
        // SAFETY: with a null buffer the call only returns the filter's length.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) && index > 0 {
                break;
            }
            return Err(e);
        }
        let mut prog = vec![Insn::default(); n as usize];
        // SAFETY: the buffer holds the n instructions the kernel said the filter has;
        // filters never change once installed.
        let m = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                prog.as_mut_ptr() as *mut libc::c_void,
            )
        };
        if m != n {
            return Err(std::io::Error::last_os_error());
        }
        out.push(prog);
    }
    Ok(out)
}

/// The system calls loading a patch makes, with the arguments that matter to filters
/// that look at them (memory protections, flags). `ip` is where the thread is.
fn planned(ip: u64) -> Vec<(&'static str, Call)> {
    const PROT_R: u64 = libc::PROT_READ as u64;
    const PROT_RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    const PROT_RX: u64 = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    const PRIVATE: u64 = libc::MAP_PRIVATE as u64;
    const FIXED: u64 = libc::MAP_FIXED as u64;
    const ANON: u64 = libc::MAP_ANONYMOUS as u64;
    const DENYWRITE: u64 = libc::MAP_DENYWRITE as u64;
    const MFD: u64 = 0x1 | 0x10; // MFD_CLOEXEC | MFD_EXEC
    let at_fdcwd = libc::AT_FDCWD as i64 as u64;
    let o_rdonly = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    let c = |nr: i64, args: [u64; 6]| Call {
        nr: nr as i32,
        ip,
        args,
    };
    vec![
        // rlivepatch's own memory, the record and the patch's memory file.
        (
            "memfd_create",
            c(libc::SYS_memfd_create, [0x1000, MFD, 0, 0, 0, 0]),
        ),
        (
            "ftruncate",
            c(libc::SYS_ftruncate, [3, 0x10000, 0, 0, 0, 0]),
        ),
        (
            "mmap (read, execute)",
            c(libc::SYS_mmap, [0, 0x1000, PROT_RX, PRIVATE, 3, 0]),
        ),
        (
            "mmap (read, write)",
            c(libc::SYS_mmap, [0, 0x10000, PROT_RW, PRIVATE, 3, 0x1000]),
        ),
        ("munmap", c(libc::SYS_munmap, [0x1000, 0x1000, 0, 0, 0, 0])),
        ("close", c(libc::SYS_close, [3, 0, 0, 0, 0, 0])),
        ("rt_sigreturn", c(libc::SYS_rt_sigreturn, [0; 6])),
        // A thread leaving the gate on its own asks who it is (the lent arena's note).
        ("gettid", c(libc::SYS_gettid, [0; 6])),
        // What dlopen does with the file.
        (
            "openat",
            c(libc::SYS_openat, [at_fdcwd, 0x1000, o_rdonly, 0, 0, 0]),
        ),
        ("read", c(libc::SYS_read, [3, 0x1000, 832, 0, 0, 0])),
        ("pread64", c(libc::SYS_pread64, [3, 0x1000, 784, 64, 0, 0])),
        (
            "newfstatat",
            c(libc::SYS_newfstatat, [3, 0x1000, 0x1000, 0x1000, 0, 0]),
        ),
        (
            "mmap (file, read)",
            c(
                libc::SYS_mmap,
                [0, 0x4000, PROT_R, PRIVATE | DENYWRITE, 3, 0],
            ),
        ),
        (
            "mmap (file, read, execute)",
            c(
                libc::SYS_mmap,
                [
                    0x1000,
                    0x1000,
                    PROT_RX,
                    PRIVATE | FIXED | DENYWRITE,
                    3,
                    0x1000,
                ],
            ),
        ),
        (
            "mmap (anonymous, read, write)",
            c(
                libc::SYS_mmap,
                [0x1000, 0x1000, PROT_RW, PRIVATE | FIXED | ANON, u64::MAX, 0],
            ),
        ),
        (
            "mprotect (read)",
            c(libc::SYS_mprotect, [0x1000, 0x1000, PROT_R, 0, 0, 0]),
        ),
    ]
}

/// Refuse, with the reason, when thread `tid` (stopped, traced, at `ip`) of process `pid`
/// runs under seccomp and would not be let through for loading a patch. Otherwise say
/// whether it would be let through for the gate it may wait at between injected calls
/// (`clock_gettime`, then `futex_waitv`); without it, the thread waits where every filter
/// that allows loading a patch lets it (`crate::remote::inject`). One read of the
/// thread's status and filters answers both.
pub fn check(pid: i32, tid: i32, ip: u64) -> Result<WaitvGate> {
    // Unreadable only if the thread is gone: then no call will run on it.
    let mode = crate::os::process::read_thread_status(pid, tid).map_or(0, |s| s.seccomp);
    check_mode(pid, tid, ip, mode)
}

/// [`check`], with the thread's seccomp mode (`Seccomp:` of its status) read already.
pub fn check_mode(pid: i32, tid: i32, ip: u64, mode: u32) -> Result<WaitvGate> {
    match mode {
        0 => return Ok(WaitvGate(true)),
        1 => bail!(
            Target,
            "thread {tid} of process {pid} runs in seccomp strict mode, which allows no system call rlivepatch needs; this process cannot be patched"
        ),
        _ => {}
    }
    let filters = filters(tid).map_err(|e| {
        err!(
            Target,
            "process {pid} runs under a seccomp filter that rlivepatch cannot read ({e}); run rlivepatch as root (CAP_SYS_ADMIN) so that it can check the filter allows loading a patch"
        )
    })?;
    for (what, call) in planned(ip) {
        match action(&filters, &call) {
            Some(RET_ALLOW) | Some(RET_LOG) => {}
            Some(a) => bail!(
                Target,
                "the seccomp filter of process {pid} does not allow {what}, which loading a patch needs (it would {}); this process cannot be patched while the filter is in place",
                action_name(a)
            ),
            None => bail!(
                Target,
                "the seccomp filter of process {pid} holds an instruction rlivepatch cannot evaluate; refusing rather than risk the process"
            ),
        }
    }
    Ok(waitv_gate(&filters, ip))
}

/// Would a thread be let through for the `futex_waitv` gate (see [`check`])?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitvGate(pub bool);

fn waitv_gate(filters: &[Vec<Insn>], ip: u64) -> WaitvGate {
    let c = |nr: i64, args: [u64; 6]| Call {
        nr: nr as i32,
        ip,
        args,
    };
    let clock = libc::CLOCK_MONOTONIC as u64;
    WaitvGate(
        [
            c(libc::SYS_clock_gettime, [clock, 0x1000, 0, 0, 0, 0]),
            c(libc::SYS_futex_waitv, [0x1000, 1, 0, 0x1000, clock, 0]),
        ]
        .iter()
        .all(|call| matches!(action(filters, call), Some(RET_ALLOW) | Some(RET_LOG))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// The usual shape: check the architecture, kill on one call, allow the rest.
    fn deny(nr: u32, ret: u32) -> Vec<Insn> {
        vec![
            stmt(0x20, 4),                       // ld [arch]
            jump(0x15, AUDIT_ARCH_X86_64, 1, 0), // jeq x86_64
            stmt(0x06, RET_KILL_PROCESS),
            stmt(0x20, 0),         // ld [nr]
            jump(0x15, nr, 0, 1),  // jeq nr
            stmt(0x06, ret),       // ret action
            stmt(0x06, RET_ALLOW), // ret allow
        ]
    }

    fn call(nr: i64) -> Call {
        Call {
            nr: nr as i32,
            ip: 0,
            args: [0; 6],
        }
    }

    #[test]
    fn runs_filters_as_the_kernel() {
        let f = deny(libc::SYS_memfd_create as u32, RET_KILL_PROCESS);
        assert_eq!(run(&f, &call(libc::SYS_read)), Some(RET_ALLOW));
        assert_eq!(
            run(&f, &call(libc::SYS_memfd_create)),
            Some(RET_KILL_PROCESS)
        );
        // The strictest of several filters wins.
        let g = deny(libc::SYS_read as u32, RET_ERRNO | 1);
        let both = vec![f.clone(), g];
        assert_eq!(action(&both, &call(libc::SYS_read)), Some(RET_ERRNO));
        assert_eq!(
            action(&both, &call(libc::SYS_memfd_create)),
            Some(RET_KILL_PROCESS)
        );
        assert_eq!(action(&both, &call(libc::SYS_close)), Some(RET_ALLOW));
        // An argument check: mmap with PROT_EXEC (arg 2, low word at offset 32) is killed.
        let mdwe = vec![
            stmt(0x20, 0),
            jump(0x15, libc::SYS_mmap as u32, 0, 3),
            stmt(0x20, 32),
            jump(0x45, libc::PROT_EXEC as u32, 0, 1), // jset PROT_EXEC
            stmt(0x06, RET_KILL_PROCESS),
            stmt(0x06, RET_ALLOW),
        ];
        let mut m = call(libc::SYS_mmap);
        m.args[2] = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        assert_eq!(run(&mdwe, &m), Some(RET_KILL_PROCESS));
        m.args[2] = libc::PROT_READ as u64;
        assert_eq!(run(&mdwe, &m), Some(RET_ALLOW));
        // Unaligned or out-of-range loads and running off the end cannot be judged.
        assert_eq!(run(&[stmt(0x20, 2), stmt(0x06, 0)], &m), None);
        assert_eq!(run(&[stmt(0x20, 64), stmt(0x06, 0)], &m), None);
        assert_eq!(run(&[stmt(0x00, 1)], &m), None);
        // Scratch memory, X register and arithmetic.
        let arith = vec![
            stmt(0x00, 5), // ld #5
            stmt(0x02, 3), // st M[3]
            stmt(0x01, 2), // ldx #2
            stmt(0x2c, 0), // mul x
            stmt(0x61, 3), // ldx M[3]
            stmt(0x1c, 0), // sub x
            stmt(0x16, 0), // ret a
        ];
        assert_eq!(run(&arith, &m), Some(5));
    }
}
