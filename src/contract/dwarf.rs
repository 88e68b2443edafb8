//! What an object's debug information says of a function: how it is called (LLVM marks a
//! function whose signature it changed in place `DW_CC_nocall`; a parameter it made a
//! constant has `DW_AT_const_value`), how many bytes of arguments its callers put on the
//! stack (the System V classification of its parameters' types), whether it returns a
//! value, and which functions hold copies of it the compiler inlined.
//!
//! Sections are read with the `object` crate (Debian's debug files compress them) and
//! parsed with gimli.

use crate::elf::symbols::ElfFile;
use gimli::{AttributeValue, DebugInfoOffset, EndianArcSlice, LittleEndian, Unit, UnitOffset};
use object::{Object, ObjectSection};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// The reader of the sections (shared: a fleet run's workers share one object's
/// analysis).
pub type R = EndianArcSlice<LittleEndian>;

/// The debug information of one object.
pub struct DebugInfo {
    dwarf: gimli::Dwarf<R>,
    /// Units parsed so far, by the offset of their header: a reference into another unit
    /// (`DW_FORM_ref_addr`, which link-time optimisation uses from the units it emits to
    /// the ones the compiler emitted first) parses that unit once.
    units: Mutex<HashMap<DebugInfoOffset, Arc<Unit<R>>>>,
    /// Every unit's header: where it starts, where it ends.
    headers: OnceLock<Vec<(DebugInfoOffset, usize, gimli::UnitHeader<R>)>>,
    /// What one walk of a unit finds, by the offset of its header: a patch of a
    /// thousand functions of one unit walks it once, not twice per function.
    indexes: Mutex<HashMap<DebugInfoOffset, Arc<UnitIndex>>>,
}

/// One walk of a unit's DIEs.
#[derive(Default)]
struct UnitIndex {
    /// Where the code of each concrete subprogram starts (`DW_AT_low_pc`, or each of
    /// its `DW_AT_ranges`), first DIE first.
    starts: HashMap<u64, UnitOffset>,
    /// The names of every subprogram of the unit.
    names: Arc<HashSet<String>>,
    /// Each inlined copy: the global offsets of its origin chain, and the outermost
    /// concrete function that holds it (its name and its DIE).
    inlined: Vec<(Vec<DebugInfoOffset>, String, Option<DebugInfoOffset>)>,
}

/// A DIE, in its unit.
#[derive(Clone)]
struct Die {
    unit: Arc<Unit<R>>,
    off: UnitOffset,
}

impl Die {
    fn global(&self) -> Option<DebugInfoOffset> {
        self.off.to_debug_info_offset(&self.unit.header)
    }
}

/// What the debug information says of one function.
#[derive(Debug, Clone, Default)]
pub struct Subprogram {
    /// Its name.
    pub name: String,
    /// The compiler that built it (`DW_AT_producer` of its unit).
    pub producer: String,
    /// `DW_AT_calling_convention` is `DW_CC_nocall`: callers do not call it the normal way.
    pub nocall: bool,
    /// Parameters the compiler made constants: "name = value".
    pub const_params: Vec<String>,
    /// Parameters of the source the function no longer has.
    pub removed_params: Vec<String>,
    /// It takes variable arguments.
    pub variadic: bool,
    /// Bytes of arguments its callers pass on the stack, when every parameter's type
    /// could be classified.
    pub stack_args: Option<u64>,
    /// It returns a value (`Some(false)` for `void`).
    pub returns_value: Option<bool>,
    /// Its unit was built with link-time optimisation (inlined copies may be anywhere).
    pub lto: bool,
    /// The names of every function of its unit (folded functions have DIEs of their own).
    pub unit_functions: Arc<HashSet<String>>,
    origins: Vec<DebugInfoOffset>,
    unit: Option<DebugInfoOffset>,
}

/// The eightbyte classes of the System V x86-64 ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Integer,
    Sse,
    Memory,
}

impl DebugInfo {
    /// The debug information of `file`, if it has any.
    pub fn load(file: &ElfFile) -> Option<DebugInfo> {
        let obj = object::read::elf::ElfFile64::<object::Endianness>::parse(file.data()).ok()?;
        obj.section_by_name(".debug_info")?;
        let load = |id: gimli::SectionId| -> Result<R, ()> {
            let data = obj
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .map(|d| Arc::<[u8]>::from(&*d))
                .unwrap_or_else(|| Arc::from(&[][..]));
            Ok(R::new(data, LittleEndian))
        };
        let dwarf = gimli::Dwarf::load(load).ok()?;
        Some(DebugInfo::from_dwarf(dwarf))
    }

    /// The debug information in `dwarf` (sections loaded by the caller: an object file's,
    /// relocated).
    pub fn from_dwarf(dwarf: gimli::Dwarf<R>) -> DebugInfo {
        DebugInfo {
            dwarf,
            units: Mutex::new(HashMap::new()),
            headers: OnceLock::new(),
            indexes: Mutex::new(HashMap::new()),
        }
    }

    /// The unit whose header starts at `start`, parsed once.
    fn unit_from(
        &self,
        start: DebugInfoOffset,
        header: gimli::UnitHeader<R>,
    ) -> Option<Arc<Unit<R>>> {
        let units = || self.units.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = units().get(&start) {
            return Some(u.clone());
        }
        // Parsed without the lock held: two workers may both parse it, once.
        let u = Arc::new(self.dwarf.unit(header).ok()?);
        Some(units().entry(start).or_insert(u).clone())
    }

    /// Every unit, in order.
    fn all_units(&self) -> impl Iterator<Item = Arc<Unit<R>>> + '_ {
        self.headers()
            .iter()
            .filter_map(|(start, _, h)| self.unit_from(*start, h.clone()))
    }

    fn headers(&self) -> &[(DebugInfoOffset, usize, gimli::UnitHeader<R>)] {
        self.headers.get_or_init(|| {
            let mut v = Vec::new();
            let mut it = self.dwarf.units();
            while let Ok(Some(h)) = it.next() {
                if let Some(start) = h.debug_info_offset() {
                    let end = start.0 + h.length_including_self();
                    v.push((start, end, h));
                }
            }
            v
        })
    }

    /// The DIE a reference attribute of a DIE of `unit` names, in whichever unit.
    fn follow(&self, unit: &Arc<Unit<R>>, v: AttributeValue<R>) -> Option<Die> {
        match v {
            AttributeValue::UnitRef(off) => Some(Die {
                unit: unit.clone(),
                off,
            }),
            AttributeValue::DebugInfoRef(g) => {
                let headers = self.headers();
                let i = headers
                    .partition_point(|(s, _, _)| s.0 <= g.0)
                    .checked_sub(1)?;
                let (start, end, h) = &headers[i];
                if g.0 >= *end {
                    return None;
                }
                let u = self.unit_from(*start, h.clone())?;
                let off = g.to_unit_offset(&u.header)?;
                Some(Die { unit: u, off })
            }
            _ => None,
        }
    }

    /// The function whose code starts at `vaddr` (file address).
    pub fn subprogram_at(&self, vaddr: u64) -> Option<Subprogram> {
        self.all_units()
            .filter(|u| self.unit_covers(u, vaddr))
            .find_map(|u| self.find_in_unit(&u, vaddr))
    }

    fn unit_covers(&self, unit: &Unit<R>, vaddr: u64) -> bool {
        let Ok(mut ranges) = self.dwarf.unit_ranges(unit) else {
            return false;
        };
        while let Ok(Some(r)) = ranges.next() {
            if r.begin <= vaddr && vaddr < r.end {
                return true;
            }
        }
        false
    }

    fn find_in_unit(&self, unit: &Arc<Unit<R>>, vaddr: u64) -> Option<Subprogram> {
        let index = self.index(unit);
        let off = *index.starts.get(&vaddr)?;
        let mut s = self.describe(unit, off);
        s.unit_functions = index.names.clone();
        Some(s)
    }

    /// The index of `unit`, made on first use.
    fn index(&self, unit: &Arc<Unit<R>>) -> Arc<UnitIndex> {
        let key = unit
            .header
            .debug_info_offset()
            .unwrap_or(DebugInfoOffset(0));
        let indexes = || self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = indexes().get(&key) {
            return i.clone();
        }
        let mut index = UnitIndex::default();
        let mut names = HashSet::new();
        // The enclosing concrete functions by depth, innermost last.
        let mut holders: Vec<(isize, String, Option<DebugInfoOffset>)> = Vec::new();
        // Read raw: only the DIEs looked at have their attributes parsed (each value of the
        // shared reader costs an atomic reference count); the others (parameters,
        // variables, types: most of a unit) are skipped over.
        let Ok(mut entries) = unit.entries_raw(None) else {
            return Arc::new(index);
        };
        let mut attrs = Vec::new();
        while !entries.is_empty() {
            let depth = entries.next_depth();
            let off = entries.next_offset();
            let Ok(abbrev) = entries.read_abbreviation() else {
                break;
            };
            let Some(abbrev) = abbrev else { continue };
            // Any DIE (a namespace, a type) ends the functions it is not inside.
            while holders.last().is_some_and(|(d, _, _)| *d >= depth) {
                holders.pop();
            }
            let tag = abbrev.tag();
            if tag != gimli::DW_TAG_subprogram && tag != gimli::DW_TAG_inlined_subroutine {
                if entries.skip_attributes(abbrev.attributes()).is_err() {
                    break;
                }
                continue;
            }
            if entries
                .read_attributes(abbrev.attributes(), &mut attrs)
                .is_err()
            {
                break;
            }
            let attr =
                |name: gimli::DwAt| attrs.iter().find(|a| a.name() == name).map(|a| a.value());
            if tag == gimli::DW_TAG_subprogram {
                // Its own name from the attributes at hand; one without (a concrete
                // copy) is looked up by its origin.
                let name = match attr(gimli::DW_AT_name) {
                    Some(v) => self
                        .dwarf
                        .attr_string(unit, v)
                        .ok()
                        .map(|s| String::from_utf8_lossy(&s).into_owned()),
                    None => self.name_of(unit, off),
                };
                if let Some(n) = &name {
                    names.insert(n.clone());
                }
                let starts =
                    self.starts(unit, attr(gimli::DW_AT_low_pc), attr(gimli::DW_AT_ranges));
                if !starts.is_empty() {
                    let own = off.to_debug_info_offset(&unit.header);
                    holders.push((depth, name.unwrap_or_default(), own));
                }
                for a in starts {
                    index.starts.entry(a).or_insert(off);
                }
            } else if let Some((_, h, own)) = holders.first()
                && let Some(origin) = attr(gimli::DW_AT_abstract_origin)
            {
                let chain = self.origin_chain(unit, origin);
                if !chain.is_empty() {
                    index.inlined.push((chain, h.clone(), *own));
                }
            }
        }
        index.names = Arc::new(names);
        indexes().entry(key).or_insert(Arc::new(index)).clone()
    }

    /// Where the code of a DIE starts: its `DW_AT_low_pc`, or each of its `DW_AT_ranges`
    /// (a function with a part split off has two ranges).
    fn starts(
        &self,
        unit: &Unit<R>,
        low_pc: Option<AttributeValue<R>>,
        ranges: Option<AttributeValue<R>>,
    ) -> Vec<u64> {
        if let Some(v) = low_pc {
            return self
                .dwarf
                .attr_address(unit, v)
                .ok()
                .flatten()
                .into_iter()
                .collect();
        }
        let mut out = Vec::new();
        if let Some(Ok(Some(mut ranges))) = ranges.map(|v| self.dwarf.attr_ranges(unit, v)) {
            while let Ok(Some(r)) = ranges.next() {
                out.push(r.begin);
            }
        }
        out
    }

    /// The global offsets of the abstract origin `origin` of a DIE, and of theirs (LTO
    /// units point at their own copy of an abstract DIE, which points at the unit the
    /// compiler emitted first), up to three.
    fn origin_chain(&self, unit: &Arc<Unit<R>>, origin: AttributeValue<R>) -> Vec<DebugInfoOffset> {
        let mut out = Vec::new();
        let Some(mut cur) = self.follow(unit, origin) else {
            return out;
        };
        for _ in 0..3 {
            if let Some(g) = cur.global() {
                out.push(g);
            }
            let Some(next) = cur
                .unit
                .entry(cur.off)
                .ok()
                .and_then(|d| d.attr_value(gimli::DW_AT_abstract_origin))
                .and_then(|v| self.follow(&cur.unit, v))
            else {
                break;
            };
            cur = next;
        }
        out
    }

    /// Everything said of the subprogram DIE at `off`.
    fn describe(&self, unit: &Arc<Unit<R>>, off: UnitOffset) -> Subprogram {
        let mut s = Subprogram {
            name: self.name_of(unit, off).unwrap_or_default(),
            unit: unit.header.debug_info_offset(),
            ..Default::default()
        };
        let mut root = unit.entries();
        if let Some(p) = root
            .next_dfs()
            .ok()
            .flatten()
            .and_then(|root| root.attr_value(gimli::DW_AT_producer))
            .and_then(|v| self.dwarf.attr_string(unit, v).ok())
        {
            s.producer = String::from_utf8_lossy(&p).into_owned();
        }
        s.lto = s.producer.contains("-flto") || s.producer.contains("GNU GIMPLE");
        // The DIEs that stand for this function: the concrete one, the abstract instance
        // it came from, the declaration it completes (in another unit, after LTO).
        let first = Die {
            unit: unit.clone(),
            off,
        };
        let mut chain = vec![first.clone()];
        for _ in 0..4 {
            let cur = chain.last().unwrap().clone();
            let Ok(e) = cur.unit.entry(cur.off) else {
                break;
            };
            if let Some(AttributeValue::CallingConvention(cc)) =
                e.attr_value(gimli::DW_AT_calling_convention)
                && cc == gimli::DW_CC_nocall
            {
                s.nocall = true;
            }
            match e
                .attr_value(gimli::DW_AT_abstract_origin)
                .or_else(|| e.attr_value(gimli::DW_AT_specification))
                .and_then(|v| self.follow(&cur.unit, v))
            {
                Some(d) => chain.push(d),
                None => break,
            }
        }
        s.origins = chain.iter().filter_map(Die::global).collect();
        let concrete = self.params(&first);
        let last = chain.last().unwrap();
        let abstract_params = (chain.len() > 1).then(|| self.params(last));
        s.variadic = chain.iter().any(|d| self.params(d).variadic);
        for (name, value) in &concrete.consts {
            s.const_params.push(format!("{name} = {value}"));
        }
        if let Some(a) = &abstract_params
            && concrete.names.len() < a.names.len()
        {
            s.removed_params = a
                .names
                .iter()
                .filter(|n| !concrete.names.contains(n))
                .cloned()
                .collect();
        }
        // Types come from wherever the parameters carry them.
        let typed = abstract_params.as_ref().unwrap_or(&concrete);
        let ret = chain.iter().find_map(|d| {
            let v = d.unit.entry(d.off).ok()?.attr_value(gimli::DW_AT_type)?;
            self.follow(&d.unit, v)
        });
        s.returns_value = Some(ret.is_some());
        if !s.variadic {
            s.stack_args = self.stack_bytes(ret.as_ref(), &typed.types);
        }
        s
    }

    /// The formal parameters of the subprogram `d`.
    fn params(&self, d: &Die) -> Params {
        let mut p = Params::default();
        let unit = &d.unit;
        let Ok(mut cursor) = unit.entries_at_offset(d.off) else {
            return p;
        };
        let Ok(Some(top)) = cursor.next_dfs() else {
            return p;
        };
        let depth = top.depth();
        while let Ok(Some(e)) = cursor.next_dfs() {
            if e.depth() <= depth {
                break;
            }
            if e.depth() != depth + 1 {
                continue;
            }
            match e.tag() {
                gimli::DW_TAG_formal_parameter => {
                    let name = self
                        .name_of(unit, e.offset())
                        .unwrap_or_else(|| format!("#{}", p.names.len() + 1));
                    if let Some(v) = e.attr_value(gimli::DW_AT_const_value) {
                        p.consts.push((name.clone(), const_text(&v)));
                    }
                    let ty = match e.attr_value(gimli::DW_AT_type) {
                        Some(v) => self.follow(unit, v),
                        None => self.origin_type(unit, e.offset()),
                    };
                    p.types.push(ty);
                    p.names.push(name);
                }
                gimli::DW_TAG_unspecified_parameters => p.variadic = true,
                _ => {}
            }
        }
        p
    }

    /// The type of a parameter DIE that takes it from its abstract origin.
    fn origin_type(&self, unit: &Arc<Unit<R>>, off: UnitOffset) -> Option<Die> {
        let e = unit.entry(off).ok()?;
        let o = self.follow(unit, e.attr_value(gimli::DW_AT_abstract_origin)?)?;
        let t = o.unit.entry(o.off).ok()?.attr_value(gimli::DW_AT_type)?;
        self.follow(&o.unit, t)
    }

    /// The name of a DIE: its own, or that of the DIE it is an instance or definition of.
    /// Attribute `attr` of the DIE at `off`, or of the DIE it is a concrete copy or the
    /// definition of (`DW_AT_abstract_origin`, `DW_AT_specification`, in whichever unit),
    /// with the unit that holds it.
    pub fn origin_attr(
        &self,
        unit: &Arc<Unit<R>>,
        off: UnitOffset,
        attr: gimli::DwAt,
    ) -> Option<(Arc<Unit<R>>, AttributeValue<R>)> {
        let mut cur = Die {
            unit: unit.clone(),
            off,
        };
        for _ in 0..4 {
            let e = cur.unit.entry(cur.off).ok()?;
            if let Some(v) = e.attr_value(attr) {
                return Some((cur.unit.clone(), v));
            }
            let next = e
                .attr_value(gimli::DW_AT_abstract_origin)
                .or_else(|| e.attr_value(gimli::DW_AT_specification))?;
            cur = self.follow(&cur.unit, next)?;
        }
        None
    }

    /// The name of the DIE at `off` (or of its origin).
    pub fn name_of(&self, unit: &Arc<Unit<R>>, off: UnitOffset) -> Option<String> {
        let (u, v) = self.origin_attr(unit, off, gimli::DW_AT_name)?;
        let s = self.dwarf.attr_string(&u, v).ok()?;
        Some(String::from_utf8_lossy(&s).into_owned())
    }

    /// The DWARF sections read.
    pub fn dwarf(&self) -> &gimli::Dwarf<R> {
        &self.dwarf
    }

    /// Every unit, parsed once.
    pub fn units(&self) -> Vec<Arc<Unit<R>>> {
        self.all_units().collect()
    }

    /// The functions holding a copy of `sub` the compiler inlined
    /// (`DW_TAG_inlined_subroutine` whose origin is one of its DIEs): in its own unit, or
    /// in every unit when it was built with link-time optimisation.
    pub fn inlined_into(&self, sub: &Subprogram) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for unit in self.all_units() {
            if !sub.lto && unit.header.debug_info_offset() != sub.unit {
                continue;
            }
            for (chain, holder, own) in &self.index(&unit).inlined {
                // A copy inside the function's own code (GCC splits a function and
                // inlines the part back into it: nginx's ngx_http_header_filter) is
                // replaced with it, not a copy elsewhere.
                if own.is_some_and(|o| sub.origins.contains(&o)) {
                    continue;
                }
                if chain.iter().any(|g| sub.origins.contains(g)) && !out.contains(holder) {
                    out.push(holder.clone());
                }
            }
        }
        out
    }

    /// The functions holding inlined copies of the function named `name` (its source or
    /// linkage name), for a function with no code of its own in the object.
    pub fn inlined_by_name(&self, name: &str) -> Vec<String> {
        let mut origins = Vec::new();
        for unit in self.all_units() {
            let mut entries = unit.entries();
            while let Ok(Some(e)) = entries.next_dfs() {
                if e.tag() != gimli::DW_TAG_subprogram
                    || e.has_attr(gimli::DW_AT_low_pc)
                    || e.has_attr(gimli::DW_AT_ranges)
                {
                    continue;
                }
                let named = [gimli::DW_AT_name, gimli::DW_AT_linkage_name]
                    .iter()
                    .filter_map(|a| e.attr_value(*a))
                    .filter_map(|v| self.dwarf.attr_string(&unit, v).ok())
                    .any(|s| &*s == name.as_bytes());
                if named && let Some(g) = e.offset().to_debug_info_offset(&unit.header) {
                    origins.push(g);
                }
            }
        }
        if origins.is_empty() {
            return Vec::new();
        }
        let sub = Subprogram {
            origins,
            lto: true,
            ..Default::default()
        };
        self.inlined_into(&sub)
    }

    /// Bytes of stack arguments of a call with parameters of `types` returning `ret`,
    /// by the System V x86-64 classification; `None` when a type cannot be classified.
    fn stack_bytes(&self, ret: Option<&Die>, types: &[Option<Die>]) -> Option<u64> {
        let (mut gp, mut sse, mut stack) = (6u32, 8u32, 0u64);
        if let Some(r) = ret {
            let (classes, _) = self.classify(r, 0)?;
            if classes.contains(&Class::Memory) {
                gp -= 1; // the hidden pointer to the return value
            }
        }
        for t in types {
            let (classes, size) = self.classify(t.as_ref()?, 0)?;
            let need_gp = classes.iter().filter(|c| **c == Class::Integer).count() as u32;
            let need_sse = classes.iter().filter(|c| **c == Class::Sse).count() as u32;
            if classes.contains(&Class::Memory) || need_gp > gp || need_sse > sse {
                stack += size.div_ceil(8) * 8;
            } else {
                gp -= need_gp;
                sse -= need_sse;
            }
        }
        Some(stack)
    }

    /// The classes of the eightbytes of the type `d`, and its size.
    fn classify(&self, d: &Die, depth: u32) -> Option<(Vec<Class>, u64)> {
        if depth > 16 {
            return None;
        }
        let (unit, off) = (&d.unit, d.off);
        let e = unit.entry(off).ok()?;
        let size = e
            .attr_value(gimli::DW_AT_byte_size)
            .and_then(|v| v.udata_value());
        let inner = || self.follow(unit, e.attr_value(gimli::DW_AT_type)?);
        match e.tag() {
            gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => self.classify(&inner()?, depth + 1),
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type
            | gimli::DW_TAG_ptr_to_member_type => Some((vec![Class::Integer], 8)),
            gimli::DW_TAG_enumeration_type => Some((vec![Class::Integer], size.unwrap_or(4))),
            gimli::DW_TAG_base_type => {
                let size = size?;
                let enc = match e.attr_value(gimli::DW_AT_encoding) {
                    Some(AttributeValue::Encoding(enc)) => enc,
                    _ => return None,
                };
                let name = self.name_of(unit, off).unwrap_or_default();
                let class = match enc {
                    gimli::DW_ATE_float if size == 16 && name.contains("long double") => {
                        Class::Memory
                    }
                    gimli::DW_ATE_float => Class::Sse,
                    gimli::DW_ATE_complex_float if size > 16 => Class::Memory,
                    gimli::DW_ATE_complex_float => Class::Sse,
                    _ => Class::Integer,
                };
                Some((vec![class; size.div_ceil(8).max(1) as usize], size))
            }
            gimli::DW_TAG_structure_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_class_type
            | gimli::DW_TAG_array_type => {
                let size = match (e.tag(), size) {
                    (_, Some(s)) => s,
                    (gimli::DW_TAG_array_type, None) => return None,
                    _ => 0,
                };
                if size > 16 {
                    return Some((vec![Class::Memory], size));
                }
                let mut classes = vec![None::<Class>; size.div_ceil(8) as usize];
                let merge = |classes: &mut Vec<Option<Class>>, at: u64, c: &[Class]| {
                    for (i, c) in c.iter().enumerate() {
                        let k = (at / 8) as usize + i;
                        if let Some(slot) = classes.get_mut(k) {
                            *slot = Some(match (*slot, *c) {
                                (_, Class::Memory) | (Some(Class::Memory), _) => Class::Memory,
                                (_, Class::Integer) | (Some(Class::Integer), _) => Class::Integer,
                                _ => Class::Sse,
                            });
                        }
                    }
                };
                if e.tag() == gimli::DW_TAG_array_type {
                    let (c, _) = self.classify(&inner()?, depth + 1)?;
                    merge(&mut classes, 0, &c);
                    if classes.len() > 1 {
                        merge(&mut classes, 8, &c);
                    }
                } else {
                    let mut cursor = unit.entries_at_offset(off).ok()?;
                    let top = cursor.next_dfs().ok()??.depth();
                    while let Ok(Some(m)) = cursor.next_dfs() {
                        if m.depth() <= top {
                            break;
                        }
                        if m.depth() != top + 1 || m.tag() != gimli::DW_TAG_member {
                            continue;
                        }
                        let at = m
                            .attr_value(gimli::DW_AT_data_member_location)
                            .and_then(|v| v.udata_value())
                            .unwrap_or(0);
                        let t = self.follow(unit, m.attr_value(gimli::DW_AT_type)?)?;
                        let (c, _) = self.classify(&t, depth + 1)?;
                        merge(&mut classes, at, &c);
                    }
                }
                let classes: Vec<Class> = classes
                    .into_iter()
                    .map(|c| c.unwrap_or(Class::Sse))
                    .collect();
                Some((classes, size))
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct Params {
    names: Vec<String>,
    consts: Vec<(String, String)>,
    types: Vec<Option<Die>>,
    variadic: bool,
}

fn const_text(v: &AttributeValue<R>) -> String {
    match v {
        AttributeValue::Sdata(n) => n.to_string(),
        AttributeValue::Udata(n) => n.to_string(),
        AttributeValue::Data1(n) => n.to_string(),
        AttributeValue::Data2(n) => n.to_string(),
        AttributeValue::Data4(n) => (*n as i32).to_string(),
        AttributeValue::Data8(n) => (*n as i64).to_string(),
        _ => "a constant".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index as a walk that parses every DIE makes it (how it was made before it
    /// skipped the DIEs it does not look at).
    fn index_by_walking(d: &DebugInfo, unit: &Arc<Unit<R>>) -> UnitIndex {
        let mut index = UnitIndex::default();
        let mut names = HashSet::new();
        let mut holders: Vec<(isize, String, Option<DebugInfoOffset>)> = Vec::new();
        let mut entries = unit.entries();
        while let Ok(Some(e)) = entries.next_dfs() {
            let depth = e.depth();
            while holders.last().is_some_and(|(d, _, _)| *d >= depth) {
                holders.pop();
            }
            match e.tag() {
                gimli::DW_TAG_subprogram => {
                    let name = d.name_of(unit, e.offset());
                    if let Some(n) = &name {
                        names.insert(n.clone());
                    }
                    let mut starts = Vec::new();
                    if let Some(v) = e.attr_value(gimli::DW_AT_low_pc) {
                        starts.extend(d.dwarf.attr_address(unit, v).ok().flatten());
                    } else if e.has_attr(gimli::DW_AT_ranges)
                        && let Ok(mut r) = d.dwarf.die_ranges(unit, e)
                    {
                        while let Ok(Some(r)) = r.next() {
                            starts.push(r.begin);
                        }
                    }
                    if !starts.is_empty() {
                        let own = e.offset().to_debug_info_offset(&unit.header);
                        holders.push((depth, name.unwrap_or_default(), own));
                    }
                    for a in starts {
                        index.starts.entry(a).or_insert(e.offset());
                    }
                }
                gimli::DW_TAG_inlined_subroutine => {
                    if let Some((_, h, own)) = holders.first()
                        && let Some(v) = e.attr_value(gimli::DW_AT_abstract_origin)
                    {
                        let chain = d.origin_chain(unit, v);
                        if !chain.is_empty() {
                            index.inlined.push((chain, h.clone(), *own));
                        }
                    }
                }
                _ => {}
            }
        }
        index.names = Arc::new(names);
        index
    }

    /// On this test program's own debug information (Rust: functions inside namespaces,
    /// inlined copies everywhere), unit by unit.
    #[test]
    fn the_index_that_skips_dies_is_the_full_walks() {
        let exe = std::env::current_exe().unwrap();
        let f = crate::elf::symbols::ElfFile::open(&exe).unwrap();
        let d = DebugInfo::load(&f).expect("the test program has debug information");
        let (mut starts, mut inlined) = (0, 0);
        for unit in d.all_units().take(60) {
            let fast = d.index(&unit);
            let slow = index_by_walking(&d, &unit);
            assert_eq!(fast.starts, slow.starts);
            assert_eq!(*fast.names, *slow.names);
            assert_eq!(fast.inlined, slow.inlined);
            starts += fast.starts.len();
            inlined += fast.inlined.len();
        }
        assert!(
            starts > 100 && inlined > 100,
            "too little to compare: {starts} functions, {inlined} inlined copies"
        );
    }
}
