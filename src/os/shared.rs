//! A page rlivepatch shares with a target: the same page of a memfd the target mapped
//! `MAP_SHARED`, mapped here too, so that the target can tell rlivepatch that an injected
//! call is done (a word it sets and a futex wake) without a ptrace stop per system call
//! the call makes (see `crate::remote::inject`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// A copy of the target's descriptor `fd`, for this process (`pidfd_getfd`, Linux 5.6;
/// the caller traces the target, which is the permission it needs).
pub fn fd_of(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd is a descriptor we just opened and own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd(2) takes a pidfd, a descriptor number in that process and
    // flags, and returns a new descriptor of ours or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor pidfd_getfd returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// One page of a shared file, mapped here.
pub struct SharedPage {
    ptr: *mut u8,
}

// SAFETY: the page is only accessed through atomics; the pointer stays valid until drop.
unsafe impl Send for SharedPage {}
// SAFETY: as above.
unsafe impl Sync for SharedPage {}

/// The page size the mapping uses.
pub const PAGE: usize = 4096;

impl SharedPage {
    /// Map page `offset` (a multiple of [`PAGE`]) of the file `fd`, shared.
    pub fn map(fd: &OwnedFd, offset: u64) -> std::io::Result<SharedPage> {
        // SAFETY: a new shared read-write mapping of one page of a file we hold; nothing
        // else in this process refers to that address range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedPage { ptr: p.cast() })
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= PAGE && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the page lives as long as self,
        // and the other side only touches it with single aligned stores and locked
        // compare-and-exchange.
        unsafe { &*(self.ptr.add(off) as *const AtomicU32) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= PAGE && off.is_multiple_of(8));
        // SAFETY: as in u32_at.
        unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
    }

    /// The 32-bit word at `off`.
    pub fn load_u32(&self, off: usize) -> u32 {
        self.u32_at(off).load(Ordering::SeqCst)
    }

    /// Set the 32-bit word at `off`.
    pub fn store_u32(&self, off: usize, v: u32) {
        self.u32_at(off).store(v, Ordering::SeqCst)
    }

    /// Set the 32-bit word at `off` to `new` if it is `old`; returns what it was.
    pub fn compare_exchange_u32(&self, off: usize, old: u32, new: u32) -> u32 {
        match self
            .u32_at(off)
            .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(v) | Err(v) => v,
        }
    }

    /// Wake one waiter on the 32-bit word at `off` (a shared futex: the target's
    /// `FUTEX_WAIT` on its own mapping of the page).
    pub fn wake(&self, off: usize) {
        let word = self.u32_at(off) as *const AtomicU32;
        // SAFETY: futex(2) FUTEX_WAKE on an aligned word of our mapping; it only wakes.
        unsafe { libc::syscall(libc::SYS_futex, word, libc::FUTEX_WAKE, 1) };
    }

    /// The 64-bit word at `off`.
    pub fn load_u64(&self, off: usize) -> u64 {
        self.u64_at(off).load(Ordering::SeqCst)
    }

    /// Set the 64-bit word at `off`.
    pub fn store_u64(&self, off: usize, v: u64) {
        self.u64_at(off).store(v, Ordering::SeqCst)
    }

    /// Sleep while the word at `off` is `val`, at most `timeout` (a shared futex: the
    /// target's `FUTEX_WAKE` on its own mapping of the page wakes it), or until a ptrace
    /// event of a traced thread (its SIGCHLD): a call that creates a thread stops in it
    /// until rlivepatch has seen the clone, which it would otherwise see only when the
    /// timeout ends.
    pub fn wait_while(&self, off: usize, val: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let word = self.u32_at(off) as *const AtomicU32;
        let child = child_wakes();
        // A SIGCHLD pending already is taken here (by the handler), and the wait skipped;
        // one arriving during the wait ends it (EINTR). One arriving in between is seen
        // only at the timeout, as without the handler.
        if let Some(set) = child {
            set.thread_unblock().ok();
        }
        if !CHILD_EVENT.swap(false, Ordering::SeqCst) {
            // SAFETY: futex(2) FUTEX_WAIT on an aligned word of our mapping, with a
            // timeout that lives across the call; an early return (EAGAIN, EINTR,
            // timeout) is fine.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word,
                    libc::FUTEX_WAIT,
                    val,
                    &ts as *const libc::timespec,
                )
            };
        }
        if let Some(set) = child {
            set.thread_block().ok();
        }
        CHILD_EVENT.store(false, Ordering::SeqCst);
    }
}

/// Set by the SIGCHLD handler of [`SharedPage::wait_while`].
static CHILD_EVENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_child(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    CHILD_EVENT.store(true, Ordering::SeqCst);
}

/// SIGCHLD with a handler that only notes it and does not restart system calls, so
/// that it ends a futex wait of a thread that unblocks it; elsewhere it stays blocked
/// and is read through the tracer's signalfd. `None` if the handler could not be set.
fn child_wakes() -> Option<&'static nix::sys::signal::SigSet> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
    static SET: std::sync::OnceLock<Option<SigSet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::Handler(on_child),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic (async-signal-safe); it replaces
        // SIGCHLD's default action, which ignores the signal and changes nothing about
        // how children are reaped.
        unsafe { nix::sys::signal::sigaction(Signal::SIGCHLD, &action) }.ok()?;
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        Some(set)
    })
    .as_ref()
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the page this value mapped; nothing refers to it after drop.
        unsafe { libc::munmap(self.ptr.cast(), PAGE) };
    }
}

/// Does this kernel have `futex_waitv` (Linux 5.16)? A timed wait in it that is
/// interrupted writes no restart block (it returns `ERESTARTSYS` and its timeout is
/// absolute), which makes it the gate every borrowed thread can wait at
/// (`crate::remote::inject`).
pub fn futex_waitv_supported() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: futex_waitv(2) with no waiters touches no memory: EINVAL when the
        // kernel has it, ENOSYS when not.
        let r = unsafe { libc::syscall(libc::SYS_futex_waitv, 0usize, 0u32, 0u32, 0usize, 0u32) };
        r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
    })
}
