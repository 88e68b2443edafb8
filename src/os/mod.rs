//! The OS boundary: everything rlivepatch asks of Linux about another process.
//!
//! `process` reads `/proc` (maps, tasks, status, memory), `ptrace` is the tracer thread
//! (seize, interrupt, registers, the stops), `restart` the kernel's syscall-restart rules,
//! `seccomp` reads a process's filters, `pace` keeps rlivepatch out of the way of the
//! machine's work, `slice` gets the threads it waits for onto a CPU sooner, `lock` keeps two rlivepatch runs off one process, `kept` keeps facts
//! about files across runs.
//!
//! May use: the crate's base (`error`, `fault`, `fmt`). Nothing here knows ELF, patches
//! or livepatch.

pub mod dirs;
pub mod fault;
pub mod kept;
pub mod lock;
pub mod pace;
pub mod process;
pub mod ptrace;
pub mod restart;
pub mod seccomp;
pub mod shared;
pub mod slice;
