//! Answers that point the right way when a name is not found: the nearest names for a
//! typo, a variable named as a function, a function that lives in another loaded
//! object, an object name that is not loaded (and the loaded ones that look alike), a
//! stripped object whose static functions need its debug file.

use crate::elf::objects::{LoadedObject, Objects};
use crate::elf::symbols::{ElfFile, SymKind};
use crate::err;
use crate::error::Error;

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why function `name` is not in `obj` (whose symbols are `syms`), and what to do.
pub fn function_not_found(
    name: &str,
    obj: &LoadedObject,
    syms: &ElfFile,
    objects: &Objects,
) -> Error {
    let here = obj.display_name();
    let all = || syms.symtab().iter().chain(syms.dynsym());
    // A variable.
    if let Some(v) =
        all().find(|s| s.name == name && matches!(s.kind, SymKind::Object | SymKind::Tls))
    {
        let how = if v.kind == SymKind::Tls {
            format!("RLIVEPATCH_TLS(type, local, \"{name}\")")
        } else {
            format!("RLIVEPATCH_SYMBOL(type, local, \"{name}\")")
        };
        return err!(
            Mismatch,
            "{name} in {here} is a variable, not a function: a patch replaces functions; to read or write {name} from a patch, declare {how}; to change what is done with it, replace the functions that use it"
        );
    }
    // A function of another object.
    let elsewhere: Vec<&LoadedObject> = objects
        .list
        .iter()
        .filter(|o| o.path != obj.path && o.is_patchable())
        .filter(|o| {
            o.file().is_ok_and(|f| {
                f.symtab()
                    .iter()
                    .chain(f.dynsym())
                    .any(|s| s.name == name && matches!(s.kind, SymKind::Func | SymKind::Ifunc))
            })
        })
        .collect();
    if let Some(o) = elsewhere.first() {
        let also = if elsewhere.len() > 1 {
            format!(
                " (also in {})",
                elsewhere[1..]
                    .iter()
                    .map(|o| o.display_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        return err!(
            Mismatch,
            "function {name} is not in {here} but in {}{also}: name that object, RLIVEPATCH_FUNC_IN(\"{}\", {name}, new)",
            o.display_name(),
            o.file_name()
        );
    }
    let near = crate::fmt::nearest(
        name,
        all()
            .filter(|s| matches!(s.kind, SymKind::Func | SymKind::Ifunc))
            .map(|s| s.name.as_str()),
    );
    let typo = if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", quoted(&near))
    };
    if !syms.has_symtab() {
        let looked = obj.debug_looked_at();
        let tried = if looked.is_empty() {
            String::new()
        } else {
            format!(
                " (looked at {})",
                looked
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return err!(
            Mismatch,
            "function {name} not found in {here}{typo}: it is stripped, so only its exported functions are visible (listed by `nm -D {}`, not `nm`); a static function needs its debug file{tried}: Debian ships it in the -dbgsym package of its source package (from the debian-debug archive), or pass --debug-dir DIR",
            obj.path
        );
    }
    let list = format!(
        "list its functions with `rlivepatch symbols {} --object {}` or `nm {}`",
        obj.pid,
        obj.file_name(),
        obj.path
    );
    if near.is_empty() {
        err!(Mismatch, "function {name} not found in {here}; {list}")
    } else {
        err!(
            Mismatch,
            "function {name} not found in {here}; did you mean {}? ({list})",
            quoted(&near)
        )
    }
}

/// Why symbol `name` (a `RLIVEPATCH_SYMBOL`) is not in `syms`: the nearest names.
pub fn symbol_suggestions(name: &str, syms: &ElfFile) -> String {
    let near = crate::fmt::nearest(
        name,
        syms.symtab()
            .iter()
            .chain(syms.dynsym())
            .map(|s| s.name.as_str()),
    );
    if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", quoted(&near))
    }
}
