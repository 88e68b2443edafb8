//! The last check of a linked patch: every symbol it leaves to the dynamic loader must
//! be defined by the program or the libraries it loads. A changed function may call
//! something the diff adds in a file the build does not compile into the binary (a new
//! module that only a new `configure` would add): such a patch would fail to load in
//! every process, so the build refuses it and says which symbol is missing.

use crate::error::Result;
use goblin::elf::{Elf, section_header::SHN_UNDEF, sym::STB_WEAK};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Refuse the patch at `patch` when a strong undefined symbol of it is defined by none of
/// `binaries` and the libraries they need. When a library cannot be found, nothing is
/// refused: what it defines is unknown.
pub fn check(patch: &Path, binaries: &[PathBuf]) -> Result<()> {
    let Ok(bytes) = std::fs::read(patch) else {
        return Ok(());
    };
    let Ok(elf) = Elf::parse(&bytes) else {
        return Ok(());
    };
    let wanted: Vec<String> = elf
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx == SHN_UNDEF as usize && s.st_name != 0 && s.st_bind() != STB_WEAK)
        .filter_map(|s| elf.dynstrtab.get_at(s.st_name).map(str::to_string))
        // The runtime's interface (shadow variables, states) is loaded before the patch.
        .filter(|n| !n.starts_with("rlp_"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let Some(defined) = defined_by(binaries) else {
        return Ok(());
    };
    let missing: Vec<&String> = wanted.iter().filter(|n| !defined.contains(*n)).collect();
    if let Some(first) = missing.first() {
        crate::refuse!(
            Unsupported,
            "the changed code uses {first}{}, which neither the patch nor {} and its libraries define: the diffs add it in a file the build does not compile into the binary (a new file or module needs the build configured again), and a livepatch cannot add it there",
            if missing.len() > 1 {
                format!(" (and {} more)", missing.len() - 1)
            } else {
                String::new()
            },
            binaries
                .iter()
                .map(|b| b.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The dynamic symbols defined by `roots` and every library they need, transitively;
/// `None` when one of them cannot be found or read.
fn defined_by(roots: &[PathBuf]) -> Option<HashSet<String>> {
    let cache = ld_cache();
    let mut defined = HashSet::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let bytes = std::fs::read(&path).ok()?;
        let elf = Elf::parse(&bytes).ok()?;
        for s in elf.dynsyms.iter() {
            if s.st_shndx != SHN_UNDEF as usize
                && let Some(n) = elf.dynstrtab.get_at(s.st_name)
            {
                defined.insert(n.to_string());
            }
        }
        let origin = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut dirs: Vec<PathBuf> = elf
            .runpaths
            .iter()
            .chain(elf.rpaths.iter())
            .flat_map(|p| p.split(':'))
            .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
            .collect();
        // libtool and meson builds run from the tree: the binary's own directory and
        // its `.libs` hold the project's libraries.
        dirs.push(origin.clone());
        dirs.push(origin.join(".libs"));
        for lib in elf.libraries.iter() {
            let found = dirs
                .iter()
                .map(|d| d.join(lib))
                .find(|p| p.is_file())
                .or_else(|| cache.get(*lib).cloned())
                .or_else(|| {
                    SYSTEM_DIRS
                        .iter()
                        .map(|d| Path::new(d).join(lib))
                        .find(|p| p.is_file())
                })?;
            todo.push(found);
        }
    }
    Some(defined)
}

/// The loader's default directories, for a system without `ldconfig`.
const SYSTEM_DIRS: [&str; 5] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/local/lib",
];

/// The loader's cache (`ldconfig -p`): library name to path, for x86-64.
fn ld_cache() -> HashMap<String, PathBuf> {
    let Ok(o) = std::process::Command::new("ldconfig").arg("-p").output() else {
        return HashMap::new();
    };
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        // "	libz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"
        let Some((left, path)) = line.split_once(" => ") else {
            continue;
        };
        if !left.contains("x86-64") {
            continue;
        }
        if let Some(name) = left.split_whitespace().next() {
            map.entry(name.to_string())
                .or_insert_with(|| PathBuf::from(path.trim()));
        }
    }
    map
}
