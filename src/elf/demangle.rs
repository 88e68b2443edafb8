//! C++ names for people: mangled symbols are shown demangled beside the mangled form.

/// The demangled form of a C++ symbol, or `None` for a plain C name.
pub fn demangle(name: &str) -> Option<String> {
    if !name.starts_with("_Z") {
        return None;
    }
    let sym = cpp_demangle::Symbol::new(name).ok()?;
    sym.demangle().ok()
}

/// How a symbol is shown in messages: the demangled name when there is one.
pub fn display(name: &str) -> String {
    demangle(name).unwrap_or_else(|| name.to_string())
}
