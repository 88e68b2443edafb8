//! The functions a patch replaces, found in the loaded objects of the process: object,
//! symbol, size, entry bytes and their checks, what callers rely on, IFUNC
//! implementations.

use crate::contract::Contracts;
use crate::contract::{Contract, code::Part};
use crate::elf::objects::Objects;
use crate::elf::symbols::{SymKind, find_function};
use crate::error::Result;
use crate::patch::Patch;
use crate::remote::redirect::{self, JMP_LEN};
use crate::{bail, err};
use std::collections::HashMap;

/// A function of a patch resolved against the process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolved {
    /// Path of the object.
    pub object: String,
    /// The old symbol.
    pub symbol: String,
    /// Its demangled form, for C++.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demangled: Option<String>,
    /// Run-time entry (`"0x..."` in JSON, as every address rlivepatch prints).
    #[serde(serialize_with = "crate::fmt::ser_hex")]
    pub addr: u64,
    /// Size.
    pub size: u64,
    /// The separate debug file its symbol came from, when the object is stripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// For an IFUNC symbol: the implementation the resolver picks in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifunc_implementation: Option<String>,
    /// The entry bytes in the file.
    #[serde(skip)]
    pub orig: Vec<u8>,
    /// Index in the patch's function list.
    #[serde(skip)]
    pub index: usize,
    /// The IFUNC resolver to call, until the implementation is known.
    #[serde(skip)]
    pub resolver: Option<u64>,
    /// What its callers rely on (file addresses of its object).
    pub contract: Contract,
    /// The load bias of its object.
    #[serde(skip)]
    pub bias: u64,
    /// Other names the patch replaces with it (aliases, folded functions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// What rlivepatch does about what callers rely on, and what it warns of.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Resolved {
    /// The parts split off from the function's body, at run-time addresses.
    pub fn split_parts(&self) -> Vec<Part> {
        self.contract.parts[1..]
            .iter()
            .map(|p| Part {
                start: p.start.wrapping_add(self.bias),
                end: p.end.wrapping_add(self.bias),
                name: p.name.clone(),
            })
            .collect()
    }
}

/// Resolve the functions of `patch` whose indexes are in `only`.
pub fn resolve_some(
    patch: &Patch,
    objects: &Objects,
    contracts: &mut Contracts,
    only: &[usize],
) -> Result<Vec<Resolved>> {
    let mut out: Vec<Resolved> = Vec::new();
    // The functions the patch changes in each object, found once per object.
    let mut patched_by_path: HashMap<String, Vec<&str>> = HashMap::new();
    for (index, f) in patch.funcs.iter().enumerate() {
        if !only.contains(&index) {
            continue;
        }
        let obj = objects.by_name(f.object.as_deref())?;
        // A versioned name is looked up in the object's own dynamic symbols.
        let syms = if f.old.contains('@') {
            obj.file()?
        } else {
            obj.symbols_file()?
        };
        let bias = obj.bias()?;
        // Found once per version of the file (reading its symbol table whole is most of
        // the cost), then kept once the function resolved.
        let kept = syms
            .version()
            .and_then(|v| crate::os::kept::key("function", &[&v, &f.old, &f.sympos.to_string()]));
        let (found, fresh) = match kept.as_deref().and_then(crate::os::kept::load::<Found>) {
            Some(found) => (found, false),
            None => (
                find_found(patch, objects, contracts, (index, obj), &syms)?,
                true,
            ),
        };
        let r = resolve_found(
            patch,
            objects,
            contracts,
            &mut patched_by_path,
            (index, obj, bias),
            &found,
        )?;
        if fresh && let Some(k) = &kept {
            crate::os::kept::store(k, &found);
        }
        out.push(r);
    }
    merge_shared(patch, &mut out)?;
    Ok(out)
}

/// The symbol of the patch's function `index` in `obj` (its file of symbols `syms`), or
/// the error that says why there is none and what to patch instead.
fn find_found(
    patch: &Patch,
    objects: &Objects,
    contracts: &mut Contracts,
    (index, obj): (usize, &crate::elf::objects::LoadedObject),
    syms: &crate::elf::symbols::ElfFile,
) -> Result<Found> {
    let f = &patch.funcs[index];
    let sym = find_function(syms, &f.old, f.sympos).map_err(|e| {
            if e.cause != crate::error::Cause::NotFound {
                return e;
            }
            let mut copies: Vec<&str> = syms
                .symtab()
                .iter()
                .filter(|s| crate::contract::code::is_clone_of(&s.name, &f.old))
                .map(|s| s.name.as_str())
                .collect();
            copies.sort();
            copies.dedup();
            let inlined = contracts.inlined_copies(obj, &f.old);
            if !inlined.is_empty() {
                return err!(
                    Mismatch,
                    "function {} has no code of its own in {}: the compiler inlined it into {} (from its debug information); patch {} instead",
                    f.old,
                    obj.display_name(),
                    inlined.join(", "),
                    if inlined.len() == 1 { "that function" } else { "those functions" }
                );
            }
            if !copies.is_empty() {
                return err!(
                    Mismatch,
                    "function {} of {} exists in this build only as the copies the compiler specialised for its callers ({}), whose arguments differ from its source prototype; patch the callers of {} instead",
                    f.old,
                    obj.display_name(),
                    copies.join(", "),
                    f.old
                );
            }
            crate::resolve::hints::function_not_found(&f.old, obj, syms, objects)
        })?;
    Ok(Found {
        name: sym.name.clone(),
        value: sym.value,
        size: sym.size,
        ifunc: sym.kind == SymKind::Ifunc,
    })
}

/// A function's symbol as [`find_function`] found it in one version of a file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Found {
    name: String,
    value: u64,
    size: u64,
    ifunc: bool,
}

/// The function `found` of the patch's function `index` in `obj` (loaded at `bias`),
/// resolved: its code, checks and contract.
fn resolve_found<'p>(
    patch: &'p Patch,
    objects: &Objects,
    contracts: &mut Contracts,
    patched_by_path: &mut HashMap<String, Vec<&'p str>>,
    (index, obj, bias): (usize, &crate::elf::objects::LoadedObject, u64),
    found: &Found,
) -> Result<Resolved> {
    let f = &patch.funcs[index];
    // `name#0xADDR` (a generated patch) is shown, and analysed, by its name.
    let shown = if f.old.contains('#') {
        found.name.clone()
    } else {
        f.old.clone()
    };
    let mut r = Resolved {
        object: obj.path.clone(),
        demangled: crate::elf::demangle::demangle(&shown),
        symbol: shown,
        addr: 0,
        size: 0,
        debug_file: obj.debug_file(),
        ifunc_implementation: None,
        orig: Vec::new(),
        index,
        resolver: None,
        contract: Contract::default(),
        bias,
        aliases: Vec::new(),
        notes: Vec::new(),
    };
    if found.ifunc {
        // The symbol is a resolver: what runs is the implementation it picks.
        r.resolver = Some(found.value.wrapping_add(bias));
    } else {
        let patched = patched_by_path
            .entry(obj.path.clone())
            .or_insert_with(|| patched_in(patch, &obj.path, objects));
        resolve_code(
            objects,
            contracts,
            &mut r,
            found.value.wrapping_add(bias),
            found.size,
            patched,
            f.old.contains('#') && f.new_name == found.name && found.name.contains('.'),
        )?;
        contracts.narrow_to_replacement(&mut r.contract, patch, f.new_vaddr)?;
        r.notes = r.contract.notes(&r.symbol);
    }
    Ok(r)
}

/// The old functions `patch` replaces in the object at `path`.
fn patched_in<'p>(patch: &'p Patch, path: &str, objects: &Objects) -> Vec<&'p str> {
    patch
        .funcs
        .iter()
        .filter(|f| {
            objects
                .by_name(f.object.as_deref())
                .is_ok_and(|o| o.path == path)
        })
        .map(|f| f.old.split('@').next().unwrap_or(&f.old))
        .collect()
}

/// Fill in the code of a resolved function at run-time address `addr`: size (from the
/// symbol, else the unwind table), entry bytes, and the entry checks.
fn resolve_code(
    objects: &Objects,
    contracts: &mut Contracts,
    r: &mut Resolved,
    addr: u64,
    sym_size: u64,
    patched: &[&str],
    same_clone: bool,
) -> Result<()> {
    let obj = objects.by_addr(addr).ok_or_else(|| {
        err!(
            Mismatch,
            "{} at {addr:#x} is not in any loaded object",
            r.symbol
        )
    })?;
    let file = obj.file()?;
    let bias = obj.bias()?;
    let vaddr = addr.wrapping_sub(bias);
    let mut size = sym_size;
    if size == 0 {
        size = crate::elf::unwind::fde_range(&file, vaddr)
            .map(|(s, e)| e.saturating_sub(vaddr).min(e - s))
            .unwrap_or(0);
    }
    let code = file.bytes_at(vaddr, size as usize).ok_or_else(|| {
        err!(
            Mismatch,
            "function {} in {} is not in the file's loadable code",
            r.symbol,
            obj.display_name()
        )
    })?;
    if !obj.is_code(addr) {
        bail!(
            Mismatch,
            "{} in {} is not code ({addr:#x} is not in an executable mapping)",
            r.symbol,
            obj.display_name()
        );
    }
    // What the code is called in its object (an IFUNC's implementation has a name of its
    // own), for its parts, clones and debug information.
    let syms = obj.symbols_file()?;
    let own = r.symbol.split('@').next().unwrap_or(&r.symbol);
    let (version, at) = (syms.version(), format!("{vaddr:#x}"));
    let parts = version.as_deref().map(|v| [v, own, at.as_str()]);
    let name = crate::os::kept::get_or_make("name", parts.as_ref().map(|p| &p[..]), || {
        let named_here = syms
            .symtab()
            .iter()
            .chain(syms.dynsym())
            .any(|s| s.name == own && s.value == vaddr);
        Ok::<_, std::convert::Infallible>(match syms.symbolize(vaddr) {
            Some((s, 0)) if !named_here => s.name.clone(),
            _ => own.to_string(),
        })
    })
    .unwrap_or_else(|e| match e {});
    let kept = crate::contract::kept::Lookup::of(obj, &name, vaddr, size, patched);
    let padding = redirect::padding_after(&file, vaddr, size);
    // An earlier run checked this entry of this version of the file.
    if !kept.entry_checked() {
        redirect::check_function_padded(&r.symbol, addr, code, padding)
            .map_err(|e| e.context(obj.display_name()))?;
    }
    // The bytes the jump covers, padding included.
    let code = if padding > 0 {
        file.bytes_at(vaddr, JMP_LEN).unwrap_or(code)
    } else {
        code
    };
    r.contract = contracts.analyse(obj, objects, &name, vaddr, size, patched, kept, true)?;
    // A generated patch replaces a specialised copy (`f.constprop.0`) with the same copy
    // of the new code, which `rlivepatch build` checked the compiler specialised the same
    // way: it is called as the old one is. Any other replacement has the source prototype.
    if !same_clone {
        crate::contract::Contracts::refuse_changed_convention(&r.contract, &name, obj)?;
    }
    r.object = obj.path.clone();
    r.addr = addr;
    r.size = size;
    r.bias = bias;
    r.orig = code[..JMP_LEN].to_vec();
    Ok(())
}

/// Call each IFUNC resolver in the process and resolve the implementation it returns,
/// which is what every call of the function runs. The resolver itself is never written.
///
/// `implementations[i]` is what the resolver of `resolved[i]` returned when called in
/// the process.
pub fn resolve_ifuncs(
    objects: &Objects,
    patch: &Patch,
    contracts: &mut Contracts,
    resolved: &mut Vec<Resolved>,
    implementations: &[Option<u64>],
) -> Result<()> {
    for (r, called) in resolved.iter_mut().zip(implementations) {
        if r.resolver.take().is_none() {
            continue;
        }
        let Some(implementation) = *called else {
            bail!(Failed, "the IFUNC resolver of {} was not called", r.symbol);
        };
        let name = objects.symbolize(implementation);
        let path = objects.by_addr(implementation).map(|o| o.path.clone());
        let patched = path
            .map(|p| patched_in(patch, &p, objects))
            .unwrap_or_default();
        resolve_code(objects, contracts, r, implementation, 0, &patched, false).map_err(|e| {
            e.context(format!(
                "{} is an IFUNC; its implementation in this process is {name}",
                r.symbol
            ))
        })?;
        r.ifunc_implementation = Some(name);
        contracts.narrow_to_replacement(&mut r.contract, patch, patch.funcs[r.index].new_vaddr)?;
        r.notes = r.contract.notes(&r.symbol);
    }
    merge_shared(patch, resolved)
}

/// Two declarations of the patch that reach the same code (aliases, or functions the
/// compiler folded into one) are one redirect, to one new function.
fn merge_shared(patch: &Patch, resolved: &mut Vec<Resolved>) -> Result<()> {
    let mut i = 0;
    while i < resolved.len() {
        // An IFUNC whose implementation is not known yet (address 0) is merged later.
        let addr = resolved[i].addr;
        if let Some(first) = resolved[..i]
            .iter()
            .position(|o| addr != 0 && o.addr == addr)
        {
            let (a, b) = (&resolved[first], &resolved[i]);
            let (na, nb) = (&patch.funcs[a.index], &patch.funcs[b.index]);
            if na.new_vaddr != nb.new_vaddr {
                bail!(
                    Mismatch,
                    "{} and {} are one function in this process (at {:#x}): replace them with the same new function (the patch gives {} and {})",
                    a.symbol,
                    b.symbol,
                    a.addr,
                    na.new_name,
                    nb.new_name
                );
            }
            let name = resolved[i].symbol.clone();
            resolved[first].aliases.push(name);
            resolved.remove(i);
            continue;
        }
        i += 1;
    }
    Ok(())
}
