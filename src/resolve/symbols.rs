//! The target symbols a patch declares (`RLIVEPATCH_SYMBOL`, `RLIVEPATCH_TLS`), found in
//! the process.

use crate::elf::objects::Objects;
use crate::elf::symbols::SymKind;
use crate::error::Result;
use crate::patch::Patch;
use crate::resolve::funcs::Resolved;
use crate::{bail, err};

/// A target symbol a patch uses, resolved.
pub struct SymbolFill {
    /// Where the patch keeps the pointer (file address).
    pub slot_vaddr: u64,
    /// What it receives.
    pub value: Fill,
}

/// What a symbol slot of the patch receives.
pub enum Fill {
    /// An address.
    Addr(u64),
    /// A thread-local variable: its object (`None` for the executable) and its offset in
    /// that object's TLS block; the module id is asked of the dynamic loader.
    Tls(Option<String>, u64),
}

/// Resolve the target symbols a patch declares with `RLIVEPATCH_SYMBOL` and
/// `RLIVEPATCH_TLS`.
pub fn resolve_symbols(patch: &Patch, objects: &Objects) -> Result<Vec<SymbolFill>> {
    let mut out = Vec::new();
    for r in &patch.symbols {
        let obj = objects.by_name(r.object.as_deref())?;
        let file = obj.symbols_file()?;
        let sym = crate::elf::symbols::find_symbol(&file, &r.symbol).map_err(|e| {
            err!(
                Mismatch,
                "symbol {} (used by the patch as {}) cannot be resolved in {}: {}{}; check it with `nm {}`",
                r.symbol,
                r.local,
                obj.display_name(),
                e.message,
                crate::resolve::hints::symbol_suggestions(&r.symbol, &file),
                obj.path
            )
        })?;
        let value = match (sym.kind == SymKind::Tls, r.tls) {
            (false, false) => Fill::Addr(
                sym.value
                    .wrapping_add(obj.bias()?)
                    .wrapping_add(r.addend as u64),
            ),
            (true, true) => Fill::Tls((!obj.is_main).then(|| obj.path.clone()), sym.value),
            (true, false) => bail!(
                Mismatch,
                "symbol {} of {} is thread-local; declare it with RLIVEPATCH_TLS",
                r.symbol,
                obj.display_name()
            ),
            (false, true) => bail!(
                Mismatch,
                "symbol {} of {} is not thread-local; declare it with RLIVEPATCH_SYMBOL",
                r.symbol,
                obj.display_name()
            ),
        };
        out.push(SymbolFill {
            slot_vaddr: r.slot_vaddr,
            value,
        });
    }
    Ok(out)
}

/// A `RLIVEPATCH_SYMBOL` to a function the same patch replaces would call the patch's own
/// replacement (the entry jumps there): the wrapper that calls it recurses forever.
/// Refused, pointing to the form that calls the replaced code.
pub fn refuse_self_calls(
    patch: &Patch,
    resolved: &[Resolved],
    symbols: &[SymbolFill],
) -> Result<()> {
    for (r, f) in patch.symbols.iter().zip(symbols) {
        let Fill::Addr(a) = f.value else { continue };
        // A generated patch takes a changed function's address as the program does: the
        // original entry, which the redirect sends to the new code while the patch is
        // applied, and which stays valid when it is disabled (kpatch's rule).
        if r.generated() {
            continue;
        }
        if let Some(old) = resolved.iter().find(|o| o.addr == a) {
            let new = &patch.funcs[old.index].new_name;
            bail!(
                Patch,
                "RLIVEPATCH_SYMBOL {} names {}, which this patch replaces with {new}: a call through it runs {new} again, forever; to call the code {new} replaces, declare `static <type> (*{});` and use RLIVEPATCH_FUNC_WRAP({}, {new}, {}) instead of RLIVEPATCH_FUNC",
                r.local,
                old.symbol,
                r.local,
                old.symbol,
                r.local
            );
        }
    }
    Ok(())
}
