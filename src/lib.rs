//! rlivepatch: livepatch running x86_64 Linux processes, with the Linux kernel's
//! livepatch model carried to one process.

#![warn(missing_docs)]

pub mod apply;
pub mod build;
pub mod buildid;
pub mod coming;
pub mod contract;
pub mod core;
pub mod demangle;
pub mod disable;
pub mod error;
pub mod fault;
pub mod fleet;
pub mod hints;
pub mod inject;
pub mod leftovers;
pub mod linkage;
pub mod lock;
pub mod lookup;
pub mod objects;
pub mod pace;
pub mod patch;
pub mod persist;
pub mod preserve;
pub mod process;
pub mod ptrace;
pub mod redirect;
pub mod relocate;
pub mod repair;
pub mod report;
pub mod resolve;
pub mod restart;
pub mod runtime;
pub mod safepoint;
pub mod sdk;
pub mod seccomp;
pub mod session;
pub mod stack;
pub mod state;
pub mod symbols;
pub mod transition;
pub mod unwind;
pub mod watch;
