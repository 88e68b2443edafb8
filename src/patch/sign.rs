//! Signed patches: an ed25519 signature travels at the end of the patch file, after the
//! shared object (the loader reads only what the ELF headers describe), so a signed
//! patch stays one file. It covers every byte before it: all that is loaded and the
//! metadata. A keyring is a directory of public keys (`NAME.pub`); a policy in a
//! root-owned `/etc/rlivepatch/` can require signatures (see [`Policy`]).

use crate::error::Result;
use crate::{bail, err};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use std::path::{Path, PathBuf};

/// Ends a signed file: public key (32), signature (64), this magic (8).
const MAGIC: &[u8; 8] = b"RLPSIG1\0";
const TRAILER: usize = 32 + 64 + 8;

/// A signature found at the end of a patch file.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The signer's public key.
    pub key: [u8; 32],
    /// The signature of the bytes before it.
    pub sig: [u8; 64],
}

/// The bytes that are the patch, and the signature after them, if there is one.
pub fn split(bytes: &[u8]) -> (&[u8], Option<Signature>) {
    if bytes.len() < TRAILER || !bytes.ends_with(MAGIC) {
        return (bytes, None);
    }
    let at = bytes.len() - TRAILER;
    let key = bytes[at..at + 32].try_into().unwrap();
    let sig = bytes[at + 32..at + 96].try_into().unwrap();
    (&bytes[..at], Some(Signature { key, sig }))
}

/// Does `s` sign `payload` with the key it names?
pub fn verifies(payload: &[u8], s: &Signature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&s.key) else {
        return false;
    };
    key.verify(payload, &ed25519_dalek::Signature::from_bytes(&s.sig))
        .is_ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

/// `rlivepatch keygen PATH`: PATH.key (the private key, mode 0600) and PATH.pub.
pub fn keygen(path: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| err!(Failed, "reading /dev/urandom: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let (private, public) = (path.with_extension("key"), path.with_extension("pub"));
    let write = |p: &Path, text: String, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| {
                err!(
                    Failed,
                    "cannot write {}: {e} (an existing key is never overwritten)",
                    p.display()
                )
            })
    };
    write(&private, format!("{}\n", hex(&seed)), 0o600)?;
    write(
        &public,
        format!("{}\n", hex(key.verifying_key().as_bytes())),
        0o644,
    )?;
    Ok((private, public))
}

/// `rlivepatch sign --key PATH.key PATCH`: the patch signed in place (an older signature
/// replaced). Returns the public key.
pub fn sign(key: &Path, patch: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(key)
        .map_err(|e| err!(Failed, "cannot read key {}: {e}", key.display()))?;
    let seed: [u8; 32] = unhex(&text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            err!(
                Failed,
                "{} is not a key of rlivepatch keygen",
                key.display()
            )
        })?;
    let key = SigningKey::from_bytes(&seed);
    let bytes = std::fs::read(patch)
        .map_err(|e| err!(Patch, "cannot read patch file {}: {e}", patch.display()))?;
    let (payload, _) = split(&bytes);
    if !payload.starts_with(b"\x7fELF") {
        bail!(
            Patch,
            "{} is not a patch (not an ELF file)",
            patch.display()
        );
    }
    let mut out = payload.to_vec();
    out.extend_from_slice(key.verifying_key().as_bytes());
    out.extend_from_slice(&key.sign(payload).to_bytes());
    out.extend_from_slice(MAGIC);
    let tmp = patch.with_extension(format!("signing.{}", std::process::id()));
    let mode = std::fs::metadata(patch).map(|m| m.permissions());
    std::fs::write(&tmp, &out)
        .and_then(|()| mode.and_then(|m| std::fs::set_permissions(&tmp, m)))
        .and_then(|()| std::fs::rename(&tmp, patch))
        .map_err(|e| err!(Failed, "cannot write {}: {e}", patch.display()))?;
    Ok(*key.verifying_key().as_bytes())
}

/// Public keys by name (`NAME.pub` in the keyring directories).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<(String, [u8; 32])>,
}

impl Keyring {
    /// The keys in `dirs` (a directory that does not exist has none).
    pub fn load(dirs: &[PathBuf]) -> Keyring {
        let mut keys = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "pub") {
                    continue;
                }
                let key = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| unhex(&t))
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                if let (Some(k), Some(n)) = (key, p.file_stem()) {
                    keys.push((n.to_string_lossy().into_owned(), k));
                }
            }
        }
        Keyring { keys }
    }

    /// The name of `key`, if the keyring has it.
    pub fn name_of(&self, key: &[u8; 32]) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, k)| k == key)
            .map(|(n, _)| n.as_str())
    }
}

/// What the host requires of patches: `/etc/rlivepatch/policy` (a line
/// `require-signature`) and the keyring `/etc/rlivepatch/keys/`, both owned by root and
/// written by nobody else (otherwise ignored, and said). Neither a flag nor the
/// environment turns a requirement off. Test builds (debug assertions) read them from
/// `RLIVEPATCH_POLICY_DIR` instead, so that tests never touch the host's `/etc`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Every patch must carry a signature that verifies, by a key of the keyring.
    pub require_signature: bool,
    /// The host's keyring directory.
    pub keyring: Option<PathBuf>,
}

impl Policy {
    /// The host's policy.
    pub fn host() -> Policy {
        let dir = if cfg!(debug_assertions) {
            std::env::var_os("RLIVEPATCH_POLICY_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/etc/rlivepatch"))
        } else {
            PathBuf::from("/etc/rlivepatch")
        };
        let owned = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
        };
        let require_signature = owned(&dir.join("policy"))
            && std::fs::read_to_string(dir.join("policy"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "require-signature"));
        let keys = dir.join("keys");
        Policy {
            require_signature,
            keyring: owned(&keys).then_some(keys),
        }
    }
}
