//! Pair the symbols of the pristine and the patched object: the same function or variable
//! in both compilations. Names first; then the name without the numbers the compiler
//! appends (`calls.0`, `foo.part.1`), when that is unique on both sides. Special statics
//! (`__func__.N`, `CSWTCH.N`, compound literals) are never paired: they are anonymous
//! data, compared and copied by contents.

use super::relobj::{Kind, RelObj, base_name};

/// Paired symbols: (patched index, pristine index or `None` for new).
#[derive(Debug, Default)]
pub struct Pairing {
    /// Functions (`STT_FUNC` with code).
    pub funcs: Vec<(usize, Option<usize>)>,
    /// Data objects.
    pub data: Vec<(usize, Option<usize>)>,
}

impl Pairing {
    /// The pristine twin of patched symbol `i`.
    pub fn twin(&self, i: usize) -> Option<usize> {
        self.funcs
            .iter()
            .chain(&self.data)
            .find(|(p, _)| *p == i)
            .and_then(|(_, t)| *t)
    }
}

/// Statics the compiler makes on its own: anonymous data under a name.
pub fn is_special(name: &str) -> bool {
    let b = base_name(name);
    b.starts_with("__func__")
        || b.starts_with("__PRETTY_FUNCTION__")
        || b.starts_with("__FUNCTION__")
        || b.starts_with("CSWTCH")
        || b.starts_with(".L")
        || b.contains("compoundliteral")
        || b.starts_with("._")
}

fn defined(o: &RelObj, kinds: &[Kind]) -> Vec<usize> {
    o.symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.section.is_some()
                && kinds.contains(&s.kind)
                && !s.name.is_empty()
                && !is_special(&s.name)
        })
        .map(|(i, _)| i)
        .collect()
}

fn pair(pristine: &RelObj, patched: &RelObj, kinds: &[Kind]) -> Vec<(usize, Option<usize>)> {
    let old = defined(pristine, kinds);
    let new = defined(patched, kinds);
    new.iter()
        .map(|&n| {
            let name = &patched.symbols[n].name;
            let exact = old
                .iter()
                .copied()
                .find(|&o| pristine.symbols[o].name == *name);
            let by_base = || {
                let b = base_name(name);
                let olds: Vec<usize> = old
                    .iter()
                    .copied()
                    .filter(|&o| base_name(&pristine.symbols[o].name) == b)
                    .collect();
                let news = new
                    .iter()
                    .filter(|&&x| base_name(&patched.symbols[x].name) == b)
                    .count();
                (olds.len() == 1 && news == 1).then(|| olds[0])
            };
            (n, exact.or_else(by_base))
        })
        .collect()
}

/// Pair the functions and data objects of `patched` with those of `pristine`.
pub fn correlate(pristine: &RelObj, patched: &RelObj) -> Pairing {
    Pairing {
        funcs: pair(pristine, patched, &[Kind::Func, Kind::Ifunc]),
        data: pair(pristine, patched, &[Kind::Object, Kind::Tls]),
    }
}
