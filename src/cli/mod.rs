//! The `rlivepatch` command: parses the command line (`args`), runs the library's
//! operations and prints what they report, as text or JSON (`--json`). `main.rs` is only
//! the entry point.
//!
//! Printing never decides an exit code: a reader that went away (`| head`) ends the
//! printing quietly, and the operation's own code stands.
//!
//! May use: every other layer.

pub mod args;
mod files;
mod later;
mod out;
mod process;
mod select;

use args::{Cli, Command};
use std::process::ExitCode;

/// The whole command: parse, run, print, and the exit code.
pub fn main() -> ExitCode {
    crate::os::fault::init();
    // rlivepatch's priority follows what it does, and it paces itself from here (see the
    // pace module): before the first trace point, which may pause.
    crate::os::pace::init();
    crate::os::slice::init();
    crate::os::fault::trace("started");
    let cli = Cli::parse_args();
    // SIGINT, SIGTERM and SIGHUP are read by the tracer between two steps, so that the
    // current step can be undone; until then they wait.
    if let Err(e) = crate::os::ptrace::block_tool_signals() {
        out::error(&e, false);
        return ExitCode::FAILURE;
    }
    let json = cli.command.json();
    if cli.command.works_on_processes() {
        crate::os::slice::hurry_self();
    }
    let r = run(cli.command);
    crate::os::fault::trace(&format!(
        "end (paced {:.1} ms)",
        crate::os::pace::paused_ms()
    ));
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out::error(&e, json);
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}

/// Run one command; its exit code, or the error that decides it.
fn run(cmd: Command) -> crate::error::Result<u8> {
    match cmd {
        Command::Apply(a) => process::apply(a),
        Command::Disable(a) => process::disable(a),
        Command::List(a) => process::list(a),
        Command::Check(a) => process::check(a),
        Command::Repair(a) => process::repair(a),
        Command::Symbols(a) => process::symbols(a),
        Command::Build(a) => files::build(a),
        Command::BuildId(a) => files::build_id(a),
        Command::Info(a) => files::info(a),
        Command::Keygen(a) => files::keygen(a),
        Command::Sign(a) => files::sign(a),
        Command::Sdk(a) => files::sdk(a),
        Command::Manpage(a) => files::manpage(a.dir),
        Command::Completions(a) => files::completions(a),
        Command::Persist(a) => later::persist(a),
        Command::Unpersist(a) => later::unpersist(a),
        Command::Autoload(a) => later::autoload(a),
        Command::AutoloadApply(a) => later::autoload_apply(a),
        Command::Watch(a) => later::watch(a),
    }
}

impl Command {
    /// Does the command attach to processes and hand work to their threads (then
    /// rlivepatch asks for a short scheduler slice, see [`crate::os::slice`])?
    fn works_on_processes(&self) -> bool {
        matches!(
            self,
            Command::Apply(_)
                | Command::Disable(_)
                | Command::Repair(_)
                | Command::AutoloadApply(_)
        )
    }

    /// Does the command report as JSON (`--json`)?
    fn json(&self) -> bool {
        match self {
            Command::Apply(a) => a.json,
            Command::Disable(a) => a.json,
            Command::List(a) | Command::Repair(a) => a.json,
            Command::Check(a) => a.json,
            Command::Info(a) => a.json,
            Command::Symbols(a) => a.json,
            Command::Persist(a) => a.json,
            Command::Build(a) => a.json,
            Command::BuildId(_)
            | Command::Sdk(_)
            | Command::Unpersist(_)
            | Command::Autoload(_)
            | Command::AutoloadApply(_)
            | Command::Watch(_)
            | Command::Manpage(_)
            | Command::Keygen(_)
            | Command::Sign(_)
            | Command::Completions(_) => false,
        }
    }
}
