//! What a command works on: one process (`PID`), or the processes a fleet selector
//! picks (`--all`, `--exe`...), run through [`crate::fleet`].

use super::args::{FleetArgs, OneOrFleet, parse_pid};
use super::out;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::Options;

/// The positional arguments of `apply`, `disable` and `check`: `<PID> <X>`, or with a
/// fleet selector `<X>` alone. Returns the pid (none for a fleet run) and X.
pub fn targets(
    fleet: &FleetArgs,
    first: Option<String>,
    second: Option<String>,
    more: &[String],
    what: &str,
) -> Result<(Option<i32>, String)> {
    let usage = |m: String| Error::new(ErrorKind::Usage, m);
    if fleet.selection().given() {
        return match (first, second) {
            (Some(x), None) if more.is_empty() => Ok((None, x)),
            (None, _) => Err(usage(format!("the {what} is missing"))),
            _ => Err(usage(format!(
                "with --all, --exe, --object, --build-id or --pid, give the {what} alone, not a process id"
            ))),
        };
    }
    let Some(first) = first else {
        return Err(usage(format!(
            "give a process id and the {what}, or select processes with --all, --exe, --object, --build-id or --pid"
        )));
    };
    let pid = parse_pid(&first).map_err(usage)?;
    let Some(second) = second else {
        return Err(usage(format!(
            "the {what} is missing (after the process id)"
        )));
    };
    one_pid(pid, &second, more)?;
    Ok((Some(pid), second))
}

/// A run over the processes `fleet` selects; exit 14 when refused before any process.
pub fn run_fleet(
    op: &crate::fleet::Op,
    fleet: &FleetArgs,
    opts: Options,
    json: bool,
) -> Result<u8, Error> {
    let fo = crate::fleet::FleetOptions {
        jobs: fleet.jobs,
        deadline: fleet.deadline,
        require_match: fleet.require_match,
        opts,
    };
    let say = |l: &str| out::progress(l);
    match crate::fleet::run(op, &fleet.selection(), &fo, &say) {
        Ok(r) => {
            if json {
                out::json(&r);
            } else {
                out::text(&r.text());
            }
            Ok(r.exit)
        }
        Err(e) => {
            out::error(&e, false);
            if json {
                out::json(
                    &serde_json::json!({ "changed": false, "failed": true, "msg": e.message, "error": { "kind": e.kind, "message": e.message } }),
                );
            }
            Ok(14)
        }
    }
}

/// `apply 123 456 fix.so` (an unquoted `$(pidof nginx)`): several pids, said so.
fn one_pid(pid: i32, second: &str, more: &[String]) -> Result<()> {
    if more.is_empty() {
        return Ok(());
    }
    let mut pids = vec![pid.to_string()];
    pids.extend(
        std::iter::once(second.to_string())
            .chain(more[..more.len() - 1].iter().cloned())
            .take_while(|w| w.parse::<i32>().is_ok()),
    );
    if pids.len() > 1 {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "{} process ids given ({}); rlivepatch takes one per run: for p in {}; do rlivepatch ... \"$p\" ...; done",
                pids.len(),
                pids.join(" "),
                pids.join(" ")
            ),
        ));
    }
    Err(Error::new(
        ErrorKind::Usage,
        format!("unexpected argument '{}'", more[0]),
    ))
}

impl OneOrFleet {
    /// The one process to work on, or (a fleet selection) `op` run over the fleet and
    /// its exit code.
    pub fn single(&self, op: crate::fleet::Op) -> Result<Result<i32, u8>> {
        match self.pid.filter(|_| !self.fleet.selection().given()) {
            Some(pid) => Ok(Ok(pid)),
            None => run_fleet(&op, &self.fleet, Options::default(), self.json).map(Err),
        }
    }
}
