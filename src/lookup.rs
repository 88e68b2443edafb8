//! `rlivepatch symbols`: the functions and variables of a process whose names match a
//! pattern, each with its object, run-time address, size, binding, demangled name, the
//! debug file its symbols came from, and whether a function can take a patch (and if
//! not, why). Read from /proc and the object files: the process is not stopped.

use crate::elf::objects::{LoadedObject, Objects};
use crate::elf::symbols::{ElfFile, SymKind, Symbol};
use crate::error::Result;
use crate::os::process::Process;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One symbol of the process.
#[derive(Debug, Clone, Serialize)]
pub struct SymbolView {
    /// The object's file name.
    pub object: String,
    /// The object's path.
    pub object_path: String,
    /// Run-time address, `0x...` (as everywhere in rlivepatch's JSON).
    pub address: String,
    /// Size in bytes (0 when the symbol table does not say).
    pub size: u64,
    /// `global` (or weak) or `local` (a C `static`).
    pub binding: &'static str,
    /// `function`, `ifunc`, `variable`, `tls` or `other`.
    pub kind: &'static str,
    /// The symbol (mangled for C++).
    pub name: String,
    /// The demangled name (C++, Rust).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// The separate debug file the symbol came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// For a function: can its entry take the jump?
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patchable: Option<bool>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// Does `name` match `pattern`: a glob (`*`, `?`) when it has one, else a substring.
fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.contains(pattern);
    }
    fn glob(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], n) || (!n.is_empty() && glob(p, &n[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => glob(&p[1..], &n[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn kind_name(k: SymKind) -> &'static str {
    match k {
        SymKind::Func => "function",
        SymKind::Ifunc => "ifunc",
        SymKind::Object => "variable",
        SymKind::Tls => "tls",
        _ => "other",
    }
}

/// Can function `s` of `file` (mapped with `bias`) take the jump, and if not, why?
fn patchable(file: &ElfFile, s: &Symbol, bias: u64) -> (bool, Option<String>) {
    if let Some(parent) = crate::contract::code::fragment_parent(&s.name) {
        return (
            false,
            Some(format!(
                "a part split off from {parent}; patch {parent}, which takes it along"
            )),
        );
    }
    if s.kind == SymKind::Ifunc {
        return (
            true,
            Some("an IFUNC: the implementation its resolver picks is patched".into()),
        );
    }
    let mut size = s.size;
    if size == 0 {
        size = crate::elf::unwind::fde_range(file, s.value)
            .map(|(a, b)| b.saturating_sub(s.value).min(b - a))
            .unwrap_or(0);
    }
    let Some(code) = file.bytes_at(s.value, size as usize) else {
        return (false, Some("its code is not in the file".into()));
    };
    let padding = crate::remote::redirect::padding_after(file, s.value, size);
    match crate::remote::redirect::check_function_padded(
        &s.name,
        s.value.wrapping_add(bias),
        code,
        padding,
    ) {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.message)),
    }
}

fn views_of(o: &LoadedObject, pattern: &str, out: &mut Vec<SymbolView>) -> Result<()> {
    let file = o.symbols_file()?;
    let code_file = o.file()?;
    let bias = o.bias()?;
    let debug_file = o.debug_file();
    let mut seen = std::collections::HashSet::new();
    for s in file.symtab().iter().chain(file.dynsym()) {
        if !matches!(
            s.kind,
            SymKind::Func | SymKind::Ifunc | SymKind::Object | SymKind::Tls
        ) {
            continue;
        }
        let demangled = crate::elf::demangle::demangle(&s.name);
        if !matches(pattern, &s.name) && !demangled.as_deref().is_some_and(|d| matches(pattern, d))
        {
            continue;
        }
        if !seen.insert((s.name.clone(), s.value)) {
            continue;
        }
        let (ok, why) = match s.kind {
            SymKind::Func | SymKind::Ifunc => {
                let (ok, why) = patchable(&code_file, s, bias);
                (Some(ok), why)
            }
            _ => (None, None),
        };
        let address = if s.kind == SymKind::Tls {
            format!("tls+{:#x}", s.value)
        } else {
            format!("{:#x}", s.value.wrapping_add(bias))
        };
        out.push(SymbolView {
            object: o.file_name().to_string(),
            object_path: o.path.clone(),
            address,
            size: s.size,
            binding: if s.global { "global" } else { "local" },
            kind: kind_name(s.kind),
            name: s.name.clone(),
            demangled,
            debug_file: debug_file.clone(),
            patchable: ok,
            why_not: why,
        });
    }
    Ok(())
}

/// The symbols of process `pid` matching `pattern` (all when empty), in `object` only
/// when given.
pub fn symbols(
    pid: i32,
    pattern: &str,
    object: Option<&str>,
    debug_dirs: &[PathBuf],
) -> Result<Vec<SymbolView>> {
    let proc = Process::open(pid)?;
    let maps = proc.maps()?;
    let objects = Objects::new(&proc, &maps, debug_dirs)?;
    let mut out = Vec::new();
    match object {
        Some(name) => views_of(objects.by_name(Some(name))?, pattern, &mut out)?,
        None => {
            for o in objects.list.iter().filter(|o| {
                !o.path.starts_with("/proc/") && !o.path.contains("memfd:") && o.path != "[vdso]"
            }) {
                // An object that cannot be read is skipped, not fatal: the others answer.
                let _ = views_of(o, pattern, &mut out);
            }
        }
    }
    Ok(out)
}

/// The text form: one line per symbol, grouped by object.
pub fn text(views: &[SymbolView]) -> String {
    let mut s = String::new();
    let mut last = "";
    for v in views {
        if v.object_path != last {
            let from = match &v.debug_file {
                Some(d) => format!(" (symbols from {d})"),
                None => String::new(),
            };
            let _ = writeln!(s, "{}{from}", v.object_path);
            last = &v.object_path;
        }
        let name = match &v.demangled {
            Some(d) => format!("{d} [{}]", v.name),
            None => v.name.clone(),
        };
        let verdict = match (v.patchable, &v.why_not) {
            (Some(true), None) => "  can take a patch".to_string(),
            (Some(true), Some(w)) => format!("  can take a patch ({w})"),
            (Some(false), Some(w)) => format!("  cannot take a patch: {w}"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {:<18} {:>6}  {:<6} {:<8} {name}{verdict}",
            v.address, v.size, v.binding, v.kind
        );
    }
    if views.is_empty() {
        s.push_str("no symbol matches\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("http", "ngx_http_time"));
        assert!(matches("ngx_*_time", "ngx_http_time"));
        assert!(!matches("ngx_*_time", "ngx_http_init"));
        assert!(matches("comput?", "compute"));
    }
}
