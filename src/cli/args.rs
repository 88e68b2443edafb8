//! The command line's definitions (clap): commands, their arguments and help.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Livepatch running x86_64 Linux processes.
///
/// A patch is a shared object built from one C file with the SDK header rlivepatch.h; it
/// names the functions it replaces. `apply` loads it into a running process and redirects
/// every later call of those functions to the patch's code, switching only when no thread
/// is inside a function being changed; `disable` takes it back.
#[derive(Parser)]
#[command(name = "rlivepatch", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line: `apply` and `disable`, the commands an operator times, are
    /// parsed with their own arguments alone; anything else, and anything those refuse
    /// (help, a mistake), with the whole command, as clap builds it for every run
    /// otherwise: a tree of every command's arguments (0.3 ms of each run).
    pub fn parse_args() -> Cli {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        Self::quick(&args).unwrap_or_else(|| Cli::parse_from(args))
    }

    /// [`Cli::parse_args`]'s shortcut, for `apply` and `disable` arguments that parse.
    fn quick(args: &[std::ffi::OsString]) -> Option<Cli> {
        use clap::{Args, FromArgMatches};
        let sub = args.get(1)?.to_str()?;
        let command = match sub {
            "apply" => ApplyArgs::augment_args(clap::Command::new("apply")),
            "disable" => DisableArgs::augment_args(clap::Command::new("disable")),
            _ => return None,
        };
        let m = command.try_get_matches_from(&args[1..]).ok()?;
        let command = match sub {
            "apply" => Command::Apply(ApplyArgs::from_arg_matches(&m).ok()?),
            _ => Command::Disable(DisableArgs::from_arg_matches(&m).ok()?),
        };
        Some(Cli { command })
    }
}

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  failed (the target is left as it was)
  2  bad command line
  3  target problem: no such process, no permission, unsupported or traced by another tool
  4  patch file problem: missing, not an x86_64 shared object, bad metadata, cannot be loaded,
     others may change it (run as root), or not signed as required
  5  the patch does not fit the process: object or symbol missing, entry owned by someone
     else, already applied, not applied
  6  no safe moment to switch before the timeout (threads inside changed functions)
  7  interrupted by SIGINT/SIGTERM/SIGHUP; the current step was undone
  8  could not finish nor undo cleanly; the message says what is left, and
     `rlivepatch repair PID` finishes it
  9  job control stopped the process before the switch; the step was undone and the
     process stays stopped (`kill -CONT PID` resumes it)
 10  build: the change cannot be made into a livepatch (the reason, and the way out)
 11  build: the project's build, a diff, a compile or the link failed
 12  fleet run (--all, --exe...): some processes failed
 13  fleet run: every selected process failed
 14  fleet run refused before touching any process (also: --exe names no file)
 15  fleet run selected nothing, with --require-match or --exe";

/// Selectors and limits of a run over many processes.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Fleet options (instead of a PID; combinable)")]
pub struct FleetArgs {
    /// Every process that maps every object the patch changes (matched by the build-id
    /// of the file each process mapped, when the patch carries build-ids); for
    /// disable, list and repair: every process with rlivepatch's state.
    #[arg(long)]
    pub all: bool,
    /// Processes running this executable.
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,
    /// Processes that map an object of this name (file name, soname or path; also a
    /// file deleted or replaced on disk since).
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// Processes that map an object with this GNU build-id.
    #[arg(long, value_name = "HEX")]
    pub build_id: Option<String>,
    /// This process (repeatable).
    #[arg(long = "pid", value_name = "P", value_parser = parse_pid)]
    pub pids: Vec<i32>,
    /// Never this process (repeatable).
    #[arg(long = "exclude-pid", value_name = "P", value_parser = parse_pid)]
    pub exclude: Vec<i32>,
    /// Processes worked on at once (default: one per CPU, up to four per CPU for many
    /// processes while the CPUs have room).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Give up on processes not reached within this many seconds of the start.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub deadline: Option<Duration>,
    /// An empty selection is an error (exit 15).
    #[arg(long)]
    pub require_match: bool,
}

impl FleetArgs {
    /// The processes these arguments select.
    pub fn selection(&self) -> crate::fleet::select::Selection {
        crate::fleet::select::Selection {
            all: self.all,
            exe: self.exe.clone(),
            object: self.object.clone(),
            build_id: self.build_id.clone(),
            pids: self.pids.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

/// A process id, or a fleet selection, for commands that take nothing else.
#[derive(clap::Args, Debug, Clone)]
pub struct OneOrFleet {
    /// The process id.
    #[arg(value_parser = parse_pid, required_unless_present_any = ["all", "exe", "object", "build_id", "pids"])]
    pub pid: Option<i32>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    // The fleet selectors (documented on FleetArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Load a patch into a process and redirect the functions it replaces.
    #[command(
        override_usage = "rlivepatch apply [OPTIONS] <PID> <PATCH>\n       rlivepatch apply [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <PATCH>"
    )]
    Apply(ApplyArgs),
    /// Disable a patch: its functions go back to the previous patch or the original,
    /// and it is unloaded.
    #[command(
        override_usage = "rlivepatch disable [OPTIONS] <PID> <NAME>\n       rlivepatch disable [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <NAME>"
    )]
    Disable(DisableArgs),
    /// List the patches applied to a process, oldest first; with --all, those of every
    /// process, read without stopping any.
    List(OneOrFleet),
    /// Dry run of apply: would the switch be safe now, and which threads block where?
    /// Changes nothing. Exits 0 when safe, 6 when a thread blocks. With a fleet
    /// selector, the compliance report: which processes run the patch (covered), which
    /// run the build it is for without it (needed), which run another build (mismatch);
    /// nothing is stopped.
    #[command(
        override_usage = "rlivepatch check [OPTIONS] <PID> <PATCH>\n       rlivepatch check [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <PATCH>"
    )]
    Check(CheckArgs),
    /// Print the RLIVEPATCH_BUILD_ID line for a binary or library, to pin a patch to it.
    BuildId(BuildIdArgs),
    /// Finish or undo what an interrupted rlivepatch run left in a process (apply and
    /// disable do this first by themselves).
    Repair(OneOrFleet),
    /// Build a patch from a source diff: the units the diff touches are compiled twice
    /// with the project's own commands, diffed as objects, proven against the binary
    /// instruction by instruction, and the changed code shipped as the compiler made it.
    ///
    /// Example: rlivepatch build --source ~/src/expat --diff CVE-2024-45490.patch
    ///          --binary /usr/lib/x86_64-linux-gnu/libexpat.so.1 --build 'make'
    Build(BuildArgs),
    /// List the functions and variables of a process whose names match PATTERN (a
    /// substring, or a glob with * and ?), with object, address, size, binding, the
    /// debug file used, and whether each function can take a patch. Nothing is stopped.
    Symbols(SymbolsArgs),
    /// The C SDK for writing patches: `cc $(rlivepatch sdk --cflags) -o fix.so fix.c`.
    Sdk(SdkArgs),
    /// Print the man page (roff), generated from this command line's definitions; with
    /// --dir, write it and a page per command there.
    #[command(hide = true)]
    Manpage(ManpageArgs),
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions(CompletionsArgs),
    /// Register a patch for processes started later: a process whose objects match its
    /// build-ids runs it from the first call of main on, when it runs with the autoload
    /// library (see `rlivepatch autoload`). The registry is /var/lib/rlivepatch/persist
    /// (RLIVEPATCH_REGISTRY), owned by root.
    Persist(PersistArgs),
    /// Remove a persisted patch: processes started from now on run without it.
    Unpersist(UnpersistArgs),
    /// Make processes load the autoload library, which applies the persisted patches at
    /// their start: for one systemd unit (a drop-in) or for the whole host
    /// (/etc/ld.so.preload). Kill switches: RLIVEPATCH_AUTOLOAD=0, or a file named
    /// `disabled` in the registry.
    Autoload(AutoloadArgs),
    /// Catch every exec of the programs the persisted patches are for (fanotify exec
    /// permission events), and have each new process apply them before main, as the
    /// autoload library does: for hosts that refuse a preload. Runs until killed; other
    /// programs are never stopped nor traced.
    Watch(WatchArgs),
    /// Run by the autoload library inside a starting process: apply the persisted
    /// patches that match it.
    #[command(hide = true)]
    AutoloadApply(AutoloadApplyArgs),
    /// Show what a patch file replaces, without loading it.
    Info(InfoArgs),
    /// Make a signing key: PATH.key (private, mode 0600) and PATH.pub (put it in a
    /// keyring directory: --keyring DIR, or /etc/rlivepatch/keys).
    Keygen(KeygenArgs),
    /// Sign a patch in place with a key of `keygen`: apply, check and persist then name
    /// the signer, and accept it where signatures are required.
    Sign(SignArgs),
}

/// Load a patch into a process and redirect the functions it replaces.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The process id (or, with a fleet selector, the patch).
    #[arg(value_name = "PID")]
    pub pid: Option<String>,
    /// The patch (.so built with rlivepatch.h).
    #[arg(value_name = "PATCH")]
    pub patch: Option<String>,
    /// More pids, unquoted `$(pidof x)`: refused with a message.
    #[arg(hide = true)]
    pub more: Vec<String>,
    /// Give up when no safe moment to switch came within this many seconds.
    #[arg(long, default_value = "15", value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Duration,
    /// Switch without checking that no thread is inside a changed function. A forced
    /// patch can never be unloaded.
    #[arg(long)]
    pub force: bool,
    // Trust and signatures (documented on TrustArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Also look for separate debug files (for stripped objects) in DIR: by build-id
    /// (DIR/.build-id/xx/yyyy.debug) and by .gnu_debuglink. /usr/lib/debug is always
    /// searched.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// A patch may change objects the process has not loaded yet (a plugin, a gconv
    /// module): they are found where the loader would find them (LD_LIBRARY_PATH,
    /// ld.so.conf, the default directories, next to loaded objects), and in DIR.
    #[arg(long, value_name = "DIR")]
    pub library_path: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    // The fleet selectors (documented on FleetArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Disable a patch: its functions go back to the previous patch or the original,
/// and it is unloaded.
#[derive(clap::Args, Debug)]
pub struct DisableArgs {
    /// The process id (or, with a fleet selector, the patch name).
    #[arg(value_name = "PID")]
    pub pid: Option<String>,
    /// The patch name (see `rlivepatch list`).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// More pids, unquoted `$(pidof x)`: refused with a message.
    #[arg(hide = true)]
    pub more: Vec<String>,
    /// Give up when no safe moment to switch came within this many seconds.
    #[arg(long, default_value = "15", value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Duration,
    /// Switch without checking that no thread is inside the patch's functions; the
    /// patch's code then stays loaded.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    // The fleet selectors (documented on FleetArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Dry run of apply: would the switch be safe now, and which threads block where?
/// Changes nothing. Exits 0 when safe, 6 when a thread blocks. With a fleet
/// selector, the compliance report: which processes run the patch (covered), which
/// run the build it is for without it (needed), which run another build (mismatch);
/// nothing is stopped.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The process id (or, with a fleet selector, the patch).
    #[arg(value_name = "PID")]
    pub pid: Option<String>,
    /// The patch (.so built with rlivepatch.h).
    #[arg(value_name = "PATCH")]
    pub patch: Option<String>,
    /// Also look for separate debug files in DIR (see apply).
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// Also look for objects the process has not loaded yet in DIR (see apply).
    #[arg(long, value_name = "DIR")]
    pub library_path: Vec<PathBuf>,
    // Trust and signatures (documented on TrustArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    // The fleet selectors (documented on FleetArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Print the RLIVEPATCH_BUILD_ID line for a binary or library, to pin a patch to it.
#[derive(clap::Args, Debug)]
pub struct BuildIdArgs {
    /// The ELF file the patch is written for.
    pub file: PathBuf,
    /// The object name to use in the line (default: "main" for an executable, the
    /// soname or file name for a library).
    #[arg(long)]
    pub object: Option<String>,
}

/// Build a patch from a source diff: the units the diff touches are compiled twice
/// with the project's own commands, diffed as objects, proven against the binary
/// instruction by instruction, and the changed code shipped as the compiler made it.
///
/// Example: rlivepatch build --source ~/src/expat --diff CVE-2024-45490.patch
///          --binary /usr/lib/x86_64-linux-gnu/libexpat.so.1 --build 'make'
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The project's source tree, as the binary was built from it (never modified).
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,
    /// A unified diff (git diff or diff -u); may be repeated.
    #[arg(long = "diff", value_name = "FILE", required = true)]
    pub diffs: Vec<PathBuf>,
    /// The executable or library the patch is for, as it runs; may be repeated.
    #[arg(long = "binary", value_name = "FILE", required = true)]
    pub binaries: Vec<PathBuf>,
    /// How the project builds (run once in a copy, under a compiler wrapper, to learn
    /// each unit's command).
    #[arg(long, value_name = "CMD", conflicts_with = "compile_commands")]
    pub build: Option<String>,
    /// The project's compile_commands.json, instead of --build.
    #[arg(long, value_name = "FILE")]
    pub compile_commands: Option<PathBuf>,
    /// Also look for the binary's separate debug file in DIR.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// The patch's name (default: the output file's name without `.so`, else the first diff's).
    #[arg(long)]
    pub name: Option<String>,
    /// Make it an atomic-replace patch (it replaces every patch applied before it).
    #[arg(long)]
    pub replace: bool,
    /// Where to write the patch (default: NAME.so).
    #[arg(short, long, value_name = "OUT.so")]
    pub output: Option<PathBuf>,
    /// Print the report and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Sign the patch written with this key (PATH.key of `rlivepatch keygen`).
    #[arg(long, value_name = "KEY", conflicts_with = "dry_run")]
    pub sign_key: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// List the functions and variables of a process whose names match PATTERN (a
/// substring, or a glob with * and ?), with object, address, size, binding, the
/// debug file used, and whether each function can take a patch. Nothing is stopped.
#[derive(clap::Args, Debug)]
pub struct SymbolsArgs {
    /// The process id.
    #[arg(value_parser = parse_pid)]
    pub pid: i32,
    /// Substring or glob of the names (mangled or demangled); all when absent.
    pub pattern: Option<String>,
    /// Only this object (file name, soname, path, or "main").
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// Also look for separate debug files in DIR.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The C SDK for writing patches: `cc $(rlivepatch sdk --cflags) -o fix.so fix.c`.
#[derive(clap::Args, Debug)]
pub struct SdkArgs {
    /// Print the compiler flags that build a patch (the header's directory included).
    #[arg(long, conflicts_with = "header")]
    pub cflags: bool,
    /// Print the header rlivepatch.h itself.
    #[arg(long)]
    pub header: bool,
}

/// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Register a patch for processes started later: a process whose objects match its
/// build-ids runs it from the first call of main on, when it runs with the autoload
/// library (see `rlivepatch autoload`). The registry is /var/lib/rlivepatch/persist
/// (RLIVEPATCH_REGISTRY), owned by root.
#[derive(clap::Args, Debug)]
pub struct PersistArgs {
    /// The patch (.so, with RLIVEPATCH_BUILD_ID records).
    #[arg(required_unless_present = "list")]
    pub patch: Option<PathBuf>,
    /// List the persisted patches instead.
    #[arg(long)]
    pub list: bool,
    /// Also apply it to processes started without its libraries, which it then waits
    /// for (they are patched when loaded); every process the autoload library starts
    /// in is then traced for a moment at its start.
    #[arg(long, conflicts_with = "list")]
    pub wait: bool,
    // Trust and signatures (documented on TrustArgs).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Remove a persisted patch: processes started from now on run without it.
#[derive(clap::Args, Debug)]
pub struct UnpersistArgs {
    /// The patch name.
    pub name: String,
}

/// Make processes load the autoload library, which applies the persisted patches at
/// their start: for one systemd unit (a drop-in) or for the whole host
/// (/etc/ld.so.preload). Kill switches: RLIVEPATCH_AUTOLOAD=0, or a file named
/// `disabled` in the registry.
#[derive(clap::Args, Debug)]
pub struct AutoloadArgs {
    /// The systemd unit (nginx, or nginx.service).
    #[arg(long, value_name = "UNIT", conflicts_with = "system", required_unless_present_any = ["system", "library"])]
    pub unit: Option<String>,
    /// Every process of the host (/etc/ld.so.preload).
    #[arg(long)]
    pub system: bool,
    /// Only print where the library is (for LD_PRELOAD by hand).
    #[arg(long)]
    pub library: bool,
    /// Write under this root instead of / (for images and tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// Catch every exec of the programs the persisted patches are for (fanotify exec
/// permission events), and have each new process apply them before main, as the
/// autoload library does: for hosts that refuse a preload. Runs until killed; other
/// programs are never stopped nor traced.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// A program to watch (repeatable); without any, the programs of the running
    /// processes that a persisted patch is for.
    #[arg(long, value_name = "PATH")]
    pub exe: Vec<PathBuf>,
}

/// Run by the autoload library inside a starting process: apply the persisted
/// patches that match it.
#[derive(clap::Args, Debug)]
pub struct AutoloadApplyArgs {
    /// The starting process.
    #[arg(long, value_parser = parse_pid)]
    pub pid: i32,
    /// The registry.
    #[arg(long, value_name = "DIR")]
    pub registry: PathBuf,
}

/// Show what a patch file replaces, without loading it.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// The patch (.so).
    pub patch: PathBuf,
    /// Name signers by the keys in DIR (besides /etc/rlivepatch/keys).
    #[arg(long, value_name = "DIR")]
    pub keyring: Vec<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A process id; several (`"$(pidof nginx)"` quoted) get a message saying so.
pub fn parse_pid(s: &str) -> std::result::Result<i32, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() > 1 && words.iter().all(|w| w.parse::<i32>().is_ok()) {
        return Err(format!(
            "'{s}' is {} process ids; rlivepatch takes one per run: for p in {}; do rlivepatch ... \"$p\" ...; done",
            words.len(),
            words.join(" ")
        ));
    }
    match s.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a process id (a positive number, as `pidof` prints)"
        )),
    }
}

/// A number of seconds (`--timeout`, `--deadline`): finite, not negative.
pub fn seconds(s: &str) -> std::result::Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "'{s}' is not a number of seconds (a finite number, 0 or more)"
        )),
    }
}

/// `rlivepatch manpage`.
#[derive(clap::Args, Debug)]
pub struct ManpageArgs {
    /// Write rlivepatch.1 and rlivepatch-COMMAND.1 for each command into DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Which patch files are accepted.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Load a patch file other users may change (writable by group or others, owned by
    /// another user than root, or in a directory others may write without the sticky
    /// bit): for development only. Refused otherwise, since whoever can change the file
    /// decides what runs in the process; refused always where the host's policy requires
    /// signed patches.
    #[arg(long)]
    pub allow_untrusted: bool,
    /// Public keys (NAME.pub, from `rlivepatch keygen`) whose signatures are accepted,
    /// besides /etc/rlivepatch/keys.
    #[arg(long, value_name = "DIR")]
    pub keyring: Vec<PathBuf>,
    /// Refuse a patch that is not signed by a key of the keyring (/etc/rlivepatch/policy
    /// can require this for every run; nothing turns that off).
    #[arg(long)]
    pub require_signature: bool,
}

impl TrustArgs {
    /// The engine's form.
    pub fn acceptance(&self) -> crate::patch::Acceptance {
        crate::patch::Acceptance {
            allow_untrusted: self.allow_untrusted,
            keyring: self.keyring.clone(),
            require_signature: self.require_signature,
            any_file: false,
        }
    }
}

/// `rlivepatch keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Writes PATH.key (the private key, mode 0600) and PATH.pub (for keyrings).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// `rlivepatch sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The private key (PATH.key of `rlivepatch keygen`).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The patch, signed in place (the signature travels at its end).
    #[arg(value_name = "PATCH")]
    pub patch: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn full(line: &str) -> Option<String> {
        let args: Vec<&str> = std::iter::once("rlivepatch")
            .chain(line.split_whitespace())
            .collect();
        match Cli::try_parse_from(args).ok()?.command {
            Command::Apply(a) => Some(format!("{a:?}")),
            Command::Disable(a) => Some(format!("{a:?}")),
            _ => Some("another command".into()),
        }
    }

    fn quick(line: &str) -> Option<String> {
        let args: Vec<std::ffi::OsString> = std::iter::once("rlivepatch")
            .chain(line.split_whitespace())
            .map(Into::into)
            .collect();
        match Cli::quick(&args)?.command {
            Command::Apply(a) => Some(format!("{a:?}")),
            Command::Disable(a) => Some(format!("{a:?}")),
            _ => None,
        }
    }

    /// `apply` and `disable` parsed with their own arguments alone give what the whole
    /// command gives; what they refuse (help, mistakes, other commands) is left to the
    /// whole command, whose messages and exit codes stand.
    #[test]
    fn the_quick_parse_is_the_whole_commands() {
        for line in [
            "apply 123 fix.so",
            "apply --json --timeout 3 123 fix.so",
            "apply --force --debug-dir /a --debug-dir /b --library-path /c 123 fix.so",
            "apply --all fix.so",
            "apply --exe ./x --jobs 4 --deadline 60 --require-match fix.so",
            "apply --object libc.so.6 --exclude-pid 7 --pid 8 --pid 9 fix.so",
            "apply 1 2 3",
            "apply --allow-untrusted 123 fix.so",
            "disable 123 fix",
            "disable --json --force --timeout 2.5 123 fix",
            "disable --build-id abcd fix",
        ] {
            let q = quick(line);
            assert!(q.is_some(), "{line}: not taken by the shortcut");
            assert_eq!(q, full(line), "{line}");
        }
        for line in [
            "apply --help",
            "apply -h",
            "apply --version",
            "apply --timeout x 1 f.so",
            "apply --no-such-option 1 f.so",
            "disable --jobs",
            "list 123",
            "--version",
            "",
        ] {
            assert_eq!(
                quick(line),
                None,
                "{line}: should be left to the whole command"
            );
        }
    }
}
