//! The object diff: which functions of a translation unit came out different from the
//! patch, and why (kpatch's `create-diff-object`, objtool's `klp diff`). Two functions
//! are the same when their bytes are, and their relocations name the same things (a
//! symbol modulo the numbers the compiler appends, the same string, the same constant),
//! wherever those landed in each object. A caller that inlined a changed function, a
//! clone, a `.cold` part, a caller whose registers changed with its callee's: all come
//! out different by themselves. Also the refusals that only the two objects can tell:
//! changed data, changed layouts, start-up code, IFUNC resolvers.

use super::correlate::{Pairing, is_special};
use super::objdwarf::{self, ObjDwarf};
use super::relobj::c;
use super::relobj::{Kind, RelObj, Target, base_name, instructions};
use crate::error::Result;
use std::path::Path;

/// What a relocation stands for, comparable across the two objects.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Sym(String, i64),
    Str(Vec<u8>),
    Bytes(String, Vec<u8>, i64, Vec<(u64, u32, String)>),
}

fn light(o: &RelObj, t: Target) -> String {
    match t {
        Target::Sym { index, x } => format!("{}+{x}", base_name(&o.symbols[index].name)),
        Target::Anon { section, x } => format!("{}+{x}", base_name(&o.sections[section].name)),
    }
}

fn key(o: &RelObj, sec: usize, insns: &[(u64, u64)], r: &super::relobj::Reloc) -> Key {
    let t = o.target(r, o.tail(sec, insns, r));
    match t {
        Target::Sym { index, x } => {
            let s = &o.symbols[index];
            if is_special(&s.name)
                && let Some(d) = s.section
            {
                if s.size == 0 {
                    // A label the assembler kept (`.LC0` in a mergeable section): what
                    // counts is what is there.
                    return anon_key(o, d, s.value as i64 + x);
                }
                let data = &o.sections[d].data;
                let a = (s.value as usize).min(data.len());
                let b = ((s.value + s.size) as usize).min(data.len());
                return Key::Bytes(base_name(&s.name), data[a..b].to_vec(), x, Vec::new());
            }
            Key::Sym(base_name(&s.name), x)
        }
        Target::Anon { section, x } => anon_key(o, section, x),
    }
}

/// Bytes no named symbol covers: a string, a constant of a mergeable section (only its
/// own bytes: a constant pool shared by several functions changes for one of them), or
/// the whole section with what its relocations name.
fn anon_key(o: &RelObj, section: usize, x: i64) -> Key {
    let s = &o.sections[section];
    if s.is_strings() {
        return Key::Str(o.cstr(section, x));
    }
    if s.flags & c::SHF_MERGE != 0 && s.entsize > 0 {
        let a = (x.max(0) as usize).min(s.data.len());
        let b = (a + s.entsize as usize).min(s.data.len());
        return Key::Bytes(base_name(&s.name), s.data[a..b].to_vec(), 0, Vec::new());
    }
    let relocs = s
        .relocs
        .iter()
        .map(|q| (q.offset, q.r_type, light(o, o.target(q, 0))))
        .collect();
    Key::Bytes(base_name(&s.name), s.data.clone(), x, relocs)
}

/// The first difference between section `a` of `p` and section `b` of `q`, if any.
fn first_difference(p: &RelObj, a: usize, q: &RelObj, b: usize) -> Option<String> {
    let (sa, sb) = (&p.sections[a], &q.sections[b]);
    if sa.size != sb.size {
        return Some(format!("size {} → {}", sa.size, sb.size));
    }
    if sa.data != sb.data {
        let at = sa
            .data
            .iter()
            .zip(&sb.data)
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        return Some(format!("code at +{at:#x}"));
    }
    if sa.relocs.len() != sb.relocs.len() {
        return Some("references".into());
    }
    let (ia, ib) = (instructions(sa), instructions(sb));
    for (ra, rb) in sa.relocs.iter().zip(&sb.relocs) {
        if ra.offset != rb.offset
            || ra.r_type != rb.r_type
            || key(p, a, &ia, ra) != key(q, b, &ib, rb)
        {
            return Some(format!(
                "reference at +{:#x}: {} → {}",
                ra.offset,
                light(p, p.target(ra, p.tail(a, &ia, ra))),
                light(q, q.target(rb, q.tail(b, &ib, rb)))
            ));
        }
    }
    None
}

/// A function of the patched object that the patch carries.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its symbol in the patched object.
    pub sym: usize,
    /// Its name.
    pub name: String,
    /// Its symbol in the pristine object (`None`: new).
    pub twin: Option<usize>,
    /// Why it is in the patch.
    pub why: String,
    /// A part split off from a function (`.cold`): it travels with it, nothing redirects to it.
    pub part_of: Option<String>,
}

/// What differs between a unit's two objects.
#[derive(Debug, Default)]
pub struct ObjectDiff {
    /// Functions whose code changed (old entries to redirect, and parts).
    pub changed: Vec<Change>,
    /// New functions (and new parts).
    pub new: Vec<Change>,
    /// Remarks for the report (new statics...).
    pub notes: Vec<String>,
}

/// Diff one unit. `source` is its path in the tree; `lines` what the diffs changed.
pub fn diff(
    source: &Path,
    pristine: &RelObj,
    patched: &RelObj,
    pairing: &Pairing,
    lines: &super::lines::Changed,
) -> Result<ObjectDiff> {
    let mut out = ObjectDiff::default();
    let pd = objdwarf::read(pristine);
    let qd = objdwarf::read(patched);
    check_layouts(source, &pd, &qd)?;
    check_data(source, pristine, patched, pairing, &mut out)?;
    // Functions whose code differs, or that are new.
    let mut changed: Vec<(usize, Option<usize>, String)> = Vec::new();
    for &(q, p) in &pairing.funcs {
        let qs = &patched.symbols[q];
        let Some(qsec) = qs.section else { continue };
        if qs.size == 0 {
            continue;
        }
        match p {
            None => changed.push((q, None, String::new())),
            Some(p) => {
                let psec = pristine.symbols[p].section.unwrap_or(0);
                if let Some(d) = first_difference(pristine, psec, patched, qsec) {
                    changed.push((q, Some(p), d));
                }
            }
        }
    }
    let changed_names: Vec<String> = changed
        .iter()
        .map(|(q, _, _)| patched.symbols[*q].name.clone())
        .collect();
    for (q, p, detail) in changed {
        let name = patched.symbols[q].name.clone();
        let part_of = crate::contract::code::fragment_parent(&name).map(str::to_string);
        let why = match (&part_of, p) {
            (Some(parent), _) => format!("split off from {parent}"),
            (None, None) => "new".to_string(),
            (None, Some(_)) => reason(
                source,
                &name,
                &qd,
                lines,
                patched,
                q,
                &changed_names,
                &detail,
            ),
        };
        let c = Change {
            sym: q,
            name,
            twin: p,
            why,
            part_of,
        };
        if p.is_some() {
            out.changed.push(c);
        } else {
            out.new.push(c);
        }
    }
    // A part that changed takes its function along.
    let parents: Vec<String> = out
        .changed
        .iter()
        .chain(&out.new)
        .filter_map(|c| c.part_of.clone())
        .collect();
    for parent in parents {
        if out.changed.iter().any(|c| c.name == parent) {
            continue;
        }
        if let Some(&(q, p)) = pairing
            .funcs
            .iter()
            .find(|(q, _)| patched.symbols[*q].name == parent)
        {
            out.changed.push(Change {
                sym: q,
                name: parent.clone(),
                twin: p,
                why: format!("its part {parent}.cold changed"),
                part_of: None,
            });
        }
    }
    check_startup(source, patched, &out)?;
    Ok(out)
}

/// The same changes, named in `e`: the unit compiled otherwise (position-independent),
/// whose code the patch carries. A function `e` lacks is refused.
pub fn moved_to(d: ObjectDiff, q: &RelObj, e: &RelObj, source: &Path) -> Result<ObjectDiff> {
    let find = |c: Change| -> Result<Change> {
        let name = &q.symbols[c.sym].name;
        let Some(i) = e
            .symbols
            .iter()
            .position(|s| s.name == *name && s.kind == Kind::Func && s.section.is_some())
        else {
            crate::refuse!(
                Unsupported,
                "{name} ({}) has no counterpart when compiled position-independent (-fPIE), as a patch's code must be: the compiler made other choices for it; not supported for this binary",
                source.display()
            );
        };
        Ok(Change { sym: i, ..c })
    };
    Ok(ObjectDiff {
        changed: d.changed.into_iter().map(find).collect::<Result<_>>()?,
        new: d.new.into_iter().map(find).collect::<Result<_>>()?,
        notes: d.notes,
    })
}

/// Why function `name` changed: the diff changed its lines, it inlines a changed
/// function, it calls one (its code changed with the callee's through the compiler's
/// interprocedural analysis), or the compiler's choices moved around the change.
#[allow(clippy::too_many_arguments)]
fn reason(
    source: &Path,
    name: &str,
    dw: &ObjDwarf,
    lines: &super::lines::Changed,
    patched: &RelObj,
    q: usize,
    changed: &[String],
    detail: &str,
) -> String {
    let base = base_name(name);
    let root = base.split('.').next().unwrap_or(&base).to_string();
    if dw.touched(&root, lines) {
        return "the diff changed it".into();
    }
    if let Some(f) = dw.functions.iter().find(|f| f.name == root) {
        let inlined: Vec<&str> = f
            .inlined
            .iter()
            .filter(|n| {
                dw.touched(n, lines)
                    || changed
                        .iter()
                        .any(|c| base_name(c).split('.').next() == Some(n.as_str()))
            })
            .map(|s| s.as_str())
            .collect();
        if !inlined.is_empty() {
            return format!("it inlines {}, which the diff changed", inlined.join(", "));
        }
    }
    let _ = source;
    // A changed function it calls or refers to.
    if let Some(sec) = patched.symbols[q].section {
        let s = &patched.sections[sec];
        let insns = instructions(s);
        for r in &s.relocs {
            if let Target::Sym { index, .. } = patched.target(r, patched.tail(sec, &insns, r)) {
                let n = &patched.symbols[index].name;
                if n != name && changed.contains(n) {
                    return format!(
                        "it calls {n}, which changed: the compiler built it against {n}'s code ({detail})"
                    );
                }
            }
        }
    }
    format!("its code changed ({detail})")
}

/// Named structures and unions must keep their layout: objects in the process have the
/// old one.
fn check_layouts(source: &Path, old: &ObjDwarf, new: &ObjDwarf) -> Result<()> {
    for (name, o) in &old.layouts {
        if let Some(n) = new.layouts.get(name)
            && n != o
        {
            crate::refuse!(
                Layout,
                "{name} changes layout in {} ({}): objects in the running process have the old layout, and unchanged code uses it; a livepatch cannot change it (use a shadow variable for new fields)",
                source.display(),
                objdwarf::layout_change(o, n)
            );
        }
    }
    Ok(())
}

/// Existing variables must keep their size and initial value (the process has its own
/// copy); new ones are noted.
fn check_data(
    source: &Path,
    pristine: &RelObj,
    patched: &RelObj,
    pairing: &Pairing,
    out: &mut ObjectDiff,
) -> Result<()> {
    for &(q, p) in &pairing.data {
        let qs = &patched.symbols[q];
        let Some(p) = p else {
            if qs.kind == Kind::Tls {
                crate::refuse!(
                    ThreadLocal,
                    "the diff adds thread-local variable {} in {}: threads already running have no copy of it; not supported",
                    qs.name,
                    source.display()
                );
            }
            out.notes.push(format!(
                "new variable {} ({}) starts at its initial value in the running process",
                qs.name,
                source.display()
            ));
            continue;
        };
        let ps = &pristine.symbols[p];
        let bytes = |o: &RelObj, s: &super::relobj::Sym| -> Vec<u8> {
            let Some(sec) = s.section else {
                return Vec::new();
            };
            let d = &o.sections[sec].data;
            let a = (s.value as usize).min(d.len());
            let b = ((s.value + s.size) as usize).min(d.len());
            d[a..b].to_vec()
        };
        let what = if qs.kind == Kind::Tls {
            "thread-local variable"
        } else {
            "variable"
        };
        if ps.size != qs.size {
            crate::refuse!(
                Size,
                "{what} {} ({}) changes size ({} → {} bytes): the running process keeps the old one; a livepatch cannot resize it (use a shadow variable)",
                qs.name,
                source.display(),
                ps.size,
                qs.size
            );
        }
        // What each pointer of the initializer points to, compared as code references
        // are: a string by its bytes (a new string elsewhere in the unit moves it in the
        // merged section), a symbol by its name.
        let relocs = |o: &RelObj, s: &super::relobj::Sym| -> Vec<(u64, u32, Key)> {
            let Some(sec) = s.section else {
                return Vec::new();
            };
            o.sections[sec]
                .relocs
                .iter()
                .filter(|r| r.offset >= s.value && r.offset < s.value + s.size)
                .map(|r| (r.offset - s.value, r.r_type, key(o, sec, &[], r)))
                .collect()
        };
        if bytes(pristine, ps) != bytes(patched, qs) || relocs(pristine, ps) != relocs(patched, qs)
        {
            crate::refuse!(
                Initializer,
                "{what} {} ({}) changes its initial value: the running process keeps the value it has; set it in a pre_patch callback of a hand-written patch instead",
                qs.name,
                source.display()
            );
        }
    }
    Ok(())
}

/// Code that has already run for good: start-up functions, constructors, IFUNC
/// resolvers, `main`.
fn check_startup(source: &Path, patched: &RelObj, d: &ObjectDiff) -> Result<()> {
    let ctor_targets: Vec<String> = patched
        .sections
        .iter()
        .filter(|s| {
            matches!(s.name.as_str(), ".init_array" | ".preinit_array" | ".ctors")
                || s.name.starts_with(".init_array.")
        })
        .flat_map(|s| {
            s.relocs
                .iter()
                .map(|r| light(patched, patched.target(r, 0)))
        })
        .collect();
    for c in &d.changed {
        let s = &patched.symbols[c.sym];
        let sec = s
            .section
            .map(|i| patched.sections[i].name.as_str())
            .unwrap_or("");
        if c.name == "main" {
            crate::refuse!(
                Startup,
                "the diff changes main() ({}): it runs once, and stays on the stack for the life of the process; move the fix into a function main calls",
                source.display()
            );
        }
        if sec.starts_with(".text.startup")
            || ctor_targets
                .iter()
                .any(|t| t.split('+').next() == Some(base_name(&c.name).as_str()))
        {
            crate::refuse!(
                Startup,
                "the diff changes {} ({}), which runs only at start-up and has already run: write a pre_patch callback that brings the state up to date instead",
                c.name,
                source.display()
            );
        }
        if patched
            .symbols
            .iter()
            .any(|i| i.kind == Kind::Ifunc && i.section == s.section && i.value == s.value)
        {
            crate::refuse!(
                Startup,
                "the diff changes the IFUNC resolver {} ({}), which ran at start-up: patch the implementation it picks",
                c.name,
                source.display()
            );
        }
    }
    Ok(())
}
