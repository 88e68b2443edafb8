//! Every process at once: `apply`, `disable`, `check`, `list` and `repair` over the
//! processes a selection names (`--all`, `--exe`, `--object`, `--build-id`, `--pid`,
//! `--exclude-pid`), fit for fleet tools. Discovery reads /proc only: a process that maps
//! nothing the patch changes is never attached. Work that does not depend on the
//! process (the patch, each distinct object file and its symbol indexes) is done once
//! per run. A pool of workers (`--jobs`) runs the engine on one process each, each with
//! the per-process `--timeout` and all within the run's `--deadline`: one stuck process
//! never holds the others. One result per process, keyed by pid and start time.

pub mod report;
pub mod select;

use crate::error::{Cause, Error, ErrorKind, Result};
use crate::livepatch::record::Record;
use crate::ops::Options;
use crate::os::process::{Mapping, Process};
use crate::patch::Patch;
use report::{FleetReport, Outcome, ProcessRecord};
use select::{Candidate, Fit, Selection};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do to each process.
#[derive(Debug, Clone)]
pub enum Op {
    /// Apply the patch at this path.
    Apply(PathBuf),
    /// Disable the patch of this name.
    Disable(String),
    /// The compliance report of the patch at this path (no process stopped).
    Check(PathBuf),
    /// The patches of each process (no process stopped).
    List,
    /// Finish or undo interrupted runs.
    Repair,
}

/// How a fleet run runs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Workers at once; `None`: [`default_jobs`] for the processes selected.
    pub jobs: Option<usize>,
    /// The whole run's limit.
    pub deadline: Option<Duration>,
    /// An empty selection is an error.
    pub require_match: bool,
    /// The engine's options (the per-process `--timeout` among them).
    pub opts: Options,
}

/// Workers at once for `processes` when `--jobs` is not given: one per CPU, and up to
/// four per CPU (at most 64, each worker holding a few descriptors) while the CPUs have
/// room, at least two processes per worker. Each process's operation mostly waits for its
/// threads to be scheduled (their stops, the injected calls): with one worker per CPU,
/// measured, the CPUs stood idle 44% of a fleet apply of 200 processes, and four per CPU
/// cut its time per process by a quarter. (Each worker once analysed the patched objects'
/// code for itself, and more workers than one per 8 processes only cost CPU; the
/// analysis is now made once per run and kept across runs: 10 processes took 20.5 ms
/// with 4 workers against 28.6 with 2, 100 processes 120 ms with 8 against 145 with 4
/// and 126 with 16, medians of 3.) On a busy machine more workers would only take more
/// CPU from the services (each paces itself, see [`crate::os::pace`]).
pub fn default_jobs(processes: usize) -> usize {
    let cpus = crate::os::pace::usable_cpus();
    if crate::os::pace::cpus_busy() {
        return cpus;
    }
    (cpus * 4).min(64).min(processes / 2).max(cpus)
}

/// Where progress lines go, from any worker.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Run `op` over the processes `sel` selects.
pub fn run(op: &Op, sel: &Selection, fo: &FleetOptions, progress: Progress) -> Result<FleetReport> {
    let started = Instant::now();
    let given_exe = sel.exe.clone();
    let sel = &sel.clone().resolve_exe();
    if let Some(name) = sel.exe_name() {
        progress(&format!(
            "--exe {name} is a name, not a path: selecting the programs named {name} (give a path, such as ./{name}, for a file in this directory)"
        ));
    }
    let patch = match op {
        Op::Apply(p) | Op::Check(p) => Some(Patch::load_with(p, &fo.opts.acceptance, &mut |l| {
            progress(l)
        })?),
        _ => None,
    };
    let wants = patch.as_ref().map(select::wants);
    if let (Some(w), Some(p)) = (&wants, &patch)
        && w.iter().any(|w| w.object.is_none() && w.build_id.is_none())
        && sel.exe.is_none()
        && sel.pids.is_empty()
    {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "patch {} replaces functions of a main executable but carries no RLIVEPATCH_BUILD_ID, so nothing tells which program it is for: name it with --exe PATH, or build the patch with its build-id (rlivepatch build-id PROGRAM)",
                p.name
            ),
        ));
    }
    crate::os::ptrace::set_concurrent();
    let mut records = Vec::new();
    let mut unreadable: Vec<(i32, String)> = Vec::new();
    let mut todo: VecDeque<Candidate> = VecDeque::new();
    let mut other_main: Vec<(Candidate, String)> = Vec::new();
    let mut same_name: Vec<String> = Vec::new();
    let mut selected = 0;
    for c in select::candidates(sel) {
        let named = sel.pids.contains(&c.pid);
        if c.unreadable == Some(select::Unreadable::Gone) {
            // Exited between the listing and the reading: nothing to say, unless named.
            if named {
                records.push(record(&c, Outcome::Gone, "it does not exist".into(), 0.0));
            }
            continue;
        }
        if let Some(select::Unreadable::Denied(why)) = &c.unreadable {
            if named || may_run(&c, sel) {
                records.push(record(
                    &c,
                    Outcome::Permission,
                    format!("cannot read its maps: {why}"),
                    0.0,
                ));
            } else {
                unreadable.push((c.pid, c.comm.clone()));
            }
            continue;
        }
        if !select::selected(&c, sel) {
            // Another file of the program `--exe` names (an older build, another copy):
            // said when nothing matched.
            if let Some(name) = sel.exe.as_ref().and_then(|e| e.file_name())
                && c.exe.trim_end_matches(" (deleted)").rsplit('/').next()
                    == Some(&*name.to_string_lossy())
            {
                same_name.push(format!("{} ({})", c.pid, c.exe));
            }
            continue;
        }
        selected += 1;
        match &wants {
            Some(w) => match select::fit(&c, w, sel.exe.is_some() || named) {
                Fit::Target => todo.push_back(c),
                Fit::Mismatch(why) => records.push(record(&c, Outcome::Mismatch, why, 0.0)),
                Fit::OtherMain(why) => other_main.push((c, why)),
                Fit::NotTarget(why) => {
                    // Only a process the operator named is worth a line.
                    if named || sel.exe.is_some() {
                        records.push(record(&c, Outcome::NotTarget, why, 0.0));
                    }
                }
            },
            None => {
                let has_state = c
                    .maps
                    .as_deref()
                    .is_some_and(|m| crate::livepatch::store::find_mapping(m).is_some());
                if has_state {
                    todo.push_back(c);
                } else if named {
                    let o = match op {
                        Op::Disable(_) => Outcome::NotApplied,
                        Op::Repair => Outcome::Clean,
                        _ => Outcome::Listed,
                    };
                    records.push(record(&c, o, "no rlivepatch state in it".into(), 0.0));
                }
            }
        }
    }
    if let Some(exe) = &sel.exe
        && todo.is_empty()
        && records.is_empty()
        && (selected == 0 || !other_main.is_empty())
    {
        same_name.extend(
            other_main
                .iter()
                .map(|(c, _)| format!("{} ({})", c.pid, c.exe)),
        );
        return no_exe_match(exe, given_exe.as_deref(), sel, &same_name, &unreadable);
    }
    // Another build of the program the patch is for (an old binary still running after
    // an update): the executable at the same path as a target's.
    let base = |e: &str| e.trim_end_matches(" (deleted)").to_string();
    let names: Vec<String> = todo.iter().map(|c| base(&c.exe)).collect();
    for (c, why) in other_main {
        if names.contains(&base(&c.exe)) {
            records.push(record(&c, Outcome::Mismatch, why, 0.0));
        }
    }
    records.extend(work(op, patch.as_ref(), todo, fo, started, progress));
    if matches!(op, Op::Apply(_))
        && let Some(n) = uncovered_children(&records)
    {
        progress(&n);
    }
    Ok(FleetReport::new(records, unreadable, fo.require_match))
}

/// The worker pool: `op` on each process of `todo`, `fo.jobs` at a time, within the
/// run's deadline.
fn work(
    op: &Op,
    patch: Option<&Patch>,
    todo: VecDeque<Candidate>,
    fo: &FleetOptions,
    started: Instant,
    progress: Progress,
) -> Vec<ProcessRecord> {
    let total = todo.len();
    let jobs = fo
        .jobs
        .unwrap_or_else(|| default_jobs(total))
        .clamp(1, total.max(1));
    if total > 0 {
        progress(&format!(
            "{} to {} with {} worker{}",
            crate::fmt::plural(total, "process", "processes"),
            match op {
                Op::Apply(_) => "patch",
                Op::Disable(_) => "unpatch",
                Op::Check(_) => "check",
                Op::List => "list",
                Op::Repair => "repair",
            },
            jobs,
            if jobs == 1 { "" } else { "s" }
        ));
    }
    let queue = Mutex::new(todo);
    // Notes that are the same for every process (a library without debug information)
    // are printed once per run; each record keeps its own.
    let said: Mutex<std::collections::HashSet<String>> = Mutex::default();
    let done = Mutex::new(Vec::new());
    let deadline = fo.deadline.map(|d| started + d);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some(c) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        break;
                    };
                    let r = one(op, patch, &c, fo, deadline, progress, &said);
                    progress(&format!(
                        "pid {} ({}): {}{}",
                        c.pid,
                        c.comm,
                        r.result.name(),
                        if r.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.reason)
                        }
                    ));
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            });
        }
    });
    done.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The children of patched processes, running the same program, that the run did not
/// patch (a pool of workers of a master selected by --pid): one note for the run.
fn uncovered_children(records: &[ProcessRecord]) -> Option<String> {
    let covered: std::collections::HashSet<i32> = records
        .iter()
        .filter(|r| !r.result.failed())
        .map(|r| r.pid)
        .collect();
    let changed: std::collections::BTreeSet<i32> = records
        .iter()
        .filter(|r| r.result.changed())
        .map(|r| r.pid)
        .collect();
    let left: Vec<String> = crate::os::process::same_program_children_of(&changed)
        .into_iter()
        .filter(|(c, _)| !covered.contains(c))
        .map(|(c, p)| format!("{c} (child of {p})"))
        .collect();
    (!left.is_empty()).then(|| {
        format!(
            "note: child processes running the same program were not in this run and still run the old code: {}; add them (--pid) or select by --exe",
            left.join(", ")
        )
    })
}

/// `--exe` named a program that no selected process runs: a path where no file is is
/// refused (exit 14); otherwise nothing matched (exit 15), saying why, never an empty
/// success a rollout script would read as done.
fn no_exe_match(
    exe: &std::path::Path,
    given: Option<&std::path::Path>,
    sel: &Selection,
    others: &[String],
    unreadable: &[(i32, String)],
) -> Result<FleetReport> {
    let typed = given.unwrap_or(exe).display().to_string();
    if sel.exe_missing() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "--exe {typed}: no such file ({}); give the path of the program's file, as /proc/PID/exe shows it, or its name alone (--exe {}) to select programs by name",
                exe.display(),
                exe.file_name()
                    .map_or(typed.clone(), |n| n.to_string_lossy().into_owned())
            ),
        ));
    }
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut why = format!("--exe {typed}: no process runs {}", exe.display());
    if !others.is_empty() {
        why.push_str(&format!(
            "; processes of another build of {name} run: {}",
            others.join(", ")
        ));
    }
    // Naming a program says it is expected to run: nothing matched is exit 15, as with
    // --require-match.
    let mut report = FleetReport::new(Vec::new(), unreadable.to_vec(), true);
    report.msg = format!("{why}; {}", report.msg);
    report.comment = report.msg.clone();
    Ok(report)
}

/// Could process `c`, whose maps cannot be read, be one `--exe` selects? Its name
/// (`comm`, readable by anyone) is the program's file name, cut at 15 bytes.
fn may_run(c: &Candidate, sel: &Selection) -> bool {
    let Some(name) = sel.exe.as_ref().and_then(|e| e.file_name()) else {
        return false;
    };
    let name = name.to_string_lossy();
    let cut = &name.as_bytes()[..name.len().min(15)];
    !c.comm.is_empty() && c.comm.as_bytes() == cut
}

fn record(c: &Candidate, result: Outcome, reason: String, ms: f64) -> ProcessRecord {
    ProcessRecord {
        pid: c.pid,
        start_time: c.start,
        // Read for the processes of the report only, not for every process of the host;
        // and for one in another pid namespace only (a link read tells).
        ns_pid: if c.start == 0 || crate::os::process::in_my_pid_namespace(c.pid) {
            c.pid
        } else {
            crate::os::process::read_status(c.pid).map_or(c.pid, |s| s.ns_pid)
        },
        comm: c.comm.clone(),
        exe: c.exe.clone(),
        result,
        reason,
        patches: Vec::new(),
        switch_wait_ms: None,
        pause_ms: None,
        leftovers: Vec::new(),
        notes: Vec::new(),
        duration_ms: ms,
    }
}

/// The outcome of an engine error.
fn outcome_of(e: &Error) -> Outcome {
    match e.kind {
        ErrorKind::Target if e.cause == Cause::Gone => Outcome::Gone,
        ErrorKind::Target if e.cause == Cause::Permission => Outcome::Permission,
        ErrorKind::Target => Outcome::Blocked,
        ErrorKind::Patch | ErrorKind::Mismatch | ErrorKind::Refused => Outcome::Refused,
        ErrorKind::Stopped => Outcome::Blocked,
        _ => Outcome::Failed,
    }
}

/// The patches a process runs now, from its record (read without stopping it).
fn applied_names(c: &Candidate) -> Option<Vec<String>> {
    // No record in the maps the run listed: nothing applied, without opening the process
    // again (a record made since by another rlivepatch makes the apply refuse the name).
    if c.maps
        .as_ref()
        .is_some_and(|m| crate::livepatch::store::find_mapping(m).is_none())
    {
        return Some(Vec::new());
    }
    let (_, _, rec) = record_of(c)?;
    Some(
        rec.patches
            .iter()
            .filter(|p| !p.disabled)
            .map(|p| p.name.clone())
            .collect(),
    )
}

/// The process `c` opened and its record, located by the maps the run listed: a
/// process's maps are read once for the run, not again for its record. Where they no
/// longer locate it (the record moved since), the maps are read again.
fn record_of(c: &Candidate) -> Option<(Process, Vec<Mapping>, Record)> {
    if let Some(maps) = &c.maps
        && let Ok(proc) = Process::open(c.pid)
        && let Ok(Some((_, rec))) = crate::livepatch::store::Store::load(&proc, maps)
    {
        return Some((proc, maps.clone(), rec));
    }
    crate::livepatch::store::read_record(c.pid).ok()
}

/// Do `op` to one process.
fn one(
    op: &Op,
    patch: Option<&Patch>,
    c: &Candidate,
    fo: &FleetOptions,
    deadline: Option<Instant>,
    progress: Progress,
    said: &Mutex<std::collections::HashSet<String>>,
) -> ProcessRecord {
    let t0 = Instant::now();
    let ms = |t0: Instant| t0.elapsed().as_secs_f64() * 1000.0;
    // The same process still (a pid reused since discovery is another one).
    if crate::os::process::start_time(&format!("/proc/{}/stat", c.pid)) != Some(c.start) {
        return record(c, Outcome::Gone, "it exited during the run".into(), 0.0);
    }
    let mut opts = fo.opts.clone();
    // The run says once which children it did not cover (see `uncovered_children`).
    opts.note_children = false;
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return record(
                c,
                Outcome::Failed,
                "the run's --deadline passed before its turn".into(),
                0.0,
            );
        }
        opts.timeout = opts.timeout.min(left);
    }
    let pid = c.pid;
    let notes = std::cell::RefCell::new(Vec::new());
    let mut say = |line: &str| {
        if line.starts_with("note: ") || line.starts_with("warning: ") {
            notes.borrow_mut().push(line.to_string());
            let first = said
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(line.to_string());
            if !first && line.starts_with("note: ") {
                return;
            }
        }
        progress(&format!("pid {pid}: {line}"))
    };
    let mut leftovers = Vec::new();
    let result: Result<(
        Outcome,
        String,
        Vec<String>,
        Option<crate::livepatch::transition::Report>,
    )> = match (op, patch) {
        (Op::Apply(_), Some(p)) => {
            if applied_names(c).is_some_and(|n| n.contains(&p.name)) {
                Ok((Outcome::AlreadyApplied, String::new(), Vec::new(), None))
            } else {
                crate::ops::apply_patch(pid, p, &opts, &mut say).map(|r| {
                    let mut why = format!(
                        "{} in {:.1} ms",
                        crate::fmt::plural(r.functions.len(), "function", "functions"),
                        r.elapsed_ms
                    );
                    if let Some(b) = crate::ops::report::BindingView::summary(&r.bindings) {
                        why.push_str(&format!("; {b}"));
                    }
                    leftovers = r.leftovers;
                    (Outcome::Applied, why, Vec::new(), Some(r.switch))
                })
            }
        }
        (Op::Check(_), Some(p)) => Ok(match applied_names(c) {
            Some(n) if n.contains(&p.name) => (Outcome::Covered, String::new(), n, None),
            n => (
                Outcome::Needed,
                "runs the build the patch is for, without it".into(),
                n.unwrap_or_default(),
                None,
            ),
        }),
        (Op::Disable(given), _) => {
            // By its name, or the file it was applied from, as in this process's record
            // (read once: it also says whether the patch is applied).
            let read = match &c.maps {
                Some(m) if crate::livepatch::store::find_mapping(m).is_none() => None,
                _ => record_of(c),
            };
            let named = read
                .as_ref()
                .and_then(|(_, _, r)| r.enabled_named(given).map(|p| p.name.clone()));
            let name = named.as_deref().unwrap_or(given);
            let applied =
                read.filter(|(_, _, r)| r.patches.iter().any(|p| !p.disabled && p.name == name));
            // The process opened to read its record is the one disabled.
            if let Some((proc, _, _)) = applied {
                crate::ops::disable_opened(proc, name, &opts, &mut say).map(|r| {
                    leftovers = r.leftovers;
                    (Outcome::Disabled, String::new(), Vec::new(), Some(r.switch))
                })
            } else {
                Ok((Outcome::NotApplied, String::new(), Vec::new(), None))
            }
        }
        (Op::List, _) => crate::livepatch::store::read_record(pid).map(|(_, _, rec)| {
            let names: Vec<String> = rec
                .patches
                .iter()
                .filter(|p| !p.disabled)
                .map(|p| p.name.clone())
                .collect();
            let why = if names.is_empty() {
                "no patch applied".to_string()
            } else {
                names.join(", ")
            };
            (Outcome::Listed, why, names, None)
        }),
        (Op::Repair, _) => crate::ops::repair(pid, &opts, &mut say).map(|done| {
            if done.is_empty() {
                (Outcome::Clean, String::new(), Vec::new(), None)
            } else {
                (Outcome::Repaired, done.join("; "), Vec::new(), None)
            }
        }),
        _ => Err(Error::new(ErrorKind::Failed, "no patch")),
    };
    let mut r = match result {
        Ok((o, why, patches, switch)) => {
            let mut r = record(c, o, why, ms(t0));
            r.patches = patches;
            r.switch_wait_ms = switch.as_ref().map(|s| s.waited_ms);
            r.pause_ms = switch.map(|s| s.stopped_ms);
            r.leftovers = leftovers;
            r
        }
        Err(e) => record(c, outcome_of(&e), e.message, ms(t0)),
    };
    r.notes = notes.into_inner();
    r
}
