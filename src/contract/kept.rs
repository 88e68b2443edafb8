//! Contracts kept across runs: what callers of a function rely on is a property of the
//! object's file alone, so it is read from the code and debug information once per file
//! version, not once per run.
//!
//! Reading it means decoding the whole object (every call and jump to the function, its
//! parts, its folded twins) and indexing its debug information: about 1 ms for a small
//! library and 150 ms for the C library, the larger part of an apply's own work. A run
//! that analysed a function stores the result in a small file named by a hash of
//! everything the analysis read: the identity of the object's file (device, inode,
//! size, modification and change times, build-id), of the files its symbols and debug
//! information came from, of rlivepatch's own executable (another build may analyse
//! differently), the function, and the patch's other functions in the object. A file
//! changed in place has a new change time, and a new file a new inode: either is a new
//! key, never a stale answer. What depends on the process (whether another loaded
//! object calls the function by name) is not kept; it is read each run.
//!
//! Where: `contracts` in rlivepatch's cache directory ([`crate::os::dirs::cache_dir`]:
//! `$RLIVEPATCH_CACHE`, else `~/.cache/rlivepatch`); removing it any time is safe. A kept
//! file is used only when rlivepatch's own user owns it and its directory and nobody else
//! can write them (the answer decides how calls are redirected in a process that may run
//! as root); anything else, or a file that does not parse, is ignored and the analysis
//! runs again. Every failure to read or write is silent: keeping is only ever a
//! shortcut.

use super::Contract;
use super::code::Part;
use super::regs::RegSet;
use crate::elf::objects::LoadedObject;
use crate::elf::symbols::ElfFile;
use sha2::Digest;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

/// Format of the kept files (part of every key).
const VERSION: &str = "rlivepatch-contract-1";
/// A kept file larger than this is not one rlivepatch wrote.
const MAX_LEN: u64 = 1 << 20;

/// A contract as kept: every field, registers as bit sets.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    parts: Vec<Part>,
    clobbers: u64,
    relied: u64,
    keeps: u64,
    wide_vectors: bool,
    stack_args: u64,
    stack_args_exact: bool,
    direct_callers: u32,
    folded: Vec<String>,
    aliases: Vec<String>,
    clones: Vec<String>,
    inlined_into: Vec<String>,
    inlined_unknown: bool,
    reached: bool,
    exported: bool,
    pure: bool,
    nothrow: bool,
    replacement_may_throw: bool,
    convention_unverified: Option<String>,
    convention_changed: Option<String>,
}

impl From<&Contract> for Kept {
    fn from(c: &Contract) -> Kept {
        Kept {
            parts: c.parts.clone(),
            clobbers: c.clobbers.0,
            relied: c.relied.0,
            keeps: c.keeps.0,
            wide_vectors: c.wide_vectors,
            stack_args: c.stack_args,
            stack_args_exact: c.stack_args_exact,
            direct_callers: c.direct_callers,
            folded: c.folded.clone(),
            aliases: c.aliases.clone(),
            clones: c.clones.clone(),
            inlined_into: c.inlined_into.clone(),
            inlined_unknown: c.inlined_unknown,
            reached: c.reached,
            exported: c.exported,
            pure: c.pure,
            nothrow: c.nothrow,
            replacement_may_throw: c.replacement_may_throw,
            convention_unverified: c.convention_unverified.clone(),
            convention_changed: c.convention_changed.clone(),
        }
    }
}

impl From<Kept> for Contract {
    fn from(k: Kept) -> Contract {
        Contract {
            parts: k.parts,
            clobbers: RegSet(k.clobbers),
            relied: RegSet(k.relied),
            keeps: RegSet(k.keeps),
            wide_vectors: k.wide_vectors,
            stack_args: k.stack_args,
            stack_args_exact: k.stack_args_exact,
            direct_callers: k.direct_callers,
            folded: k.folded,
            aliases: k.aliases,
            clones: k.clones,
            inlined_into: k.inlined_into,
            inlined_unknown: k.inlined_unknown,
            reached: k.reached,
            exported: k.exported,
            pure: k.pure,
            nothrow: k.nothrow,
            replacement_may_throw: k.replacement_may_throw,
            convention_unverified: k.convention_unverified,
            convention_changed: k.convention_changed,
        }
    }
}

/// The name of the kept contract of function `sym` of `obj` at file address `vaddr`,
/// `size` bytes, analysed with `patched` (see [`super::Contracts::analyse`]); `None`
/// when keeping is off or a file it depends on has no identity (read from memory).
pub fn key(
    obj: &LoadedObject,
    sym: &str,
    vaddr: u64,
    size: u64,
    patched: &[&str],
) -> Option<String> {
    dir()?;
    let file = obj.file().ok()?;
    let symbols = obj.symbols_file().ok()?;
    let debug = match obj.debug_info_file() {
        Some(d) => identity(&d)?,
        None => "-".to_string(),
    };
    let mut patched: Vec<&str> = patched.to_vec();
    patched.sort_unstable();
    let text = format!(
        "{VERSION}\n{}\n{}\n{}\n{debug}\n{sym}\n{vaddr:#x}\n{size}\n{}\n{}{}",
        own_identity()?,
        identity(&file)?,
        identity(&symbols)?,
        patched.join(","),
        crate::os::fault::switched_on("no-preserve"),
        crate::os::fault::switched_on("narrow-vectors"),
    );
    let hash = sha2::Sha256::digest(text.as_bytes());
    Some(hash.iter().map(|b| format!("{b:02x}")).collect())
}

/// A file's identity: its device, inode, size, times and build-id.
fn identity(f: &ElfFile) -> Option<String> {
    let id = f.identity.as_ref()?;
    let build_id: String = f
        .build_id
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("{id}:{build_id}"))
}

/// rlivepatch's own executable, once per run.
fn own_identity() -> Option<String> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let m = std::fs::metadata("/proc/self/exe").ok()?;
        Some(crate::elf::symbols::FileIdentity::of(&m).to_string())
    })
    .clone()
}

/// The directory of kept contracts, `contracts` in rlivepatch's cache directory (made
/// on first use), when it is rlivepatch's user's own; once per run.
fn dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::os::dirs::cache_dir().join("contracts");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        let m = std::fs::symlink_metadata(&dir).ok()?;
        (m.is_dir() && trusted(&m)).then_some(dir)
    })
    .clone()
}

/// Owned by rlivepatch's user and writable by nobody else.
fn trusted(m: &std::fs::Metadata) -> bool {
    m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
}

/// The kept contract named `key`, if there is a usable one.
pub fn load(key: &str) -> Option<Contract> {
    let path = dir()?.join(key);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || !trusted(&m) || m.len() > MAX_LEN {
        crate::os::fault::trace("kept contract ignored: not rlivepatch's own file");
        return None;
    }
    let mut bytes = Vec::new();
    (&f).read_to_end(&mut bytes).ok()?;
    match serde_json::from_slice::<Kept>(&bytes) {
        Ok(k) => Some(k.into()),
        Err(_) => {
            crate::os::fault::trace("kept contract ignored: it does not parse");
            None
        }
    }
}

/// Keep `c` under `key` (written whole to a new file, then renamed into place: a reader
/// sees the old file, the new one, or none).
pub fn store(key: &str, c: &Contract) {
    let Some(dir) = dir() else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(&Kept::from(c)) else {
        return;
    };
    let tmp = dir.join(format!(".{key}.{}", nix::unistd::gettid()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes));
    if written.is_err() || std::fs::rename(&tmp, dir.join(key)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
