//! Answers that point the right way when a name is not found: the nearest names for a
//! typo, a variable named as a function, a function that lives in another loaded
//! object, an object name that is not loaded (and the loaded ones that look alike), a
//! stripped object whose static functions need its debug file.

use crate::elf::objects::{LoadedObject, Objects};
use crate::elf::symbols::{ElfFile, SymKind};
use crate::err;
use crate::error::Error;

/// Edit distance between `a` and `b`: insertions, deletions, substitutions, and two
/// neighbours swapped (the commonest typo) each count one.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let mut v = (d[(i - 1) * w + j - 1] + usize::from(a[i - 1] != b[j - 1]))
                    .min(d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// Up to three of `candidates` nearest to `name`, close enough to be a typo of it.
pub fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let limit = (name.chars().count() / 4).clamp(1, 3);
    let mut found: Vec<(usize, &str)> = candidates
        .filter(|c| c.len().abs_diff(name.len()) <= limit && *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    // The closest only: a typo is one or two keys away, not three.
    let best = found.first().map(|f| f.0).unwrap_or(0);
    found
        .into_iter()
        .take_while(|f| f.0 == best)
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Objects a patch may name: not rlivepatch's own code or other patches.
fn patchable(o: &LoadedObject) -> bool {
    !o.path.starts_with("/proc/") && !o.path.contains("memfd:") && o.path != "[vdso]"
}

/// Why function `name` is not in `obj` (whose symbols are `syms`), and what to do.
pub fn function_not_found(
    name: &str,
    obj: &LoadedObject,
    syms: &ElfFile,
    objects: &Objects,
) -> Error {
    let here = obj.display_name();
    let all = || syms.symtab.iter().chain(&syms.dynsym);
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
        .filter(|o| o.path != obj.path && patchable(o))
        .filter(|o| {
            o.file().is_ok_and(|f| {
                f.symtab
                    .iter()
                    .chain(&f.dynsym)
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
    let near = nearest(
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

/// The loaded objects whose names look like `name`, for an object that is not loaded.
pub fn objects_like(name: &str, objects: &Objects) -> Vec<String> {
    let stem = |n: &str| n.split('.').next().unwrap_or(n).to_ascii_lowercase();
    let want = stem(name.rsplit('/').next().unwrap_or(name));
    let mut out: Vec<String> = objects
        .list
        .iter()
        .filter(|o| patchable(o))
        .map(|o| o.file_name().to_string())
        .filter(|f| {
            let s = stem(f);
            (!want.is_empty() && (s.starts_with(&want) || want.starts_with(&s)) && s.len() > 1)
                || distance(f, name) <= 3
        })
        .collect();
    out.sort();
    out.dedup();
    out.truncate(5);
    out
}

/// Why symbol `name` (a `RLIVEPATCH_SYMBOL`) is not in `syms`: the nearest names.
pub fn symbol_suggestions(name: &str, syms: &ElfFile) -> String {
    let near = nearest(
        name,
        syms.symtab
            .iter()
            .chain(&syms.dynsym)
            .map(|s| s.name.as_str()),
    );
    if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", quoted(&near))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_names() {
        assert_eq!(distance("ngx_http_tme", "ngx_http_time"), 1);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("stpe", "step"), 1);
        let names = ["ngx_http_time", "ngx_http_init", "main", "ngx_time_update"];
        assert_eq!(
            nearest("ngx_http_tmie", names.iter().copied()),
            ["ngx_http_time"]
        );
        assert!(nearest("zzz", names.iter().copied()).is_empty());
    }
}
