//! Which processes a fleet run concerns, found from /proc without attaching anything:
//! the objects each maps, matched by the build-id read from the very file it mapped
//! (deduplicated per device and inode; a library replaced or deleted on disk since is
//! still the one the process runs), and the selectors an operator gave.

use crate::elf::objects::identity;
use crate::os::process::{Mapping, parse_maps};
use crate::patch::Patch;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

/// The selectors of a fleet run; combined, they narrow each other.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Every process that maps what the patch changes (or, for disable/list/repair, that
    /// has rlivepatch's state).
    pub all: bool,
    /// Processes running this executable.
    pub exe: Option<PathBuf>,
    /// Processes that map an object of this name (file name, soname or path).
    pub object: Option<String>,
    /// Processes that map an object with this build-id.
    pub build_id: Option<String>,
    /// Only these processes.
    pub pids: Vec<i32>,
    /// Never these.
    pub exclude: Vec<i32>,
}

impl Selection {
    /// `--exe` as typed, made what the run compares: a relative path resolved from the
    /// working directory (as any path is), a bare name kept as a name (programs of that
    /// name are selected; the caller says so). A path that does not exist stays, since a
    /// process may still run a deleted file; [`Selection::exe_missing`] tells.
    pub fn resolve_exe(mut self) -> Selection {
        if let Some(exe) = &self.exe
            && !exe_is_name(exe)
            && let Ok(abs) = std::path::absolute(exe)
        {
            self.exe = Some(abs);
        }
        self
    }

    /// `--exe` names a program by its name alone (`nginx`), not by a path.
    pub fn exe_name(&self) -> Option<String> {
        self.exe
            .as_ref()
            .filter(|e| exe_is_name(e))
            .map(|e| e.display().to_string())
    }

    /// `--exe` names a path where no file is.
    pub fn exe_missing(&self) -> bool {
        self.exe
            .as_ref()
            .is_some_and(|e| !exe_is_name(e) && std::fs::symlink_metadata(e).is_err())
    }

    /// Does the operator select processes this way (rather than by one pid)?
    pub fn given(&self) -> bool {
        self.all
            || self.exe.is_some()
            || self.object.is_some()
            || self.build_id.is_some()
            || !self.pids.is_empty()
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its pid (here).
    pub pid: i32,
    /// Its start time (clock ticks since boot): a pid reused later is another process.
    pub start: u64,
    /// Its command name.
    pub comm: String,
    /// Its executable.
    pub exe: String,
    /// Its mappings; `None` when they cannot be read (permission).
    pub maps: Option<Vec<Mapping>>,
    /// Why its maps could not be read.
    pub unreadable: Option<Unreadable>,
}

/// Why a process's maps could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// It does not exist (any more).
    Gone,
    /// Anything else (a permission refused), in words.
    Denied(String),
}

/// Every process of the host but rlivepatch itself (or the `--pid` ones), as /proc
/// shows them now.
pub fn candidates(sel: &Selection) -> Vec<Candidate> {
    let me = std::process::id() as i32;
    let pids: Vec<i32> = if sel.pids.is_empty() {
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        sel.pids.clone()
    };
    let pids: Vec<i32> = pids
        .into_iter()
        .filter(|&pid| pid != me && !sel.exclude.contains(&pid))
        .collect();
    let given = !sel.pids.is_empty();
    // Each process is read on its own (stat, maps, executable): a host of hundreds is read
    // by a thread per CPU, in the order /proc lists them.
    let threads = crate::os::pace::usable_cpus().clamp(1, 4);
    if pids.len() < 64 || threads == 1 {
        return pids
            .into_iter()
            .filter_map(|p| candidate(p, given))
            .collect();
    }
    let chunk = pids.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = pids
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|&p| candidate(p, given))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Process `pid` as /proc shows it now; `None` for a kernel thread, or for one gone
/// unless it was `given` by pid.
fn candidate(pid: i32, given: bool) -> Option<Candidate> {
    let stat = crate::os::process::stat_line(pid);
    if stat.as_ref().is_some_and(|s| s.kernel) {
        return None;
    }
    let Some(stat) = stat else {
        return given.then(|| Candidate {
            pid,
            start: 0,
            comm: String::new(),
            exe: String::new(),
            maps: None,
            unreadable: Some(Unreadable::Gone),
        });
    };
    // One read with a buffer the size of most maps (not a growing string's dozen).
    let (maps, unreadable) = match crate::os::process::read_proc(&format!("/proc/{pid}/maps")) {
        Ok(t) => (Some(parse_maps(&t)), None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Some(Unreadable::Gone)),
        Err(e) => (None, Some(Unreadable::Denied(crate::error::io_text(&e)))),
    };
    Some(Candidate {
        pid,
        start: stat.start,
        comm: stat.comm,
        exe: std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        maps,
        unreadable,
    })
}

/// A file-backed object of a process: its path and first mapping.
pub struct Mapped<'a> {
    /// The path the process mapped.
    pub path: &'a str,
    /// Its first mapping (offset 0).
    pub first: &'a Mapping,
}

/// The objects a process maps (first mapping of each file).
pub fn mapped(maps: &[Mapping]) -> Vec<Mapped<'_>> {
    let mut seen = std::collections::HashSet::new();
    maps.iter()
        .filter(|m| m.inode != 0 && m.offset == 0 && m.path.starts_with('/'))
        .filter(|m| seen.insert((m.dev, m.inode)))
        .map(|m| Mapped {
            path: &m.path,
            first: m,
        })
        .collect()
}

/// Does object `o` of `pid` answer to `name` (file name, soname or path)?
pub fn named(pid: i32, o: &Mapped, name: &str) -> bool {
    let file_name = o.path.rsplit('/').next().unwrap_or(o.path);
    if o.path == name || file_name == name {
        return true;
    }
    soname(pid, o.first).is_some_and(|s| s == name)
}

/// The soname of the file `m` maps, read once per file for the run. A name that is not
/// a file name makes a host-wide run ask it of every object of every process, each a
/// `stat` through /proc before the cache of parsed headers answers; the maps' device and
/// inode name the file already. (Only choosing the processes rests on it: the operation
/// on one finds its object again, by its own reading.)
fn soname(pid: i32, m: &Mapping) -> Option<String> {
    type Sonames = HashMap<((u32, u32), u64), Option<String>>;
    static SONAMES: LazyLock<Mutex<Sonames>> = LazyLock::new(Default::default);
    let key = (m.dev, m.inode);
    let lock = || SONAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = lock().get(&key) {
        return s.clone();
    }
    let s = identity(pid, m).and_then(|f| f.soname.clone());
    lock().insert(key, s.clone());
    s
}

/// An object a patch is for: `None` is the main executable; with the build-id it was
/// built for, when the patch carries one.
#[derive(Debug, Clone)]
pub struct Want {
    /// The object as the patch names it.
    pub object: Option<String>,
    /// The build-id the patch requires.
    pub build_id: Option<String>,
}

/// The objects `patch` changes, with their build-ids.
pub fn wants(patch: &Patch) -> Vec<Want> {
    let norm = |o: &Option<String>| o.clone().filter(|o| o != "main");
    let mut out: Vec<Want> = Vec::new();
    for o in patch
        .funcs
        .iter()
        .map(|f| norm(&f.object))
        .chain(patch.build_ids.iter().map(|(o, _)| norm(o)))
    {
        if !out.iter().any(|w| w.object == o) {
            let build_id = patch
                .build_ids
                .iter()
                .find(|(b, _)| norm(b) == o)
                .map(|(_, h)| h.clone());
            out.push(Want {
                object: o,
                build_id,
            });
        }
    }
    out
}

/// What a process is to a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// It maps every object the patch changes, of the right builds.
    Target,
    /// It maps an object of another build (which, and the two build-ids).
    Mismatch(String),
    /// It lacks one (which).
    NotTarget(String),
    /// Its main executable has another build-id (given): another program, or another
    /// build of the patch's program (told apart by the executable's name).
    OtherMain(String),
}

/// Does process `c` map every object of `wants`? `exe_given`: the operator named the
/// executable (a patch for the main executable without a build-id needs that).
pub fn fit(c: &Candidate, wants: &[Want], exe_given: bool) -> Fit {
    let Some(maps) = &c.maps else {
        return Fit::NotTarget("its maps cannot be read".into());
    };
    let objects = mapped(maps);
    for w in wants {
        let found = match &w.object {
            None => objects
                .iter()
                .find(|o| o.path == c.exe.trim_end_matches(" (deleted)")),
            Some(name) => objects.iter().find(|o| named(c.pid, o, name)),
        };
        let label = w
            .object
            .clone()
            .unwrap_or_else(|| "the main executable".into());
        let Some(o) = found else {
            return Fit::NotTarget(format!("it does not map {label}"));
        };
        match &w.build_id {
            Some(want) => {
                let have = identity(c.pid, o.first).and_then(|f| f.build_id.clone());
                if have.as_deref() != Some(want.as_str()) {
                    // Another program altogether is not another build of this one.
                    if w.object.is_none() && !exe_given {
                        return Fit::OtherMain(format!(
                            "its {} has build-id {}, the patch is for {want}",
                            o.path,
                            have.unwrap_or_else(|| "none".into())
                        ));
                    }
                    return Fit::Mismatch(format!(
                        "its {} has build-id {}, the patch is for {want}",
                        o.path,
                        have.unwrap_or_else(|| "none".into())
                    ));
                }
            }
            None if w.object.is_none() && !exe_given => {
                return Fit::NotTarget(
                    "the patch is for a main executable without RLIVEPATCH_BUILD_ID: name the program with --exe".into(),
                );
            }
            None => {}
        }
    }
    Fit::Target
}

/// Does process `c` pass the selectors besides `--all` (exe, object, build-id)?
pub fn selected(c: &Candidate, sel: &Selection) -> bool {
    if let Some(exe) = &sel.exe {
        let same_file = || {
            use std::os::unix::fs::MetadataExt;
            let a = std::fs::metadata(format!("/proc/{}/exe", c.pid)).ok()?;
            let b = std::fs::metadata(exe).ok()?;
            Some(a.dev() == b.dev() && a.ino() == b.ino())
        };
        let running = c.exe.trim_end_matches(" (deleted)");
        let matched = if exe_is_name(exe) {
            running.rsplit('/').next() == exe.to_str()
        } else {
            running == exe.display().to_string() || same_file() == Some(true)
        };
        if !matched {
            return false;
        }
    }
    let Some(maps) = &c.maps else {
        return sel.object.is_none() && sel.build_id.is_none();
    };
    let objects = mapped(maps);
    if let Some(name) = &sel.object
        && !objects.iter().any(|o| named(c.pid, o, name))
    {
        return false;
    }
    if let Some(id) = &sel.build_id {
        let id = id.to_ascii_lowercase();
        if !objects
            .iter()
            .any(|o| identity(c.pid, o.first).and_then(|f| f.build_id.clone()) == Some(id.clone()))
        {
            return false;
        }
    }
    true
}

/// A `--exe` with no slash is a program's name, not a path in the working directory.
fn exe_is_name(exe: &std::path::Path) -> bool {
    !exe.as_os_str().is_empty() && !exe.to_string_lossy().contains('/')
}
