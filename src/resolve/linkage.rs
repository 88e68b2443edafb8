//! What the dynamic loader decides when a patch loads, decided before anything is
//! touched, so that `check` answers what `apply` would: every symbol the patch needs must
//! be defined by an object of the process, by rlivepatch's runtime, or by a library the
//! patch names (else `dlopen` fails: "undefined symbol"); and a new function the patch
//! exports must not share its name with a function of the process (the loader would
//! bind the patch's record to that one, and the patch would redirect to the process's
//! own function).

use crate::bail;
use crate::elf::objects::Objects;
use crate::elf::symbols::ElfFile;
use crate::error::Result;
use crate::patch::Patch;
use goblin::elf::{section_header::SHN_UNDEF, sym::STB_WEAK};
use std::collections::HashSet;
use std::path::Path;

/// Where the loader finds a library named by file name, on Debian.
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib",
    "/lib",
];

/// Objects a patch's symbols can bind to: not other patches or rlivepatch's own code,
/// which are loaded from memfds and stay out of the global scope.
fn in_scope(path: &str) -> bool {
    !path.starts_with("/proc/") && !path.contains("memfd:") && path != "[vdso]"
}

/// Refuse what loading `patch` into the process of `objects` would refuse.
pub fn check(patch: &Patch, objects: &Objects) -> Result<()> {
    let pid = objects.list.first().map(|o| o.pid).unwrap_or(0);
    let Ok(elf) = crate::elf::headers::parse(patch.file.data()) else {
        return Ok(());
    };
    interposition(patch, objects, pid)?;
    // The symbols the patch needs (rlivepatch's runtime, loaded first when the patch uses
    // it, defines the rlp_ ones): a handful, looked up in each object's symbols rather
    // than every object's names gathered.
    let mut needed: Vec<&str> = elf
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx == SHN_UNDEF as usize && s.st_name != 0 && s.st_bind() != STB_WEAK)
        .filter_map(|s| crate::elf::headers::str_at(&elf.dynstrtab, s.st_name))
        .filter(|n| !n.starts_with("rlp_"))
        .collect();
    let mut loaded_names: HashSet<String> = HashSet::new();
    let define = |f: &ElfFile, needed: &mut Vec<&str>| {
        needed.retain(|n| !f.exports(n));
    };
    for o in objects.list.iter().filter(|o| in_scope(&o.path)) {
        if needed.is_empty() {
            break;
        }
        let Ok(f) = o.file() else { continue };
        loaded_names.insert(o.file_name().to_string());
        if let Some(so) = &f.soname {
            loaded_names.insert(so.clone());
        }
        define(&f, &mut needed);
    }
    // Libraries the patch names that the process has not loaded: dlopen loads them.
    for lib in &elf.libraries {
        if needed.is_empty() {
            break;
        }
        if loaded_names.contains(*lib) {
            continue;
        }
        let found = LIBRARY_DIRS
            .iter()
            .map(|d| Path::new(d).join(lib))
            .find_map(|p| ElfFile::open(&p).ok());
        match found {
            Some(f) => define(&f, &mut needed),
            // Somewhere the loader will look that this check does not know: say nothing.
            None => return Ok(()),
        }
    }
    if let Some(name) = needed.first() {
        bail!(
            Patch,
            "the patch uses {name}, which no object of process {pid} defines: loading it would fail (undefined symbol {name}); link the library that has it into the patch, or, for a symbol of the program itself, declare it with RLIVEPATCH_SYMBOL"
        );
    }
    Ok(())
}

/// A new function the patch exports under a name a loaded object defines too.
fn interposition(patch: &Patch, objects: &Objects, pid: i32) -> Result<()> {
    for f in patch.funcs.iter().filter(|f| patch.interposable(f)) {
        let Some(sym) = patch
            .file
            .dynsym()
            .iter()
            .find(|s| s.value == f.new_vaddr && s.global)
        else {
            continue;
        };
        for o in objects.list.iter().filter(|o| in_scope(&o.path)) {
            let Ok(file) = o.file() else { continue };
            if file.exports(&sym.name) {
                bail!(
                    Patch,
                    "the patch's new function {} has the name of a function {} of process {pid} exports: the loader would bind the patch to that one instead; make {} static",
                    sym.name,
                    o.display_name(),
                    sym.name
                );
            }
        }
    }
    Ok(())
}
