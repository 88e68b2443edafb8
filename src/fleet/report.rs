//! One result per process, and the document fleet tools read: `changed`, `failed`,
//! `msg` and counts at the top (Ansible's `changed_when`/`failed_when` and Salt's
//! stateful `cmd.run` read them as they are), per-process records keyed by pid and start
//! time, and the exit code.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What became of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The patch was applied.
    Applied,
    /// The patch was applied before (nothing done).
    AlreadyApplied,
    /// The patch was disabled.
    Disabled,
    /// The patch was not applied there (nothing done).
    NotApplied,
    /// An interrupted run's leftovers were finished or undone.
    Repaired,
    /// Nothing to repair.
    Clean,
    /// `check`: the process runs the patch.
    Covered,
    /// `check`: the process runs the build the patch is for, without it.
    Needed,
    /// `list`: its patches were read.
    Listed,
    /// It runs another build of an object the patch changes.
    Mismatch,
    /// It does not map what the patch changes.
    NotTarget,
    /// Traced by another tool, stopped, or confined (seccomp, memfd policy).
    Blocked,
    /// rlivepatch may not trace it.
    Permission,
    /// It exited during the run.
    Gone,
    /// The patch does not fit it (a symbol, an entry, a state).
    Refused,
    /// Anything else; the reason says what.
    Failed,
}

impl Outcome {
    /// Its name in text and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyApplied => "already-applied",
            Outcome::Disabled => "disabled",
            Outcome::NotApplied => "not-applied",
            Outcome::Repaired => "repaired",
            Outcome::Clean => "clean",
            Outcome::Covered => "covered",
            Outcome::Needed => "needed",
            Outcome::Listed => "listed",
            Outcome::Mismatch => "mismatch",
            Outcome::NotTarget => "not-target",
            Outcome::Blocked => "blocked",
            Outcome::Permission => "permission",
            Outcome::Gone => "gone",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// Did the run change the process?
    pub fn changed(self) -> bool {
        matches!(
            self,
            Outcome::Applied | Outcome::Disabled | Outcome::Repaired
        )
    }

    /// Is the process not in the requested state because of a failure?
    pub fn failed(self) -> bool {
        matches!(
            self,
            Outcome::Blocked | Outcome::Permission | Outcome::Refused | Outcome::Failed
        )
    }
}

/// One process's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRecord {
    /// Its pid (in rlivepatch's pid namespace).
    pub pid: i32,
    /// Its start time (clock ticks since boot): with the pid, the key of the record.
    pub start_time: u64,
    /// Its pid inside its own pid namespace (a container's).
    pub ns_pid: i32,
    /// Its command name.
    pub comm: String,
    /// Its executable.
    pub exe: String,
    /// What became of it.
    pub result: Outcome,
    /// Why, in words.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The patches it runs (`list`, `check`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// How long the switch waited for a safe moment, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_wait_ms: Option<u64>,
    /// How long the switch held the process's threads stopped, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<f64>,
    /// What tidying up after the operation left there (it took effect; `repair` clears
    /// these).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<String>,
    /// The warnings and notes its operation printed (on stderr, prefixed with the pid),
    /// for a fleet tool reading the JSON only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// How long its operation took, in ms.
    pub duration_ms: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Some process was changed (false when a second run finds everything done).
    pub changed: bool,
    /// Some selected process is not in the requested state.
    pub failed: bool,
    /// One line for a human (and Salt's `comment`).
    pub msg: String,
    /// The same, for Salt's stateful `cmd.run`.
    pub comment: String,
    /// Results counted.
    pub counts: BTreeMap<&'static str, usize>,
    /// Processes whose maps rlivepatch could not read (another user's, without root).
    pub unreadable: usize,
    /// Those processes: pid and name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_processes: Vec<(i32, String)>,
    /// Each process concerned, by pid.
    pub processes: Vec<ProcessRecord>,
    /// The exit code.
    #[serde(skip)]
    pub exit: u8,
}

/// Exit code: every selected process in the requested state (or none selected).
pub const EXIT_OK: u8 = 0;
/// Some processes failed.
pub const EXIT_PARTIAL: u8 = 12;
/// Every selected process failed.
pub const EXIT_ALL_FAILED: u8 = 13;
/// Nothing matched and `--require-match` was given.
pub const EXIT_NO_MATCH: u8 = 15;

impl FleetReport {
    /// The report of `records`, with the exit code.
    pub fn new(
        mut records: Vec<ProcessRecord>,
        unreadable: Vec<(i32, String)>,
        require_match: bool,
    ) -> FleetReport {
        records.sort_by_key(|r| r.pid);
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in &records {
            *counts.entry(r.result.name()).or_default() += 1;
        }
        let changed = records.iter().any(|r| r.result.changed());
        let failures = records.iter().filter(|r| r.result.failed()).count();
        let considered = records
            .iter()
            .filter(|r| !matches!(r.result, Outcome::NotTarget))
            .count();
        let exit = if considered == 0 && require_match {
            EXIT_NO_MATCH
        } else if failures == 0 {
            EXIT_OK
        } else if failures == considered {
            EXIT_ALL_FAILED
        } else {
            EXIT_PARTIAL
        };
        let mut msg = if counts.is_empty() {
            "no process matched".to_string()
        } else {
            counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !unreadable.is_empty() {
            let why = if nix::unistd::geteuid().is_root() {
                "permission denied even to root: protected from tracing"
            } else {
                "permission denied: another user's; run as root to see them"
            };
            // Named, the first few: an operator can look at them.
            const SHOWN: usize = 8;
            let mut names: Vec<String> = unreadable
                .iter()
                .take(SHOWN)
                .map(|(pid, comm)| format!("{pid} ({comm})"))
                .collect();
            if unreadable.len() > SHOWN {
                names.push(format!("{} more", unreadable.len() - SHOWN));
            }
            let _ = write!(
                msg,
                "; {} could not be read ({why}): {}",
                crate::fmt::plural(unreadable.len(), "process", "processes"),
                names.join(", ")
            );
        }
        if !changed && failures == 0 && considered > 0 {
            msg.push_str("; nothing to change");
        }
        FleetReport {
            changed,
            failed: failures > 0 || exit == EXIT_NO_MATCH,
            comment: msg.clone(),
            msg,
            counts,
            unreadable: unreadable.len(),
            unreadable_processes: unreadable,
            processes: records,
            exit,
        }
    }

    /// Text: one line per process, then the summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in &self.processes {
            let ns = if r.ns_pid != r.pid {
                format!(", pid {} in its namespace", r.ns_pid)
            } else {
                String::new()
            };
            let why = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            let _ = writeln!(
                s,
                "pid {} ({}{ns}): {}{why}",
                r.pid,
                r.comm,
                r.result.name()
            );
        }
        let _ = writeln!(s, "{}", self.msg);
        s
    }
}
