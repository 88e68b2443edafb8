//! How each translation unit of the project is compiled: from a `compile_commands.json`,
//! or learned by running the project's own build once, in a copy, with rlivepatch in
//! place of the compiler (`cc`, `gcc`, `c++`... on `PATH` and in `CC`/`CXX`): each call
//! logs its command line and directory, then runs the real compiler unchanged.

use crate::error::Result;
use crate::{bail, err};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The names the wrapper answers to.
const COMPILERS: &[&str] = &[
    "cc",
    "gcc",
    "c++",
    "g++",
    "x86_64-linux-gnu-gcc",
    "x86_64-linux-gnu-g++",
    "gcc-12",
    "g++-12",
];

/// Environment: where the wrapper logs (set only for the build it wraps).
const LOG_ENV: &str = "RLIVEPATCH_WRAP_LOG";
/// Environment: the `PATH` to find the real compiler in.
const PATH_ENV: &str = "RLIVEPATCH_WRAP_PATH";

/// One translation unit's compile command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompileCommand {
    /// The directory it runs in.
    pub directory: PathBuf,
    /// The command line, the compiler first.
    pub arguments: Vec<String>,
    /// The source file (absolute).
    pub file: PathBuf,
}

impl CompileCommand {
    /// The value of `-o`, if any.
    pub fn output(&self) -> Option<&str> {
        let a = &self.arguments;
        a.iter()
            .position(|x| x == "-o")
            .and_then(|i| a.get(i + 1))
            .map(|s| s.as_str())
            .or_else(|| {
                a.iter()
                    .find_map(|x| x.strip_prefix("-o").filter(|r| !r.is_empty()))
            })
    }
}

/// Is `arg` a source file the compiler compiles?
fn is_source(arg: &str) -> bool {
    !arg.starts_with('-')
        && [".c", ".cc", ".cpp", ".cxx", ".C", ".c++", ".s", ".S", ".sx"]
            .iter()
            .any(|e| arg.ends_with(e))
}

/// The compile commands of one compiler call: one per source file, with `-c` (a call that
/// compiles and links at once is split, its link options dropped). Calls that compile
/// nothing (links, `-E`, `-M`, version queries) give none.
pub fn split_call(directory: &Path, args: &[String]) -> Vec<CompileCommand> {
    if args.iter().any(|a| {
        matches!(
            a.as_str(),
            "-E" | "-M"
                | "-MM"
                | "--version"
                | "-v"
                | "-dumpversion"
                | "-dumpmachine"
                | "-print-search-dirs"
        )
    }) || args
        .iter()
        .any(|a| a.starts_with("-print-") || a.starts_with("--print"))
    {
        return Vec::new();
    }
    let sources: Vec<usize> = (1..args.len())
        .filter(|&i| {
            is_source(&args[i])
                && !matches!(
                    args[i - 1].as_str(),
                    "-o" | "-MF" | "-MT" | "-MQ" | "-include" | "-x"
                )
        })
        .collect();
    if sources.is_empty() {
        return Vec::new();
    }
    let compiles_only = args.iter().any(|a| a == "-c" || a == "-S");
    let mut out = Vec::new();
    for &i in &sources {
        let mut a: Vec<String> = Vec::with_capacity(args.len());
        let mut skip = false;
        for (k, x) in args.iter().enumerate() {
            if skip {
                skip = false;
                continue;
            }
            if k != i && sources.contains(&k) {
                continue;
            }
            if !compiles_only {
                // Options for the link, which a compile ignores or warns of.
                if x.starts_with("-l")
                    || x.starts_with("-L")
                    || x.starts_with("-Wl,")
                    || x == "-shared"
                    || x == "-rdynamic"
                    || x == "-static"
                    || x == "-pie"
                    || x == "-no-pie"
                {
                    continue;
                }
                if x == "-o" {
                    skip = true;
                    continue;
                }
                if !x.starts_with('-')
                    && (x.ends_with(".o") || x.ends_with(".a") || x.ends_with(".so"))
                {
                    continue;
                }
            }
            a.push(x.clone());
        }
        if !compiles_only {
            a.push("-c".into());
        }
        let file = directory.join(&args[i]);
        out.push(CompileCommand {
            directory: directory.to_path_buf(),
            arguments: a,
            file,
        });
    }
    out
}

/// The commands of a `compile_commands.json`.
pub fn from_json(path: &Path) -> Result<Vec<CompileCommand>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err!(Build, "cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| err!(Build, "{} is not JSON: {e}", path.display()))?;
    let Some(list) = v.as_array() else {
        bail!(
            Build,
            "{} is not a compilation database (a JSON array)",
            path.display()
        );
    };
    let mut out = Vec::new();
    for e in list {
        let dir = PathBuf::from(e["directory"].as_str().unwrap_or("."));
        let args: Vec<String> = match (&e["arguments"], e["command"].as_str()) {
            (serde_json::Value::Array(a), _) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            (_, Some(c)) => shlex::split(c)
                .ok_or_else(|| err!(Build, "{}: cannot split the command {c:?}", path.display()))?,
            _ => continue,
        };
        let file = e["file"].as_str().map(|f| dir.join(f));
        for mut c in split_call(&dir, &args) {
            if let Some(f) = &file
                && c.file.file_name() == f.file_name()
            {
                c.file = f.clone();
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// The newest modification time and the number of files under `dir`: a build learned
/// from an older state of the tree is done again.
fn stamp(dir: &Path) -> (u128, u64) {
    let mut newest = 0u128;
    let mut count = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                // What the copy leaves out (see `tree::copy`) does not count either.
                if e.file_name() != ".git" && !e.path().join("CACHEDIR.TAG").exists() {
                    stack.push(e.path());
                }
                continue;
            }
            count += 1;
            if let Ok(t) = m.modified()
                && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
            {
                newest = newest.max(d.as_nanos());
            }
        }
    }
    (newest, count)
}

/// A build learned once: the copy it ran in (the pristine tree, with what the build
/// generated, such as `config.h`) and its commands.
#[derive(Debug, Clone)]
pub struct LearnedBuild {
    /// The copy of the source tree the build ran in.
    pub tree: PathBuf,
    /// Its compile commands, with paths in `tree`.
    pub commands: Vec<CompileCommand>,
    /// It came from the cache.
    pub cached: bool,
}

#[derive(Serialize, Deserialize)]
struct Stamp {
    source: PathBuf,
    build: String,
    newest: u128,
    files: u64,
    commands: Vec<CompileCommand>,
}

/// Run `build` (a shell command) in a copy of `source` with the wrapper in place of the
/// compiler, once: the result is cached under [`cache_dir`] until the tree changes.
pub fn learn(source: &Path, build: &str, progress: &mut dyn FnMut(&str)) -> Result<LearnedBuild> {
    let source = source
        .canonicalize()
        .map_err(|e| err!(Build, "--source {}: {e}", source.display()))?;
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        build.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let dir = crate::os::dirs::cache_dir().join("builds").join(key);
    let tree = dir.join("tree");
    let stamp_path = dir.join("build.json");
    // Two builds of one tree at once learn it once: the second waits, then reads the cache.
    let parent = dir.parent().unwrap_or(&dir);
    std::fs::create_dir_all(parent)
        .map_err(|e| err!(Build, "cannot create {}: {e}", parent.display()))?;
    let lock = std::fs::File::create(dir.with_extension("lock"))
        .map_err(|e| err!(Build, "cannot create a lock next to {}: {e}", dir.display()))?;
    lock.lock()
        .map_err(|e| err!(Build, "cannot lock {}: {e}", dir.display()))?;
    let (newest, files) = stamp(&source);
    if let Ok(text) = std::fs::read_to_string(&stamp_path)
        && let Ok(s) = serde_json::from_str::<Stamp>(&text)
        && s.source == source
        && s.build == build
        && s.newest == newest
        && s.files == files
        && tree.is_dir()
    {
        return Ok(LearnedBuild {
            tree,
            commands: s.commands,
            cached: true,
        });
    }
    check_entry(&source, build)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| err!(Build, "cannot create {}: {e}", dir.display()))?;
    progress(&format!(
        "learning how {} builds: `{build}` in a copy, under the compiler wrapper (once; cached in {})",
        source.display(),
        dir.display()
    ));
    // Nothing half-made stays in the cache: a failed learning leaves no copy behind.
    let commands = run_wrapped(&source, build, &dir, &tree).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    let s = Stamp {
        source: source.clone(),
        build: build.to_string(),
        newest,
        files,
        commands: commands.clone(),
    };
    std::fs::write(&stamp_path, serde_json::to_string(&s).unwrap_or_default())
        .map_err(|e| err!(Build, "cannot write {}: {e}", stamp_path.display()))?;
    Ok(LearnedBuild {
        tree,
        commands,
        cached: false,
    })
}

/// The build's entry point must be in `source` before anything is copied: a Makefile for
/// `make`, the script a command runs, or any build system's file for other commands.
fn check_entry(source: &Path, build: &str) -> Result<()> {
    let words = shlex::split(build).unwrap_or_default();
    let first = words.first().map(String::as_str).unwrap_or("");
    let has = |n: &str| source.join(n).exists();
    let ok = match first {
        "make" | "gmake" => {
            ["GNUmakefile", "makefile", "Makefile"]
                .iter()
                .any(|n| has(n))
                || words
                    .iter()
                    .any(|w| w == "-C" || w == "-f" || w.starts_with("--directory"))
        }
        "ninja" => has("build.ninja") || words.iter().any(|w| w == "-C"),
        "cmake" => has("CMakeLists.txt") || words.iter().any(|w| w == "-S" || w == "--build"),
        "meson" => has("meson.build"),
        _ if first.contains('/') => has(first.trim_start_matches("./")),
        _ => true,
    };
    if !ok {
        bail!(
            Build,
            "{} has no entry point for `{build}` (no Makefile, CMakeLists.txt, meson.build or build.ninja there); give --source the project's tree, or --build the command that builds it",
            source.display()
        );
    }
    Ok(())
}

/// Copy `source` to `tree` and run `build` there under the wrapper; the compile commands
/// it logged.
fn run_wrapped(source: &Path, build: &str, dir: &Path, tree: &Path) -> Result<Vec<CompileCommand>> {
    super::tree::copy(source, tree)?;
    super::tree::drop_build_dirs(tree);
    // A tree already built has nothing left to compile: its sources are made newer
    // than what was built from them, so that the build compiles every unit again.
    super::tree::touch_sources(tree);
    let wrap = dir.join("wrap");
    std::fs::create_dir_all(&wrap)
        .map_err(|e| err!(Build, "cannot create {}: {e}", wrap.display()))?;
    let me =
        std::env::current_exe().map_err(|e| err!(Build, "cannot find rlivepatch itself: {e}"))?;
    for c in COMPILERS {
        std::os::unix::fs::symlink(&me, wrap.join(c))
            .map_err(|e| err!(Build, "cannot create the compiler wrapper: {e}"))?;
    }
    let log = dir.join("calls.jsonl");
    let path = std::env::var("PATH").unwrap_or_default();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {build}"))
        .current_dir(tree)
        .env(LOG_ENV, &log)
        .env(PATH_ENV, &path)
        .env("PATH", format!("{}:{path}", wrap.display()))
        .env("CC", wrap.join("cc"))
        .env("CXX", wrap.join("c++"))
        .output()
        .map_err(|e| err!(Build, "cannot run the build `{build}`: {e}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = if tail.is_empty() {
            "no output".to_string()
        } else {
            tail[tail.len().saturating_sub(3)..].join(" / ")
        };
        bail!(
            Build,
            "the build `{build}` failed in a copy of {} ({}; its last lines: {tail}); check that it builds there with this command",
            source.display(),
            out.status
        );
    }
    let mut commands = Vec::new();
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        let Ok(call) = serde_json::from_str::<LoggedCall>(line) else {
            continue;
        };
        commands.extend(split_call(&call.directory, &call.arguments));
    }
    if commands.is_empty() {
        bail!(
            Build,
            "the build `{build}` compiled nothing under the wrapper (is it already built in {}? then clean it, or give --compile-commands)",
            source.display()
        );
    }
    // A build that recorded the tree's absolute path (autotools' srcdir, a generator's
    // output) compiles the original's files from the copy: they are the copy's.
    Ok(commands.iter().map(|c| rebase(c, source, tree)).collect())
}

/// `cmd` with every path under `from` (as a whole path component) under `to` instead.
fn rebase(cmd: &CompileCommand, from: &Path, to: &Path) -> CompileCommand {
    let f = from.display().to_string();
    let t = to.display().to_string();
    let swap = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find(&f) {
            let after = &rest[i + f.len()..];
            let whole = after.is_empty() || after.starts_with(['/', ':', ',', ' ', '"', '\'']);
            // Not the tail of a longer path (`/x/src/p`): what precedes it in its
            // argument (`-I`, `--sysroot=`) holds no `/`.
            let prefix = format!("{out}{}", &rest[..i]);
            let starts = !prefix
                .rsplit(['=', ':', ',', ' '])
                .next()
                .unwrap_or("")
                .contains('/');
            out.push_str(&rest[..i]);
            out.push_str(if whole && starts { &t } else { &f });
            rest = after;
        }
        out.push_str(rest);
        out
    };
    CompileCommand {
        directory: PathBuf::from(swap(&cmd.directory.display().to_string())),
        arguments: cmd.arguments.iter().map(|a| swap(a)).collect(),
        file: PathBuf::from(swap(&cmd.file.display().to_string())),
    }
}

#[derive(Serialize, Deserialize)]
struct LoggedCall {
    directory: PathBuf,
    arguments: Vec<String>,
}

/// When rlivepatch runs as the compiler wrapper (called under a name of [`COMPILERS`]
/// with the log variable set): log the call, then run the real compiler in its place.
/// Returns only when this is not a wrapper call.
pub fn run_if_wrapper() {
    let mut args: Vec<String> = std::env::args().collect();
    let Some(name) = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return;
    };
    if !COMPILERS.contains(&name.as_str()) {
        return;
    }
    let (Some(log), Some(path)) = (std::env::var_os(LOG_ENV), std::env::var_os(PATH_ENV)) else {
        eprintln!("rlivepatch: called as {name} outside `rlivepatch build`");
        std::process::exit(2);
    };
    let real = std::env::split_paths(&path)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            eprintln!("rlivepatch: no {name} on PATH for the wrapped build");
            std::process::exit(127);
        });
    args[0] = real.display().to_string();
    let dir = std::env::current_dir().unwrap_or_default();
    let line = serde_json::to_string(&LoggedCall {
        directory: dir,
        arguments: args.clone(),
    })
    .unwrap_or_default();
    // One write per call, in append mode: calls of a parallel build do not interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
    use std::os::unix::process::CommandExt;
    let e = Command::new(&real)
        .args(&args[1..])
        .env("PATH", &path)
        .exec();
    eprintln!("rlivepatch: cannot run {}: {e}", real.display());
    std::process::exit(127);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn paths_of_the_original_tree_become_the_copys() {
        let c = CompileCommand {
            directory: PathBuf::from("/src/p/build"),
            arguments: s(&[
                "cc",
                "-I/src/p/include",
                "-I/src/p2/x",
                "-I/x/src/p",
                "-DP=/src/p:/src/p/y",
                "-c",
                "/src/p/a.c",
            ]),
            file: PathBuf::from("/src/p/a.c"),
        };
        let r = rebase(&c, Path::new("/src/p"), Path::new("/cache/tree"));
        assert_eq!(r.directory, PathBuf::from("/cache/tree/build"));
        assert_eq!(
            r.arguments,
            s(&[
                "cc",
                "-I/cache/tree/include",
                "-I/src/p2/x",
                "-I/x/src/p",
                "-DP=/cache/tree:/cache/tree/y",
                "-c",
                "/cache/tree/a.c"
            ])
        );
        assert_eq!(r.file, PathBuf::from("/cache/tree/a.c"));
    }

    #[test]
    fn calls_are_split_into_compile_commands() {
        let d = Path::new("/p");
        let c = split_call(d, &s(&["cc", "-O2", "-c", "a.c", "-o", "a.o"]));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].file, PathBuf::from("/p/a.c"));
        assert_eq!(c[0].output(), Some("a.o"));
        let both = split_call(
            d,
            &s(&["cc", "-O2", "-o", "app", "a.c", "b.c", "-L.", "-lx", "x.o"]),
        );
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].arguments, s(&["cc", "-O2", "b.c", "-c"]));
        assert!(split_call(d, &s(&["cc", "-o", "app", "a.o", "b.o"])).is_empty());
        assert!(split_call(d, &s(&["cc", "-E", "a.c"])).is_empty());
    }
}
