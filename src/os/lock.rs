//! The lock that keeps two rlivepatch runs off one process at a time.
//!
//! It is an abstract UNIX socket named after the process (its pid and start time, so a
//! reused pid has another name): binding it succeeds for one holder only, the kernel frees
//! it when the holder exits however it exits (SIGKILL included), and it leaves nothing on
//! disk. It does not depend on which threads are traced, so rlivepatch is free to attach
//! the threads in the order that keeps signals right: the leader last, and to detach it
//! first (see [`crate::os::ptrace`]).

use crate::err;
use crate::error::Result;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use std::os::fd::{AsRawFd, OwnedFd};

/// A held lock on one process; released when dropped.
pub struct Lock {
    _fd: OwnedFd,
}

impl Lock {
    /// Take the lock on process `pid` started at `start_time` (ticks since boot), or
    /// `None` when another rlivepatch holds it.
    pub fn try_acquire(pid: i32, start_time: u64) -> Result<Option<Lock>> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err!(Failed, "creating the lock socket: {}", e.desc()))?;
        let name = format!("rlivepatch-lock:{pid}:{start_time}");
        let addr = UnixAddr::new_abstract(name.as_bytes())
            .map_err(|e| err!(Failed, "lock name: {}", e.desc()))?;
        match bind(fd.as_raw_fd(), &addr) {
            Ok(()) => Ok(Some(Lock { _fd: fd })),
            Err(nix::Error::EADDRINUSE) => Ok(None),
            Err(e) => Err(err!(
                Failed,
                "taking the lock on process {pid}: {}",
                e.desc()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let a = Lock::try_acquire(1, 42).unwrap();
        assert!(a.is_some());
        assert!(Lock::try_acquire(1, 42).unwrap().is_none());
        // Another process, or the same pid started at another time: another lock.
        assert!(Lock::try_acquire(1, 43).unwrap().is_some());
        drop(a);
        assert!(Lock::try_acquire(1, 42).unwrap().is_some());
    }
}
