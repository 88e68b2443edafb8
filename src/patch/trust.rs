//! Who may decide what a patch file holds: a patch runs with the target's privileges, so
//! a file another user can change (or replace, through a directory they can write) is
//! not loaded into a process by root. sudo and systemd refuse such files the same way.
//! The check is made on the open file, and the very bytes read through that descriptor
//! are what is loaded (see [`super::Patch::load_with`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why `meta` (the open file at `path`, already resolved) may be changed by someone else
/// than root and the caller, or `None`. Checked when the caller is root or may trace
/// other users' processes (CAP_SYS_PTRACE): without either, the kernel lets a caller
/// trace only processes running as itself, which its own files cannot harm further.
pub fn untrusted(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && !may_trace_others() {
        return None;
    }
    let shown = path.display();
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "{shown} is writable by {} (mode {:o}); chmod go-w it",
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "{shown} is owned by uid {}, not by root; chown root it",
            meta.uid()
        ));
    }
    // Each directory on the way: one others may write without the sticky bit lets them
    // put another file at that name.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if let Ok(m) = std::fs::metadata(d)
            && m.mode() & 0o002 != 0
            && m.mode() & 0o1000 == 0
        {
            return Some(format!(
                "{shown} is in {}, which others may write (mode {:o}, no sticky bit); move the patch to a directory only root writes",
                d.display(),
                m.mode() & 0o7777
            ));
        }
        dir = d.parent();
    }
    None
}

/// Is CAP_SYS_PTRACE in this process's effective capabilities?
fn may_trace_others() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}
