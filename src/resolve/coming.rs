//! Resolution of the functions of a patch whose objects the process has not loaded
//! yet: each object found where the loader would find it, recognisable by a build-id,
//! and each function fit for the plain jump the runtime's hook writes when the object
//! comes ([`crate::livepatch::coming`]).

use crate::contract::Contracts;
use crate::elf::objects::Objects;
use crate::error::Result;
use crate::patch::Patch;
use crate::resolve::funcs::Resolved;
use crate::{bail, err};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A function of a patch whose object the process has not loaded: resolved in the
/// object's file, at file addresses.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Resolved as if the object were loaded at its file addresses.
    pub resolved: Resolved,
    /// The object as the patch names it.
    pub name: String,
    /// Its build-id.
    pub build_id: String,
    /// Where its build-id lies.
    pub note_vaddr: u64,
}

/// The functions of `patch` whose objects the process has not loaded: each object found
/// where the loader would find it, recognisable by a build-id, and each function fit for
/// a plain jump. Functions of loaded objects are left to [`loaded`].
pub fn resolve(
    patch: &Patch,
    objects: &Objects,
    pid: i32,
    library_path: &[PathBuf],
    debug_dirs: &[PathBuf],
    contracts: &mut crate::contract::Contracts,
) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let mut names: Vec<&str> = patch
        .funcs
        .iter()
        .filter_map(|f| f.object.as_deref())
        .filter(|n| *n != "main" && !is_loaded(objects, n))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        // Not loaded, and not on the loader's path either: the answer is the usual one.
        let Some(path) = locate(pid, name, objects, library_path) else {
            bail!(
                Mismatch,
                "{}; it is not on the process's library path either, so it cannot be patched when it comes; give its directory with --library-path DIR",
                objects.not_loaded(name)
            );
        };
        let virt = Objects::unloaded(pid, &path, debug_dirs)?;
        let file = virt.list[0].file()?;
        let (build_id, note_vaddr) = crate::elf::buildid::note(&file).ok_or_else(|| {
            err!(
                Mismatch,
                "{path} is not loaded in process {pid}, and it has no build-id by which rlivepatch could recognise it when it comes; load it first, or link it with -Wl,--build-id"
            )
        })?;
        if let Some((_, want)) = patch
            .build_ids
            .iter()
            .find(|(o, _)| o.as_deref() == Some(name))
            && *want != build_id
        {
            bail!(
                Mismatch,
                "patch {} was built for a {name} with build-id {want}, but the one process {pid} would load ({path}) has build-id {build_id}: another build; rebuild the patch for it",
                patch.name
            );
        }
        let only: Vec<usize> = patch
            .funcs
            .iter()
            .enumerate()
            .filter(|(_, f)| f.object.as_deref() == Some(name))
            .map(|(i, _)| i)
            .collect();
        for r in crate::resolve::funcs::resolve_some(patch, &virt, contracts, &only)? {
            refuse_unfit(patch, &r, name)?;
            out.push(Pending {
                resolved: r,
                name: name.to_string(),
                build_id: build_id.clone(),
                note_vaddr,
            });
        }
    }
    Ok(out)
}

/// An object a patch waits for, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    /// The object as the patch names it.
    pub object: String,
    /// The file the process would load.
    pub file: String,
    /// Its build-id.
    pub build_id: String,
    /// The functions that change in it.
    pub functions: Vec<String>,
}

impl PendingView {
    /// One view per object.
    pub fn of(pending: &[Pending]) -> Vec<PendingView> {
        let mut out: Vec<PendingView> = Vec::new();
        for p in pending {
            match out.iter_mut().find(|v| v.object == p.name) {
                Some(v) => v.functions.push(p.resolved.symbol.clone()),
                None => out.push(PendingView {
                    object: p.name.clone(),
                    file: p.resolved.object.clone(),
                    build_id: p.build_id.clone(),
                    functions: vec![p.resolved.symbol.clone()],
                }),
            }
        }
        out
    }

    /// One line for text reports.
    pub fn line(&self) -> String {
        format!(
            "pending: {} is not loaded; when it is, before any of its code runs: {}",
            self.object,
            self.functions.join(", ")
        )
    }
}

/// Does any loaded object answer to `name` (a path, a file name or a soname)?
fn is_loaded(objects: &Objects, name: &str) -> bool {
    let canon = std::fs::canonicalize(name).ok();
    objects.list.iter().any(|o| {
        o.path == name
            || canon.as_deref().is_some_and(|c| Path::new(&o.path) == c)
            || (!name.starts_with('/')
                && (o.file_name() == name || o.soname().as_deref() == Some(name)))
    })
}

/// What the hook cannot do for an object that comes: it writes plain jumps.
fn refuse_unfit(patch: &Patch, r: &Resolved, name: &str) -> Result<()> {
    let f = &patch.funcs[r.index];
    let why = if r.resolver.is_some() {
        Some("it is an IFUNC, whose implementation is only known once the object is loaded")
    } else if f.orig_slot.is_some() {
        Some("RLIVEPATCH_FUNC_WRAP needs a trampoline made next to the loaded code")
    } else if r.contract.preserves() {
        Some(
            "its callers rely on registers it leaves alone, and the path that keeps them is only set up for loaded objects",
        )
    } else {
        None
    };
    match why {
        Some(why) => bail!(
            Mismatch,
            "{} in {name} cannot be patched while {name} is not loaded: {why}; apply the patch once the process has loaded {name}",
            r.symbol
        ),
        None => Ok(()),
    }
}

/// Where the loader would find `name` for process `pid`: a path as the process sees it.
fn locate(pid: i32, name: &str, objects: &Objects, extra: &[PathBuf]) -> Option<String> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    // A shared object, as the loader would take it (libc.so is a linker script).
    let exists = |p: &Path| {
        let rel = p.strip_prefix("/").unwrap_or(p);
        let mut head = [0u8; 18];
        std::fs::File::open(root.join(rel))
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head[..4] == *b"\x7fELF" && head[16] == 3)
    };
    if name.starts_with('/') {
        return exists(Path::new(name)).then(|| name.to_string());
    }
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
        for var in env.split(|&b| b == 0) {
            if let Some(v) = var.strip_prefix(b"LD_LIBRARY_PATH=") {
                dirs.extend(
                    String::from_utf8_lossy(v)
                        .split([':', ';'])
                        .filter(|d| d.starts_with('/'))
                        .map(PathBuf::from),
                );
            }
        }
    }
    // Next to what the process loaded already (plugins often are), then the loader's
    // configured and default directories, then glibc's gconv modules.
    for o in &objects.list {
        if let Some(d) = Path::new(&o.path).parent()
            && o.path.starts_with('/')
        {
            dirs.push(d.to_path_buf());
        }
    }
    if let Ok(conf) = std::fs::read_dir(root.join("etc/ld.so.conf.d")) {
        for e in conf.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            dirs.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
    }
    dirs.extend(
        [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu/gconv",
            "/usr/lib64/gconv",
        ]
        .map(PathBuf::from),
    );
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| exists(p))
        .map(|p| p.display().to_string())
}

/// Resolve every function of `patch` in the loaded objects of the process: object, symbol, size, entry bytes.
/// IFUNC symbols are resolved later, in the process ([`resolve_ifuncs`]).
/// Functions of objects the process has not loaded (`pending`, see [`crate::livepatch::coming`])
/// are left out.
pub fn loaded(
    patch: &Patch,
    objects: &Objects,
    contracts: &mut Contracts,
    pending: &[Pending],
) -> Result<Vec<Resolved>> {
    let only: Vec<usize> = (0..patch.funcs.len())
        .filter(|i| !pending.iter().any(|p| p.resolved.index == *i))
        .collect();
    crate::resolve::funcs::resolve_some(patch, objects, contracts, &only)
}
