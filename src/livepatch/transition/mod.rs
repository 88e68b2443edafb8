//! The switch: writing the new entry bytes only at a moment when no thread is inside, or
//! will return into, a function whose implementation changes (the kernel livepatch
//! consistency model, carried to the threads of one process).
//!
//! Each attempt stops every thread, unwinds each stack with DWARF CFI and checks every pc
//! and return address against the changed code. When a thread blocks, the return address
//! of its outermost changed frame is replaced by a return trampoline in rlivepatch's code
//! page: the moment that frame returns, the thread makes a marker system call that
//! rlivepatch sees as a syscall-enter stop, and is held there (outside every changed
//! function) while the others are checked again. A trampoline is harmless if rlivepatch
//! dies: it jumps to the original return address. Threads that do not come out are waited
//! for, with rounds growing from 100 ms to 1 s, until the timeout; then every trampoline is
//! removed and the switch is abandoned with the target as it was.
//!
//! `plan` is what a switch changes, `check` the consistency check of the stopped
//! threads, `catch` the return trampolines, `write` the writes (all or none), `switch`
//! the attempts and rounds that tie them together.

mod catch;
mod check;
mod plan;
mod switch;
mod write;

pub use check::{Blocker, check_all};
pub use plan::{Changed, Options, PRESERVING_PATH, Plan, World, Write};
pub use switch::{Progress, Report, switch};
pub use write::write_all;
