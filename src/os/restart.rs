//! System calls a stop interrupted: what a thread resumes with so that the program sees
//! the call finish or restart as if rlivepatch had never stopped it.
//!
//! A ptrace stop wakes a thread blocked in a system call. Most calls then return one of
//! the kernel's internal restart codes, and the kernel runs them again by itself. A few
//! (`epoll_wait`, `semop`, `sigtimedwait`, socket calls with a timeout...) return `EINTR`
//! to the program even though no handler ran (signal(7), "Interruption of system calls and
//! library functions by stop signals"). rlivepatch's own stops must not show that: such a
//! call is set up to run again. A stop that a real signal caused is left alone: the
//! program would have seen that `EINTR` without rlivepatch too. And a signal the program
//! ignores would never have woken the thread without a tracer (the kernel drops it when
//! it is sent), so a call it interrupted is run again as well.

/// Registers as ptrace gives them.
type Regs = libc::user_regs_struct;

const SYS_RESTART_SYSCALL: u64 = 219;
const EINTR: i64 = libc::EINTR as i64;

/// System calls that Linux ends with `EINTR` when the thread is merely stopped and
/// resumed, and that do nothing before they fail so: running them again is what the
/// program would have seen. (`close` and `connect` are not here: both act before they
/// report `EINTR`.)
pub fn eintr_on_stop(nr: u64) -> bool {
    const CALLS: &[i64] = &[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvmmsg,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_io_getevents,
        333, // io_pgetevents
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive,
    ];
    CALLS.contains(&(nr as i64))
}

/// The calls of [`eintr_on_stop`] in which a thread sleeps waiting for events: a stray
/// wake-up (a signal the program ignores, queued only because the process is traced,
/// then taken by another thread) ends them with `EINTR`. A thread seen in one is watched
/// with syscall stops (see `ptrace::prepare_resume`); the plain I/O calls are left out,
/// since they fail so only on sockets with a timeout and watching every thread that
/// reads or writes would slow it down for nothing.
pub fn waits_for_events(nr: u64) -> bool {
    const CALLS: &[i64] = &[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_io_getevents,
        333, // io_pgetevents
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive,
    ];
    CALLS.contains(&(nr as i64))
}

/// Set a thread stopped right after a system call failed with `EINTR` (one of
/// [`eintr_on_stop`]) to make the call again. Returns whether the registers changed.
pub fn rewind_eintr(r: &mut Regs) -> bool {
    if (r.orig_rax as i64) >= 0 && r.rax as i64 == -EINTR && eintr_on_stop(r.orig_rax) {
        r.rax = r.orig_rax;
        r.rip -= 2;
        r.orig_rax = u64::MAX;
        return true;
    }
    false
}

/// Does a thread given back `ctx` (as [`restart_adjusted`] makes it) continue its system
/// call through the kernel's restart block (`restart_syscall`: an interrupted
/// `nanosleep`, `clock_nanosleep`, `poll`, or timed futex wait)? Then nothing may make a
/// system call on it that writes that block before it gets its context back.
pub fn continues_through_restart_block(ctx: &Regs) -> bool {
    ctx.rax == SYS_RESTART_SYSCALL
}

/// The registers a thread stopped at an interrupt stop resumes with, as the kernel would
/// compute them with no signal handler to run: an interrupted system call is restarted.
/// With `rewind` (the stop was rlivepatch's own), a call that failed with `EINTR` only
/// because of the stop runs again too.
pub fn restart_adjusted(r: &Regs, rewind: bool) -> Regs {
    let mut c = *r;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND: run it again.
                c.rax = r.orig_rax;
                c.rip -= 2;
            }
            -516 => {
                // ERESTART_RESTARTBLOCK: continue through restart_syscall.
                c.rax = SYS_RESTART_SYSCALL;
                c.rip -= 2;
            }
            _ if rewind => {
                rewind_eintr(&mut c);
            }
            _ => {}
        }
    }
    c.orig_rax = u64::MAX;
    c
}

/// Signals a thread would act on, from `/proc/PID/task/TID/status`: pending for it or for
/// the process, not blocked, and not ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    pending: u64,
    blocked: u64,
    ignored: u64,
    caught: u64,
}

/// Signals whose default action is to do nothing.
const DEFAULT_IGNORED: u64 =
    bit(libc::SIGCHLD) | bit(libc::SIGCONT) | bit(libc::SIGURG) | bit(libc::SIGWINCH);

const fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

impl Signals {
    /// Read the signal state of thread `tid` of process `pid`; `None` if it is gone.
    pub fn of(pid: i32, tid: i32) -> Option<Signals> {
        let text = crate::os::process::read_task_file(pid, tid, "status")?;
        Some(Signals::from_status(&String::from_utf8_lossy(&text)))
    }

    /// [`Signals::of`] and the thread's seccomp mode (`Seccomp:`), from one read of its
    /// status: choosing a thread to borrow needs both.
    pub fn with_seccomp(pid: i32, tid: i32) -> Option<(Signals, u32)> {
        let text = crate::os::process::read_task_file(pid, tid, "status")?;
        let text = String::from_utf8_lossy(&text);
        let mode = text
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Some((Signals::from_status(&text), mode))
    }

    /// The signal state in the text of a thread's `status` file.
    pub fn from_status(text: &str) -> Signals {
        let mask = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        Signals {
            pending: mask("SigPnd:") | mask("ShdPnd:"),
            blocked: mask("SigBlk:"),
            ignored: mask("SigIgn:"),
            caught: mask("SigCgt:"),
        }
    }

    /// Would the program do nothing on `sig` (`SIG_IGN`, or the default action ignores it)?
    pub fn ignores(&self, sig: i32) -> bool {
        if !(1..=64).contains(&sig) {
            return false;
        }
        let b = bit(sig);
        self.ignored & b != 0 || (DEFAULT_IGNORED & b != 0 && self.caught & b == 0)
    }

    /// Is a signal pending that the thread will act on (not blocked, not ignored)? Such a
    /// signal would have interrupted a system call without rlivepatch too.
    pub fn interrupting(&self) -> bool {
        let ignored = self.ignored | (DEFAULT_IGNORED & !self.caught);
        self.pending & !self.blocked & !ignored != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(nr: i64, rax: i64) -> Regs {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = nr as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restarts_what_the_kernel_would_and_rewinds_only_when_asked() {
        let c = restart_adjusted(&regs(libc::SYS_read, -512), false);
        assert_eq!((c.rax, c.rip), (libc::SYS_read as u64, 0x1000));
        let c = restart_adjusted(&regs(libc::SYS_nanosleep, -516), false);
        assert_eq!((c.rax, c.rip), (SYS_RESTART_SYSCALL, 0x1000));
        let c = restart_adjusted(&regs(libc::SYS_epoll_wait, -4), false);
        assert_eq!((c.rax as i64, c.rip), (-4, 0x1002));
        let c = restart_adjusted(&regs(libc::SYS_epoll_wait, -4), true);
        assert_eq!((c.rax, c.rip), (libc::SYS_epoll_wait as u64, 0x1000));
        // close acts before it reports EINTR: never run again.
        let c = restart_adjusted(&regs(libc::SYS_close, -4), true);
        assert_eq!((c.rax as i64, c.rip), (-4, 0x1002));
        assert_eq!(c.orig_rax, u64::MAX);
    }

    #[test]
    fn ignored_signals_do_not_interrupt() {
        let s = Signals {
            pending: bit(libc::SIGCHLD) | bit(libc::SIGPIPE),
            blocked: 0,
            ignored: bit(libc::SIGPIPE),
            caught: 0,
        };
        assert!(s.ignores(libc::SIGCHLD) && s.ignores(libc::SIGPIPE));
        assert!(!s.ignores(libc::SIGUSR1));
        assert!(!s.interrupting());
        let s = Signals {
            caught: bit(libc::SIGCHLD),
            ..s
        };
        assert!(s.interrupting());
        let s = Signals {
            blocked: bit(libc::SIGCHLD),
            ..s
        };
        assert!(!s.interrupting());
    }
}
