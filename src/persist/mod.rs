//! Processes started later (`rlivepatch persist`): a root-owned registry of patches with
//! their build-ids, and the autoload library (`LD_PRELOAD`, per service through a systemd
//! drop-in, or host-wide through /etc/ld.so.preload) whose constructor, in a process
//! whose objects match, has `rlivepatch autoload-apply` apply them before `main` runs,
//! with every check of `apply`. Nothing in the registry is used unless it is owned by
//! root and not writable by others; the message names the file.

pub mod watch;

use crate::error::Result;
use crate::patch::Patch;
use crate::{bail, err};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the registry lives unless `RLIVEPATCH_REGISTRY` says otherwise.
pub const DEFAULT_REGISTRY: &str = "/var/lib/rlivepatch/persist";

/// The autoload library, built with rlivepatch.
pub const AUTOLOAD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/librlivepatch-autoload.so"));

/// One persisted patch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The patch's name.
    pub name: String,
    /// Its file in the registry.
    pub file: PathBuf,
    /// The objects it is for (`main` for the executable) and their build-ids.
    pub build_ids: Vec<(String, String)>,
    /// When it was persisted (seconds since the epoch).
    pub persisted_at: u64,
    /// Also applied to processes started without its libraries: it waits for them, as
    /// objects that come later (`persist --wait`).
    #[serde(default)]
    pub wait: bool,
    /// Persisted with `--require-signature`: each autoload verifies it again, by a key
    /// of [`Entry::keyring`] or the host's (the host's policy holds besides).
    #[serde(default)]
    pub require_signature: bool,
    /// The keyring directories it was persisted with (`--keyring`).
    #[serde(default)]
    pub keyring: Vec<PathBuf>,
}

/// The registry directory.
pub fn registry() -> PathBuf {
    std::env::var_os("RLIVEPATCH_REGISTRY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY))
}

/// Where the autoload library is written: next to the registry.
pub fn library_path(reg: &Path) -> PathBuf {
    reg.parent()
        .unwrap_or(Path::new("/"))
        .join("librlivepatch-autoload.so")
}

/// Refuse a file anyone but root could have written.
pub fn trusted(path: &Path) -> Result<()> {
    let m = std::fs::metadata(path).map_err(|e| {
        err!(
            Failed,
            "cannot read {}: {}",
            path.display(),
            crate::error::io_text(&e)
        )
    })?;
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        bail!(
            Refused,
            "{} is not owned by root or is writable by others (uid {}, mode {:o}): nothing is loaded from the registry until it is (chown root; chmod go-w)",
            path.display(),
            m.uid(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            err!(
                Failed,
                "cannot write {}: {}",
                path.display(),
                crate::error::io_text(&e)
            )
        })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The entries of the registry at `reg`, each checked.
pub fn list(reg: &Path) -> Result<Vec<Entry>> {
    let Ok(rd) = std::fs::read_dir(reg) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&p)
            .map_err(|e| err!(Failed, "cannot read {}: {e}", p.display()))?;
        let entry: Entry = serde_json::from_str(&text)
            .map_err(|e| err!(Failed, "{} is not a registry entry: {e}", p.display()))?;
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Rewrite the index the autoload library reads: one line per build-id.
fn write_index(reg: &Path) -> Result<()> {
    let mut text = String::new();
    for e in list(reg)? {
        for (_, id) in &e.build_ids {
            text.push_str(&format!("{id} {}\n", e.name));
        }
        // Every process the autoload library starts in is a candidate.
        if e.wait {
            text.push_str(&format!("wait {}\n", e.name));
        }
    }
    write_file(&reg.join("index"), text.as_bytes(), 0o644)
}

/// Register the patch at `path` for processes started later.
pub fn persist(path: &Path, wait: bool, how: &crate::patch::Acceptance) -> Result<Entry> {
    let patch = Patch::load_with(path, how, &mut |l| {
        let _ =
            std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("rlivepatch: {l}\n"));
    })?;
    if wait && patch.build_ids.iter().any(|(o, _)| o.is_none()) {
        bail!(
            Patch,
            "patch {} is for a main executable, which every process of it has from its start: --wait is for patches of libraries",
            patch.name
        );
    }
    if patch.build_ids.is_empty() {
        bail!(
            Patch,
            "patch {} carries no RLIVEPATCH_BUILD_ID: a persisted patch is matched to the processes started later by the build-ids of their objects; add `rlivepatch build-id FILE`'s line (rlivepatch build adds it)",
            patch.name
        );
    }
    let reg = registry();
    std::fs::create_dir_all(&reg)
        .and_then(|()| std::fs::set_permissions(&reg, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| {
            err!(
                Failed,
                "cannot create {}: {}",
                reg.display(),
                crate::error::io_text(&e)
            )
        })?;
    trusted(&reg)?;
    // The very bytes checked above (the file was read once), not the path again.
    let file = reg.join(format!("{}.so", patch.name));
    write_file(
        &file,
        &[patch.file.data(), &patch.signature].concat(),
        0o644,
    )?;
    let entry = Entry {
        name: patch.name.clone(),
        file,
        build_ids: patch
            .build_ids
            .iter()
            .map(|(o, id)| (o.clone().unwrap_or_else(|| "main".into()), id.clone()))
            .collect(),
        persisted_at: now(),
        wait,
        require_signature: how.require_signature,
        keyring: how.keyring.clone(),
    };
    let json = serde_json::to_string_pretty(&entry).expect("serializable");
    write_file(
        &reg.join(format!("{}.json", patch.name)),
        json.as_bytes(),
        0o644,
    )?;
    // The tool the autoload library runs, and the library itself.
    let me =
        std::env::current_exe().map_err(|e| err!(Failed, "cannot find rlivepatch itself: {e}"))?;
    write_file(
        &reg.join("tool"),
        format!("{}\n", me.display()).as_bytes(),
        0o644,
    )?;
    write_file(&library_path(&reg), AUTOLOAD, 0o644)?;
    write_index(&reg)?;
    Ok(entry)
}

/// Remove patch `name` from the registry.
pub fn unpersist(name: &str) -> Result<()> {
    let reg = registry();
    let json = reg.join(format!("{name}.json"));
    if !json.exists() {
        let names: Vec<String> = list(&reg)?.into_iter().map(|e| e.name).collect();
        bail!(
            Mismatch,
            "no persisted patch named {name} (persisted: {}); see `rlivepatch persist --list`",
            crate::fmt::names_or_none(&names)
        );
    }
    let _ = std::fs::remove_file(reg.join(format!("{name}.so")));
    std::fs::remove_file(&json)
        .map_err(|e| err!(Failed, "cannot remove {}: {e}", json.display()))?;
    write_index(&reg)
}

/// Apply the persisted patches that match process `pid` (run by the autoload library
/// from inside the process's start-up): each file checked first. Returns one line per
/// patch applied; failures are reported and do not stop the others.
pub fn autoload_apply(pid: i32, reg: &Path, progress: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
    trusted(reg)?;
    trusted(&reg.join("index"))?;
    let proc = crate::os::process::Process::open(pid)?;
    let maps = proc.maps()?;
    let objects = crate::elf::objects::Objects::new(&proc, &maps, &[])?;
    let mut done = Vec::new();
    for e in list(reg)? {
        trusted(&reg.join(format!("{}.json", e.name)))?;
        // Each object it is for is loaded with that build, or (`--wait`) not loaded yet:
        // then the patch waits for it.
        let matches = e.build_ids.iter().all(|(o, id)| {
            let name = (o != "main").then_some(o.as_str());
            match objects.by_name(name) {
                Ok(obj) => {
                    obj.file().ok().and_then(|f| f.build_id_hex()).as_deref() == Some(id.as_str())
                }
                Err(_) => e.wait && name.is_some(),
            }
        });
        if !matches {
            continue;
        }
        if let Err(er) = trusted(&e.file) {
            progress(&er.message);
            continue;
        }
        let opts = crate::ops::Options {
            timeout: std::time::Duration::from_secs(5),
            origin: "autoload",
            acceptance: crate::patch::Acceptance {
                keyring: e.keyring.clone(),
                require_signature: e.require_signature,
                ..Default::default()
            },
            ..Default::default()
        };
        match crate::ops::apply(pid, &e.file, &opts, progress) {
            Ok(_) => done.push(e.name.clone()),
            Err(er) => progress(&format!("{}: {}", e.name, er.message)),
        }
    }
    Ok(done)
}

/// Write the systemd drop-in that preloads the autoload library into `unit`'s
/// processes (under `root`, `/` by default). Returns its path.
pub fn install_unit(unit: &str, root: &Path) -> Result<PathBuf> {
    let reg = registry();
    let unit = if unit.contains('.') {
        unit.to_string()
    } else {
        format!("{unit}.service")
    };
    let dir = root.join("etc/systemd/system").join(format!("{unit}.d"));
    std::fs::create_dir_all(&dir).map_err(|e| {
        err!(
            Failed,
            "cannot create {}: {}",
            dir.display(),
            crate::error::io_text(&e)
        )
    })?;
    let mut text = format!(
        "# Written by rlivepatch autoload: processes of {unit} run the patches of\n# `rlivepatch persist` from their start. Remove this file (and daemon-reload) to stop.\n[Service]\nEnvironment=LD_PRELOAD={}\n",
        library_path(&reg).display()
    );
    if reg != Path::new(DEFAULT_REGISTRY) {
        text.push_str(&format!(
            "Environment=RLIVEPATCH_REGISTRY={}\n",
            reg.display()
        ));
    }
    let path = dir.join("rlivepatch-autoload.conf");
    write_file(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// Add the autoload library to `/etc/ld.so.preload` (under `root`) once. Returns its path.
pub fn install_system(root: &Path) -> Result<PathBuf> {
    let lib = library_path(&registry());
    let path = root.join("etc/ld.so.preload");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old.lines().any(|l| l.trim() == lib.display().to_string()) {
        return Ok(path);
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| err!(Failed, "cannot create {}: {e}", d.display()))?;
    }
    let mut text = old;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{}\n", lib.display()));
    write_file(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}
