//! The layers of ARCHITECTURE.md, checked on the source: a module uses only modules of
//! its own layer or below, and no modules reach each other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a top-level module of `src/` and its rank.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("fmt", 0),
    ("memo", 0),
    ("os", 1),
    ("elf", 2),
    ("patch", 3),
    ("contract", 4),
    ("remote", 5),
    ("resolve", 6),
    ("livepatch", 7),
    ("ops", 8),
    ("fleet", 9),
    ("persist", 9),
    ("lookup", 9),
    ("generate", 9),
    ("cli", 10),
];

/// Every `.rs` file under `dir`, as its module path (`livepatch::record`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut sub = prefix.to_vec();
            sub.push(name);
            modules(&p, &sub, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let mut m = prefix.to_vec();
            if !(name == "mod" || (prefix.is_empty() && (name == "lib" || name == "main"))) {
                m.push(name);
            }
            out.insert(m, p);
        }
    }
}

/// The text of a file without comments and without its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `text` (the code of module `me`) names: through `crate::` and `super::`
/// paths, brace groups included, and a folder's `mod.rs` through its children's names.
fn uses(me: &[String], text: &str, all: &BTreeMap<Vec<String>, PathBuf>) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let owner = |path: &[&str]| -> Option<Vec<String>> {
        (1..=path.len()).rev().find_map(|n| {
            let k: Vec<String> = path[..n].iter().map(|s| s.to_string()).collect();
            all.contains_key(&k).then_some(k)
        })
    };
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect()
    };
    let parent: Vec<&str> = me[..me.len().saturating_sub(1)]
        .iter()
        .map(|s| s.as_str())
        .collect();
    let children: Vec<&str> = all
        .keys()
        .filter(|k| k.len() == me.len() + 1 && k.starts_with(me))
        .map(|k| k[me.len()].as_str())
        .collect();
    let mut starts: Vec<(usize, usize, Vec<&str>)> = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        starts.push((i, 7, Vec::new()));
    }
    for (i, _) in text.match_indices("super::") {
        starts.push((i, 7, parent.clone()));
    }
    for child in &children {
        let pat = format!("{child}::");
        for (i, _) in text.match_indices(&pat) {
            let before = text[..i].chars().last();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                let mut base: Vec<&str> = me.iter().map(|s| s.as_str()).collect();
                base.push(child);
                starts.push((i, pat.len(), base));
            }
        }
    }
    for (i, skip, base) in starts {
        let rest = &text[i + skip..];
        let path = word(rest);
        let mut segs = base.clone();
        segs.extend(path.split("::").filter(|s| !s.is_empty()));
        if rest[path.len()..].starts_with('{') {
            let group = &rest[path.len() + 1..rest.find('}').unwrap_or(rest.len())];
            for item in group.split(',') {
                let mut full = segs.clone();
                full.extend(item.trim().split("::").filter(|s| !s.is_empty()));
                out.extend(owner(&full));
            }
        }
        out.extend(owner(&segs));
    }
    out
}

fn rank(m: &[String]) -> Option<u32> {
    let top = m.first()?;
    LAYERS.iter().find(|(n, _)| n == top).map(|(_, r)| *r)
}

#[test]
fn modules_use_only_their_layer_and_below_and_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = BTreeMap::new();
    modules(&src, &[], &mut all);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (m, path) in &all {
        if m.is_empty() {
            continue; // lib.rs and main.rs
        }
        let r =
            rank(m).unwrap_or_else(|| panic!("{} is in no layer of tests/layers.rs", m.join("::")));
        let mut to = uses(m, &code(path), &all);
        to.remove(m);
        to.retain(|t| !t.is_empty());
        for t in &to {
            let rt = rank(t).unwrap();
            if rt > r || (rt == r && t[0] != m[0]) {
                wrong.push(format!("{} uses {}", m.join("::"), t.join("::")));
            }
        }
        edges.insert(m.clone(), to);
    }
    assert!(
        wrong.is_empty(),
        "uses across layers:\n  {}",
        wrong.join("\n  ")
    );
    // No circle: repeatedly drop modules that use nothing left.
    let mut left = edges.clone();
    loop {
        let free: Vec<Vec<String>> = left
            .iter()
            .filter(|(_, to)| to.iter().all(|t| !left.contains_key(t)))
            .map(|(m, _)| m.clone())
            .collect();
        if free.is_empty() {
            break;
        }
        for m in free {
            left.remove(&m);
        }
    }
    let circle: Vec<String> = left.keys().map(|m| m.join("::")).collect();
    assert!(
        circle.is_empty(),
        "modules that reach each other in a circle: {}",
        circle.join(", ")
    );
}

#[test]
fn the_check_sees_a_use_across_layers() {
    let mut all = BTreeMap::new();
    for m in [
        &["os", "process"][..],
        &["livepatch", "record"],
        &["ops", "apply"],
        &["ops", "report"],
    ] {
        all.insert(m.iter().map(|s| s.to_string()).collect(), PathBuf::new());
    }
    let found = uses(
        &["ops".to_string(), "apply".to_string()],
        "use crate::livepatch::record::Record;\nuse crate::{ops::apply, os::process::{self, Process}};\nuse super::report::View;\n",
        &all,
    );
    let names: Vec<String> = found.iter().map(|m| m.join("::")).collect();
    assert_eq!(
        names,
        [
            "livepatch::record",
            "ops::apply",
            "ops::report",
            "os::process"
        ]
    );
    assert!(rank(&["os".into()]) < rank(&["livepatch".into()]));
}
