//! What apply and check do before they touch the process: the target checked, the
//! patch's functions, symbols and bound places resolved, what callers rely on told.

use crate::contract::Contracts;
use crate::elf::objects::Objects;
use crate::error::Result;
use crate::livepatch::session::ProgressFn;
use crate::livepatch::session::{Options, Session};
use crate::os::process::Process;
use crate::patch::Patch;
use crate::remote::relocate::RelocFill;
use crate::resolve::coming::Pending;
use crate::resolve::funcs::{Resolved, resolve_ifuncs};
use crate::resolve::symbols::SymbolFill;

/// A patch resolved against a process that is not touched yet.
pub struct Prepared {
    /// The process.
    pub proc: Process,
    /// Its objects, parsed.
    pub objects: Objects,
    /// What callers rely on, per object.
    pub contracts: Contracts,
    /// The functions in loaded objects (IFUNCs not resolved yet).
    pub resolved: Vec<Resolved>,
    /// The functions in objects not loaded yet.
    pub coming: Vec<Pending>,
    /// The target symbols the patch declares.
    pub symbols: Vec<SymbolFill>,
    /// The places of a generated patch bound at apply.
    pub places: Vec<RelocFill>,
}

/// Resolve `patch` against process `pid` without touching it.
pub fn prepare(pid: i32, patch: &Patch, opts: &Options, progress: ProgressFn) -> Result<Prepared> {
    let proc = Process::open(pid)?;
    crate::resolve::target::preflight(&proc)?;
    let maps = proc.maps()?;
    crate::os::fault::trace("maps read");
    let objects = Objects::new(&proc, &maps, &opts.debug_dirs)?;
    crate::os::fault::trace("objects parsed");
    crate::resolve::target::check_build_ids(patch, &objects)?;
    crate::resolve::linkage::check(patch, &objects)?;
    let mut contracts = Contracts::new();
    let coming = crate::resolve::coming::resolve(
        patch,
        &objects,
        pid,
        &opts.library_path,
        &opts.debug_dirs,
        &mut contracts,
    )?;
    crate::os::fault::trace("coming resolved");
    let resolved = crate::resolve::coming::loaded(patch, &objects, &mut contracts, &coming)?;
    tell_contracts(&resolved, progress);
    crate::os::fault::trace("functions resolved");
    let symbols = crate::resolve::symbols::resolve_symbols(patch, &objects)?;
    crate::resolve::symbols::refuse_self_calls(patch, &resolved, &symbols)?;
    let places = crate::remote::relocate::resolve(patch, &objects)?;
    Ok(Prepared {
        proc,
        objects,
        contracts,
        resolved,
        coming,
        symbols,
        places,
    })
}

/// What callers of each function rely on and what rlivepatch does or only warns of, on
/// stderr, before anything is touched.
fn tell_contracts(resolved: &[Resolved], progress: ProgressFn) {
    for r in resolved {
        for n in &r.notes {
            progress(n);
        }
    }
}

/// Resolve the IFUNCs among `resolved`: each resolver is called in the process, on the
/// borrowed thread, and the implementation it returns is what gets patched.
pub fn ifuncs(
    s: &mut Session,
    patch: &Patch,
    contracts: &mut Contracts,
    resolved: &mut Vec<Resolved>,
) -> Result<()> {
    let mut called = Vec::with_capacity(resolved.len());
    for r in resolved.iter() {
        called.push(match r.resolver {
            Some(a) => Some(s.call(a, &[], &format!("the IFUNC resolver of {}", r.symbol))?),
            None => None,
        });
    }
    resolve_ifuncs(&s.objects, patch, contracts, resolved, &called)
}
