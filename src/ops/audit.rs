//! The audit trail: one line in the system log for every operation that changes a
//! process (the kernel logs each livepatch transition the same way). Who ran it (uid and
//! login uid), the process (pid, start time, program, its build-id), the patch (name,
//! SHA-256 of what is loaded, signer) and the outcome. Sent to syslog's `/dev/log` (the
//! journal picks it up there); a log that cannot be reached changes no outcome. Test
//! builds send to `RLIVEPATCH_LOG_SOCKET` instead, when set.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A patch as the audit line shows it.
pub struct Audited<'a> {
    /// Its name.
    pub name: &'a str,
    /// SHA-256 of what is loaded, in hex.
    pub sha256: &'a str,
    /// Its signer, when signed.
    pub signer: Option<&'a str>,
}

/// Log `op` on process `pid` with its outcome (`ok`, or the error's kind and message).
pub fn record(op: &str, pid: i32, patch: Option<Audited>, outcome: &str) {
    // No syslog socket (no `/dev/log`): not tried again for each process of a run for a
    // second (a daemon's run is long: syslog may start meanwhile), nor the process read
    // for a line nobody takes.
    static NO_SOCKET_AT: Mutex<Option<Instant>> = Mutex::new(None);
    let no_socket = || NO_SOCKET_AT.lock().unwrap_or_else(|e| e.into_inner());
    if no_socket().is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    let line = line(op, pid, patch, outcome);
    let socket = if cfg!(debug_assertions) {
        std::env::var_os("RLIVEPATCH_LOG_SOCKET")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/dev/log".into())
    } else {
        "/dev/log".into()
    };
    // <PRI>: facility auth (4) priority notice (5); the tag is the program's.
    let msg = format!("<37>rlivepatch[{}]: {line}", std::process::id());
    // One socket for the run: a fleet run logs a line per process.
    static SOCKET: OnceLock<Option<std::os::unix::net::UnixDatagram>> = OnceLock::new();
    if let Some(s) = SOCKET.get_or_init(|| std::os::unix::net::UnixDatagram::unbound().ok())
        && let Err(e) = s.send_to(msg.as_bytes(), socket)
        // Only a missing socket: a listener that refuses may be a daemon restarting.
        && e.kind() == std::io::ErrorKind::NotFound
    {
        *no_socket() = Some(Instant::now());
    }
}

fn line(op: &str, pid: i32, patch: Option<Audited>, outcome: &str) -> String {
    let uid = nix::unistd::getuid().as_raw();
    static LOGINUID: OnceLock<String> = OnceLock::new();
    let loginuid = LOGINUID.get_or_init(|| {
        std::fs::read_to_string("/proc/self/loginuid")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unset".into())
    });
    let start = crate::os::process::start_time(&format!("/proc/{pid}/stat")).unwrap_or(0);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let build_id = crate::elf::objects::exe_identity(pid)
        .and_then(|i| i.build_id.clone())
        .unwrap_or_default();
    let mut s = format!(
        "{op} uid={uid} loginuid={loginuid} pid={pid} start={start} exe={exe:?} build_id={build_id}"
    );
    if let Some(p) = patch {
        s.push_str(&format!(
            " patch={} sha256={} signer={:?}",
            p.name,
            p.sha256,
            p.signer.unwrap_or("none")
        ));
    }
    s.push_str(&format!(" outcome={outcome:?}"));
    s
}
