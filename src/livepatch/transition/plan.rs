//! What a switch changes (the code no thread may be in, the entries and their writes),
//! and the process as the switch sees it.

use crate::elf::objects::Objects;
use crate::elf::unwind::Unwinder;
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::{Tid, Tracer};
use crate::remote::inject::Scratch;
use std::time::Duration;

/// How the preserving path is named where it blocks a switch.
pub const PRESERVING_PATH: &str = "the preserving path";

/// Code whose implementation the switch changes.
#[derive(Debug, Clone)]
pub struct Changed {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// For messages.
    pub name: String,
}

/// One write of the switch.
#[derive(Debug, Clone)]
pub struct Write {
    /// Where.
    pub addr: u64,
    /// The bytes there now.
    pub old: Vec<u8>,
    /// The bytes after the switch.
    pub new: Vec<u8>,
}

/// What a switch changes.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// No thread may be in these.
    pub changed: Vec<Changed>,
    /// Entries being written: even with `--force`, no pc may be inside their first bytes.
    pub entries: Vec<(u64, u64)>,
    /// The writes.
    pub writes: Vec<Write>,
}

/// How to switch.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Give up after this long.
    pub timeout: Duration,
    /// Switch without the consistency check (the kernel's force).
    pub force: bool,
}

/// The process and its threads, as the switch needs them.
pub struct World<'a> {
    /// The tracer.
    pub tr: &'a mut Tracer,
    /// The process.
    pub proc: &'a Process,
    /// Its objects (including a patch just loaded).
    pub objects: &'a Objects,
    /// Its mappings.
    pub maps: &'a [Mapping],
    /// The unwinder (tables cached across attempts).
    pub unwinder: &'a mut Unwinder,
    /// rlivepatch's memory in the target, for return trampolines.
    pub scratch: Option<Scratch>,
    /// Return trampolines must not be used (CET shadow stack).
    pub shadow_stack: bool,
    /// After a successful switch, only these threads stay attached (resumed); the others
    /// are detached. `None`: all are resumed and stay attached.
    pub keep: Option<Vec<Tid>>,
    /// rlivepatch's keeper, when it is among `keep`: it stays stopped after the switch
    /// (no thread of the program waits for it), so that the calls that follow borrow it
    /// at once instead of catching it on its way back into its wait.
    pub park: Option<Tid>,
}
