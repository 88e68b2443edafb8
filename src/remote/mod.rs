//! Code that runs inside the target process, and how rlivepatch makes it run.
//!
//! `inject` makes calls in the target on a borrowed thread (system calls, `dlopen`,
//! callbacks), `safepoint` judges whether a thread may be borrowed for the loader,
//! `runtime` is rlivepatch's own library loaded into the target, `redirect` the entry
//! jumps and the islands they go through, `relocate` moves instructions (trampolines,
//! thunks), `preserve` the path that keeps registers callers rely on.
//!
//! May use: the base, `os`, `elf`, `contract`, `patch`.

pub mod inject;
pub mod preserve;
pub mod redirect;
pub mod relocate;
pub mod runtime;
pub mod safepoint;
