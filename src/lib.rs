//! rlivepatch: livepatch running x86_64 Linux processes, with the Linux kernel's
//! livepatch model carried to one process.

#![warn(missing_docs)]

pub mod cli;
pub mod contract;
pub mod elf;
pub mod error;
pub mod fleet;
pub mod fmt;
pub mod generate;
pub mod livepatch;
pub mod lookup;
pub mod memo;
pub mod ops;
pub mod os;
pub mod patch;
pub mod persist;
pub mod remote;
pub mod resolve;
