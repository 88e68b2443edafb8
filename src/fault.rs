//! Fault injection for tests: `RLIVEPATCH_FAULT=<point>` makes rlivepatch kill itself
//! with SIGKILL when it reaches that point, exactly as an operator's `kill -9` would, so
//! that tests can prove the next run repairs every state a killed run leaves.

/// Die here if the environment asks for it.
pub fn point(name: &str) {
    if std::env::var("RLIVEPATCH_FAULT").is_ok_and(|v| v == name) {
        // SAFETY: raise(2) with SIGKILL ends this process; nothing to clean up.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}
