//! The target process as /proc shows it: status, threads, memory mappings and memory.
//!
//! Nothing here stops or changes the process except [`Memory::write`], which goes through
//! `/proc/pid/mem` so that it can write read-only text without `mprotect` (and so works
//! under `MemoryDenyWriteExecute`).

use crate::error::{Context, Result};
use crate::{bail, err};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What `/proc/pid/status` says about the process, and who it is.
#[derive(Debug, Clone)]
pub struct Status {
    /// The command name (`Name:`).
    pub name: String,
    /// The one-letter scheduler state (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`).
    pub state: char,
    /// The thread group id: the process id.
    pub tgid: i32,
    /// The pid of the tracer, 0 when none.
    pub tracer: i32,
    /// Real uid.
    pub uid: u32,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// The x86 user shadow stack is enabled (CET), from `x86_Thread_features`.
    pub shadow_stack: bool,
    /// The process id in its own (innermost) pid namespace (`NSpid:`): what it calls
    /// itself, as in paths under its `/proc`.
    pub ns_pid: i32,
}

/// A running process, identified by pid and start time so that pid reuse cannot fool us.
#[derive(Debug)]
pub struct Process {
    /// The process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/pid/stat).
    pub start_time: u64,
    /// The status at open time.
    pub status: Status,
    mem: File,
    /// The executable's path and (dev, inode), read once: every step that groups the
    /// mappings into objects asks, and it cannot change while the process is the same.
    exe: std::cell::OnceCell<(PathBuf, std::fs::Metadata)>,
}

/// One line of `/proc/pid/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Shared (as opposed to private copy-on-write).
    pub shared: bool,
    /// Offset in the file.
    pub offset: u64,
    /// Device, as the kernel's `major:minor` numbers.
    pub dev: (u32, u32),
    /// Inode of the file, 0 for anonymous memory.
    pub inode: u64,
    /// The path or pseudo-path (`[heap]`, `[stack]`, `[vdso]`), without a ` (deleted)` suffix.
    pub path: String,
    /// The file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl Mapping {
    /// The mapping is backed by a file on disk (not anonymous, not a pseudo-path).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
    /// Does the mapping contain `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// The mapping holding `addr` in a list sorted by address (as `/proc/pid/maps` is).
/// A binary search: a process with a thousand threads has thousands of mappings, looked
/// up once per thread.
pub fn mapping_at(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).filter(|m| m.contains(addr))
}

/// The free ranges between `maps` (sorted by address), from `min_addr` (at least 64 KiB)
/// to the top of the user address space: where a new mapping can go.
pub fn free_ranges(maps: &[Mapping], min_addr: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut prev = min_addr.max(0x10000);
    for m in maps {
        if m.start > prev {
            out.push((prev, m.start));
        }
        prev = prev.max(m.end);
    }
    let top = 0x7fff_ffff_f000u64;
    if prev < top {
        out.push((prev, top));
    }
    out
}

/// Where the brk heap grows (`[heap]`'s start and 1 GiB above it): a mapping placed
/// there would stop `malloc`'s heap from growing.
pub fn heap_growth(maps: &[Mapping]) -> Option<(u64, u64)> {
    maps.iter()
        .find(|m| m.path == "[heap]")
        .map(|m| (m.start, m.start + (1 << 30)))
}

/// The lowest address a mapping may have (`vm.mmap_min_addr`; 64 KiB when unreadable).
pub fn mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(65536)
}

/// Parse the text of `/proc/pid/maps`.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // "start-end perms offset major:minor inode   path"; the path may contain spaces.
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field().as_bytes().to_vec();
    let offset = u64::from_str_radix(field(), 16).ok()?;
    let dev = field();
    let inode: u64 = field().parse().ok()?;
    let mut path = rest.trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path.truncate(path.len() - " (deleted)".len());
    }
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        offset,
        dev: (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        ),
        inode,
        path,
        deleted,
    })
}

/// Is process `pid` in rlivepatch's own pid namespace (its pid there is `pid`)? One
/// link read (`/proc/PID/ns/pid`) where the status file would be generated whole; `false`
/// when unreadable.
pub fn in_my_pid_namespace(pid: i32) -> bool {
    static MINE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let mine = MINE.get_or_init(|| std::fs::read_link("/proc/self/ns/pid").ok());
    mine.as_ref()
        .is_some_and(|m| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| &l == m))
}

/// Read `/proc/pid/status` into a [`Status`].
pub fn read_status(pid: i32) -> Result<Status> {
    parse_status(pid, &format!("/proc/{pid}/status"))
}

/// Read the status of thread `tid` of process `pid` (its seccomp mode and tracer are its
/// own).
pub fn read_thread_status(pid: i32, tid: i32) -> Result<Status> {
    match read_task_file(pid, tid, "status") {
        Some(text) => Ok(status_of(pid, &String::from_utf8_lossy(&text))),
        None => parse_status(pid, &format!("/proc/{pid}/task/{tid}/status")),
    }
}

fn parse_status(pid: i32, path: &str) -> Result<Status> {
    let text = read_proc_whole(path).map_err(|e| not_found_or(pid, e))?;
    Ok(status_of(pid, &text))
}

fn status_of(pid: i32, text: &str) -> Status {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let num = |key: &str| get(key).and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
    Status {
        name: get("Name").unwrap_or_default(),
        state: get("State").and_then(|s| s.chars().next()).unwrap_or('?'),
        tgid: num("Tgid").unwrap_or(pid as i64) as i32,
        tracer: num("TracerPid").unwrap_or(0) as i32,
        uid: num("Uid").unwrap_or(0) as u32,
        seccomp: num("Seccomp").unwrap_or(0) as u32,
        shadow_stack: get("x86_Thread_features").is_some_and(|f| f.contains("shstk")),
        ns_pid: get("NSpid")
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
            .unwrap_or(pid),
    }
}

fn not_found_or(pid: i32, e: std::io::Error) -> crate::error::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        err!(
            Target,
            "no process with pid {pid}; check the pid (ps -p {pid})"
        )
        .because(crate::error::Cause::Gone)
    } else {
        err!(Target, "cannot read /proc/{pid}: {e}")
    }
}

impl Process {
    /// The path by which the process, and a tool that reads its loader's list of objects
    /// (gdb, perf, eu-stack), opens the process's descriptor `fd`: `/proc/PID/fd/N` with
    /// its own pid, which names the same file from outside (and from inside its mount
    /// namespace, where gdb looks for a contained process's files). `/proc/self/fd/N`
    /// would name the tool's own descriptor: gdb blocked reading one of its pipes.
    pub fn fd_path(&self, fd: i32) -> String {
        format!("/proc/{}/fd/{fd}", self.status.ns_pid)
    }
}

/// The start time of a process or thread (field 22 of its stat file), if it still exists.
pub fn start_time(stat_path: &str) -> Option<u64> {
    stat_start_time(&read_proc_whole(stat_path).ok()?)
}

/// The start time in the text of a `stat` file.
fn stat_start_time(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Does the text of a `stat` file have the kernel-thread flag (PF_KTHREAD)?
fn stat_kernel_thread(stat: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Some(i) = stat.rfind(')') else {
        return false;
    };
    stat[i + 2..]
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Is process `pid` started at `start` (ticks since boot) still there, and not a zombie?
pub fn alive(pid: i32, start: u64) -> bool {
    start_time(&format!("/proc/{pid}/stat")) == Some(start)
        && read_status(pid).is_ok_and(|s| s.state != 'Z' && s.state != 'X')
}

/// What one read of a process's stat file says of it.
pub struct StatLine {
    /// Its start time (clock ticks since boot).
    pub start: u64,
    /// It is a kernel thread (PF_KTHREAD).
    pub kernel: bool,
    /// Its command name (as `Name:` in its status).
    pub comm: String,
}

/// [`StatLine`] of process `pid`; `None` if it is gone. A host-wide run asks this of
/// every process.
pub fn stat_line(pid: i32) -> Option<StatLine> {
    let stat = read_proc_whole(&format!("/proc/{pid}/stat")).ok()?;
    let comm = stat
        .find('(')
        .zip(stat.rfind(')'))
        .map(|(a, b)| stat[a + 1..b].to_string())
        .unwrap_or_default();
    Some(StatLine {
        start: stat_start_time(&stat)?,
        kernel: stat_kernel_thread(&stat),
        comm,
    })
}

/// The start time of this rlivepatch, read once.
pub fn own_start_time() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| start_time("/proc/self/stat").unwrap_or(0))
}

/// The file `name` of thread `tid` of `pid` (`/proc/PID/task/TID/NAME`), read with one
/// open and as few reads as its size needs. Called for every thread of a process at a
/// time, where `read_to_string`'s extra calls (a stat for the size, a seek) add up; the
/// file is opened relative to the process's task directory, kept open: walking the
/// whole /proc path for each of a thousand threads doubled the cost.
pub fn read_task_file(pid: i32, tid: i32, name: &str) -> Option<Vec<u8>> {
    let fd = open_task_file(pid, tid, name)?;
    // `stat`, `status` and `syscall` come whole at the first read (see
    // [`read_proc_whole`]); `children` is listed record by record.
    let whole = name != "children";
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = nix::unistd::read(&fd, &mut buf).ok()?;
        out.extend_from_slice(&buf[..n]);
        if n == 0 || (whole && n < buf.len()) {
            return Some(out);
        }
    }
}

/// `/proc/PID/task/TID/NAME` opened for reading, relative to the task directory (see
/// [`read_task_file`]).
fn open_task_file(pid: i32, tid: i32, name: &str) -> Option<std::os::fd::OwnedFd> {
    use std::cell::RefCell;
    use std::os::fd::{AsFd, OwnedFd};
    thread_local! {
        static TASK_DIR: RefCell<Option<(i32, OwnedFd)>> = const { RefCell::new(None) };
    }
    TASK_DIR.with(|d| -> Option<OwnedFd> {
        let mut d = d.borrow_mut();
        if d.as_ref().is_none_or(|(p, _)| *p != pid) {
            let dir = nix::fcntl::open(
                format!("/proc/{pid}/task").as_str(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()?;
            *d = Some((pid, dir));
        }
        let (_, dir) = d.as_ref()?;
        nix::fcntl::openat(
            dir.as_fd(),
            format!("{tid}/{name}").as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    })
}

/// A `/proc` file's text, read in page-sized chunks into one buffer: `read_to_string`
/// asks for the size first (0 for `/proc`), then probes with small reads and grows,
/// about four times the system calls for a file like `status` or `maps`.
pub fn read_proc(path: &str) -> std::io::Result<String> {
    read_proc_chunks(path, false)
}

/// [`read_proc`] for a file the kernel writes whole at the first read (`stat`,
/// `status`, `syscall`, `loadavg`: `single_open` files): a read that does not fill the
/// buffer has all of it, and the read that would only say "end of file" is skipped.
/// Not for files listed record by record (`maps`, `children`), whose reads stop short
/// at each page.
pub fn read_proc_whole(path: &str) -> std::io::Result<String> {
    read_proc_chunks(path, true)
}

fn read_proc_chunks(path: &str, whole: bool) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(if whole { 4096 } else { 16 * 1024 });
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(buf.capacity());
        }
        let len = buf.len();
        let spare = buf.capacity() - len;
        buf.resize(len + spare, 0);
        let n = f.read(&mut buf[len..])?;
        buf.truncate(len + n);
        if n == 0 || (whole && n < spare) {
            break;
        }
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The one-letter state of a thread from its stat file.
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = read_task_file(pid, tid, "stat")?;
    // The command name may hold ')' itself: the state follows the last one.
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).map(|&b| b as char)
}

/// Up to this many threads, [`job_stop`] reads every thread's state.
/// The most iovecs one `process_vm_readv` takes (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

const FEW_THREADS: usize = 64;

/// Is job control stopping process `pid`? The stop signal's name when a stop signal
/// waits to be delivered (`SIGSTOP`, or `SIGTSTP`/`SIGTTIN`/`SIGTTOU` with their default
/// action) or the process is stopped (`T`).
///
/// The signals pending for the process (with the leader's own) and the leader's state
/// come from one read of `/proc/PID/status`. A stop is the whole thread group's, but its
/// threads enter it one by one: the thread that takes the stop signal is stopped the
/// moment the signal stops being pending, the leader may follow a while later. So when
/// the leader is not stopped yet, the other threads' states are read too (one short
/// read each) when `threads` (a stop may have begun: a tracer saw a stop signal) or the
/// process has few threads ([`FEW_THREADS`]); a stop signal that came just as rlivepatch
/// let a thousand threads go may then go unnoticed by the note.
pub fn job_stop(pid: i32, threads: bool) -> Option<String> {
    let text = read_proc_whole(&format!("/proc/{pid}/status")).ok()?;
    let mask = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let state = text
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|v| v.trim().chars().next());
    let caught_or_ignored = mask(&text, "SigCgt:") | mask(&text, "SigIgn:");
    let mut pending = mask(&text, "ShdPnd:") | mask(&text, "SigPnd:");
    let leader_gone = matches!(state, Some('Z' | 'X'));
    if leader_gone {
        for t in task_ids(pid).ok()? {
            if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")) {
                pending |= mask(&st, "SigPnd:");
            }
        }
    }
    for sig in [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        let bit = 1u64 << (sig - 1);
        if pending & bit != 0 && (sig == libc::SIGSTOP || caught_or_ignored & bit == 0) {
            return Some(signal_name(sig));
        }
    }
    let few = text
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n <= FEW_THREADS);
    let stopped = state == Some('T')
        || (threads || few)
            && task_ids(pid)
                .ok()?
                .into_iter()
                .any(|t| thread_state(pid, t) == Some('T'));
    stopped.then(|| "a stop signal".to_string())
}

/// The job-control stop a thread of process `pid` was let go with (`sig`, handed back by
/// its tracer): it takes effect when that thread next runs, which on a busy machine can
/// be a while after the detach. Waits for it (up to 2 s, the state read every
/// millisecond: nothing else tells a process that is no longer traced) unless the
/// program catches or ignores the signal (then it does not stop; `SIGSTOP` always does).
pub fn stop_to_come(pid: i32, sig: i32) -> Option<String> {
    if sig != libc::SIGSTOP {
        let text = read_proc_whole(&format!("/proc/{pid}/status")).ok()?;
        let bit = 1u64 << (sig - 1);
        let set = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .is_some_and(|m| m & bit != 0)
        };
        if set("SigCgt:") || set("SigIgn:") {
            return None;
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Some(s) = job_stop(pid, true) {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    None
}

/// A thread's `/proc/PID/task/TID/syscall`, opened once and read again with one `pread`
/// (a `single_open` file is written anew at offset 0): the tracer reads it at the attach
/// (where each thread sleeps) and again at the switch (which threads are on a CPU), and
/// the open and close were two thirds of each read's cost. At most [`KEPT_MAX`] are kept
/// open at a time in the whole run (a fleet's workers share it); past that, each read
/// opens the file.
#[derive(Debug, Default)]
pub struct SyscallFile(Option<std::os::fd::OwnedFd>);

/// Descriptors kept by [`SyscallFile`]s, and how many may be.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const KEPT_MAX: usize = 4096;

impl SyscallFile {
    /// The file's text, opening it on first use (`None`: the thread is gone).
    pub fn read(&mut self, pid: i32, tid: i32) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering;
        if self.0.is_none() {
            // Within the run's share of descriptors: a quarter of the soft limit (read
            // once: a thousand threads asked it a thousand times).
            static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
            let cap = *CAP.get_or_init(|| {
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .map(|(soft, _)| (soft / 4) as usize)
                    .unwrap_or(0)
                    .min(KEPT_MAX)
            });
            if KEPT.fetch_add(1, Ordering::Relaxed) >= cap {
                KEPT.fetch_sub(1, Ordering::Relaxed);
                return read_task_file(pid, tid, "syscall");
            }
            match open_task_file(pid, tid, "syscall") {
                Some(fd) => self.0 = Some(fd),
                None => {
                    KEPT.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let fd = self.0.as_ref()?;
        let mut buf = vec![0u8; 512];
        let n = nix::sys::uio::pread(fd, &mut buf, 0).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}

impl Drop for SyscallFile {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            KEPT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Is the thread whose `syscall` file says `text` runnable (on a CPU or waiting for
/// one)? The kernel writes "running" then, as `stat` writes the state `R`.
pub fn runnable_text(text: &[u8]) -> bool {
    text.starts_with(b"running")
}

/// The system call a thread is blocked in, from its `syscall` file's `text`.
pub fn blocked_in_text(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The system call thread `tid` of `pid` is blocked in, from
/// `/proc/PID/task/TID/syscall` (readable by its tracer), without stopping it; `None`
/// when it runs or is not in a system call.
pub fn blocked_in(pid: i32, tid: i32) -> Option<u64> {
    blocked_in_text(&read_task_file(pid, tid, "syscall")?)
}

/// The command name of a thread (`comm`), for messages.
pub fn thread_name(pid: i32, tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Does thread `tid` of process `pid` exist (until it is reaped)? One look at its
/// directory: listing a thousand threads' costs half a millisecond, to find one.
pub fn has_task(pid: i32, tid: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{pid}/task/{tid}")).is_ok()
}

/// How many threads process `pid` has, from its `status` (one read, where listing a
/// thousand threads' directory costs half a millisecond, for a count).
pub fn thread_count(pid: i32) -> Option<usize> {
    read_proc_whole(&format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// The set of thread ids of a process.
pub fn task_ids(pid: i32) -> Result<BTreeSet<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| not_found_or(pid, e))?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

impl Process {
    /// Open a process for inspection and memory access. Checks that `pid` names a
    /// process (not a thread of another one) and that we may access its memory.
    pub fn open(pid: i32) -> Result<Process> {
        if pid <= 0 {
            bail!(Target, "invalid pid {pid}");
        }
        let status = read_status(pid)?;
        if status.tgid != pid {
            bail!(
                Target,
                "{pid} is a thread of process {}; give the process id {} instead",
                status.tgid,
                status.tgid
            );
        }
        // One read of stat gives the start time and the kernel-thread flag.
        let stat = read_proc_whole(&format!("/proc/{pid}/stat")).ok();
        let start_time = stat.as_deref().and_then(stat_start_time).ok_or_else(|| {
            err!(Target, "process {pid} exited").because(crate::error::Cause::Gone)
        })?;
        if matches!(status.state, 'Z' | 'X') {
            bail!(
                Target,
                "process {pid} ({}) is a zombie: it has exited and waits for its parent to reap it",
                status.name
            );
        }
        if stat.as_deref().is_some_and(stat_kernel_thread) {
            bail!(
                Target,
                "process {pid} ({}) is a kernel thread; rlivepatch patches user processes",
                status.name
            );
        }
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| permission_error(pid, &status, e))?;
        Ok(Process {
            pid,
            start_time,
            status,
            mem,
            exe: std::cell::OnceCell::new(),
        })
    }

    /// Is this still the same process (same pid, same start time)?
    pub fn is_alive(&self) -> bool {
        alive(self.pid, self.start_time)
    }

    /// Read and parse `/proc/pid/maps` now.
    pub fn maps(&self) -> Result<Vec<Mapping>> {
        let text = read_proc(&format!("/proc/{}/maps", self.pid))
            .map_err(|e| not_found_or(self.pid, e))?;
        Ok(parse_maps(&text))
    }

    /// The path of the executable as the kernel sees it, and its (dev, inode).
    pub fn exe(&self) -> Result<(PathBuf, u64, u64)> {
        let (path, meta) = self.exe_file()?;
        Ok((path.clone(), meta.dev(), meta.ino()))
    }

    /// The path of the executable as the kernel sees it, and the metadata of the file
    /// (through `/proc/PID/exe`).
    pub fn exe_file(&self) -> Result<&(PathBuf, std::fs::Metadata)> {
        if let Some(e) = self.exe.get() {
            return Ok(e);
        }
        let link = format!("/proc/{}/exe", self.pid);
        let path =
            std::fs::read_link(&link).map_err(|e| permission_error(self.pid, &self.status, e))?;
        let meta =
            std::fs::metadata(&link).map_err(|e| permission_error(self.pid, &self.status, e))?;
        Ok(self.exe.get_or_init(|| (path, meta)))
    }

    /// A path through which this process's view of `path` can be opened from here, even in
    /// another mount namespace.
    pub fn root_path(&self, path: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid)).join(path.trim_start_matches('/'))
    }

    /// Read `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    /// Read exactly `buf.len()` bytes at `addr`.
    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.mem.read_at(buf, addr).with_context(|| {
            format!(
                "reading {} bytes at {addr:#x} of process {}",
                buf.len(),
                self.pid
            )
        })?;
        if n != buf.len() {
            bail!(Failed, "short read at {addr:#x} of process {}", self.pid);
        }
        Ok(())
    }

    /// Read as much as possible of `len` bytes at `addr` with one `process_vm_readv`
    /// (used for stacks: stops at the first unmapped page).
    pub fn read_vm(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let n = nix::sys::uio::process_vm_readv(
            nix::unistd::Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(&mut buf)],
            &remote,
        )
        .unwrap_or(0);
        buf.truncate(n);
        buf
    }

    /// [`Process::read_vm`] of each of `ranges` (address, length), with as few system
    /// calls as the kernel allows: one `process_vm_readv` per [`IOV_MAX`] ranges. The
    /// consistency check reads every stopped thread's stack; a call per thread cost
    /// 2.1 µs and a batched one 0.65 µs per thread, whatever the length (measured with
    /// 100 threads of 4 to 9 KiB each). A transfer stops at the first page it cannot read:
    /// the range it stopped in keeps what was read, and the ranges after it are read
    /// again from there.
    pub fn read_vm_many(&self, ranges: &[(u64, usize)]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = ranges.iter().map(|&(_, len)| vec![0u8; len]).collect();
        let mut got = vec![0usize; ranges.len()];
        let mut next = 0;
        while next < ranges.len() {
            let batch = next..ranges.len().min(next + IOV_MAX);
            let remote: Vec<nix::sys::uio::RemoteIoVec> = ranges[batch.clone()]
                .iter()
                .map(|&(base, len)| nix::sys::uio::RemoteIoVec {
                    base: base as usize,
                    len,
                })
                .collect();
            let mut local: Vec<IoSliceMut> = out[batch.clone()]
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let mut n = nix::sys::uio::process_vm_readv(
                nix::unistd::Pid::from_raw(self.pid),
                &mut local,
                &remote,
            )
            .unwrap_or(0);
            // The bytes fill the ranges in order: those read whole, then the one the
            // transfer stopped in.
            let mut i = batch.start;
            while i < batch.end && n >= ranges[i].1 {
                got[i] = ranges[i].1;
                n -= ranges[i].1;
                i += 1;
            }
            if i < batch.end {
                got[i] = n;
                i += 1;
            }
            next = i;
        }
        for (buf, n) in out.iter_mut().zip(got) {
            buf.truncate(n);
        }
        out
    }

    /// Read a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_into(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Read a NUL-terminated string of at most `max` bytes at `addr`.
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<String> {
        let mut out = Vec::new();
        let mut a = addr;
        while out.len() < max {
            // Read up to the end of the page so that we never cross into an unmapped one.
            let chunk = (4096 - (a % 4096)) as usize;
            let buf = self.read(a, chunk.min(max - out.len()))?;
            if let Some(i) = buf.iter().position(|&b| b == 0) {
                out.extend_from_slice(&buf[..i]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&buf);
            a += chunk as u64;
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Write `bytes` at `addr`, even into read-only text, then read them back.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.write_unverified(addr, bytes)?;
        let back = self.read(addr, bytes.len())?;
        if back != bytes {
            bail!(
                Failed,
                "memory at {addr:#x} of process {} did not take the write",
                self.pid
            );
        }
        Ok(())
    }

    /// Write `bytes` at `addr` with no read-back: for rlivepatch's own working memory
    /// in the target (its scratch pages, the record's memory file, the frames of its
    /// injected calls), plain read-write or private pages that take every write the
    /// kernel reports done. Code and the program's data go through [`Process::write`].
    pub fn write_unverified(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        let n = self.mem.write_at(bytes, addr).with_context(|| {
            format!(
                "writing {} bytes at {addr:#x} of process {}",
                bytes.len(),
                self.pid
            )
        })?;
        if n != bytes.len() {
            bail!(Failed, "short write at {addr:#x} of process {}", self.pid);
        }
        Ok(())
    }
}

/// The message for EACCES/EPERM on a process: what ptrace permission means and how to get it.
pub fn permission_error(pid: i32, status: &Status, e: std::io::Error) -> crate::error::Error {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            let me = nix::unistd::geteuid().as_raw();
            let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                .ok()
                .map(|s| s.trim().to_string());
            let yama = match scope.as_deref() {
                Some("0") | None => String::new(),
                Some(s) => {
                    format!(", and kernel.yama.ptrace_scope is {s} (needs 0, or CAP_SYS_PTRACE)")
                }
            };
            if me == 0 {
                // Root was refused: telling root to run as root sends it in a circle.
                let has_cap = std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|st| {
                        let hex = st
                            .lines()
                            .find_map(|l| l.strip_prefix("CapEff:"))?
                            .trim()
                            .to_string();
                        u64::from_str_radix(&hex, 16).ok()
                    })
                    // CAP_SYS_PTRACE is capability 19.
                    .is_some_and(|caps| caps & (1 << 19) != 0);
                let why = if !has_cap {
                    "rlivepatch runs as root without the capability CAP_SYS_PTRACE (a container started without it: add it, e.g. docker run --cap-add SYS_PTRACE)".to_string()
                } else if scope.as_deref() == Some("3") {
                    "kernel.yama.ptrace_scope is 3, which forbids ptrace to everyone, root included, until reboot".to_string()
                } else {
                    "a security module (AppArmor, SELinux) or the target's own protection (prctl, another user namespace) forbids it; check `dmesg` and the target's confinement".to_string()
                };
                return err!(
                    Target,
                    "no permission to trace process {pid} ({}) although rlivepatch runs as root: {why}",
                    status.name
                )
                .because(crate::error::Cause::Permission);
            }
            err!(
                Target,
                "no permission to trace process {pid} ({}, uid {}): ptrace needs the same uid as the target (you are uid {me}) or CAP_SYS_PTRACE{yama}; run rlivepatch as the target's user or as root",
                status.name,
                status.uid
            )
            .because(crate::error::Cause::Permission)
        }
        Some(libc::ENOENT) | Some(libc::ESRCH) => {
            err!(Target, "process {pid} exited").because(crate::error::Cause::Gone)
        }
        _ => err!(Target, "cannot access process {pid}: {e}"),
    }
}

/// The name of a signal for messages (`SIGRTMIN+3` for real-time ones).
pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) if sig >= libc::SIGRTMIN() && sig <= libc::SIGRTMAX() => {
            format!("SIGRTMIN+{}", sig - libc::SIGRTMIN())
        }
        Err(_) => format!("signal {sig}"),
    }
}

/// The processes whose parent is `pid` and that run the same executable (a server's
/// workers, a pre-forking master's children): a patch applied to `pid` does not reach
/// them. Read from /proc, nothing stopped.
///
/// Two ways, the cheaper for the process and the host: each thread's
/// `/proc/PID/task/TID/children` (its own children only: the cost is the process's
/// threads, not the host's processes, which made a fleet run quadratic), or the host's
/// processes that run the same executable (one `stat` of each one's `exe` link) and
/// then, of those only, the parent. A thread's `children` is read in 4.2 µs, an `exe`
/// looked at in 2.5 (measured with the bench target's threads), so the host's processes
/// are asked when there are fewer than [`EXES_PER_TASK`] times as many of them as
/// threads, or when the kernel lacks the `children` file.
pub fn same_program_children(pid: i32) -> Vec<i32> {
    let Some(mine) = exe_id(pid) else {
        return Vec::new();
    };
    let threads = thread_count(pid).unwrap_or(0);
    // Listing /proc costs more than a few threads' files: only for many threads.
    let host = (threads > 32).then(host_pids);
    let by_tasks = host
        .as_ref()
        .is_none_or(|h| h.len() as f64 * EXES_PER_TASK >= threads as f64);
    let from_tasks = by_tasks
        .then(|| children_from_tasks(pid, &task_ids(pid).unwrap_or_default()))
        .flatten();
    let mut out: Vec<i32> = match from_tasks {
        Some(c) => c.into_iter().filter(|&p| exe_id(p) == Some(mine)).collect(),
        None => running_from_host(pid, mine, host.unwrap_or_else(host_pids)),
    };
    out.sort();
    out.dedup();
    out
}

/// The processes among `host` that run executable `exe` and whose parent is `pid`: the
/// executable looked at first (the cheaper file), the parent of those only.
fn running_from_host(pid: i32, exe: (u64, u64), host: Vec<i32>) -> Vec<i32> {
    host.into_iter()
        .filter(|&p| p != pid && exe_id(p) == Some(exe) && parent_of(p) == Some(pid))
        .collect()
}

/// The executable process `p` runs, as (device, inode).
fn exe_id(p: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{p}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// How many host processes' `exe` cost as much as one thread's `children` file (2.5 µs
/// against 4.2).
const EXES_PER_TASK: f64 = 0.6;

/// [`same_program_children`] of each of `parents`, as (child, parent) in child order, for
/// the many processes of one run: one pass over the host's processes (each one's
/// `stat`, for its parent) when that reads fewer files than asking each parent (a
/// `status`, a thread listing and each thread's `children`: four files for a process of
/// two threads; [`PARENT_FILES`]). A fleet of a hundred processes on a host of 170
/// read 400 files the other way.
pub fn same_program_children_of(parents: &BTreeSet<i32>) -> Vec<(i32, i32)> {
    let host = host_pids();
    let scan = parents.len() as f64 * PARENT_FILES >= host.len() as f64;
    program_children(parents, scan.then_some(host))
}

/// [`same_program_children_of`], asking each parent, or from the parents of `host`'s
/// processes when given.
fn program_children(parents: &BTreeSet<i32>, host: Option<Vec<i32>>) -> Vec<(i32, i32)> {
    let Some(host) = host else {
        let mut out: Vec<(i32, i32)> = parents
            .iter()
            .flat_map(|&p| same_program_children(p).into_iter().map(move |c| (c, p)))
            .collect();
        out.sort();
        return out;
    };
    let mut out: Vec<(i32, i32)> = host
        .into_iter()
        .filter_map(|c| Some((c, parent_of(c).filter(|p| parents.contains(p))?)))
        .filter(|&(c, p)| exe_id(c).is_some_and(|e| exe_id(p) == Some(e)))
        .collect();
    out.sort();
    out
}

/// How many files asking one process for its children reads, for
/// [`same_program_children_of`]'s choice.
const PARENT_FILES: f64 = 4.0;

/// The parent of process `p`, from its `stat`: the fourth field, after the command in
/// parentheses. (One read: `read_to_string` made seven calls of each of these files.)
fn parent_of(p: i32) -> Option<i32> {
    let st = read_proc_whole(&format!("/proc/{p}/stat")).ok()?;
    let rest = &st[st.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
}

/// The children of `pid` as its threads' `children` files list them; `None` when one is
/// unreadable (a thread gone meanwhile, a kernel without the file).
fn children_from_tasks(pid: i32, tids: &BTreeSet<i32>) -> Option<Vec<i32>> {
    if tids.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for &tid in tids {
        let text = read_task_file(pid, tid, "children")?;
        out.extend(
            String::from_utf8_lossy(&text)
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every process of the host (as this rlivepatch's /proc shows them).
fn host_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The note for an operator about them, if any.
pub fn children_note(pid: i32, children: &[i32], what: &str) -> Option<String> {
    if children.is_empty() {
        return None;
    }
    let list: Vec<String> = children.iter().map(|c| c.to_string()).collect();
    Some(format!(
        "note: process {pid} has {} child process{} running the same program ({}), which {what}: rlivepatch patches one process per run; cover each: for p in {}; do rlivepatch apply \"$p\" PATCH; done",
        children.len(),
        if children.len() == 1 { "" } else { "es" },
        list.join(" "),
        list.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that started another shell: the parent's children running its program are
    /// the same whether each parent is asked or every process's parent is read.
    #[test]
    fn children_of_many_parents_by_either_path() {
        use std::os::unix::process::CommandExt;
        // In a process group of its own: all three (with the inner shell's sleep) are
        // killed together at the end.
        let mut outer = std::process::Command::new("/bin/sh")
            .args(["-c", "/bin/sh -c 'sleep 30; true' & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = outer.id() as i32;
        let parents = BTreeSet::from([pid]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Its child shows in /proc once the shell has forked it.
        let asked = loop {
            let c = program_children(&parents, None);
            if !c.is_empty() || std::time::Instant::now() > deadline {
                break c;
            }
            std::thread::yield_now();
        };
        let scanned = program_children(&parents, Some(host_pids()));
        let inner = children_from_tasks(pid, &task_ids(pid).unwrap()).unwrap();
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = outer.wait();
        assert_eq!(inner.len(), 1, "{inner:?}");
        assert_eq!(asked, vec![(inner[0], pid)]);
        assert_eq!(scanned, asked);
    }

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps(
            "55d0c0a00000-55d0c0a01000 r-xp 00001000 fd:01 1234    /usr/bin/my prog (deleted)\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].start, 0x55d0c0a00000);
        assert!(m[0].exec && !m[0].write && m[0].read);
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[0].dev, (0xfd, 1));
        assert_eq!(m[0].path, "/usr/bin/my prog");
        assert!(m[0].deleted && m[0].is_file());
        assert_eq!(m[1].path, "[stack]");
        assert!(!m[1].is_file());
    }

    #[test]
    fn children_are_found_from_threads_and_from_parents_alike() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let tids = task_ids(me).unwrap();
        let by_tasks = children_from_tasks(me, &tids).unwrap();
        let c = child.id() as i32;
        // The child runs another program than the test: asked for that program's.
        let by_exe = running_from_host(me, exe_id(c).unwrap(), host_pids());
        let _ = child.kill();
        let _ = child.wait();
        assert!(by_tasks.contains(&c), "{by_tasks:?}");
        assert_eq!(by_exe, vec![c]);
    }

    #[test]
    fn finds_the_mapping_of_an_address() {
        let m = parse_maps(
            "1000-2000 r-xp 00000000 00:00 0\n\
             3000-5000 rw-p 00000000 00:00 0\n\
             5000-6000 rw-p 00000000 00:00 0\n",
        );
        assert_eq!(mapping_at(&m, 0xfff), None);
        assert_eq!(mapping_at(&m, 0x1000).map(|m| m.start), Some(0x1000));
        assert_eq!(mapping_at(&m, 0x1fff).map(|m| m.start), Some(0x1000));
        assert_eq!(mapping_at(&m, 0x2000), None);
        assert_eq!(mapping_at(&m, 0x4fff).map(|m| m.start), Some(0x3000));
        assert_eq!(mapping_at(&m, 0x5000).map(|m| m.start), Some(0x5000));
        assert_eq!(mapping_at(&m, 0x6000), None);
    }
}
