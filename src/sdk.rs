//! The C SDK header, embedded: `rlivepatch build` compiles the records of the patches it
//! generates against the very header this rlivepatch reads.

/// `patches/include/rlivepatch.h`.
pub const HEADER: &str = include_str!("../patches/include/rlivepatch.h");
