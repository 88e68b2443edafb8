//! What an interrupted rlivepatch run left in a process, found by reading `/proc` only:
//! an operation the record says was under way, patches loaded but not recorded,
//! rlivepatch's private memory and island pages nothing refers to. `repair` clears them;
//! messages name them.

use crate::livepatch::record::Record;
use crate::os::process::{Mapping, Process};
use crate::remote::inject::{ISLAND_NAME, SCRATCH_NAME};

/// What an interrupted run left, found without changing anything.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Leftovers {
    /// An operation was interrupted (its rlivepatch is gone).
    pub interrupted: Option<String>,
    /// memfds of patches (or the runtime) the record does not know: (fd, name).
    pub orphan_fds: Vec<(i32, String)>,
    /// rlivepatch's private memory of a run that is gone: (start, end).
    pub orphan_scratch: Vec<(u64, u64)>,
    /// Island pages the record does not know.
    pub orphan_islands: Vec<u64>,
    /// The keeper thread of a runtime a killed run unloaded.
    pub orphan_keeper: bool,
}

impl Leftovers {
    /// Nothing to repair?
    pub fn is_empty(&self) -> bool {
        self.interrupted.is_none()
            && self.orphan_fds.is_empty()
            && self.orphan_scratch.is_empty()
            && self.orphan_islands.is_empty()
            && !self.orphan_keeper
    }

    /// One line for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(i) = &self.interrupted {
            parts.push(i.clone());
        }
        for (fd, name) in &self.orphan_fds {
            parts.push(format!("{name} (fd {fd}) is loaded but not recorded"));
        }
        if !self.orphan_scratch.is_empty() {
            parts.push(format!(
                "{} of rlivepatch that no run uses",
                crate::fmt::plural(
                    self.orphan_scratch.len(),
                    "private mapping",
                    "private mappings"
                )
            ));
        }
        if !self.orphan_islands.is_empty() {
            parts.push(crate::fmt::plural(
                self.orphan_islands.len(),
                "unused island page",
                "unused island pages",
            ));
        }
        if self.orphan_keeper {
            parts.push("the keeper thread of an unloaded runtime".to_string());
        }
        parts.join("; ")
    }
}

/// Find leftovers, reading `/proc` only.
pub fn scan(
    proc: &Process,
    maps: &[Mapping],
    rec: &Record,
    ours: Option<crate::remote::inject::Scratch>,
) -> Leftovers {
    scan_fds_if(true, proc, maps, rec, ours)
}

/// [`scan`] before an operation: the descriptors (a `readlink` each: tens of thousands
/// in a busy server, 40 ms for 10,000) are looked at only when something says a run was
/// cut short: an operation the record says is under way, rlivepatch's memory or an
/// island page nobody records, or rlivepatch's mappings in a process with no record. A
/// run opens descriptors only where one of those shows until they are closed or
/// recorded: the memory's memfd is mapped at once; an apply's memfds are made after it
/// records the operation (or, on the first apply, before any record exists, with its
/// memory mapped); the exception, a run killed between the memory's memfd and its
/// mapping (microseconds), leaves an empty descriptor that `list` and `repair` still
/// find.
pub fn scan_before_operation(
    proc: &Process,
    maps: &[Mapping],
    rec: &Record,
    ours: Option<crate::remote::inject::Scratch>,
    recorded: bool,
) -> Leftovers {
    let ours_mapped = maps
        .iter()
        .any(|m| m.path.starts_with("/memfd:rlivepatch-") || m.path.starts_with("/memfd:rlp:"));
    let mut l = scan_maps(proc, maps, rec, ours);
    let evidence = rec.pending.is_some()
        || (!recorded && ours_mapped)
        || !l.orphan_scratch.is_empty()
        || !l.orphan_islands.is_empty();
    if evidence {
        l.orphan_fds = orphan_fds(proc, rec);
    }
    l
}

fn scan_fds_if(
    fds: bool,
    proc: &Process,
    maps: &[Mapping],
    rec: &Record,
    ours: Option<crate::remote::inject::Scratch>,
) -> Leftovers {
    let mut l = scan_maps(proc, maps, rec, ours);
    if fds {
        l.orphan_fds = orphan_fds(proc, rec);
    }
    l
}

/// The memfds of patches (or the runtime) open in the process that the record does not
/// know: a `readlink` of each of its descriptors.
fn orphan_fds(proc: &Process, rec: &Record) -> Vec<(i32, String)> {
    let mut known: Vec<i32> = rec.patches.iter().map(|p| p.fd).collect();
    known.extend(rec.runtime.iter().map(|r| r.fd));
    known.extend(
        rec.pending
            .iter()
            .filter_map(|p| p.loading.as_ref().map(|a| a.fd)),
    );
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", proc.pid)) else {
        return out;
    };
    let mut seen = 0usize;
    for e in dir.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        seen += 1;
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if let Some(name) = link
            .strip_prefix("/memfd:")
            .and_then(|n| n.strip_suffix(" (deleted)"))
            && (name.starts_with("rlp:") || name.starts_with("rlivepatch-"))
            && !known.contains(&fd)
        {
            out.push((fd, name.to_string()));
        }
    }
    crate::os::fault::trace(&format!("descriptors scanned: {seen}"));
    out
}

/// What the record and the maps tell: an interrupted operation, a keeper left without
/// its runtime, rlivepatch's memory and island pages nobody records.
fn scan_maps(
    proc: &Process,
    maps: &[Mapping],
    rec: &Record,
    ours: Option<crate::remote::inject::Scratch>,
) -> Leftovers {
    let mut l = Leftovers::default();
    if let Some(p) = &rec.pending
        && !p.tool_alive()
    {
        l.interrupted = Some(format!("an interrupted {} of patch {}", p.op, p.patch));
    }
    // The runtime starts the keeper and is unloaded before it ends: a keeper without a
    // runtime (see `Session::open`) is a run's unfinished unload.
    l.orphan_keeper = rec.keeper.is_some() && rec.runtime.is_none();
    let scratch = format!("/memfd:{SCRATCH_NAME}");
    let island = format!("/memfd:{ISLAND_NAME}");
    let recorded: Vec<u64> = rec.islands.iter().map(|i| i.addr).collect();
    // Memory an earlier run kept is no leftover while it is idle; in use, a run using it
    // was killed.
    let kept = rec
        .scratch
        .filter(|s| crate::remote::inject::scratch_is_idle(proc, maps, s));
    let is = |s: Option<crate::remote::inject::Scratch>, at: u64| {
        s.is_some_and(|s| s.code == at || s.rw == at)
    };
    for m in maps {
        if m.path == scratch && !is(ours, m.start) && !is(kept, m.start) {
            l.orphan_scratch.push((m.start, m.end));
        } else if m.path == island && !recorded.contains(&m.start) {
            l.orphan_islands.push(m.start);
        }
    }
    l
}

/// What an operation left in process `pid`, read from `/proc` (for messages): "; left in
/// process N: ..." or nothing.
pub fn left_in(pid: i32, alive: bool) -> String {
    if !alive {
        return String::new();
    }
    let found = crate::livepatch::store::read_record(pid).map(|(proc, maps, rec)| {
        let mut l = scan(&proc, &maps, &rec, None);
        // This run is over: what it recorded as in progress is a leftover too.
        if let Some(p) = &rec.pending {
            l.interrupted = Some(format!("an unfinished {} of patch {}", p.op, p.patch));
        }
        l
    });
    match found {
        Ok(l) if !l.is_empty() => format!("; left in process {pid}: {}", l.describe()),
        _ => String::new(),
    }
}

/// A runtime the record names but that is not loaded where it says (a run was killed
/// after its last `dlclose`, before it saved the record): the record forgets it, so that
/// nothing reads the memory it had; its keeper, if the record still has one, is then a
/// leftover that `repair` ends (see [`scan`]).
pub fn forget_unloaded_runtime(
    maps: &[crate::os::process::Mapping],
    record: &mut crate::livepatch::record::Record,
) {
    let loaded = record.runtime.as_ref().is_none_or(|rt| {
        crate::os::process::mapping_at(maps, rt.base)
            .is_some_and(|m| m.start == rt.base && m.path == "/memfd:rlp:runtime")
    });
    if !loaded {
        record.runtime = None;
    }
}
