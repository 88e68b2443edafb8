//! `rlivepatch build`: a livepatch from a source diff, proven against the running binary
//! and shipped verbatim. The passes, in order:
//!
//! 1. [`wrapper`]: how each translation unit is compiled (a `compile_commands.json`, or
//!    the project's own build run once in a copy under a compiler wrapper);
//! 2. [`tree`]: the diffs applied to a copy of the tree;
//! 3. [`compile`]: the units the diffs touch compiled from both trees, with the binary's
//!    own command plus function sections;
//! 4. [`correlate`], [`diff`]: the object diff — changed, new, clones, `.cold` parts,
//!    and why — and the refusals only the objects can tell (data, layouts, start-up);
//! 5. [`verify`]: every function of each rebuilt pristine unit compared instruction by
//!    instruction with the binary, which also tells where its symbols are;
//! 6. [`bind`]: every reference of the carried code bound to the patch, a library, or the
//!    process, in register-neutral forms;
//! 7. [`emit`]: the carried code written as an object, with generated records, linked
//!    into an ordinary patch.

pub mod bind;
pub mod compile;
pub mod correlate;
pub mod diff;
pub mod emit;
pub mod imports;
pub mod lines;
pub mod objdwarf;
pub mod relobj;
pub mod tree;
pub mod verify;
pub mod wrapper;

use crate::error::Result;
use crate::{bail, err};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `rlivepatch build` was asked.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The project's tree, as the binary was built from it.
    pub source: PathBuf,
    /// The diffs.
    pub diffs: Vec<PathBuf>,
    /// The binaries the patch is for.
    pub binaries: Vec<PathBuf>,
    /// The build command (default `make`).
    pub build: Option<String>,
    /// A compilation database instead of a build.
    pub compile_commands: Option<PathBuf>,
    /// Places to look for debug files.
    pub debug_dirs: Vec<PathBuf>,
    /// The patch's name.
    pub name: Option<String>,
    /// Atomic replace.
    pub replace: bool,
    /// The output file.
    pub out: Option<PathBuf>,
    /// Report only.
    pub dry_run: bool,
}

/// One function in the report.
#[derive(Debug, Clone, Serialize)]
pub struct FuncReport {
    /// Its name in the patched object.
    pub name: String,
    /// The binary (file name).
    pub binary: String,
    /// The translation unit.
    pub unit: String,
    /// `changed` (its entry is redirected), `new`, or `part` (of a changed function).
    pub kind: &'static str,
    /// Why it is in the patch.
    pub why: String,
    /// The old function in the binary (`name#0xADDR`), for `changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The patch's name.
    pub name: String,
    /// The file written (none for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The functions the patch carries.
    pub functions: Vec<FuncReport>,
    /// Files the diffs touch that no --binary is built from.
    pub ignored: Vec<String>,
    /// How the carried code reaches the process: stubs, slots, sites bound at apply.
    pub bindings: HashMap<&'static str, usize>,
    /// Remarks.
    pub notes: Vec<String>,
    /// Milliseconds spent in each phase.
    pub phases: Vec<(String, f64)>,
}

/// A scratch directory, removed when dropped (kept with `RLIVEPATCH_KEEP_WORK=1`).
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        if std::env::var_os("RLIVEPATCH_KEEP_WORK").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The patch's name without `--name`: the output file's (`-o fix-1234.so` is patch
/// `fix-1234`, what the operator will type to disable it), else the first diff's.
fn default_name(out: Option<&Path>, diffs: &[PathBuf]) -> String {
    let stem = out
        .and_then(|o| o.file_name())
        .map(|n| {
            let n = n.to_string_lossy();
            n.strip_suffix(".so").unwrap_or(&n).to_string()
        })
        .or_else(|| {
            diffs
                .first()
                .and_then(|d| d.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "fix".into());
    let n: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() { "fix".into() } else { n }
}

/// Build a patch as `opts` says.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildReport> {
    let mut run = Run::start(opts)?;
    // 1. How the project compiles, and the pristine tree.
    let (pristine, commands) = match &opts.compile_commands {
        Some(db) => (run.source.clone(), wrapper::from_json(db)?),
        None => {
            let b = wrapper::learn(
                &run.source,
                opts.build.as_deref().unwrap_or("make"),
                progress,
            )?;
            (b.tree, b.commands)
        }
    };
    run.phase("compile commands");
    // 2. The diffs, applied to a copy.
    let (diffs, patched, lines) = run.apply_diffs(&pristine)?;
    run.phase("diff applied");
    // 3. The units the diffs touch, compiled from both trees.
    // A source built more than once (a PIE and a non-PIE program, a static and a shared
    // library) is compiled with each command; the one whose code is the binary's wins.
    let placed = run.place_units(&diffs, &pristine, &commands)?;
    let mut names: Vec<String> = Vec::new();
    for ((r, _), _) in &placed {
        let n = r.display().to_string();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    progress(&format!(
        "compiling {} unit(s) twice, pristine and patched ({} command(s)): {}",
        names.len(),
        placed.len(),
        names.join(", ")
    ));
    let list: Vec<Unit> = placed.iter().map(|(u, _)| u.clone()).collect();
    let built = compile::compile_all(&list, &pristine, &patched, &run.source, &run.work.0)?;
    run.phase("compile");
    // 4-7. Per unit: diff, verify, bind, emit.
    let mut first_error: HashMap<(PathBuf, usize), crate::error::Error> = HashMap::new();
    let mut done_sources: Vec<(PathBuf, usize)> = Vec::new();
    for (k, (unit, (_, bi))) in built.iter().zip(&placed).enumerate() {
        if done_sources.contains(&(unit.source.clone(), *bi)) {
            continue;
        }
        // The same file compiled by several commands (a PIE and a non-PIE build, say):
        // the one whose code is in the binary is the one that verifies; the first
        // command's error is the one to show.
        match run.unit(k, unit, *bi, &pristine, &patched, &lines) {
            Ok(()) => done_sources.push((unit.source.clone(), *bi)),
            Err(e) => {
                let another = built[k + 1..]
                    .iter()
                    .zip(&placed[k + 1..])
                    .any(|(u, (_, b))| u.source == unit.source && b == bi);
                let first = first_error.entry((unit.source.clone(), *bi)).or_insert(e);
                if !another {
                    return Err(first.clone());
                }
            }
        }
    }
    run.phases.push(("diff".into(), run.t_diff));
    run.phases.push(("verify".into(), run.t_verify));
    run.phases.push(("bind and emit".into(), run.t_emit));
    run.finish()
}

/// One run of `rlivepatch build`: what it was asked, where it works, and what it has
/// found so far.
struct Run<'o> {
    opts: &'o BuildOptions,
    name: String,
    source: PathBuf,
    binaries: Vec<verify::Binary>,
    work: Work,
    phases: Vec<(String, f64)>,
    t: Instant,
    t_diff: f64,
    t_verify: f64,
    t_emit: f64,
    records: emit::Records,
    functions: Vec<FuncReport>,
    objects: Vec<PathBuf>,
    counts: HashMap<&'static str, usize>,
    used_binaries: Vec<usize>,
    notes: Vec<String>,
    ignored: Vec<String>,
    /// Files no code whose hunks did not apply.
    skipped: Vec<String>,
    /// Functions whose source the diffs change but whose code stays the same, and
    /// where their code is.
    same_code: Vec<String>,
    /// Units that had code or data in this build (others compile to nothing: `#if`).
    units_with_code: usize,
}

impl<'o> Run<'o> {
    /// Check what was asked, open the binaries, make the work directory.
    fn start(opts: &'o BuildOptions) -> Result<Self> {
        if opts.binaries.is_empty() {
            bail!(Build, "give the binary the patch is for with --binary FILE");
        }
        if opts.diffs.is_empty() {
            bail!(Build, "give the fix with --diff FILE");
        }
        let t = Instant::now();
        let source = opts
            .source
            .canonicalize()
            .map_err(|e| err!(Build, "--source {}: {e}", opts.source.display()))?;
        let binaries: Vec<verify::Binary> = opts
            .binaries
            .iter()
            .map(|b| verify::Binary::open(b, &opts.debug_dirs))
            .collect::<Result<_>>()?;
        let work = Work(crate::os::dirs::cache_dir().join("work").join(format!(
            "{}-{}",
            std::process::id(),
            t.elapsed().as_nanos()
        )));
        std::fs::create_dir_all(&work.0)
            .map_err(|e| err!(Build, "cannot create {}: {e}", work.0.display()))?;
        Ok(Run {
            opts,
            name: opts
                .name
                .clone()
                .unwrap_or_else(|| default_name(opts.out.as_deref(), &opts.diffs)),
            source,
            binaries,
            work,
            phases: Vec::new(),
            t,
            t_diff: 0.0,
            t_verify: 0.0,
            t_emit: 0.0,
            records: emit::Records::default(),
            functions: Vec::new(),
            objects: Vec::new(),
            counts: HashMap::new(),
            used_binaries: Vec::new(),
            notes: Vec::new(),
            ignored: Vec::new(),
            skipped: Vec::new(),
            same_code: Vec::new(),
            units_with_code: 0,
        })
    }

    /// Close a phase of the report's timing.
    fn phase(&mut self, name: &str) {
        self.phases
            .push((name.to_string(), self.t.elapsed().as_secs_f64() * 1000.0));
        self.t = Instant::now();
    }

    /// The diffs applied in order to a copy of the pristine tree, whose line numbers
    /// the changed files keep ([`lines`]).
    fn apply_diffs(
        &mut self,
        pristine: &Path,
    ) -> Result<(Vec<tree::Diff>, PathBuf, lines::Changed)> {
        let patched = self.work.0.join("patched");
        tree::copy(pristine, &patched)?;
        let applied = tree::apply_series(&self.opts.diffs, &patched, &self.opts.source)?;
        for d in &applied.diffs {
            refuse_assembly(d)?;
        }
        self.skipped = applied.skipped;
        let touched: Vec<PathBuf> = applied
            .diffs
            .iter()
            .flat_map(|d| d.files.iter().cloned())
            .collect();
        let lines = lines::keep(pristine, &patched, &touched)?;
        Ok((applied.diffs, patched, lines))
    }

    /// The units the diffs touch, each with the binary it is built into.
    fn place_units(
        &mut self,
        diffs: &[tree::Diff],
        pristine: &Path,
        commands: &[wrapper::CompileCommand],
    ) -> Result<Vec<(Unit, usize)>> {
        let (units, ignored) = select_units(diffs, pristine, commands)?;
        self.ignored = ignored;
        self.ignored.append(&mut self.skipped);
        let mut placed: Vec<(Unit, usize)> = Vec::new();
        for (rel, cmd) in units {
            let base = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.binaries.iter().position(|b| b.blocks.contains(&base)) {
                Some(bi) => placed.push(((rel, cmd), bi)),
                None => self
                    .ignored
                    .push(format!("{} (in no --binary)", rel.display())),
            }
        }
        if placed.is_empty() {
            refuse_generated(pristine, &self.ignored, commands)?;
            crate::refuse!(
                NotCompiled,
                "the diffs change no file compiled into {}{}",
                paths_of(&self.binaries),
                if self.ignored.is_empty() {
                    String::new()
                } else {
                    format!(" (they touch {})", self.ignored.join(", "))
                }
            );
        }
        Ok(placed)
    }

    /// Passes 4 to 7 for unit `k`, built into binary `bi`: verify the pristine object
    /// against the binary, diff, bind and emit what changed.
    fn unit(
        &mut self,
        k: usize,
        unit: &compile::Unit,
        bi: usize,
        pristine: &Path,
        patched: &Path,
        lines: &lines::Changed,
    ) -> Result<()> {
        let bin = &self.binaries[bi];
        let t1 = Instant::now();
        let p = relobj::RelObj::open(&unit.pristine)?;
        relobj::check_plain(&p)?;
        let file_name = unit
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A unit whose code this build's configuration leaves out (`#ifdef USE_NSS`
        // around all of it), before and after the diffs: nothing of it is in the binary.
        let has_code = |o: &relobj::RelObj| {
            o.symbols.iter().any(|s| {
                s.section.is_some() && matches!(s.kind, relobj::Kind::Func | relobj::Kind::Object)
            })
        };
        if !has_code(&p) && !has_code(&relobj::RelObj::open(&unit.patched)?) {
            let shown = format!(
                "{} (compiles to nothing in this build)",
                unit.source.display()
            );
            if !self.ignored.contains(&shown) {
                self.ignored.push(shown);
            }
            return Ok(());
        }
        self.units_with_code += 1;
        let (bindings, block) = verify::check_compiler(&p, &file_name, bin)
            .and_then(|()| verify::verify(&p, &file_name, bin))
            .map_err(|e| verify::explain(e, &p, &objdwarf::read(&p).producer, bin))?;
        self.t_verify += t1.elapsed().as_secs_f64() * 1000.0;
        let t0 = Instant::now();
        let q = relobj::RelObj::open(&unit.patched)?;
        let pairing = correlate::correlate(&p, &q);
        let d = diff::diff(&unit.source, &p, &q, &pairing, lines)?;
        // The changed functions' code, from a position-independent compile when the
        // binary's flags make code that cannot move.
        let (q, pairing, d) =
            if q.absolute_code_refs() && !(d.changed.is_empty() && d.new.is_empty()) {
                let out = self.work.0.join(format!("{k}-pic.o"));
                compile::compile_pic(unit, pristine, patched, &self.source, &out)?;
                let e = relobj::RelObj::open(&out)?;
                let pe = correlate::correlate(&p, &e);
                let d = diff::moved_to(d, &q, &e, &unit.source)?;
                (e, pe, d)
            } else {
                (q, pairing, d)
            };
        self.notes.extend(d.notes.iter().cloned());
        self.t_diff += t0.elapsed().as_secs_f64() * 1000.0;
        if d.changed.is_empty() && d.new.is_empty() {
            let same = same_code(&objdwarf::read(&p), lines);
            self.notes.push(format!(
                "{}: no function changed{}",
                unit.source.display(),
                if same.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (the diff changes {}, which compile to the same code)",
                        same.join(", ")
                    )
                }
            ));
            self.same_code.extend(same);
            return Ok(());
        }
        objdwarf::check_clones(
            &unit.source,
            &p,
            &q,
            d.changed.iter().map(|c| (c.name.as_str(), c.sym, c.twin)),
        )?;
        let t2 = Instant::now();
        let carried: Vec<&diff::Change> = d.changed.iter().chain(&d.new).collect();
        let changed_syms: Vec<usize> = d.changed.iter().map(|c| c.sym).collect();
        let homes = |i: usize, original: bool| {
            bind::home(
                &q,
                i,
                original,
                &carried,
                pairing.twin(i),
                &bindings,
                bin,
                block,
            )
        };
        let need = bind::needed(&q, &changed_syms, &homes);
        let plan = bind::plan(&q, &unit.source, &homes, &changed_syms, &need)?;
        *self.counts.entry("stubs").or_default() += plan.stubs.len();
        *self.counts.entry("slots").or_default() += plan.slots.len();
        *self.counts.entry("sites").or_default() += plan.sites.iter().filter(|s| !s.call).count();
        let exported = Self::record_functions(
            &mut self.records,
            &mut self.functions,
            &mut self.notes,
            k,
            bin,
            unit,
            &d,
            &homes,
        );
        if !self.used_binaries.contains(&bi) {
            self.used_binaries.push(bi);
        }
        if !self.opts.dry_run {
            let out = self.work.0.join(format!("{k}-emitted.o"));
            let object = self.binaries[bi].object.clone();
            emit::write_object(
                &q,
                &plan,
                k,
                &exported,
                object.as_deref(),
                &mut self.records,
                &out,
            )?;
            self.objects.push(out);
        }
        self.t_emit += t2.elapsed().as_secs_f64() * 1000.0;
        Ok(())
    }

    /// The records and the report of unit `k`'s functions: every changed function that
    /// is an entry (not a part) of the binary gets a record. Returns the symbols the
    /// emitted object exports for them.
    #[allow(clippy::too_many_arguments)]
    fn record_functions(
        records: &mut emit::Records,
        functions: &mut Vec<FuncReport>,
        notes: &mut Vec<String>,
        k: usize,
        bin: &verify::Binary,
        unit: &compile::Unit,
        d: &diff::ObjectDiff,
        homes: &dyn Fn(usize, bool) -> bind::Home,
    ) -> HashMap<usize, String> {
        let mut exported = HashMap::new();
        for c in &d.changed {
            let old = match (&c.part_of, homes(c.sym, true)) {
                (None, bind::Home::Process { vaddr, .. })
                    if records
                        .funcs
                        .iter()
                        .any(|r| r.object == bin.object && r.vaddr == vaddr) =>
                {
                    // Another name of a function already recorded (GCC's `.localalias`
                    // of a global function, a C++ constructor's complete and base
                    // objects): one redirect, and one line of the report, cover both.
                    continue;
                }
                (None, bind::Home::Process { name, vaddr }) => {
                    let name = plain_name(bin, name, vaddr);
                    let sym = format!("rlp_fn_{k}_{}", exported.len());
                    exported.insert(c.sym, sym.clone());
                    records.funcs.push(emit::FuncRecord {
                        object: bin.object.clone(),
                        vaddr,
                        old: format!("{name}#{vaddr:#x}"),
                        new_name: c.name.clone(),
                        new_symbol: sym,
                    });
                    Some(format!("{name}#{vaddr:#x}"))
                }
                (None, _) => {
                    notes.push(format!(
                        "{} changed but has no code of its own in {} (inlined everywhere): its callers carry the change",
                        c.name,
                        bin.path.display()
                    ));
                    None
                }
                (Some(_), _) => None,
            };
            let kind = if c.part_of.is_some() {
                "part"
            } else {
                "changed"
            };
            functions.push(FuncReport {
                // The name the source gives it, not GCC's alias of it.
                name: c
                    .name
                    .strip_suffix(".localalias")
                    .unwrap_or(&c.name)
                    .to_string(),
                binary: file_label(bin),
                unit: unit.source.display().to_string(),
                kind,
                why: c.why.clone(),
                old,
            });
        }
        for c in &d.new {
            functions.push(FuncReport {
                name: c.name.clone(),
                binary: file_label(bin),
                unit: unit.source.display().to_string(),
                kind: if c.part_of.is_some() { "part" } else { "new" },
                why: c.why.clone(),
                old: None,
            });
        }
        exported
    }

    /// The build-ids, the link, and the report.
    fn finish(mut self) -> Result<BuildReport> {
        self.t = Instant::now();
        if self.units_with_code == 0 {
            crate::refuse!(
                NotCompiled,
                "the diffs change no file compiled into {} (they touch {})",
                paths_of(&self.binaries),
                self.ignored.join(", ")
            );
        }
        if !self
            .functions
            .iter()
            .any(|f| f.kind == "changed" && f.old.is_some())
        {
            if !self.same_code.is_empty() {
                crate::refuse!(
                    NoCode,
                    "the diffs change the source of {}, but the compiler makes the same code of it for {} (with these flags, on this architecture): nothing to patch",
                    self.same_code.join(", "),
                    paths_of(&self.binaries)
                );
            }
            let without: Vec<&str> = self
                .functions
                .iter()
                .filter(|f| f.kind == "changed")
                .map(|f| f.name.as_str())
                .collect();
            crate::refuse!(
                NoCode,
                "the diffs change no function that has an entry in {}{}: nothing to patch",
                paths_of(&self.binaries),
                if without.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (they change {}, whose code is inlined everywhere)",
                        without.join(", ")
                    )
                }
            );
        }
        for &bi in &self.used_binaries {
            let b = &self.binaries[bi];
            match &b.build_id {
                Some(id) => self.records.build_ids.push((
                    b.object.clone().unwrap_or_else(|| "main".into()),
                    id.clone(),
                )),
                None => self.notes.push(format!(
                    "{} has no build-id: the patch cannot check that a process runs this very build",
                    b.path.display()
                )),
            }
        }
        let mut output = None;
        if !self.opts.dry_run {
            let out = self
                .opts
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.so", self.name)));
            let rc = emit::records_c(&self.records, &self.name, self.opts.replace);
            emit::link(&self.work.0, &rc, &self.objects, &out)?;
            // The patch must load in the process, and read back as one; a refused one
            // is not left behind.
            let used: Vec<PathBuf> = self
                .used_binaries
                .iter()
                .map(|&bi| self.binaries[bi].path.clone())
                .collect();
            imports::check(&out, &used)
                .and_then(|()| {
                    crate::patch::Patch::load_with(
                        &out,
                        &crate::patch::Acceptance {
                            any_file: true,
                            ..Default::default()
                        },
                        &mut |_| {},
                    )
                    .map(|_| ())
                    .map_err(|e| e.context("the generated patch does not read back"))
                })
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&out);
                })?;
            output = Some(out.display().to_string());
            self.phase("link");
        }
        Ok(BuildReport {
            name: self.name,
            output,
            functions: self.functions,
            ignored: self.ignored,
            bindings: self.counts,
            notes: self.notes,
            phases: self.phases,
        })
    }
}

/// The functions whose definitions the changed `lines` fall in, each with where its code
/// is: its own, or inlined into others.
fn same_code(dw: &objdwarf::ObjDwarf, lines: &lines::Changed) -> Vec<String> {
    let mut out = Vec::new();
    for f in dw.decls.iter().filter(|f| dw.touched(&f.name, lines)) {
        if out
            .iter()
            .any(|o: &String| o.split(' ').next() == Some(&f.name))
        {
            continue;
        }
        let into: Vec<&str> = dw
            .functions
            .iter()
            .filter(|g| g.inlined.contains(&f.name))
            .map(|g| g.name.as_str())
            .collect();
        let own = dw.functions.iter().any(|g| g.name == f.name);
        out.push(match (own, into.is_empty()) {
            (true, _) => f.name.clone(),
            (false, false) => format!("{} (inlined into {})", f.name, into.join(", ")),
            (false, true) => format!("{} (no code: nothing calls it)", f.name),
        });
    }
    out
}

/// The name to record for the function at `vaddr` of `bin` found as `name`: a global
/// name at the same address rather than GCC's local alias of it.
fn plain_name(bin: &verify::Binary, name: String, vaddr: u64) -> String {
    match name.strip_suffix(".localalias") {
        Some(base) if bin.lookup(base, None).is_some_and(|b| b.value == vaddr) => base.to_string(),
        _ => name,
    }
}

/// Assembly cannot be diffed as compiled C: refused.
fn refuse_assembly(d: &tree::Diff) -> Result<()> {
    for f in &d.files {
        let ext = f
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        if matches!(ext.as_str(), "s" | "S" | "asm" | "sx") {
            crate::refuse!(
                Assembly,
                "the diff {} changes assembly ({}): not supported; only C code compiled by the project's compiler can be diffed",
                d.path.display(),
                f.display()
            );
        }
    }
    Ok(())
}

impl BuildReport {
    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut s = match &self.output {
            Some(o) => format!("built patch {} into {o}\n", self.name),
            None => format!("patch {} (dry run: nothing written)\n", self.name),
        };
        for f in &self.functions {
            s.push_str(&format!(
                "  {:7} {} ({}, {}): {}\n",
                f.kind, f.name, f.binary, f.unit, f.why
            ));
        }
        let b = |k: &str| self.bindings.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "  references to the process: {} (through stubs; direct when the patch lands within reach), {} through slots, {} bound at apply\n",
            crate::fmt::plural(b("stubs"), "function called", "functions called"),
            crate::fmt::plural(b("slots"), "address", "addresses"),
            crate::fmt::plural(b("sites"), "data access", "data accesses"),
        ));
        for i in &self.ignored {
            s.push_str(&format!("  ignored: {i}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        let total: f64 = self.phases.iter().map(|p| p.1).sum();
        s.push_str(&format!(
            "  time: {:.0} ms ({})\n",
            total,
            self.phases
                .iter()
                .map(|(n, ms)| format!("{n} {ms:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        s
    }
}

fn file_label(b: &verify::Binary) -> String {
    b.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The binaries' paths, for a message.
fn paths_of(binaries: &[verify::Binary]) -> String {
    binaries
        .iter()
        .map(|b| b.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A translation unit: its path in the tree, and how it compiles.
type Unit = (PathBuf, wrapper::CompileCommand);

/// The units the diffs touch: sources they change, and sources that include a header
/// they change; other files they touch are listed as ignored.
fn select_units(
    diffs: &[tree::Diff],
    tree: &Path,
    commands: &[wrapper::CompileCommand],
) -> Result<(Vec<Unit>, Vec<String>)> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let mut units: Vec<(PathBuf, wrapper::CompileCommand)> = Vec::new();
    let mut ignored = Vec::new();
    let mut headers = Vec::new();
    let add = |units: &mut Vec<(PathBuf, wrapper::CompileCommand)>,
               rel: PathBuf,
               c: &wrapper::CompileCommand| {
        if !units
            .iter()
            .any(|(_, u)| u.file == c.file && u.output() == c.output())
        {
            units.push((rel, c.clone()));
        }
    };
    for d in diffs {
        for f in &d.files {
            let abs = canon(&tree.join(f));
            let matching: Vec<&wrapper::CompileCommand> =
                commands.iter().filter(|c| canon(&c.file) == abs).collect();
            if !matching.is_empty() {
                for c in matching {
                    add(&mut units, f.clone(), c);
                }
            } else if is_includable(f) {
                // A header, or a source another unit includes (FreeType's and SQLite's
                // one-unit-per-module builds): the units that include it change.
                headers.push((f.clone(), abs));
            } else {
                ignored.push(f.display().to_string());
            }
        }
    }
    if !headers.is_empty() {
        let mut seen = vec![false; headers.len()];
        for c in commands {
            let inc: Vec<PathBuf> = compile::includes(c).iter().map(|p| canon(p)).collect();
            for (k, (_, abs)) in headers.iter().enumerate() {
                if inc.contains(abs) {
                    seen[k] = true;
                    let rel = c
                        .file
                        .strip_prefix(tree)
                        .map(|p| p.to_path_buf())
                        .unwrap_or_else(|_| c.file.clone());
                    add(&mut units, rel, c);
                }
            }
        }
        for (k, (f, _)) in headers.iter().enumerate() {
            if !seen[k] {
                ignored.push(f.display().to_string());
            }
        }
    }
    Ok((units, ignored))
}

/// Can `f` be `#include`d into a compiled unit (a header, or a C or C++ source that a
/// unit includes)? Other files (documentation, build scripts) are never looked for.
fn is_includable(f: &Path) -> bool {
    matches!(
        f.extension().and_then(|e| e.to_str()),
        Some(
            "h" | "hh"
                | "hpp"
                | "hxx"
                | "h++"
                | "inc"
                | "def"
                | "inl"
                | "ipp"
                | "tcc"
                | "tpp"
                | "c"
                | "cc"
                | "cpp"
                | "cxx"
                | "c++"
                | "C"
                | "tbl"
                | "x"
        )
    )
}

/// A changed source that no compile command names, but whose code a compiled unit
/// holds (SQLite's ext/fts5/*.c, concatenated into a generated fts5.c and into the
/// amalgamation sqlite3.c): the build generates compiled code from it. Saying the diffs
/// change nothing compiled would be false; rlivepatch does not follow generated sources,
/// and says that. Told by the source's own longest lines being in the compiled unit: a
/// file the build names only for another configuration (libpng's arm/ sources on
/// x86_64) is in none, and is "not compiled" indeed.
fn refuse_generated(
    tree: &Path,
    touched: &[String],
    commands: &[wrapper::CompileCommand],
) -> Result<()> {
    // Files some command compiles (into another binary, or to nothing) are listed with
    // a note in parentheses: not inputs of a generator.
    let sources = touched.iter().filter(|t| !t.contains(" (")).filter(|t| {
        [".c", ".h", ".cc", ".cpp", ".cxx"]
            .iter()
            .any(|x| t.ends_with(x))
    });
    let mut units: Option<Vec<(PathBuf, String)>> = None;
    for src in sources {
        let Ok(text) = std::fs::read_to_string(tree.join(src)) else {
            continue;
        };
        let mut marks: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.len() >= 30 && !l.starts_with("/*") && !l.starts_with('*'))
            .collect();
        marks.sort_by_key(|l| std::cmp::Reverse(l.len()));
        marks.dedup();
        marks.truncate(3);
        if marks.is_empty() {
            continue;
        }
        let units = units.get_or_insert_with(|| {
            commands
                .iter()
                .map(|c| c.directory.join(&c.file))
                .filter_map(|f| std::fs::read_to_string(&f).ok().map(|t| (f, t)))
                .collect()
        });
        if let Some((unit, _)) = units
            .iter()
            .find(|(_, t)| marks.iter().all(|m| t.contains(m)))
        {
            crate::refuse!(
                Unsupported,
                "{src} is compiled into no unit itself, but its code is in {}, which the build generates from it (a concatenated or generated source): rlivepatch does not follow generated sources; make the same change in the generated file, or write the patch by hand",
                unit.file_name().map_or(unit.display().to_string(), |n| n
                    .to_string_lossy()
                    .into_owned())
            );
        }
    }
    Ok(())
}
