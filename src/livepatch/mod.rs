//! The livepatch model, carried from the kernel's `kernel/livepatch/` to one process.
//!
//! `record` is the state of a process's patches as plain data, `store` keeps it inside
//! the process, `func_stack` the per-function stacks of implementations, `transition`
//! the switch (stopping every thread, the consistency check, catching returns),
//! `session` one operation on one attached process, `states` the system states, `coming` objects loaded after a
//! patch, `leftovers` what an interrupted run left behind.
//!
//! May use: the base, `os`, `elf`, `contract`, `patch`, `remote`, `resolve`.

pub mod coming;
pub mod func_stack;
pub mod leftovers;
pub mod record;
pub mod session;
pub mod states;
pub mod store;
pub mod transition;
