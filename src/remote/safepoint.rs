//! Where a thread may run injected code (`dlopen`, `dlclose`, callbacks) without
//! deadlocking: not inside malloc, the dynamic loader or pthread internals (it may hold
//! their locks), and not inside a signal handler (`dlopen` is not async-signal-safe).
//!
//! The rule is conservative: a thread qualifies when its unwound stack reaches its base
//! and every C-library frame is either a known blocking system-call wrapper at the top
//! (a thread sleeping in `read`, `nanosleep`, `poll`, `pthread_cond_wait`..., possibly
//! called by stdio, as in `fgets` on stdin) or one of the
//! frames that start the program or the thread at the bottom. Threads running their own
//! code qualify too, but a sleeping one is preferred: borrowing it costs the program
//! nothing.

use crate::elf::objects::Objects;
use crate::elf::unwind::{StackMem, Unwinder};
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::Regs;

/// C-library functions in which a thread sleeps in the kernel holding no library lock.
const BLOCKING: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "pread",
    "pread64",
    "pwrite",
    "pwrite64",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "send",
    "sendto",
    "sendmsg",
    "accept",
    "accept4",
    "connect",
    "poll",
    "ppoll",
    "select",
    "pselect",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "nanosleep",
    "clock_nanosleep",
    "usleep",
    "sleep",
    "pause",
    "sigsuspend",
    "sigwait",
    "sigwaitinfo",
    "sigtimedwait",
    "wait",
    "waitpid",
    "wait4",
    "waitid",
    "msgrcv",
    "semop",
    "semtimedop",
    "ioctl",
    "open",
    "open64",
    "openat",
    "openat64",
    "close",
    "fsync",
    "fdatasync",
    "syscall",
    "getchar",
    "fgets",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "pthread_join",
    "pthread_timedjoin_np",
    "pthread_clockjoin_np",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
    "pthread_barrier_wait",
    "mq_receive",
    "mq_timedreceive",
    "io_getevents",
    "__libc_read",
    "__libc_write",
    "__nanosleep",
    "__poll",
    "__select",
    "__libc_recv",
];

/// stdio functions that call a blocking wrapper holding only their own `FILE`'s lock
/// (recursive, and never taken by the loader): a program waiting in `fgets` on stdin is
/// asleep like one waiting in `read`. Besides these, exported `_IO_*` internals.
const STDIO: &[&str] = &[
    "fgets",
    "fgets_unlocked",
    "getline",
    "getdelim",
    "__getdelim",
    "fread",
    "fread_unlocked",
    "fgetc",
    "getc",
    "getc_unlocked",
    "getchar",
    "getchar_unlocked",
    "fgetc_unlocked",
    "gets",
    "scanf",
    "fscanf",
    "__isoc99_scanf",
    "__isoc99_fscanf",
    "__isoc23_scanf",
    "__isoc23_fscanf",
    "fflush",
    "fputs",
    "puts",
    "fwrite",
    "fputc",
    "putc",
    "putchar",
];

fn stdio(name: &str) -> bool {
    STDIO.contains(&name) || name.starts_with("_IO_")
}

/// Functions that start the program or a thread: allowed at the bottom of a stack.
const BASE: &[&str] = &[
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "_start",
];

/// How good a thread is for borrowing. Lower is better; `None` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fitness {
    /// Asleep in a blocking system call.
    Sleeping,
    /// Running its own code.
    Running,
}

/// Why a thread is not fit to be borrowed.
#[derive(Debug, Clone)]
pub struct Unfit {
    /// In words, for messages.
    pub why: String,
    /// Its stack stops at code without unwind information.
    pub no_unwind_info: bool,
}

impl From<&str> for Unfit {
    fn from(why: &str) -> Unfit {
        Unfit {
            why: why.to_string(),
            no_unwind_info: false,
        }
    }
}

impl From<String> for Unfit {
    fn from(why: String) -> Unfit {
        Unfit {
            why,
            no_unwind_info: false,
        }
    }
}

/// Judge one stopped thread. Returns the fitness or why it is unfit. With `partial`
/// (the operator forced the operation), a stack that cannot be unwound past a frame of
/// the program's own code that has no unwind information (a program built without unwind
/// tables) is judged on the frames above it.
pub fn judge(
    proc: &Process,
    maps: &[Mapping],
    objects: &Objects,
    unwinder: &mut Unwinder,
    regs: &Regs,
    partial: bool,
) -> Result<Fitness, Unfit> {
    let mem = StackMem::of_thread(proc, maps, regs.rsp);
    let stack = unwinder.unwind(objects, &mem, regs);
    let libc = objects.libc();
    let loader = objects.loader();
    let in_obj =
        |o: Option<&crate::elf::objects::LoadedObject>, pc: u64| o.is_some_and(|o| o.contains(pc));
    if let Some(why) = &stack.unreliable {
        let in_program = stack
            .frames
            .last()
            .is_some_and(|f| !in_obj(libc, f.pc) && !in_obj(loader, f.pc));
        if !(partial && in_program && why.no_unwind_info) {
            return Err(Unfit {
                why: format!("unreliable stack: {why}"),
                no_unwind_info: why.no_unwind_info,
            });
        }
    }
    if stack
        .frames
        .iter()
        .any(|f| crate::remote::runtime::in_hook(objects, f.pc))
    {
        return Err("inside rlivepatch's hook for objects that come (in a dlopen)".into());
    }
    if stack.frames.iter().any(|f| f.signal) {
        return Err("inside a signal handler".into());
    }
    // Name of a libc frame, if its address is inside a named function.
    let name = |pc: u64| -> Option<String> {
        let o = libc?;
        let f = o.file().ok()?;
        let b = o.bias().ok()?;
        f.symbolize_name(pc.wrapping_sub(b)).map(|(n, _)| n)
    };
    let frames = &stack.frames;
    if let Some(first_loader) = frames.iter().position(|f| in_obj(loader, f.pc)) {
        // A process still starting up (the autoload library's constructor, run by the
        // loader, waiting for rlivepatch) is fit: the loader is only below program code,
        // calling out, on the only thread, whose own lock is recursive; glibc supports
        // dlopen from constructors. Anywhere else, the loader may hold its lock.
        let calling_out = frames[..first_loader]
            .iter()
            .any(|f| !in_obj(libc, f.pc) && !in_obj(loader, f.pc));
        let single = crate::os::process::task_ids(proc.pid).is_ok_and(|t| t.len() == 1);
        if !(calling_out && single) {
            return Err("inside the dynamic loader".into());
        }
    }
    // The last frame that is not libc: everything above it is "the top", below is the base.
    let first_user = frames.iter().position(|f| !in_obj(libc, f.pc));
    let last_user = frames.iter().rposition(|f| !in_obj(libc, f.pc));
    let (Some(first_user), Some(last_user)) = (first_user, last_user) else {
        return Err("only C-library frames".into());
    };
    // Top run of libc frames: at most two unnamed helpers under a blocking wrapper.
    let top = &frames[..first_user];
    // The program's own code stopped in a system call (a raw `syscall`) is asleep too.
    let mut fitness = if (regs.orig_rax as i64) >= 0 {
        Fitness::Sleeping
    } else {
        Fitness::Running
    };
    if !top.is_empty() {
        let names: Vec<Option<String>> = top
            .iter()
            .map(|f| name(if f.exact { f.pc } else { f.pc.wrapping_sub(1) }))
            .collect();
        let blocking = names
            .iter()
            .position(|n| n.as_deref().is_some_and(|n| BLOCKING.contains(&n)));
        match blocking {
            Some(i)
                if i <= 2
                    && names[i + 1..].iter().all(|n| {
                        n.as_deref()
                            .is_some_and(|n| BLOCKING.contains(&n) || stdio(n))
                    }) =>
            {
                fitness = Fitness::Sleeping;
            }
            _ => {
                let shown = names
                    .iter()
                    .map(|n| n.clone().unwrap_or_else(|| "?".into()))
                    .collect::<Vec<_>>()
                    .join(" < ");
                return Err(format!("inside the C library ({shown})").into());
            }
        }
    }
    // Below the program's code, libc frames must be those that start the program or the
    // thread (`__libc_start_main` and its unexported helper, `start_thread`, `clone3`).
    // Anything else (qsort, dl_iterate_phdr, pthread_once calling back into the program)
    // may hold a lock.
    let n = frames.len();
    for (i, f) in frames.iter().enumerate().skip(first_user) {
        if !in_obj(libc, f.pc) {
            continue;
        }
        match name(f.pc.wrapping_sub(1)) {
            Some(nm) if BASE.contains(&nm.as_str()) => {}
            None if i + 2 >= n
                || frames[i + 1..].iter().any(|g| {
                    name(g.pc.wrapping_sub(1)).is_some_and(|x| BASE.contains(&x.as_str()))
                }) => {}
            Some(nm) => return Err(format!("called back from {nm} in the C library").into()),
            None => return Err("called back from inside the C library".into()),
        }
    }
    let _ = last_user;
    Ok(fitness)
}
