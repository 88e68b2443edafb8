//! The `rlivepatch` command line: parses arguments, calls the library, prints.

use clap::{Parser, Subcommand};
use rlivepatch::error::{Error, ErrorKind};
use rlivepatch::ops::report::{InfoView, ListView};
use rlivepatch::ops::{self, Options};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Livepatch running x86_64 Linux processes.
///
/// A patch is a shared object built from one C file with the SDK header rlivepatch.h; it
/// names the functions it replaces. `apply` loads it into a running process and redirects
/// every later call of those functions to the patch's code, switching only when no thread
/// is inside a function being changed; `disable` takes it back.
#[derive(Parser)]
#[command(name = "rlivepatch", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  failed (the target is left as it was)
  2  bad command line
  3  target problem: no such process, no permission, unsupported or traced by another tool
  4  patch file problem: missing, not an x86_64 shared object, bad metadata, cannot be loaded
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
 14  fleet run refused before touching any process
 15  fleet run selected nothing, with --require-match";

/// Selectors and limits of a run over many processes.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Fleet options (instead of a PID; combinable)")]
struct FleetArgs {
    /// Every process that maps every object the patch changes (matched by the build-id
    /// of the file each process mapped, when the patch carries build-ids); for
    /// disable, list and repair: every process with rlivepatch's state.
    #[arg(long)]
    all: bool,
    /// Processes running this executable.
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Processes that map an object of this name (file name, soname or path; also a
    /// file deleted or replaced on disk since).
    #[arg(long, value_name = "NAME")]
    object: Option<String>,
    /// Processes that map an object with this GNU build-id.
    #[arg(long, value_name = "HEX")]
    build_id: Option<String>,
    /// This process (repeatable).
    #[arg(long = "pid", value_name = "P", value_parser = parse_pid)]
    pids: Vec<i32>,
    /// Never this process (repeatable).
    #[arg(long = "exclude-pid", value_name = "P", value_parser = parse_pid)]
    exclude: Vec<i32>,
    /// Processes worked on at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Give up on processes not reached within this many seconds of the start.
    #[arg(long, value_name = "SECONDS")]
    deadline: Option<f64>,
    /// An empty selection is an error (exit 15).
    #[arg(long)]
    require_match: bool,
}

impl FleetArgs {
    fn selection(&self) -> rlivepatch::fleet::select::Selection {
        rlivepatch::fleet::select::Selection {
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
struct OneOrFleet {
    /// The process id.
    #[arg(value_parser = parse_pid, required_unless_present_any = ["all", "exe", "object", "build_id", "pids"])]
    pid: Option<i32>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fleet: FleetArgs,
}

impl OneOrFleet {
    /// The one process to work on, or (a fleet selection) `op` run over the fleet and
    /// its exit code.
    fn single(&self, op: rlivepatch::fleet::Op) -> Result<Result<i32, u8>, Error> {
        match self.pid.filter(|_| !self.fleet.selection().given()) {
            Some(pid) => Ok(Ok(pid)),
            None => run_fleet(&op, &self.fleet, Options::default(), self.json).map(Err),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load a patch into a process and redirect the functions it replaces.
    #[command(
        override_usage = "rlivepatch apply [OPTIONS] <PID> <PATCH>\n       rlivepatch apply [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <PATCH>"
    )]
    Apply {
        /// The process id (or, with a fleet selector, the patch).
        #[arg(value_name = "PID")]
        pid: Option<String>,
        /// The patch (.so built with rlivepatch.h).
        #[arg(value_name = "PATCH")]
        patch: Option<String>,
        /// More pids, unquoted `$(pidof x)`: refused with a message.
        #[arg(hide = true)]
        more: Vec<String>,
        /// Give up when no safe moment to switch came within this many seconds.
        #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
        timeout: f64,
        /// Switch without checking that no thread is inside a changed function. A forced
        /// patch can never be unloaded.
        #[arg(long)]
        force: bool,
        /// Also look for separate debug files (for stripped objects) in DIR: by build-id
        /// (DIR/.build-id/xx/yyyy.debug) and by .gnu_debuglink. /usr/lib/debug is always
        /// searched.
        #[arg(long, value_name = "DIR")]
        debug_dir: Vec<PathBuf>,
        /// A patch may change objects the process has not loaded yet (a plugin, a gconv
        /// module): they are found where the loader would find them (LD_LIBRARY_PATH,
        /// ld.so.conf, the default directories, next to loaded objects), and in DIR.
        #[arg(long, value_name = "DIR")]
        library_path: Vec<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Disable a patch: its functions go back to the previous patch or the original,
    /// and it is unloaded.
    #[command(
        override_usage = "rlivepatch disable [OPTIONS] <PID> <NAME>\n       rlivepatch disable [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <NAME>"
    )]
    Disable {
        /// The process id (or, with a fleet selector, the patch name).
        #[arg(value_name = "PID")]
        pid: Option<String>,
        /// The patch name (see `rlivepatch list`).
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// More pids, unquoted `$(pidof x)`: refused with a message.
        #[arg(hide = true)]
        more: Vec<String>,
        /// Give up when no safe moment to switch came within this many seconds.
        #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
        timeout: f64,
        /// Switch without checking that no thread is inside the patch's functions; the
        /// patch's code then stays loaded.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// List the patches applied to a process, oldest first; with --all, those of every
    /// process, read without stopping any.
    List {
        #[command(flatten)]
        target: OneOrFleet,
    },
    /// Dry run of apply: would the switch be safe now, and which threads block where?
    /// Changes nothing. Exits 0 when safe, 6 when a thread blocks. With a fleet
    /// selector, the compliance report: which processes run the patch (covered), which
    /// run the build it is for without it (needed), which run another build (mismatch);
    /// nothing is stopped.
    #[command(
        override_usage = "rlivepatch check [OPTIONS] <PID> <PATCH>\n       rlivepatch check [OPTIONS] <--all|--exe PATH|--object NAME|--build-id HEX|--pid P>... <PATCH>"
    )]
    Check {
        /// The process id (or, with a fleet selector, the patch).
        #[arg(value_name = "PID")]
        pid: Option<String>,
        /// The patch (.so built with rlivepatch.h).
        #[arg(value_name = "PATCH")]
        patch: Option<String>,
        /// Also look for separate debug files in DIR (see apply).
        #[arg(long, value_name = "DIR")]
        debug_dir: Vec<PathBuf>,
        /// Also look for objects the process has not loaded yet in DIR (see apply).
        #[arg(long, value_name = "DIR")]
        library_path: Vec<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Print the RLIVEPATCH_BUILD_ID line for a binary or library, to pin a patch to it.
    BuildId {
        /// The ELF file the patch is written for.
        file: PathBuf,
        /// The object name to use in the line (default: "main" for an executable, the
        /// soname or file name for a library).
        #[arg(long)]
        object: Option<String>,
    },
    /// Finish or undo what an interrupted rlivepatch run left in a process (apply and
    /// disable do this first by themselves).
    Repair {
        #[command(flatten)]
        target: OneOrFleet,
    },
    /// Build a patch from a source diff: the units the diff touches are compiled twice
    /// with the project's own commands, diffed as objects, proven against the binary
    /// instruction by instruction, and the changed code shipped as the compiler made it.
    ///
    /// Example: rlivepatch build --source ~/src/expat --diff CVE-2024-45490.patch
    ///          --binary /usr/lib/x86_64-linux-gnu/libexpat.so.1 --build 'make'
    Build {
        /// The project's source tree, as the binary was built from it (never modified).
        #[arg(long, value_name = "DIR")]
        source: PathBuf,
        /// A unified diff (git diff or diff -u); may be repeated.
        #[arg(long = "diff", value_name = "FILE", required = true)]
        diffs: Vec<PathBuf>,
        /// The executable or library the patch is for, as it runs; may be repeated.
        #[arg(long = "binary", value_name = "FILE", required = true)]
        binaries: Vec<PathBuf>,
        /// How the project builds (run once in a copy, under a compiler wrapper, to learn
        /// each unit's command).
        #[arg(long, value_name = "CMD", conflicts_with = "compile_commands")]
        build: Option<String>,
        /// The project's compile_commands.json, instead of --build.
        #[arg(long, value_name = "FILE")]
        compile_commands: Option<PathBuf>,
        /// Also look for the binary's separate debug file in DIR.
        #[arg(long, value_name = "DIR")]
        debug_dir: Vec<PathBuf>,
        /// The patch's name (default: the first diff's file name).
        #[arg(long)]
        name: Option<String>,
        /// Make it an atomic-replace patch (it replaces every patch applied before it).
        #[arg(long)]
        replace: bool,
        /// Where to write the patch (default: NAME.so).
        #[arg(short, long, value_name = "OUT.so")]
        output: Option<PathBuf>,
        /// Print the report and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the functions and variables of a process whose names match PATTERN (a
    /// substring, or a glob with * and ?), with object, address, size, binding, the
    /// debug file used, and whether each function can take a patch. Nothing is stopped.
    Symbols {
        /// The process id.
        #[arg(value_parser = parse_pid)]
        pid: i32,
        /// Substring or glob of the names (mangled or demangled); all when absent.
        pattern: Option<String>,
        /// Only this object (file name, soname, path, or "main").
        #[arg(long, value_name = "NAME")]
        object: Option<String>,
        /// Also look for separate debug files in DIR.
        #[arg(long, value_name = "DIR")]
        debug_dir: Vec<PathBuf>,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The C SDK for writing patches: `cc $(rlivepatch sdk --cflags) -o fix.so fix.c`.
    Sdk {
        /// Print the compiler flags that build a patch (the header's directory included).
        #[arg(long, conflicts_with = "header")]
        cflags: bool,
        /// Print the header rlivepatch.h itself.
        #[arg(long)]
        header: bool,
    },
    /// Print the man page (roff), generated from this command line's definitions.
    #[command(hide = true)]
    Manpage,
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Register a patch for processes started later: a process whose objects match its
    /// build-ids runs it from the first call of main on, when it runs with the autoload
    /// library (see `rlivepatch autoload`). The registry is /var/lib/rlivepatch/persist
    /// (RLIVEPATCH_REGISTRY), owned by root.
    Persist {
        /// The patch (.so, with RLIVEPATCH_BUILD_ID records).
        #[arg(required_unless_present = "list")]
        patch: Option<PathBuf>,
        /// List the persisted patches instead.
        #[arg(long)]
        list: bool,
        /// Also apply it to processes started without its libraries, which it then waits
        /// for (they are patched when loaded); every process the autoload library starts
        /// in is then traced for a moment at its start.
        #[arg(long, conflicts_with = "list")]
        wait: bool,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a persisted patch: processes started from now on run without it.
    Unpersist {
        /// The patch name.
        name: String,
    },
    /// Make processes load the autoload library, which applies the persisted patches at
    /// their start: for one systemd unit (a drop-in) or for the whole host
    /// (/etc/ld.so.preload). Kill switches: RLIVEPATCH_AUTOLOAD=0, or a file named
    /// `disabled` in the registry.
    Autoload {
        /// The systemd unit (nginx, or nginx.service).
        #[arg(long, value_name = "UNIT", conflicts_with = "system", required_unless_present_any = ["system", "library"])]
        unit: Option<String>,
        /// Every process of the host (/etc/ld.so.preload).
        #[arg(long)]
        system: bool,
        /// Only print where the library is (for LD_PRELOAD by hand).
        #[arg(long)]
        library: bool,
        /// Write under this root instead of / (for images and tests).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
    /// Catch every exec of the programs the persisted patches are for (fanotify exec
    /// permission events), and have each new process apply them before main, as the
    /// autoload library does: for hosts that refuse a preload. Runs until killed; other
    /// programs are never stopped nor traced.
    Watch {
        /// A program to watch (repeatable); without any, the programs of the running
        /// processes that a persisted patch is for.
        #[arg(long, value_name = "PATH")]
        exe: Vec<PathBuf>,
    },
    /// Run by the autoload library inside a starting process: apply the persisted
    /// patches that match it.
    #[command(hide = true)]
    AutoloadApply {
        /// The starting process.
        #[arg(long, value_parser = parse_pid)]
        pid: i32,
        /// The registry.
        #[arg(long, value_name = "DIR")]
        registry: PathBuf,
    },
    /// Show what a patch file replaces, without loading it.
    Info {
        /// The patch (.so).
        patch: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// A process id; several (`"$(pidof nginx)"` quoted) get a message saying so.
fn parse_pid(s: &str) -> std::result::Result<i32, String> {
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

/// The positional arguments of `apply`, `disable` and `check`: `<PID> <X>`, or with a
/// fleet selector `<X>` alone. Returns the pid (none for a fleet run) and X.
fn targets(
    fleet: &FleetArgs,
    first: Option<String>,
    second: Option<String>,
    more: &[String],
    what: &str,
) -> Result<(Option<i32>, String), Error> {
    let usage = |m: String| Error {
        kind: ErrorKind::Usage,
        message: m,
    };
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
fn run_fleet(
    op: &rlivepatch::fleet::Op,
    fleet: &FleetArgs,
    opts: Options,
    json: bool,
) -> Result<u8, Error> {
    let fo = rlivepatch::fleet::FleetOptions {
        jobs: fleet.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        deadline: fleet.deadline.map(seconds).transpose()?,
        require_match: fleet.require_match,
        opts,
    };
    let say = |l: &str| eprintln!("rlivepatch: {l}");
    match rlivepatch::fleet::run(op, &fleet.selection(), &fo, &say) {
        Ok(r) => {
            if json {
                print_json(&r);
            } else {
                print!("{}", r.text());
            }
            Ok(r.exit)
        }
        Err(e) => {
            eprintln!("rlivepatch: error: {}", e.message);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "changed": false, "failed": true, "msg": e.message, "error": { "kind": e.kind, "message": e.message } })
                );
            }
            Ok(14)
        }
    }
}

/// `apply 123 456 fix.so` (an unquoted `$(pidof nginx)`): several pids, said so.
fn one_pid(pid: i32, second: &str, more: &[String]) -> Result<(), Error> {
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
        return Err(Error {
            kind: ErrorKind::Usage,
            message: format!(
                "{} process ids given ({}); rlivepatch takes one per run: for p in {}; do rlivepatch ... \"$p\" ...; done",
                pids.len(),
                pids.join(" "),
                pids.join(" ")
            ),
        });
    }
    Err(Error {
        kind: ErrorKind::Usage,
        message: format!("unexpected argument '{}'", more[0]),
    })
}

fn main() -> ExitCode {
    // Called as `cc` under `rlivepatch build`: log the call and run the compiler.
    rlivepatch::generate::wrapper::run_if_wrapper();
    rlivepatch::os::fault::init();
    let cli = Cli::parse();
    // SIGINT, SIGTERM and SIGHUP are read by the tracer between two steps, so that the
    // current step can be undone; until then they wait.
    // rlivepatch's priority follows what it does (see the pace module).
    rlivepatch::os::pace::init();
    if let Err(e) = rlivepatch::os::ptrace::block_tool_signals() {
        eprintln!("rlivepatch: error: {}", e.message);
        return ExitCode::FAILURE;
    }
    let json = match &cli.command {
        Command::Apply { json, .. }
        | Command::Disable { json, .. }
        | Command::List {
            target: OneOrFleet { json, .. },
        }
        | Command::Check { json, .. }
        | Command::Repair {
            target: OneOrFleet { json, .. },
        }
        | Command::Info { json, .. }
        | Command::Symbols { json, .. }
        | Command::Persist { json, .. }
        | Command::Build { json, .. } => *json,
        Command::BuildId { .. }
        | Command::Sdk { .. }
        | Command::Unpersist { .. }
        | Command::Autoload { .. }
        | Command::AutoloadApply { .. }
        | Command::Watch { .. }
        | Command::Manpage
        | Command::Completions { .. } => false,
    };
    let r = run(cli.command);
    rlivepatch::os::fault::trace(&format!(
        "end (paced {:.1} ms)",
        rlivepatch::os::pace::paused_ms()
    ));
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rlivepatch: error: {}", e.message);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": { "kind": e.kind, "message": e.message } })
                );
            }
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}

fn progress(line: &str) {
    eprintln!("rlivepatch: {line}");
}

/// Bytes on stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(b: &[u8]) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(b);
}

fn print_json<T: serde::Serialize>(v: &T) {
    let mut text = serde_json::to_string_pretty(v).expect("serializable");
    text.push('\n');
    print_bytes(text.as_bytes());
}

fn seconds(s: f64) -> Result<Duration, Error> {
    if !(s.is_finite() && s >= 0.0) {
        return Err(Error::new(
            ErrorKind::Failed,
            format!("invalid timeout {s}"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn run(cmd: Command) -> Result<u8, Error> {
    match cmd {
        Command::Apply {
            pid,
            patch,
            fleet,
            more,
            timeout,
            force,
            debug_dir,
            library_path,
            json,
        } => {
            let (pid, patch) = targets(&fleet, pid, patch, &more, "patch")?;
            let patch = PathBuf::from(patch);
            let opts = Options {
                timeout: seconds(timeout)?,
                force,
                debug_dirs: debug_dir,
                library_path,
                ..Options::default()
            };
            if pid.is_none() {
                return run_fleet(&rlivepatch::fleet::Op::Apply(patch), &fleet, opts, json);
            }
            let pid = pid.unwrap_or_default();
            let r = ops::apply(pid, &patch, &opts, &mut progress)?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "applied patch {} to process {} in {:.1} ms",
                    r.patch, r.pid, r.elapsed_ms
                );
                for f in &r.functions {
                    println!("  {}", f.line());
                }
                for p in &r.pending {
                    println!("  {}", p.line());
                }
                if !r.replaced.is_empty() {
                    println!("  replaced: {}", r.replaced.join(", "));
                }
            }
        }
        Command::Disable {
            pid,
            name,
            fleet,
            more,
            timeout,
            force,
            json,
        } => {
            let (pid, name) = targets(&fleet, pid, name, &more, "patch name")?;
            if pid.is_none() {
                let opts = Options {
                    timeout: seconds(timeout)?,
                    force,
                    ..Options::default()
                };
                return run_fleet(&rlivepatch::fleet::Op::Disable(name), &fleet, opts, json);
            }
            let pid = pid.unwrap_or_default();
            let opts = Options {
                timeout: seconds(timeout)?,
                force,
                ..Options::default()
            };
            let r = ops::disable(pid, &name, &opts, &mut progress)?;
            if json {
                print_json(&r);
            } else if r.unloaded {
                println!(
                    "disabled and unloaded patch {} from process {} in {:.1} ms",
                    r.patch, r.pid, r.elapsed_ms
                );
            } else {
                println!(
                    "disabled patch {} in process {}; its code stays loaded (forced patch)",
                    r.patch, r.pid
                );
            }
        }
        Command::Symbols {
            pid,
            pattern,
            object,
            debug_dir,
            json,
        } => {
            let views = rlivepatch::lookup::symbols(
                pid,
                pattern.as_deref().unwrap_or(""),
                object.as_deref(),
                &debug_dir,
            )?;
            if json {
                print_json(&views);
            } else {
                print!("{}", rlivepatch::lookup::text(&views));
            }
        }
        Command::List { target } => {
            let json = target.json;
            let pid = match target.single(rlivepatch::fleet::Op::List)? {
                Ok(pid) => pid,
                Err(code) => return Ok(code),
            };
            let (proc, maps, rec) = ops::read_record(pid)?;
            let objects = rlivepatch::elf::objects::Objects::new(&proc, &maps, &[])?;
            let mut view = ListView::new(pid, &proc.status.name, &rec, &objects);
            view.add_coming(&proc, &rec);
            let left = rlivepatch::livepatch::leftovers::scan(&proc, &maps, &rec, None);
            if !left.is_empty() && view.pending.is_none() {
                view.pending = Some(format!(
                    "{}; run `rlivepatch repair {pid}`",
                    left.describe()
                ));
            }
            if json {
                print_json(&view);
            } else {
                print!("{}", view.text());
            }
        }
        Command::Check {
            pid,
            patch,
            fleet,
            debug_dir,
            library_path,
            json,
        } => {
            let (pid, patch) = targets(&fleet, pid, patch, &[], "patch")?;
            let patch = PathBuf::from(patch);
            let opts = Options {
                debug_dirs: debug_dir,
                library_path,
                ..Options::default()
            };
            let Some(pid) = pid else {
                return run_fleet(&rlivepatch::fleet::Op::Check(patch), &fleet, opts, json);
            };
            let r = ops::check(pid, &patch, &opts, &mut progress)?;
            if json {
                print_json(&r);
            } else if r.safe {
                println!(
                    "patch {}: switching process {} now would be safe ({} checked)",
                    r.patch,
                    r.pid,
                    rlivepatch::fmt::plural(r.threads, "thread", "threads")
                );
            } else {
                println!(
                    "patch {}: switching process {} now would NOT be safe:",
                    r.patch, r.pid
                );
                for b in &r.blockers {
                    println!("  {}", b.describe());
                }
            }
            if !json {
                for p in &r.pending {
                    println!("  {}", p.line());
                }
            }
            if !r.safe {
                return Ok(ErrorKind::Busy.exit_code() as u8);
            }
        }
        Command::Repair { target } => {
            let json = target.json;
            let pid = match target.single(rlivepatch::fleet::Op::Repair)? {
                Ok(pid) => pid,
                Err(code) => return Ok(code),
            };
            let actions = ops::repair(pid, &Options::default(), &mut progress)?;
            if json {
                print_json(&serde_json::json!({ "pid": pid, "actions": actions }));
            } else if actions.is_empty() {
                println!("process {pid}: nothing to repair");
            } else {
                for a in &actions {
                    println!("{a}");
                }
            }
        }
        Command::Persist {
            patch,
            list,
            wait,
            json,
        } => {
            let reg = rlivepatch::persist::registry();
            if list {
                let entries = rlivepatch::persist::list(&reg)?;
                if json {
                    print_json(&entries);
                } else if entries.is_empty() {
                    println!("no persisted patches in {}", reg.display());
                } else {
                    for e in &entries {
                        let ids: Vec<String> = e
                            .build_ids
                            .iter()
                            .map(|(o, id)| format!("{o} {id}"))
                            .collect();
                        println!("{} ({}): for {}", e.name, e.file.display(), ids.join(", "));
                    }
                }
            } else if let Some(patch) = patch {
                let e = rlivepatch::persist::persist(&patch, wait)?;
                if json {
                    print_json(&e);
                } else {
                    println!(
                        "persisted patch {} in {}: processes started from now on with the autoload library run it (rlivepatch autoload --unit UNIT, or --system)",
                        e.name,
                        reg.display()
                    );
                }
            }
        }
        Command::Unpersist { name } => {
            rlivepatch::persist::unpersist(&name)?;
            println!(
                "patch {name} is no longer persisted; processes started from now on run without it"
            );
        }
        Command::Watch { exe } => {
            let reg = rlivepatch::persist::registry();
            let exes = rlivepatch::persist::watch::executables(&exe, &reg)?;
            rlivepatch::persist::watch::run(&exes, &reg, &mut progress)?;
        }
        Command::Autoload {
            unit,
            system,
            library,
            root,
        } => {
            let lib = rlivepatch::persist::library_path(&rlivepatch::persist::registry());
            if library {
                println!("{}", lib.display());
            } else if system {
                let p = rlivepatch::persist::install_system(&root)?;
                println!(
                    "{} loads {} into every process started from now on",
                    p.display(),
                    lib.display()
                );
            } else if let Some(unit) = unit {
                let p = rlivepatch::persist::install_unit(&unit, &root)?;
                println!(
                    "wrote {}; run `systemctl daemon-reload` and restart the unit",
                    p.display()
                );
            }
        }
        Command::AutoloadApply { pid, registry } => {
            // Inside a starting program, only what went wrong is worth its stderr.
            let mut say = |l: &str| {
                if !l.starts_with("note:") {
                    eprintln!("rlivepatch autoload: {l}");
                }
            };
            rlivepatch::persist::autoload_apply(pid, &registry, &mut say)?;
        }
        Command::Sdk { cflags, header } => {
            if header {
                print!("{}", rlivepatch::patch::sdk::HEADER);
            } else if cflags {
                println!("{}", rlivepatch::patch::sdk::cflags()?);
            } else {
                println!(
                    "header: {}/rlivepatch.h\nbuild a patch: cc $(rlivepatch sdk --cflags) -o fix.so fix.c",
                    rlivepatch::patch::sdk::include_dir()?.display()
                );
            }
        }
        Command::Manpage => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Error {
                    kind: ErrorKind::Failed,
                    message: format!("writing the man page: {e}"),
                })?;
            print_bytes(&out);
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rlivepatch", &mut out);
            print_bytes(&out);
        }
        Command::BuildId { file, object } => {
            println!(
                "{}",
                rlivepatch::elf::buildid::line(&file, object.as_deref())?
            );
        }
        Command::Build {
            source,
            diffs,
            binaries,
            build,
            compile_commands,
            debug_dir,
            name,
            replace,
            output,
            dry_run,
            json,
        } => {
            let opts = rlivepatch::generate::BuildOptions {
                source,
                diffs,
                binaries,
                build,
                compile_commands,
                debug_dirs: debug_dir,
                name,
                replace,
                out: output,
                dry_run,
            };
            let r = rlivepatch::generate::build(&opts, &mut progress)?;
            if json {
                print_json(&r);
            } else {
                eprint!("{}", r.text());
            }
        }
        Command::Info { patch, json } => {
            let p = rlivepatch::patch::Patch::load(&patch)?;
            let view = InfoView::new(&p);
            if json {
                print_json(&view);
            } else {
                print!("{}", view.text());
            }
        }
    }
    Ok(0)
}
