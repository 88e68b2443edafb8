//! ELF and DWARF files, and the objects a process maps.
//!
//! `symbols` parses an ELF file (symbols, sections, segments, debug files) from the
//! tables `headers` reads without goblin's eager string tables, `dynhash`
//! looks names up in its dynamic symbols as the loader does, `objects`
//! the objects a process has mapped with their files, `buildid` GNU build-ids,
//! `unwind` call-frame information and walking a stopped thread's stack with it,
//! `demangle` C++ and Rust names, `rebase` a shared object moved to another
//! link-time address.
//!
//! May use: the base and `os`.

pub mod buildid;
pub mod demangle;
pub mod dynhash;
pub mod headers;
pub mod objects;
pub mod rebase;
pub mod symbols;
pub mod unwind;
