//! `rlivepatch watch`: processes started later, on hosts that refuse a global preload.
//!
//! The daemon marks the executables the persisted patches are for with fanotify
//! `FAN_OPEN_EXEC_PERM`: an `execve` of one of them waits in the kernel until the daemon
//! answers. Before answering it seizes the process (`PTRACE_O_TRACEEXEC`), so that the
//! new program stops at its exec event, before its first instruction; there it adds the
//! autoload library to the new program's environment (`LD_PRELOAD`, and where the
//! registry is), and lets it go. A set-user-ID or capability program gets the secure
//! copy of the library instead (the only preload its loader accepts: see
//! [`secure_copy`]), which reads the default registry and nothing of the environment.
//! Each exec handled is a line of the audit trail (`crate::ops::audit`). The loader then loads the library, whose constructor
//! applies the persisted patches before `main` exactly as with the preload route
//! ([`crate::persist`]), with every check of `apply`.
//!
//! Nothing can be left stopped: the exec waits only until the daemon answers, and a
//! daemon that dies first has its pending events allowed by the kernel; a tracee whose
//! tracer dies is detached and runs on. A process that cannot be seized (traced by a
//! debugger) is let go unpatched, with a line saying so. Only the marked files are
//! watched: other programs are never stopped, nor traced.

use crate::error::Result;
use crate::{bail, err};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use nix::sys::ptrace;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a process seized at its exec may take to reach its exec event (a failed
/// exec never does).
const EXEC_WAIT: Duration = Duration::from_secs(5);

/// The executables to watch: those given, else those of running processes whose
/// build-id a persisted patch names for `main`.
pub fn executables(given: &[PathBuf], reg: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for g in given {
        let p = std::fs::canonicalize(g)
            .map_err(|e| err!(Failed, "cannot watch {}: {e}", g.display()))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    let ids: Vec<String> = crate::persist::list(reg)?
        .into_iter()
        .flat_map(|e| e.build_ids)
        .filter(|(o, _)| o == "main")
        .map(|(_, id)| id)
        .collect();
    if given.is_empty()
        && !ids.is_empty()
        && let Ok(dir) = std::fs::read_dir("/proc")
    {
        for e in dir.flatten() {
            let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
                continue;
            };
            if out.contains(&exe) || exe.to_string_lossy().ends_with(" (deleted)") {
                continue;
            }
            let id = crate::elf::symbols::ElfFile::open(&exe)
                .ok()
                .and_then(|f| f.build_id_hex());
            if id.is_some_and(|id| ids.contains(&id)) {
                out.push(exe);
            }
        }
    }
    Ok(out)
}

/// Watch `exes` until killed, adding the autoload library of registry `reg` to every
/// program started from them. `progress` gets one line per event.
pub fn run(exes: &[PathBuf], reg: &Path, progress: &mut dyn FnMut(&str)) -> Result<()> {
    // rlivepatch blocks these for the signalfd of its operations; the daemon is stopped
    // with them (systemd's SIGTERM), at any moment (see the module's documentation).
    let mut stop = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        stop.add(s);
    }
    stop.thread_unblock()
        .map_err(|e| err!(Failed, "unblocking SIGTERM: {}", e.desc()))?;
    crate::persist::trusted(reg)?;
    let lib = crate::persist::library_path(reg);
    crate::persist::trusted(&lib).map_err(|e| {
        err!(
            Failed,
            "{}; `rlivepatch persist` writes the autoload library",
            e.message
        )
    })?;
    if exes.is_empty() {
        bail!(
            Mismatch,
            "nothing to watch: no running program matches a persisted patch; name the programs with --exe PATH"
        );
    }
    let fan = Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
    )
    .map_err(|e| {
        err!(
            Target,
            "fanotify is not available ({}): the daemon needs CAP_SYS_ADMIN and a kernel with fanotify permission events (Linux 5.0)",
            e.desc()
        )
    })?;
    for exe in exes {
        let dir = std::fs::File::open(exe.parent().unwrap_or(Path::new("/"))).map_err(|e| {
            err!(
                Failed,
                "cannot open the directory of {}: {e}",
                exe.display()
            )
        })?;
        let name = exe.file_name().unwrap_or_default();
        fan.mark(
            MarkFlags::FAN_MARK_ADD,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            &dir,
            Some(Path::new(name)),
        )
        .map_err(|e| err!(Failed, "cannot watch {}: {}", exe.display(), e.desc()))?;
    }
    let names: Vec<String> = exes.iter().map(|e| e.display().to_string()).collect();
    progress(&format!(
        "watching {} for execs: {}",
        crate::fmt::plural(exes.len(), "program", "programs"),
        names.join(", ")
    ));
    let env = Preload::new(&lib, reg);
    loop {
        let events = match fan.read_events() {
            Ok(e) => e,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!(Failed, "reading fanotify events: {}", e.desc()),
        };
        for ev in events {
            if !ev.mask().contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
                continue;
            }
            let Some(fd) = ev.fd() else { continue };
            let pid = ev.pid();
            crate::os::fault::point("watch:holding");
            // Seized while the exec waits: the new program stops before its first
            // instruction. A process that cannot be seized runs unpatched.
            let seized = pid != std::process::id() as i32
                && ptrace::seize(Pid::from_raw(pid), ptrace::Options::PTRACE_O_TRACEEXEC).is_ok();
            let answer = fan.write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
            if let Err(e) = answer {
                progress(&format!(
                    "pid {pid}: answering the exec failed: {}",
                    e.desc()
                ));
            }
            drop(ev);
            if !seized {
                progress(&format!(
                    "pid {pid}: could not be traced (another tracer?): it runs without the persisted patches"
                ));
                continue;
            }
            crate::os::fault::point("watch:seized");
            let said = match at_exec(pid, &env) {
                Ok(line) => line,
                Err(e) => e.message,
            };
            crate::ops::audit::record("watch", pid, None, &said);
            progress(&format!("pid {pid}: {said}"));
        }
    }
}

/// The environment entries the autoload route needs.
struct Preload {
    library: String,
    registry: PathBuf,
}

impl Preload {
    fn new(lib: &Path, reg: &Path) -> Preload {
        Preload {
            library: lib.display().to_string(),
            registry: reg.to_path_buf(),
        }
    }
}

/// Where the loader looks for a library named without a slash in a set-user-ID program:
/// its trusted system directories only.
const SECURE_DIRS: [&str; 2] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64"];
/// The name the secure copy of the autoload library has there.
const SECURE_NAME: &str = "librlivepatch-autoload.so";

/// The copy of the autoload library the loader accepts in a set-user-ID program: in a
/// trusted system directory, named without a slash in `LD_PRELOAD`, with the
/// set-user-ID bit (glibc's condition for such a preload). It is never executable
/// (mode 04644), and in such a program it reads nothing from the environment (see
/// runtime/rlivepatch-autoload.c), so preloading it grants nothing. Written the first
/// time a watched set-user-ID program starts, and rewritten if it differs.
fn secure_copy() -> Result<()> {
    let dir = SECURE_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            err!(
                Failed,
                "no system library directory ({})",
                SECURE_DIRS.join(", ")
            )
        })?;
    let path = dir.join(SECURE_NAME);
    let current = std::fs::read(&path).ok();
    let mode_ok = std::fs::metadata(&path).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0 && m.mode() & 0o7777 == 0o4644
    });
    if current.as_deref() == Some(super::AUTOLOAD) && mode_ok {
        return Ok(());
    }
    let tmp = dir.join(format!(".{SECURE_NAME}.{}", std::process::id()));
    let written = std::fs::write(&tmp, super::AUTOLOAD)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o4644))
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err!(
            Failed,
            "cannot write {}: {}",
            path.display(),
            crate::error::io_text(&e)
        )
    })
}

/// Is `reg` the registry a set-user-ID program reads (the default one)?
fn is_default_registry(reg: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(reg) == canon(Path::new(super::DEFAULT_REGISTRY))
}

/// Wait for the seized process's exec event, add the preload, let it go.
fn at_exec(pid: i32, env: &Preload) -> Result<String> {
    let p = Pid::from_raw(pid);
    let deadline = Instant::now() + EXEC_WAIT;
    let mut interrupted = false;
    loop {
        match waitpid(p, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::PtraceEvent(_, _, ev)) if ev == libc::PTRACE_EVENT_EXEC => {
                let r = add_preload(pid, env);
                crate::os::fault::point("watch:injected");
                let _ = ptrace::detach(p, None);
                return r;
            }
            Ok(WaitStatus::Stopped(_, sig)) if !interrupted => {
                // A signal for the old program: it gets it.
                let _ = ptrace::cont(p, Some(sig));
            }
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() > deadline && !interrupted {
                    // The exec failed (or never came): stop it once and let it go.
                    let _ = ptrace::interrupt(p);
                    interrupted = true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => {
                return Ok("exited before its exec completed".into());
            }
            Ok(_) if interrupted => {
                let _ = ptrace::detach(p, None);
                return Ok("its exec did not complete: left as it was".into());
            }
            Ok(_) => {
                let _ = ptrace::cont(p, None);
            }
        }
    }
}

/// The pointer block the kernel laid out at the stack pointer of a program stopped at
/// its exec event: argc, argv, envp, auxv.
struct ExecBlock {
    rsp: u64,
    argc: u64,
    /// The environment's string pointers.
    envs: Vec<u64>,
    auxv_at: u64,
    /// Entries of the auxiliary vector, AT_NULL included.
    auxv_len: u64,
    /// AT_SECURE: a set-user-ID, set-group-ID or capability program.
    secure: bool,
}

fn read_exec_block(proc: &crate::os::process::Process, rsp: u64) -> Result<ExecBlock> {
    let word = |a: u64| proc.read_u64(a);
    let argc = word(rsp)?;
    let envp_at = rsp + 8 * (argc + 2);
    let mut envs = Vec::new();
    while word(envp_at + 8 * envs.len() as u64)? != 0 {
        envs.push(word(envp_at + 8 * envs.len() as u64)?);
        if envs.len() > 1 << 16 {
            bail!(Failed, "the environment does not end");
        }
    }
    let auxv_at = envp_at + 8 * (envs.len() as u64 + 1);
    let mut auxv_len = 0u64;
    let mut secure = false;
    loop {
        let key = word(auxv_at + 16 * auxv_len)?;
        let val = word(auxv_at + 16 * auxv_len + 8)?;
        auxv_len += 1;
        if key == libc::AT_SECURE && val != 0 {
            secure = true;
        }
        if key == libc::AT_NULL || auxv_len > 512 {
            break;
        }
    }
    Ok(ExecBlock {
        rsp,
        argc,
        envs,
        auxv_at,
        auxv_len,
        secure,
    })
}

/// Put the autoload library into the environment of a program stopped at its exec
/// event: the pointer block moves down to make room for the new entries, whose strings
/// go in the space it left; the stack pointer follows. An existing `LD_PRELOAD` keeps
/// its libraries after ours. A set-user-ID program gets the secure copy by name (the
/// only preload its loader accepts), and its environment's `RLIVEPATCH_*` variables are
/// not consulted: they are its caller's.
fn add_preload(pid: i32, env: &Preload) -> Result<String> {
    let proc = crate::os::process::Process::open(pid)?;
    let p = Pid::from_raw(pid);
    let mut regs =
        ptrace::getregs(p).map_err(|e| err!(Failed, "reading registers: {}", e.desc()))?;
    let b = read_exec_block(&proc, regs.rsp)?;
    let library = if b.secure {
        if !is_default_registry(&env.registry) {
            return Ok(format!(
                "a set-user-ID or capability program reads only the default registry ({}): it runs without the patches of {}",
                super::DEFAULT_REGISTRY,
                env.registry.display()
            ));
        }
        secure_copy()?;
        SECURE_NAME.to_string()
    } else {
        env.library.clone()
    };
    let read_str = |a: u64| -> String {
        let b = proc
            .read(a, 4096)
            .or_else(|_| proc.read(a, 256))
            .unwrap_or_default();
        String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into()
    };
    let mut strings: Vec<String> = Vec::new();
    // (index in envp to replace, or None to add)
    let mut slots: Vec<Option<usize>> = Vec::new();
    let mut has_registry = b.secure;
    let mut preload_at = None;
    for (i, &e) in b.envs.iter().enumerate() {
        let s = read_str(e);
        if let Some(v) = s.strip_prefix("LD_PRELOAD=") {
            preload_at = Some((i, v.to_string()));
        }
        if s.starts_with("RLIVEPATCH_REGISTRY=") {
            has_registry = true;
        }
        if s == "RLIVEPATCH_AUTOLOAD=0" && !b.secure {
            return Ok("RLIVEPATCH_AUTOLOAD=0 in its environment: left alone".into());
        }
    }
    match preload_at {
        Some((_, v)) if v.split([':', ' ']).any(|x| x == library) => {
            return Ok("already preloads the autoload library".into());
        }
        Some((i, v)) => {
            strings.push(format!("LD_PRELOAD={library}:{v}"));
            slots.push(Some(i));
        }
        None => {
            strings.push(format!("LD_PRELOAD={library}"));
            slots.push(None);
        }
    }
    if !has_registry {
        strings.push(format!("RLIVEPATCH_REGISTRY={}", env.registry.display()));
        slots.push(None);
    }
    regs.rsp = write_exec_block(&proc, &b, &strings, &slots)?;
    ptrace::setregs(p, regs).map_err(|e| err!(Failed, "writing registers: {}", e.desc()))?;
    let what = if b.secure {
        "a set-user-ID or capability program: the secure copy of the autoload library added to its environment"
    } else {
        "the autoload library added to its environment"
    };
    Ok(format!(
        "{what}; it applies the persisted patches before main"
    ))
}

/// Write the block again lower down with `strings` in the environment (each replacing
/// the entry its slot names, or added): the new stack pointer.
fn write_exec_block(
    proc: &crate::os::process::Process,
    b: &ExecBlock,
    strings: &[String],
    slots: &[Option<usize>],
) -> Result<u64> {
    let rsp = b.rsp;
    let block_end = b.auxv_at + 16 * b.auxv_len;
    let block = proc.read(rsp, (block_end - rsp) as usize)?;
    let added = slots.iter().filter(|s| s.is_none()).count() as u64;
    let text_len: u64 = strings.iter().map(|s| s.len() as u64 + 1).sum();
    let room = (8 * added + text_len + 15) & !15;
    let new_rsp = rsp - room;
    // The new block: argc, argv, NULL, the added entries, envp, NULL, auxv.
    let head = 8 * (b.argc as usize + 2);
    let mut out: Vec<u8> = block[..head].to_vec();
    let mut text: Vec<u8> = Vec::new();
    let text_at = new_rsp + block.len() as u64 + 8 * added;
    let mut env_ptrs: Vec<u64> = b.envs.clone();
    let mut new_ptrs = Vec::new();
    for (s, slot) in strings.iter().zip(slots) {
        let at = text_at + text.len() as u64;
        text.extend(s.as_bytes());
        text.push(0);
        match slot {
            Some(i) => env_ptrs[*i] = at,
            None => new_ptrs.push(at),
        }
    }
    for ptr in new_ptrs.iter().chain(&env_ptrs) {
        out.extend(ptr.to_le_bytes());
    }
    out.extend(0u64.to_le_bytes());
    let aux_off = (b.auxv_at - rsp) as usize;
    out.extend(&block[aux_off..]);
    out.extend(&text);
    debug_assert!(out.len() as u64 <= room + block.len() as u64);
    proc.write(new_rsp, &out)?;
    Ok(new_rsp)
}
