//! Resolution: every function and symbol a patch names, found in the process before
//! anything is touched (object, symbol, size, entry bytes, IFUNC implementation), and the
//! checks of the target itself.
//!
//! `target` checks the process, `funcs` finds the functions a patch replaces in the
//! loaded objects, `coming` those of objects not loaded yet, `symbols` the symbols a patch
//! declares, `linkage` what the loader will decide, `hints` the answers that point the
//! right way when a name is not found.
//!
//! May use: the base, `os`, `elf`, `contract`, `patch`, `remote`.

pub mod coming;
pub mod funcs;
pub mod hints;
pub mod linkage;
pub mod symbols;
pub mod target;
