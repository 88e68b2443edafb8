//! Facts kept across runs: what rlivepatch reads from a file that is the same every time
//! it reads that version of the file (what callers of a function rely on, where the C
//! library's entry points are, where the loader can be hooked), kept in small files named
//! by a hash of everything the answer depends on, so that the next run reads the answer
//! instead of decoding and indexing the file again.
//!
//! The callers name the file versions in the key (see `ElfFile::version`: device, inode,
//! size, modification and change times, build-id: a file changed in place has a new
//! change time, a new file a new inode, so either is a new key, never a stale answer);
//! this module adds rlivepatch's own executable (another build may answer differently).
//!
//! Where: `kept` in rlivepatch's cache directory ([`crate::os::dirs::cache_dir`]:
//! `$RLIVEPATCH_CACHE`, else `~/.cache/rlivepatch`); removing it any time is safe. A kept
//! file is used only when rlivepatch's own user owns it and its directory and nobody
//! else can write them (the answers decide how a process that may run as root is
//! changed); anything else, or a file that does not parse, is ignored and the answer
//! worked out again. Every failure to read or write is silent: keeping is only ever a
//! shortcut.

use sha2::Digest;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

/// Format of the kept files (part of every key).
const VERSION: &str = "rlivepatch-kept-1";
/// A kept file larger than this is not one rlivepatch wrote.
const MAX_LEN: u64 = 1 << 20;

/// The name of the fact `kind` about `parts` (the file versions and arguments it depends
/// on); `None` when nothing can be kept (no usable directory).
pub fn key(kind: &str, parts: &[&str]) -> Option<String> {
    dir()?;
    let mut h = sha2::Sha256::new();
    for p in [VERSION, own_version()?.as_str(), kind].iter().chain(parts) {
        // Each part with its length: no two lists of parts hash alike.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// rlivepatch's own executable, once per run.
fn own_version() -> Option<String> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let m = std::fs::metadata("/proc/self/exe").ok()?;
        Some(format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ))
    })
    .clone()
}

/// The directory of kept facts (made on first use), when it is rlivepatch's user's own;
/// once per run.
fn dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::os::dirs::cache_dir().join("kept");
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

/// The kept files read or written by this run, by key: a fleet run asks the same facts
/// for every process that maps the same files, and reads each file once.
fn memo() -> &'static std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<[u8]>>> {
    static MEMO: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<[u8]>>>,
    > = std::sync::OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The fact kept under `key`, if there is a usable one.
pub fn load<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
    let known = memo().lock().ok()?.get(key).cloned();
    let bytes = match known {
        Some(b) => b,
        None => {
            let b: std::sync::Arc<[u8]> = read_kept(key)?.into();
            memo().lock().ok()?.insert(key.to_string(), b.clone());
            b
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(_) => {
            crate::os::fault::trace("kept fact ignored: it does not parse");
            None
        }
    }
}

/// The bytes of the kept file `key`, if it is rlivepatch's user's own.
fn read_kept(key: &str) -> Option<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir()?.join(key))
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || !trusted(&m) || m.len() > MAX_LEN {
        crate::os::fault::trace("kept fact ignored: not rlivepatch's own file");
        return None;
    }
    let mut bytes = Vec::new();
    (&f).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// The fact `kind` about `parts` (`None`: a file it depends on has no version), kept
/// from an earlier run, or made by `make` and kept when it succeeds.
pub fn get_or_make<T, E>(
    kind: &str,
    parts: Option<&[&str]>,
    make: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let key = parts.and_then(|p| key(kind, p));
    if let Some(v) = key.as_deref().and_then(load) {
        return Ok(v);
    }
    let v = make()?;
    if let Some(k) = &key {
        store(k, &v);
    }
    Ok(v)
}

/// Kept files at most: past this many, a store removes the older half first (a test
/// suite run keeps a few hundred answers for fixtures built anew each time; a host
/// patching its programs keeps a handful per patch).
const MAX_FILES: usize = 8192;

/// Keep `value` under `key` (written whole to a new file, then renamed into place: a
/// reader sees the old file, the new one, or none).
pub fn store<T: serde::Serialize>(key: &str, value: &T) {
    let Some(dir) = dir() else {
        return;
    };
    prune(&dir);
    let Ok(bytes) = serde_json::to_vec(value) else {
        return;
    };
    if let Ok(mut m) = memo().lock() {
        m.insert(key.to_string(), bytes.clone().into());
    }
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

/// Remove the older half of the kept files when there are more than [`MAX_FILES`]
/// (a store happens only when an answer was worked out, which costs more than this).
/// Once per run: listing thousands of files is a millisecond, and a fleet run stores
/// answers for every file its processes map.
fn prune(dir: &std::path::Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| prune_now(dir));
}

fn prune_now(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<std::fs::DirEntry> = entries.flatten().collect();
    if names.len() <= MAX_FILES {
        return;
    }
    let mut aged: Vec<(std::time::SystemTime, PathBuf)> = names
        .iter()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    aged.sort();
    for (_, path) in aged.iter().take(aged.len() / 2) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_the_older_half_past_the_limit_and_nothing_below_it() {
        let dir =
            std::env::temp_dir().join(format!("rlivepatch-kept-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..MAX_FILES {
            let p = dir.join(format!("{i:05}"));
            std::fs::write(&p, b"{}").unwrap();
            if i < 10 {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        prune_now(&dir);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), MAX_FILES);
        std::fs::write(dir.join("one-more"), b"{}").unwrap();
        prune_now(&dir);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), (MAX_FILES + 1).div_ceil(2));
        // The oldest went first.
        assert!(
            !left.iter().any(|n| n.as_str() < "00010"),
            "{:?}",
            &left[..5]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parts_are_told_apart_by_their_lengths() {
        if key("t", &[]).is_none() {
            return; // no usable cache directory here
        }
        assert_ne!(key("t", &["ab", "c"]), key("t", &["a", "bc"]));
        assert_eq!(key("t", &["ab", "c"]), key("t", &["ab", "c"]));
    }
}
