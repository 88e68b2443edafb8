//! Emit the patch: the patched object's code, as the compiler made it, with only the
//! register-neutral rewrites [`super::bind`] decided, plus the stubs and slots they use,
//! written as a new relocatable object; the records (`.rlivepatch`) generated as C with
//! the SDK header; both linked into an ordinary patch with the system's `cc`, which
//! keeps only what the records reach (`--gc-sections`) and the unwind information of
//! what it keeps.

use super::bind::{Action, Plan};
use super::relobj::{Kind, RelObj, c};
use crate::error::Result;
use crate::{bail, err};
use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolKind, SymbolScope, elf,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Record classes of `RLP_KIND_RELOC` (see rlivepatch.h).
pub const RELOC_ABS64: u64 = 1;
/// A RIP-relative operand.
pub const RELOC_REL32: u64 = 2;
/// A call or jump through a stub, made direct when within reach.
pub const RELOC_CALL32: u64 = 3;

/// One function record: the old function (by its symbol spec in the binary), the new
/// one's symbol in the emitted object.
#[derive(Debug, Clone)]
pub struct FuncRecord {
    /// The object as records name it (`None`: the executable).
    pub object: Option<String>,
    /// Its file address in the binary.
    pub vaddr: u64,
    /// `name#0xADDR` in the binary.
    pub old: String,
    /// The new function's name (for messages).
    pub new_name: String,
    /// The global symbol emitted for it.
    pub new_symbol: String,
}

/// A bound place (`RLP_KIND_RELOC`) as the records name it.
#[derive(Debug)]
pub struct SiteRecord {
    /// The object; `None` is the main executable.
    pub object: Option<String>,
    /// The symbol spec (`name#0xADDR`).
    pub spec: String,
    /// The name in the patch's source.
    pub local: String,
    /// The symbol of the place.
    pub site: String,
    /// The symbol of the thunk slot, for a RIP-relative place.
    pub thunk: Option<String>,
    /// The offset into the symbol.
    pub addend: i64,
    /// The kind and instruction geometry, as `RLP_KIND_RELOC` encodes them.
    pub class: u64,
}

/// The records of a patch besides functions.
#[derive(Debug, Default)]
pub struct Records {
    /// Functions.
    pub funcs: Vec<FuncRecord>,
    /// Pointer slots: (object, `name#0xADDR`, local name, slot symbol, addend).
    pub slots: Vec<(Option<String>, String, String, String, i64)>,
    /// Bound places.
    pub sites: Vec<SiteRecord>,
    /// Build-ids: (object or "main", hex).
    pub build_ids: Vec<(String, String)>,
}

fn section_kind(s: &super::relobj::Sec) -> SectionKind {
    if s.is_tls() {
        return if s.sh_type == c::SHT_NOBITS {
            SectionKind::UninitializedTls
        } else {
            SectionKind::Tls
        };
    }
    if s.sh_type == c::SHT_NOBITS {
        return SectionKind::UninitializedData;
    }
    if s.is_text() {
        return SectionKind::Text;
    }
    if s.is_strings() && s.entsize == 1 {
        return SectionKind::ReadOnlyString;
    }
    if s.flags & c::SHF_WRITE != 0 {
        return SectionKind::Data;
    }
    SectionKind::ReadOnlyData
}

/// Write the emitted object of one unit to `out`: `q` (the patched object) with `plan`'s
/// rewrites; `tag` makes its generated names unique in the patch; `exported` are the
/// functions records point at (symbol index → global name). Fills `records`' slots
/// and sites for `object`.
pub fn write_object(
    q: &RelObj,
    plan: &Plan,
    tag: usize,
    exported: &HashMap<usize, String>,
    object: Option<&str>,
    records: &mut Records,
    out: &Path,
) -> Result<()> {
    let mut e = Emitter::new(q, plan, tag);
    e.sections();
    e.symbols();
    e.exported(exported)?;
    e.slots(records, object);
    e.stubs()?;
    e.sites(records, object);
    e.relocations()?;
    let bytes =
        e.o.write()
            .map_err(|e| err!(Build, "writing {}: {e}", out.display()))?;
    std::fs::write(out, bytes).map_err(|e| err!(Build, "writing {}: {e}", out.display()))?;
    Ok(())
}

/// The object being written for one unit: the carried sections and symbols, then what
/// the bindings add (slots, stubs, sites), then the relocations.
struct Emitter<'q> {
    q: &'q RelObj,
    plan: &'q Plan,
    /// The unit's number: it makes the generated names unique in the patch.
    tag: usize,
    o: Object<'static>,
    /// The unit's section data, rewritten where the plan says.
    data: Vec<Vec<u8>>,
    /// `.eh_frame`'s relocations once filtered to the carried code.
    eh_relocs: Option<(usize, Vec<super::relobj::Reloc>)>,
    /// The unit's sections and symbols as written.
    secs: HashMap<usize, SectionId>,
    syms: HashMap<usize, SymbolId>,
    slot_sec: Option<SectionId>,
    slot_syms: Vec<SymbolId>,
    stub_syms: Vec<SymbolId>,
}

impl<'q> Emitter<'q> {
    /// A new object, with the unit's code rewritten: `.eh_frame` filtered to the
    /// carried code, and each `lea` that becomes a load from a slot.
    fn new(q: &'q RelObj, plan: &'q Plan, tag: usize) -> Self {
        let mut data: Vec<Vec<u8>> = q.sections.iter().map(|s| s.data.clone()).collect();
        let mut eh_relocs: Option<(usize, Vec<super::relobj::Reloc>)> = None;
        if let Some(eh) = q.sections.iter().position(|s| s.name == ".eh_frame")
            && plan.need[eh]
        {
            let keep = |sec: usize| plan.need[sec] && q.sections[sec].is_text();
            let (d, r) = filter_eh_frame(q, eh, &keep);
            data[eh] = d;
            eh_relocs = Some((eh, r));
        }
        // Code rewrites first: `lea` becomes `mov` from a slot.
        for (si, acts) in plan.actions.iter().enumerate() {
            for (r, a) in q.sections[si].relocs.iter().zip(acts) {
                if let Action::LeaToSlot(_) = a {
                    data[si][r.offset as usize - 2] = 0x8b;
                }
            }
        }
        Emitter {
            q,
            plan,
            tag,
            o: Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little),
            data,
            eh_relocs,
            secs: HashMap::new(),
            syms: HashMap::new(),
            slot_sec: None,
            slot_syms: Vec::new(),
            stub_syms: Vec::new(),
        }
    }

    /// The carried sections, and a note that the stack is not executable.
    fn sections(&mut self) {
        for (i, s) in self.q.sections.iter().enumerate() {
            if !self.plan.need[i] {
                continue;
            }
            let kind = section_kind(s);
            let id = self
                .o
                .add_section(Vec::new(), s.name.as_bytes().to_vec(), kind);
            let align = s.align.max(1);
            if s.sh_type == c::SHT_NOBITS {
                self.o.append_section_bss(id, s.size, align);
            } else {
                self.o
                    .set_section_data(id, std::mem::take(&mut self.data[i]), align);
            }
            let mut flags = s.flags & !(c::SHF_MERGE) & !(c::SHF_GROUP);
            if kind == SectionKind::ReadOnlyString {
                flags |= c::SHF_MERGE;
            }
            let sh_type = if s.sh_type == c::SHT_X86_64_UNWIND {
                c::SHT_PROGBITS
            } else {
                s.sh_type
            };
            self.o.section_mut(id).flags = SectionFlags::Elf {
                sh_type: elf::SectionType(sh_type),
                sh_flags: elf::SectionFlags(flags as _),
            };
            self.secs.insert(i, id);
        }
        // No executable stack.
        let stack = self.o.add_section(
            Vec::new(),
            b".note.GNU-stack".to_vec(),
            SectionKind::ReadOnlyData,
        );
        self.o.section_mut(stack).flags = SectionFlags::Elf {
            sh_type: elf::SectionType(c::SHT_PROGBITS),
            sh_flags: elf::SectionFlags(0),
        };
    }

    /// The unit's symbols in carried sections: locals stay local, globals become hidden
    /// (the patch exports nothing the dynamic loader could bind the process to).
    fn symbols(&mut self) {
        for (i, s) in self.q.symbols.iter().enumerate().skip(1) {
            if matches!(s.kind, Kind::Section | Kind::File) || s.name.is_empty() {
                continue;
            }
            let section = match s.section {
                Some(sec) => match self.secs.get(&sec) {
                    Some(id) => SymbolSection::Section(*id),
                    None => continue,
                },
                None if s.undefined => SymbolSection::Undefined,
                None => continue,
            };
            let kind = match s.kind {
                Kind::Func | Kind::Ifunc => SymbolKind::Text,
                Kind::Object => SymbolKind::Data,
                Kind::Tls => SymbolKind::Tls,
                _ => SymbolKind::Unknown,
            };
            let (st_type, st_bind) = (
                match s.kind {
                    Kind::Func => elf::STT_FUNC,
                    Kind::Ifunc => elf::STT_GNU_IFUNC,
                    Kind::Object => elf::STT_OBJECT,
                    Kind::Tls => elf::STT_TLS,
                    _ => elf::STT_NOTYPE,
                },
                if s.weak {
                    elf::STB_WEAK
                } else if s.global {
                    elf::STB_GLOBAL
                } else {
                    elf::STB_LOCAL
                },
            );
            let st_other = if s.global && !s.undefined {
                elf::SymbolOther(elf::STV_HIDDEN.0)
            } else {
                elf::SymbolOther(s.other)
            };
            let id = self.o.add_symbol(Symbol {
                name: s.name.as_bytes().to_vec(),
                value: s.value,
                size: s.size,
                kind,
                scope: if s.global {
                    SymbolScope::Linkage
                } else {
                    SymbolScope::Compilation
                },
                weak: s.weak,
                section,
                flags: SymbolFlags::Elf {
                    st_info: elf::SymbolInfo::new(st_bind, st_type),
                    st_other,
                },
            });
            self.syms.insert(i, id);
        }
    }

    /// A hidden global symbol of the patch's own.
    fn hidden(
        &mut self,
        name: String,
        section: SymbolSection,
        value: u64,
        size: u64,
        kind: SymbolKind,
    ) -> SymbolId {
        let st_type = match kind {
            SymbolKind::Text => elf::STT_FUNC,
            SymbolKind::Data => elf::STT_OBJECT,
            _ => elf::STT_NOTYPE,
        };
        self.o.add_symbol(Symbol {
            name: name.into_bytes(),
            value,
            size,
            kind,
            scope: SymbolScope::Linkage,
            weak: false,
            section,
            flags: SymbolFlags::Elf {
                st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, st_type),
                st_other: elf::SymbolOther(elf::STV_HIDDEN.0),
            },
        })
    }

    /// The functions the records point at, under names of their own.
    fn exported(&mut self, exported: &HashMap<usize, String>) -> Result<()> {
        for (&i, name) in exported {
            let s = &self.q.symbols[i];
            let Some(id) = s.section.and_then(|x| self.secs.get(&x)) else {
                bail!(Build, "the new code of {} is not in the patch", s.name);
            };
            self.hidden(
                name.clone(),
                SymbolSection::Section(*id),
                s.value,
                s.size,
                SymbolKind::Text,
            );
        }
        Ok(())
    }

    /// Slots: pointers the apply fills.
    fn slots(&mut self, records: &mut Records, object: Option<&str>) {
        let slot_sec = self.o.add_section(
            Vec::new(),
            format!(".data.rlp_slots.{}", self.tag).into_bytes(),
            SectionKind::Data,
        );
        self.o.set_section_data(
            slot_sec,
            vec![0u8; 8 * (self.plan.slots.len() + self.plan.sites.len()).max(1)],
            8,
        );
        for (k, w) in self.plan.slots.iter().enumerate() {
            let name = format!("rlp_slot_{}_{k}", self.tag);
            let id = self.hidden(
                name.clone(),
                SymbolSection::Section(slot_sec),
                8 * k as u64,
                8,
                SymbolKind::Data,
            );
            self.slot_syms.push(id);
            records.slots.push((
                object.map(String::from),
                format!("{}#{:#x}", w.name, w.vaddr),
                w.name.clone(),
                name,
                w.x,
            ));
        }
        self.slot_sec = Some(slot_sec);
    }

    /// Stubs: `jmp *slot(%rip)`.
    fn stubs(&mut self) -> Result<()> {
        let stub_sec = self.o.add_section(
            Vec::new(),
            format!(".text.rlp_stubs.{}", self.tag).into_bytes(),
            SectionKind::Text,
        );
        let mut stub_code = Vec::new();
        for _ in &self.plan.stubs {
            stub_code.extend([0xff, 0x25, 0, 0, 0, 0, 0xcc, 0xcc]);
        }
        if stub_code.is_empty() {
            stub_code.push(0xcc);
        }
        self.o.set_section_data(stub_sec, stub_code, 16);
        for (k, &slot) in self.plan.stubs.iter().enumerate() {
            let id = self.o.add_symbol(Symbol {
                name: format!("rlp_stub_{}_{k}", self.tag).into_bytes(),
                value: 8 * k as u64,
                size: 6,
                kind: SymbolKind::Text,
                scope: SymbolScope::Compilation,
                weak: false,
                section: SymbolSection::Section(stub_sec),
                flags: SymbolFlags::None,
            });
            self.stub_syms.push(id);
            self.o
                .add_relocation(
                    stub_sec,
                    Relocation {
                        offset: 8 * k as u64 + 2,
                        symbol: self.slot_syms[slot],
                        addend: -4,
                        flags: RelocationFlags::Elf {
                            r_type: elf::RelocationType(c::R_PC32),
                        },
                    },
                )
                .map_err(|e| err!(Build, "emitting a stub: {e}"))?;
        }
        Ok(())
    }

    /// Sites: the apply writes them; a RIP-relative one has a slot for its thunk.
    fn sites(&mut self, records: &mut Records, object: Option<&str>) {
        let slot_sec = self.slot_sec.expect("slots before sites");
        for (k, site) in self.plan.sites.iter().enumerate() {
            let Some(sec) = self.secs.get(&site.section) else {
                continue;
            };
            let name = format!("rlp_site_{}_{k}", self.tag);
            self.hidden(
                name.clone(),
                SymbolSection::Section(*sec),
                site.offset,
                0,
                SymbolKind::Unknown,
            );
            let (thunk, class) = match site.insn {
                Some((head, len)) if site.call => (None, RELOC_CALL32 | (head << 8) | (len << 16)),
                Some((head, len)) => {
                    let t = format!("rlp_tslot_{}_{k}", self.tag);
                    self.hidden(
                        t.clone(),
                        SymbolSection::Section(slot_sec),
                        8 * (self.plan.slots.len() + k) as u64,
                        8,
                        SymbolKind::Data,
                    );
                    (Some(t), RELOC_REL32 | (head << 8) | (len << 16))
                }
                None => (None, RELOC_ABS64),
            };
            records.sites.push(SiteRecord {
                object: object.map(String::from),
                spec: format!("{}#{:#x}", site.want.name, site.want.vaddr),
                local: site.want.name.clone(),
                site: name,
                thunk,
                addend: site.want.x,
                class,
            });
        }
    }

    /// The relocations, as decided (`.eh_frame`'s as filtered).
    fn relocations(&mut self) -> Result<()> {
        for (si, acts) in self.plan.actions.iter().enumerate() {
            let Some(&sec) = self.secs.get(&si) else {
                continue;
            };
            let relocs: Vec<super::relobj::Reloc> = match &self.eh_relocs {
                Some((eh, r)) if *eh == si => r.clone(),
                _ => self.q.sections[si].relocs.clone(),
            };
            let keep_all = vec![Action::Keep; relocs.len()];
            let acts = if relocs.len() == acts.len() {
                acts
            } else {
                &keep_all
            };
            for (r, a) in relocs.iter().zip(acts) {
                let (symbol, addend, r_type) = match a {
                    Action::Keep => {
                        let s = &self.q.symbols[r.sym];
                        let symbol = if s.kind == Kind::Section {
                            match s.section.and_then(|x| self.secs.get(&x)) {
                                Some(id) => self.o.section_symbol(*id),
                                None => bail!(
                                    Build,
                                    "a reference of {} into a section the patch does not carry",
                                    self.q.sections[si].name
                                ),
                            }
                        } else {
                            match self.syms.get(&r.sym) {
                                Some(id) => *id,
                                None => bail!(
                                    Build,
                                    "a reference of {} to {}, which the patch does not carry",
                                    self.q.sections[si].name,
                                    s.name
                                ),
                            }
                        };
                        (symbol, r.addend, r.r_type)
                    }
                    Action::Stub(k) => (self.stub_syms[*k], r.addend, c::R_PC32),
                    Action::LeaToSlot(k) | Action::GotToSlot(k) => {
                        // From the field to the end of the instruction, as the original addend
                        // counted it for a reference with no offset.
                        let insns = super::relobj::instructions(&self.q.sections[si]);
                        let tail = self.q.tail(si, &insns, r);
                        (self.slot_syms[*k], -tail, c::R_PC32)
                    }
                    Action::DataRel32(_) | Action::Abs64(_) => continue,
                };
                self.o
                    .add_relocation(
                        sec,
                        Relocation {
                            offset: r.offset,
                            symbol,
                            addend,
                            flags: RelocationFlags::Elf {
                                r_type: elf::RelocationType(r_type),
                            },
                        },
                    )
                    .map_err(|e| {
                        err!(
                            Build,
                            "emitting a relocation of {}: {e}",
                            self.q.sections[si].name
                        )
                    })?;
            }
        }
        Ok(())
    }
}

/// `.eh_frame` with only the entries of carried code: every CIE, and the FDEs whose
/// start is in a section `keep` accepts; the CIE pointers and relocations of what stays
/// moved to their new offsets.
fn filter_eh_frame(
    q: &RelObj,
    si: usize,
    keep: &dyn Fn(usize) -> bool,
) -> (Vec<u8>, Vec<super::relobj::Reloc>) {
    let sec = &q.sections[si];
    let d = &sec.data;
    // (old start, length including the length field, is CIE, kept)
    let mut recs: Vec<(usize, usize, bool, bool)> = Vec::new();
    let mut at = 0usize;
    while at + 4 <= d.len() {
        let len = u32::from_le_bytes(d[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            // The terminator.
            recs.push((at, 4, true, true));
            break;
        }
        let total = 4 + len;
        let is_cie =
            at + 8 <= d.len() && u32::from_le_bytes(d[at + 4..at + 8].try_into().unwrap()) == 0;
        let kept = is_cie
            || sec
                .relocs
                .iter()
                .find(|r| r.offset as usize == at + 8)
                .and_then(|r| q.symbols.get(r.sym))
                .and_then(|s| s.section)
                .is_some_and(keep);
        recs.push((at, total, is_cie, kept));
        at += total;
    }
    let mut new_start: HashMap<usize, usize> = HashMap::new();
    let mut out = Vec::new();
    for &(start, total, _, kept) in &recs {
        if kept {
            new_start.insert(start, out.len());
            out.extend_from_slice(&d[start..(start + total).min(d.len())]);
        }
    }
    // CIE pointers: from the pointer field back to the CIE.
    for &(start, _, is_cie, kept) in &recs {
        if !kept || is_cie {
            continue;
        }
        let ptr = u32::from_le_bytes(d[start + 4..start + 8].try_into().unwrap()) as usize;
        let cie = start + 4 - ptr;
        if let (Some(&ns), Some(&nc)) = (new_start.get(&start), new_start.get(&cie)) {
            let v = (ns + 4 - nc) as u32;
            out[ns + 4..ns + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let relocs = sec
        .relocs
        .iter()
        .filter_map(|r| {
            let o = r.offset as usize;
            let &(start, _, _, _) = recs
                .iter()
                .find(|(s, t, _, k)| *k && o >= *s && o < s + t)?;
            Some(super::relobj::Reloc {
                offset: (new_start[&start] + (o - start)) as u64,
                ..*r
            })
        })
        .collect();
    (out, relocs)
}

fn c_str(s: &str) -> String {
    format!("{s:?}")
}

fn c_obj(o: &Option<String>) -> String {
    match o {
        Some(o) => c_str(o),
        None => "0".into(),
    }
}

/// The generated C file of the records.
pub fn records_c(r: &Records, name: &str, replace: bool) -> String {
    let mut c = String::from(
        "/* Generated by rlivepatch build. */\n#include \"rlivepatch.h\"\n\n\
         #define RLP_GEN(var, k, s0, s1, s2, p0, p1, n0, n1) \\\n\
         \tstatic struct rlp_record var __attribute__((used, retain, section(\".rlivepatch\"), aligned(8))) = \\\n\
         \t{RLP_MAGIC, (k), {(s0), (s1), (s2)}, {(void *)(p0), (void *)(p1), 0, 0}, {(uint64_t)(n0), (uint64_t)(n1)}}\n\n",
    );
    let mut n = 0;
    let mut rec = |c: &mut String, line: String| {
        let _ = writeln!(c, "RLP_GEN(rlp_gen_{n}, {line});");
        n += 1;
    };
    rec(
        &mut c,
        format!("RLP_KIND_NAME, {}, 0, 0, 0, 0, 0, 0", c_str(name)),
    );
    if replace {
        rec(&mut c, "RLP_KIND_REPLACE, 0, 0, 0, 0, 0, 0, 0".into());
    }
    for (obj, hex) in &r.build_ids {
        rec(
            &mut c,
            format!(
                "RLP_KIND_BUILD_ID, {}, {}, 0, 0, 0, 0, 0",
                c_str(obj),
                c_str(hex)
            ),
        );
    }
    for f in &r.funcs {
        let _ = writeln!(c, "extern char {}[];", f.new_symbol);
        rec(
            &mut c,
            format!(
                "RLP_KIND_FUNC, {}, {}, {}, {}, 0, 0, 0",
                c_obj(&f.object),
                c_str(&f.old),
                c_str(&f.new_name),
                f.new_symbol
            ),
        );
    }
    for (obj, spec, local, slot, x) in &r.slots {
        let _ = writeln!(c, "extern char {slot}[];");
        rec(
            &mut c,
            format!(
                "RLP_KIND_SYMBOL, {}, {}, {}, {slot}, 0, {x}LL, 0",
                c_obj(obj),
                c_str(spec),
                c_str(local)
            ),
        );
    }
    for SiteRecord {
        object: obj,
        spec,
        local,
        site,
        thunk,
        addend: x,
        class,
    } in &r.sites
    {
        let _ = writeln!(c, "extern char {site}[];");
        let t = match thunk {
            Some(t) => {
                let _ = writeln!(c, "extern char {t}[];");
                t.clone()
            }
            None => "0".into(),
        };
        rec(
            &mut c,
            format!(
                "RLP_KIND_RELOC, {}, {}, {}, {site}, {t}, {x}LL, {class}ULL",
                c_obj(obj),
                c_str(spec),
                c_str(local)
            ),
        );
    }
    c
}

/// Link `objects` and the records into the patch `out`, in `work`.
pub fn link(work: &Path, records: &str, objects: &[std::path::PathBuf], out: &Path) -> Result<()> {
    let inc = work.join("include");
    std::fs::create_dir_all(&inc)
        .map_err(|e| err!(Build, "cannot create {}: {e}", inc.display()))?;
    std::fs::write(inc.join("rlivepatch.h"), crate::patch::sdk::HEADER)
        .map_err(|e| err!(Build, "cannot write the SDK header: {e}"))?;
    let rc = work.join("records.c");
    std::fs::write(&rc, records).map_err(|e| err!(Build, "cannot write {}: {e}", rc.display()))?;
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(out)
    };
    let o = std::process::Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-nostartfiles",
            "-Wl,--gc-sections",
            "-Wl,-z,now",
            "-Wl,-z,noexecstack",
            "-Wl,-Bsymbolic",
        ])
        .arg("-I")
        .arg(&inc)
        .arg(&rc)
        .args(objects)
        .arg("-o")
        .arg(&out_abs)
        .output()
        .map_err(|e| err!(Build, "cannot run cc to link the patch: {e}"))?;
    if !o.status.success() {
        let t = String::from_utf8_lossy(&o.stderr);
        // The linker's own first line says why; collect2's says only that it failed.
        let first = t
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("collect2"))
            .or_else(|| t.lines().next())
            .unwrap_or("");
        bail!(Build, "linking the patch failed: {first}");
    }
    Ok(())
}
