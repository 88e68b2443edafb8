//! The debug information of a relocatable object, for the report and the layout check:
//! its functions (where they start in the source, what they inlined) and the layouts of
//! its named structures and unions.
//!
//! A `.o` keeps its DWARF unrelocated: references to strings and code are relocations.
//! They are applied here, with every code or data section given an address of its own
//! (its index in the upper bits), so that an address tells its section.

use super::relobj::RelObj;
use super::relobj::c;
use crate::contract::dwarf::{DebugInfo, R};
use gimli::{AttributeValue, LittleEndian, Unit};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The address bits that carry a section index.
pub const SECTION_SHIFT: u32 = 40;

/// A function as the debug information describes it.
#[derive(Debug, Clone, Default)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// The source file that declares it (as the unit names it).
    pub file: String,
    /// The line its definition starts on.
    pub line: u64,
    /// The section holding its code, when it has code.
    pub section: Option<usize>,
    /// The functions inlined into it (by name).
    pub inlined: Vec<String>,
}

/// The layout of a structure or union: its size and its members (name, offset, type).
pub type Layout = (u64, Vec<(String, u64, String)>);

/// What the passes use of an object's debug information.
#[derive(Debug, Default)]
pub struct ObjDwarf {
    /// Its functions with code.
    pub functions: Vec<Function>,
    /// Every function defined in the unit's source, with code or not (only inlined).
    pub decls: Vec<Function>,
    /// The compiler and its options (`DW_AT_producer`).
    pub producer: String,
    /// Named structures and unions (`struct name` / `union name`).
    pub layouts: BTreeMap<String, Layout>,
}

fn relocated(o: &RelObj, idx: usize) -> Vec<u8> {
    let s = &o.sections[idx];
    let mut data = s.data.clone();
    for r in &s.relocs {
        let Some(sym) = o.symbols.get(r.sym) else {
            continue;
        };
        let base = match sym.section {
            Some(t) if o.sections[t].is_alloc() => (t as u64) << SECTION_SHIFT,
            _ => 0,
        };
        let v = base.wrapping_add(sym.value).wrapping_add(r.addend as u64);
        let at = r.offset as usize;
        match r.r_type {
            c::R_32 | c::R_32S if at + 4 <= data.len() => {
                data[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes())
            }
            c::R_64 if at + 8 <= data.len() => data[at..at + 8].copy_from_slice(&v.to_le_bytes()),
            _ => {}
        }
    }
    data
}

/// The debug information of `o`, its relocations applied.
fn debug_info(o: &RelObj) -> Option<DebugInfo> {
    let load = |id: gimli::SectionId| -> Result<R, ()> {
        let data = o
            .sections
            .iter()
            .position(|s| s.name == id.name())
            .map(|i| relocated(o, i))
            .unwrap_or_default();
        Ok(R::new(Arc::from(data.into_boxed_slice()), LittleEndian))
    };
    gimli::Dwarf::load(load).ok().map(DebugInfo::from_dwarf)
}

/// Read the debug information of `o` (empty when it has none).
pub fn read(o: &RelObj) -> ObjDwarf {
    let Some(info) = debug_info(o) else {
        return ObjDwarf::default();
    };
    let mut out = ObjDwarf::default();
    for unit in info.units() {
        read_unit(&info, &unit, &mut out);
    }
    out
}

/// A short description of the type at `off`: `int`, `struct s *`, `char[16]`.
fn type_name(
    info: &DebugInfo,
    unit: &Arc<Unit<R>>,
    off: Option<gimli::UnitOffset>,
    depth: u32,
) -> String {
    let Some(off) = off else { return "void".into() };
    let Ok(e) = unit.entry(off) else {
        return "?".into();
    };
    if depth > 8 {
        return "...".into();
    }
    let inner = match e.attr_value(gimli::DW_AT_type) {
        Some(AttributeValue::UnitRef(t)) => Some(t),
        _ => None,
    };
    let name = info.name_of(unit, off);
    match e.tag() {
        gimli::DW_TAG_pointer_type => format!("{} *", type_name(info, unit, inner, depth + 1)),
        gimli::DW_TAG_const_type => format!("const {}", type_name(info, unit, inner, depth + 1)),
        gimli::DW_TAG_volatile_type => {
            format!("volatile {}", type_name(info, unit, inner, depth + 1))
        }
        gimli::DW_TAG_structure_type => format!("struct {}", name.unwrap_or_default()),
        gimli::DW_TAG_union_type => format!("union {}", name.unwrap_or_default()),
        gimli::DW_TAG_enumeration_type => format!("enum {}", name.unwrap_or_default()),
        gimli::DW_TAG_array_type => {
            let mut count = String::new();
            if let Ok(mut c) = unit.entries_at_offset(off) {
                let _ = c.next_dfs();
                while let Ok(Some(sub)) = c.next_dfs() {
                    if sub.tag() != gimli::DW_TAG_subrange_type {
                        break;
                    }
                    let n = sub
                        .attr_value(gimli::DW_AT_count)
                        .and_then(|v| v.udata_value())
                        .or_else(|| {
                            sub.attr_value(gimli::DW_AT_upper_bound)
                                .and_then(|v| v.udata_value())
                                .map(|u| u + 1)
                        });
                    count.push_str(&format!(
                        "[{}]",
                        n.map(|n| n.to_string()).unwrap_or_default()
                    ));
                }
            }
            format!("{}{count}", type_name(info, unit, inner, depth + 1))
        }
        _ => name.unwrap_or_else(|| "?".into()),
    }
}

fn read_unit(info: &DebugInfo, unit: &Arc<Unit<R>>, out: &mut ObjDwarf) {
    let dwarf = info.dwarf();
    if let Ok(Some(root)) = unit.entries().next_dfs()
        && let Some(v) = root.attr_value(gimli::DW_AT_producer)
        && let Ok(p) = dwarf.attr_string(unit, v)
    {
        out.producer = String::from_utf8_lossy(&p).into_owned();
    }
    let files: Vec<String> = unit
        .line_program
        .as_ref()
        .map(|lp| {
            let h = lp.header();
            h.file_names()
                .iter()
                .map(|f| {
                    dwarf
                        .attr_string(unit, f.path_name())
                        .map(|s| String::from_utf8_lossy(&s).into_owned())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let version = unit.header.version();
    let file_name = |i: u64| {
        // DWARF 5 numbers files from 0, earlier versions from 1.
        let k = if version >= 5 { i } else { i.saturating_sub(1) };
        files.get(k as usize).cloned().unwrap_or_default()
    };
    // The concrete functions by depth, innermost last, while walking.
    let mut open: Vec<(isize, usize)> = Vec::new();
    let mut entries = unit.entries();
    while let Ok(Some(e)) = entries.next_dfs() {
        let depth = e.depth();
        while open.last().is_some_and(|(d, _)| *d >= depth) {
            open.pop();
        }
        match e.tag() {
            gimli::DW_TAG_subprogram => {
                let decl = |attr| match info.origin_attr(unit, e.offset(), attr)?.1 {
                    AttributeValue::FileIndex(v) => Some(v),
                    v => v.udata_value(),
                };
                let f = Function {
                    name: info.name_of(unit, e.offset()).unwrap_or_default(),
                    file: decl(gimli::DW_AT_decl_file)
                        .map(file_name)
                        .unwrap_or_default(),
                    line: decl(gimli::DW_AT_decl_line).unwrap_or(0),
                    section: None,
                    inlined: Vec::new(),
                };
                let low = e
                    .attr_value(gimli::DW_AT_low_pc)
                    .and_then(|v| dwarf.attr_address(unit, v).ok().flatten());
                let Some(low) = low else {
                    // Declared, or only inlined: where it is in the source still counts.
                    if !f.name.is_empty() && f.line > 0 && !e.has_attr(gimli::DW_AT_declaration) {
                        out.decls.push(f);
                    }
                    continue;
                };
                out.decls.push(f.clone());
                out.functions.push(Function {
                    section: Some((low >> SECTION_SHIFT) as usize),
                    ..f
                });
                open.push((depth, out.functions.len() - 1));
            }
            gimli::DW_TAG_inlined_subroutine => {
                if let (Some(&(_, f)), Some(AttributeValue::UnitRef(o))) =
                    (open.first(), e.attr_value(gimli::DW_AT_abstract_origin))
                    && let Some(n) = info.name_of(unit, o)
                    && !out.functions[f].inlined.contains(&n)
                {
                    out.functions[f].inlined.push(n);
                }
            }
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => {
                if let Some(name) = info.name_of(unit, e.offset())
                    && let Some((kind, l)) = layout_of(info, unit, e.offset())
                {
                    out.layouts.insert(format!("{kind} {name}"), l);
                }
            }
            // `typedef struct { ... } name_t;`: the structure is known by its typedef.
            gimli::DW_TAG_typedef => {
                if let (Some(name), Some(AttributeValue::UnitRef(t))) = (
                    info.name_of(unit, e.offset()),
                    e.attr_value(gimli::DW_AT_type),
                ) && info.name_of(unit, t).is_none()
                    && let Some((_, l)) = layout_of(info, unit, t)
                {
                    out.layouts.insert(name, l);
                }
            }
            _ => {}
        }
    }
}

/// The layout of the structure or union at `off` (not a declaration), with its kind:
/// each member's byte offset and type; a bit-field's type also says its width and the bit
/// it starts at, so that a bit-field that moves within its byte is a change.
fn layout_of(
    info: &DebugInfo,
    unit: &Arc<Unit<R>>,
    off: gimli::UnitOffset,
) -> Option<(&'static str, Layout)> {
    let e = unit.entry(off).ok()?;
    let kind = match e.tag() {
        gimli::DW_TAG_union_type => "union",
        gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => "struct",
        _ => return None,
    };
    if e.has_attr(gimli::DW_AT_declaration) {
        return None;
    }
    let size = e
        .attr_value(gimli::DW_AT_byte_size)
        .and_then(|v| v.udata_value())
        .unwrap_or(0);
    let mut members = Vec::new();
    let mut c = unit.entries_at_offset(off).ok()?;
    let top = c.next_dfs().ok().flatten().map(|t| t.depth()).unwrap_or(0);
    while let Ok(Some(m)) = c.next_dfs() {
        if m.depth() <= top {
            break;
        }
        if m.depth() != top + 1 || m.tag() != gimli::DW_TAG_member {
            continue;
        }
        let udata = |a| m.attr_value(a).and_then(|v| v.udata_value());
        // DWARF 5 gives a bit-field's offset in bits from the start; DWARF 4 a byte
        // location and a bit offset in its storage unit.
        let bit_offset = udata(gimli::DW_AT_data_bit_offset);
        let at = udata(gimli::DW_AT_data_member_location)
            .or(bit_offset.map(|b| b / 8))
            .unwrap_or(0);
        let t = match m.attr_value(gimli::DW_AT_type) {
            Some(AttributeValue::UnitRef(t)) => Some(t),
            _ => None,
        };
        let mut ty = type_name(info, unit, t, 0);
        if let Some(bits) = udata(gimli::DW_AT_bit_size) {
            let bit = bit_offset.or(udata(gimli::DW_AT_bit_offset)).unwrap_or(0);
            ty = format!("{ty}:{bits} (bit {bit})");
        }
        members.push((info.name_of(unit, m.offset()).unwrap_or_default(), at, ty));
    }
    Some((kind, (size, members)))
}

impl ObjDwarf {
    /// Does a change at `lines` (by file) fall in the definition of `name`: from its
    /// first line up to the next definition in the same file?
    pub fn touched(
        &self,
        name: &str,
        lines: &std::collections::HashMap<std::path::PathBuf, Vec<u64>>,
    ) -> bool {
        let Some(f) = self.decls.iter().find(|f| f.name == name) else {
            return false;
        };
        let end = self
            .decls
            .iter()
            .filter(|g| g.file == f.file && g.line > f.line)
            .map(|g| g.line)
            .min()
            .unwrap_or(u64::MAX);
        lines.iter().any(|(path, ls)| {
            let p = path.to_string_lossy();
            (f.file.ends_with(&*p) || std::path::Path::new(&f.file).file_name() == path.file_name())
                && ls.iter().any(|&l| l >= f.line && l < end)
        })
    }
}

/// How the layout `old` became `new`, in a few words (`member x added at +24; size 32 →
/// 40`).
pub fn layout_change(old: &Layout, new: &Layout) -> String {
    let mut parts = Vec::new();
    for (n, off, t) in &new.1 {
        match old.1.iter().find(|(m, _, _)| m == n) {
            None => parts.push(format!("{n} added at +{off}")),
            Some((_, o, ot)) if o != off || ot != t => {
                parts.push(format!("{n}: {ot} at +{o} → {t} at +{off}"))
            }
            _ => {}
        }
    }
    for (n, _, _) in &old.1 {
        if !new.1.iter().any(|(m, _, _)| m == n) {
            parts.push(format!("{n} removed"));
        }
    }
    if old.0 != new.0 {
        parts.push(format!("size {} → {}", old.0, new.0));
    }
    if parts.len() > 4 {
        let more = parts.len() - 3;
        parts.truncate(3);
        parts.push(format!("{more} more changes"));
    }
    parts.join("; ")
}

/// How the compiler calls the copy of a function at symbol `sym` of `o` that it
/// specialised (`f.constprop.0`, `f.isra.0`): the parameters it made constants and those
/// it removed; `None` when the debug information does not say.
fn clone_convention(o: &RelObj, sym: usize) -> Option<(Vec<String>, Vec<String>, bool)> {
    let s = o.symbols.get(sym)?;
    let addr = ((s.section? as u64) << SECTION_SHIFT) + s.value;
    let sub = debug_info(o)?.subprogram_at(addr)?;
    Some((sub.const_params, sub.removed_params, sub.nocall))
}

/// A changed function that is a copy the compiler specialised for its callers replaces
/// the old copy, whose callers were built against its convention: the new copy must be
/// specialised the same way (the same parameters made constants, with the same values,
/// the same ones removed). Refused otherwise: its callers must change instead.
/// `changed`: each changed function's name, symbol in `q` and symbol in `p` (if any).
pub fn check_clones<'n>(
    source: &std::path::Path,
    p: &RelObj,
    q: &RelObj,
    changed: impl IntoIterator<Item = (&'n str, usize, Option<usize>)>,
) -> crate::error::Result<()> {
    for (name, sym, twin) in changed {
        let is_clone = [".constprop.", ".isra.", ".part.", ".specialized."]
            .iter()
            .any(|k| name.contains(k));
        let Some(twin) = twin.filter(|_| is_clone) else {
            continue;
        };
        let (old, new) = (clone_convention(p, twin), clone_convention(q, sym));
        if old != new {
            let show = |v: &Option<(Vec<String>, Vec<String>, bool)>| match v {
                Some((k, r, _)) if !k.is_empty() || !r.is_empty() => {
                    k.iter().chain(r).cloned().collect::<Vec<_>>().join(", ")
                }
                Some(_) => "none".to_string(),
                None => "unknown".to_string(),
            };
            crate::refuse!(
                Unsupported,
                "{} in {}: the compiler specialised the new code differently from the old (parameters fixed or removed before: {}; after: {}), so the old copy's callers cannot call it; a livepatch of this change would have to replace its callers",
                name,
                source.display(),
                show(&old),
                show(&new)
            );
        }
    }
    Ok(())
}
