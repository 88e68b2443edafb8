//! Helpers of the integration tests: building fixtures and patches with the system C
//! compiler, starting targets, reading their output, running rlivepatch.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where tests build C code.
pub fn build_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&d).unwrap();
    d
}

static BUILT: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();

/// Compile once per test binary: `cc ARGS -o OUT`. Written to a temporary name and renamed,
/// so that test binaries running at once never see a half-written file.
pub fn cc(out: &str, args: &[&str]) -> PathBuf {
    compile("cc", out, args)
}

/// Build once per test binary with `tool ARGS -o OUT` (`cc`, `c++`, `clang`, `rustc`).
pub fn compile(tool: &str, out: &str, args: &[&str]) -> PathBuf {
    let path = build_dir().join(out);
    let lock = BUILT.get_or_init(|| Mutex::new(HashSet::new()));
    let mut built = lock.lock().unwrap();
    if built.contains(&path) {
        return path;
    }
    let tmp = build_dir().join(format!(".{out}.{}", std::process::id()));
    let st = Command::new(tool)
        .args(args)
        .arg("-o")
        .arg(&tmp)
        .current_dir(root())
        .status()
        .expect("running cc");
    assert!(st.success(), "{tool} {args:?} failed");
    std::fs::rename(&tmp, &path).unwrap();
    built.insert(path.clone());
    path
}

/// A fixture program from fixtures/NAME.c, built at -O2 without frame pointers,
/// PIE unless `extra` says otherwise.
pub fn fixture(name: &str, out: &str, extra: &[&str]) -> PathBuf {
    let src = format!("fixtures/{name}.c");
    let mut args = vec![
        "-O2",
        "-fomit-frame-pointer",
        "-g",
        "-Wall",
        src.as_str(),
        "-pthread",
    ];
    args.extend_from_slice(extra);
    cc(out, &args)
}

/// A patch from patches/NAME.c, built exactly as the README says.
pub fn patch(name: &str) -> PathBuf {
    let src = format!("patches/{name}.c");
    cc(
        &format!("{name}.so"),
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
            "patches/include",
            src.as_str(),
        ],
    )
}

/// The greeter fixture and its library libgreet.so, next to each other.
pub fn greeter() -> PathBuf {
    let dir = build_dir();
    let lib = cc(
        "libgreet.so",
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/libgreet.c",
        ],
    );
    assert!(lib.starts_with(&dir));
    let d = dir.display().to_string();
    cc(
        "greeter",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/greeter.c",
            "-L",
            &d,
            "-lgreet",
            "-Wl,-rpath,$ORIGIN",
        ],
    )
}

/// A running target process started by a test. Killed (by pid) when dropped.
pub struct Target {
    pub child: Child,
    pub pid: i32,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    cursor: usize,
}

impl Target {
    /// Start `exe ARGS` and wait for its "ready PID" line.
    pub fn start(exe: &Path, args: &[&str]) -> Target {
        Self::start_cmd(Command::new(exe).args(args))
    }

    /// Start `exe ARGS` in a process group of its own, whose parent (this test) is in the
    /// same session: a group job control can stop with SIGTSTP, SIGTTIN and SIGTTOU (the
    /// kernel discards those in an orphaned group, as the test's own group may be).
    pub fn start_in_own_group(exe: &Path, args: &[&str]) -> Target {
        use std::os::unix::process::CommandExt;
        Self::start_cmd(Command::new(exe).args(args).process_group(0))
    }

    /// Start `exe ARGS` as user `uid` (and its group of the same number).
    pub fn start_cmd_as(exe: &Path, args: &[&str], uid: u32) -> Target {
        use std::os::unix::process::CommandExt;
        Self::start_cmd(Command::new(exe).args(args).uid(uid).gid(uid))
    }

    fn start_cmd(cmd: &mut Command) -> Target {
        let exe = PathBuf::from(cmd.get_program());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut t = Target {
            child,
            pid,
            lines: rx,
            seen: Vec::new(),
            cursor: 0,
        };
        t.wait_line(|l| l.starts_with("ready"), Duration::from_secs(10));
        t
    }

    /// Wait for a line matching `pred`; panics after `timeout`.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no matching line from pid {} within {timeout:?}; last lines: {:?}",
                    self.pid,
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "pid {} closed its output; last lines: {:?}",
                    self.pid,
                    self.tail()
                ),
            }
        }
    }

    /// Drop the lines received so far, then wait for `n` new ones and return them.
    pub fn next_lines(&mut self, n: usize) -> Vec<String> {
        // Skipped, not lost: `printed` still sees them.
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        (0..n)
            .map(|_| self.wait_line(|_| true, Duration::from_secs(10)))
            .collect()
    }

    /// The lines after an operation, as the code now in place prints them: the lines
    /// received so far are dropped, then the one iteration that may have been under way
    /// in the old code, and the next `n` are returned.
    pub fn settled_lines(&mut self, n: usize) -> Vec<String> {
        let mut v = self.next_lines(n + 1);
        v.remove(0);
        v
    }

    /// Every one of the next `n` settled lines (see [`Target::settled_lines`]) satisfies
    /// `pred`; `what` names the state they show.
    pub fn assert_settled(&mut self, n: usize, pred: impl Fn(&str) -> bool, what: &str) {
        let lines = self.settled_lines(n);
        assert!(
            lines.iter().all(|l| pred(l)),
            "pid {}: the lines after the operation are not all {what}: {lines:?}",
            self.pid
        );
    }

    fn tail(&self) -> Vec<String> {
        self.seen.iter().rev().take(5).rev().cloned().collect()
    }

    /// The process still runs, and no thread is stopped or traced.
    pub fn assert_running(&self) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("target exited");
        // A target that died is a zombie until the test reaps it: say how it ended (the
        // last field of `stat` is the status its parent's wait will see).
        // (A leader that ended alone, its threads still running, is a zombie too.)
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if (status.contains("State:\tZ") || status.contains("State:\tX")) && threads <= 1 {
            let code = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| s.split_whitespace().last()?.parse::<i32>().ok())
                .unwrap_or(-1);
            panic!(
                "target {} exited (wait status {code:#x}: signal {}, exit code {}); last lines {:?}",
                self.pid,
                code & 0x7f,
                (code >> 8) & 0xff,
                self.tail()
            );
        }
        assert!(
            status.contains("TracerPid:\t0"),
            "target still traced: {status}"
        );
        for t in std::fs::read_dir(format!("/proc/{}/task", self.pid)).unwrap() {
            // A thread that exited since the directory was read is not stopped.
            let Ok(stat) = std::fs::read_to_string(t.unwrap().path().join("stat")) else {
                continue;
            };
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
            // Running, sleeping, in a disk wait, or exiting; never stopped (T) or traced (t).
            assert!("RSDZX".contains(state), "thread state {state} in {stat}");
        }
    }

    /// The target's memory map.
    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap()
    }

    /// The address ranges of the maps lines that contain `what`.
    pub fn ranges_of(&self, what: &str) -> Vec<(u64, u64)> {
        self.maps()
            .lines()
            .filter(|l| l.contains(what))
            .map(|l| {
                let (a, b) = l
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .split_once('-')
                    .unwrap();
                (
                    u64::from_str_radix(a, 16).unwrap(),
                    u64::from_str_radix(b, 16).unwrap(),
                )
            })
            .collect()
    }

    /// The lines of the target's memory map that rlivepatch put there: its memfds
    /// (`/memfd:rlivepatch-...`) and loaded patches (`/memfd:rlp:...`), by their exact
    /// names, never by a word that a checkout's path may contain.
    pub fn rlivepatch_maps(&self) -> Vec<String> {
        self.maps()
            .lines()
            .filter(|l| l.contains("/memfd:rlivepatch-") || l.contains("/memfd:rlp:"))
            .map(str::to_string)
            .collect()
    }

    /// The target's maps without the lines that change by themselves (stack, heap).
    /// Everything rlivepatch could leave behind is either named (its memfds, the patches)
    /// or executable; anonymous data mappings are the program's own (thread stacks,
    /// malloc arenas, which a thread that allocates for the first time creates).
    pub fn stable_maps(&self) -> Vec<String> {
        self.maps()
            .lines()
            .filter(|l| !l.contains("[stack]") && !l.contains("[heap]"))
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 5 || f.get(1).is_some_and(|p| p.contains('x'))
            })
            .map(str::to_string)
            .collect()
    }

    /// The number of open file descriptors.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// Read `len` bytes of the target's memory at `addr`.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(format!("/proc/{}/mem", self.pid)).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, addr).unwrap();
        b
    }

    /// The run-time address of `symbol` in the object whose path ends with `object`.
    pub fn symbol_addr(&self, object: &str, symbol: &str) -> u64 {
        let maps = self.maps();
        let first = maps
            .lines()
            .find(|l| l.ends_with(object) && l.split_whitespace().nth(2) == Some("00000000"))
            .unwrap_or_else(|| panic!("{object} not mapped"));
        let start = u64::from_str_radix(first.split('-').next().unwrap(), 16).unwrap();
        let path = first.split_whitespace().last().unwrap();
        // The symbol table, else (a stripped object) the dynamic one.
        let find = |dynamic: bool| {
            let mut nm = Command::new("nm");
            if dynamic {
                nm.arg("-D");
            }
            let out = nm.arg(path).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .nth(2)
                        .is_some_and(|n| n.split('@').next() == Some(symbol))
                })
                .map(str::to_string)
        };
        let line = find(false)
            .or_else(|| find(true))
            .unwrap_or_else(|| panic!("{symbol} not in {path}"));
        let value = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        // ET_EXEC objects are mapped at their link address.
        let is_exec = std::fs::read(path).unwrap()[16] == 2;
        if is_exec { value } else { start + value }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Only the process this test started, by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run rlivepatch with `args`.
pub fn rlp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .output()
        .expect("running rlivepatch")
}

/// Run rlivepatch with `args` and the variables `env` added to its environment.
pub fn rlp_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running rlivepatch")
}

/// Run rlivepatch with `args`, killing itself at fault point `point`
/// (`RLIVEPATCH_FAULT`), and require that it was killed there.
pub fn rlp_killed_at(point: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let o = rlp_env(args, &[("RLIVEPATCH_FAULT", point)]);
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGKILL),
        "{args:?} at {point}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Run rlivepatch and require success; returns stdout.
pub fn rlp_ok(args: &[&str]) -> String {
    let o = rlp(args);
    assert!(
        o.status.success(),
        "rlivepatch {args:?} failed ({:?}): {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Run rlivepatch expecting failure with exit code `code`; returns the error line.
pub fn rlp_fails(args: &[&str], code: i32) -> String {
    let o = rlp(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(code),
        "rlivepatch {args:?}: expected exit {code}, stderr: {err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("rlivepatch: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    lines[0].to_string()
}

/// Parse JSON.
/// A path as the `&str` an argument list wants.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The number after `key=` in a fixture's line (`rounds=12`); panics naming the key.
pub fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// Say on the test run's own stderr (not captured) that a test skipped its checks, and
/// why: a skip is never silent.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// The value printed by a fixture line "name(i) = N".
pub fn value(line: &str) -> (i64, i64) {
    let (l, r) = line
        .split_once(" = ")
        .unwrap_or_else(|| panic!("unexpected line {line}"));
    let i = l[l.find('(').unwrap() + 1..l.find(')').unwrap()]
        .parse()
        .unwrap();
    (i, r.trim().parse().unwrap())
}

/// A patch named `name` that replaces the target's `func` by `f`, whose C definition is
/// `def` (with any `#include` it needs before it).
pub fn func_patch(name: &str, func: &str, def: &str) -> PathBuf {
    patch_src(
        name,
        &format!(
            "#include <rlivepatch.h>\n{def}\nRLIVEPATCH_FUNC({func}, f);\nRLIVEPATCH_NAME(\"{name}\");\n"
        ),
    )
}

/// A patch built from source text written by the test (for error cases).
pub fn patch_src(name: &str, source: &str) -> PathBuf {
    let src = build_dir().join(format!("{name}.c"));
    let lock = BUILT.get_or_init(|| Mutex::new(HashSet::new()));
    {
        let built = lock.lock().unwrap();
        if built.contains(&build_dir().join(format!("{name}.so"))) {
            return build_dir().join(format!("{name}.so"));
        }
    }
    let tmp = build_dir().join(format!(".{name}.c.{}", std::process::id()));
    std::fs::write(&tmp, source).unwrap();
    std::fs::rename(&tmp, &src).unwrap();
    let s = src.display().to_string();
    cc(
        &format!("{name}.so"),
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
            "patches/include",
            s.as_str(),
        ],
    )
}

/// What a target looks like from the outside, to compare before and after a failure.
#[derive(Debug)]
pub struct Snapshot {
    pub maps: Vec<String>,
    pub code: Vec<u8>,
    pub fds: usize,
    /// Each thread's scheduler slice (rlivepatch shortens the slice of threads it waits
    /// for on crowded CPUs, and must give it back).
    pub slices: std::collections::BTreeMap<i32, u64>,
}

/// Equal when all is equal, the slices compared for the threads alive in both (a
/// program may start and end threads of its own meanwhile).
impl PartialEq for Snapshot {
    fn eq(&self, other: &Snapshot) -> bool {
        self.maps == other.maps
            && self.code == other.code
            && self.fds == other.fds
            && self
                .slices
                .iter()
                .all(|(t, s)| other.slices.get(t).is_none_or(|o| o == s))
    }
}

impl Target {
    /// Maps, the bytes at `addr` (an entry), the fd count, the threads' slices.
    pub fn snapshot(&self, addr: u64) -> Snapshot {
        Snapshot {
            maps: self.stable_maps(),
            code: self.read_mem(addr, 16),
            fds: self.fd_count(),
            slices: self.slices(),
        }
    }

    /// Each thread's scheduler slice (`se.slice` of `/proc/PID/task/TID/sched`, in ns);
    /// empty where the kernel does not show it.
    pub fn slices(&self) -> std::collections::BTreeMap<i32, u64> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for e in dir.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let text = std::fs::read_to_string(e.path().join("sched")).unwrap_or_default();
            let slice = text
                .lines()
                .find_map(|l| l.strip_prefix("se.slice"))
                .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok());
            if let Some(v) = slice {
                out.insert(tid, v);
            }
        }
        out
    }

    /// The run-time address of `symbol` in `object`, and the snapshot at it: what a
    /// failure must leave as it was.
    pub fn snapshot_of(&self, object: &str, symbol: &str) -> (u64, Snapshot) {
        let at = self.symbol_addr(object, symbol);
        (at, self.snapshot(at))
    }

    /// After a failed operation: running, untraced, nothing loaded, as before.
    pub fn assert_untouched(&self, before: &Snapshot, addr: u64) {
        self.assert_running();
        let now = self.snapshot(addr);
        assert_eq!(now, *before, "target changed");
        assert!(!self.maps().contains("rlp:"), "a patch stayed loaded");
    }
}

impl Target {
    /// Start with a pipe to its stdin, for fixtures that take commands.
    pub fn start_with_stdin(exe: &Path, args: &[&str]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut t = Target {
            child,
            pid,
            lines: rx,
            seen: Vec::new(),
            cursor: 0,
        };
        t.wait_line(|l| l.starts_with("ready"), Duration::from_secs(10));
        t
    }

    /// Send a command line to the fixture's stdin.
    pub fn send(&mut self, cmd: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("started with stdin");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for a line matching `pred`, counting lines already received.
    pub fn wait_seen(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        if self.saw(&pred) {
            return self.seen.iter().find(|l| pred(l)).unwrap().clone();
        }
        self.wait_line(pred, timeout)
    }

    /// Has a line matching `pred` been seen already (without waiting)?
    pub fn saw(&mut self, pred: impl Fn(&str) -> bool) -> bool {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.iter().any(|l| pred(l))
    }
}

/// Run rlivepatch; returns (exit code, stdout, stderr).
pub fn rlp_full(args: &[&str]) -> (i32, String, String) {
    let o = rlp(args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Start rlivepatch in the background with stderr piped; returns the child and a receiver
/// of its stderr lines.
pub fn rlp_spawn(args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running rlivepatch");
    let rx = lines_of(child.stderr.take().unwrap());
    (child, rx)
}

/// The lines of a child's pipe, as they come.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a stderr line of a spawned rlivepatch matching `pred`.
pub fn wait_stderr(rx: &Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no matching stderr line from rlivepatch: {e}"),
        }
    }
}

/// A patch from patches/SRC.c built with extra flags (e.g. `-DREPLACE`) into OUT.so.
pub fn patch_with(src: &str, out: &str, flags: &[&str]) -> PathBuf {
    let s = format!("patches/{src}.c");
    let mut args = vec![
        "-shared",
        "-fPIC",
        "-O2",
        "-I",
        "patches/include",
        s.as_str(),
    ];
    args.extend_from_slice(flags);
    cc(&format!("{out}.so"), &args)
}

impl Target {
    /// Every line the fixture printed since the last call, up to now: sends "mark N" and
    /// waits for its echo, so nothing printed before is missed. Lines for which `keep`
    /// is false are dropped.
    pub fn printed(&mut self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        static MARK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MARK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mark = format!("mark {n}");
        self.send(&mark);
        self.wait_line(|l| l == mark, Duration::from_secs(20));
        let out = self.seen[self.cursor..self.seen.len() - 1]
            .iter()
            .filter(|l| keep(l))
            .cloned()
            .collect();
        self.cursor = self.seen.len();
        out
    }
}

impl Target {
    /// The load address of the first mapping of the object whose path ends with `object`.
    pub fn symbol_base(&self, object: &str) -> u64 {
        let maps = self.maps();
        let first = maps
            .lines()
            .find(|l| l.ends_with(object) && l.split_whitespace().nth(2) == Some("00000000"))
            .unwrap_or_else(|| panic!("{object} not mapped"));
        u64::from_str_radix(first.split('-').next().unwrap(), 16).unwrap()
    }
}

/// Make sure a tool the project's setup script installs is there (running the script
/// when it is not: the README's test command works on a fresh machine).
pub fn require_tool(tool: &str) {
    static SETUP: Mutex<()> = Mutex::new(());
    let _g = SETUP.lock().unwrap();
    let has = |t: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(tool) {
        let st = Command::new(root().join("scripts/setup.sh"))
            .status()
            .expect("running scripts/setup.sh");
        assert!(st.success(), "scripts/setup.sh failed; {tool} is needed");
        assert!(has(tool), "{tool} still missing after scripts/setup.sh");
    }
}

/// A small deterministic generator (xorshift), so that a seed replays a run.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed in the environment variable `name` (to replay a run), or a fresh one.
pub fn env_seed(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Poll `cond` (a state only /proc shows, with no signal to wait for) until it holds;
/// panics after 20 seconds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Target {
    /// The next line, or `None` once the process closed its output (it exited);
    /// panics after `timeout`.
    pub fn lines_or_exit(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no line from pid {} within {timeout:?}", self.pid)
            }
        }
    }
}

/// A patch named `name` in `dir` that makes `compute` of the counter fixture return
/// `x * 100`, pinned to the build of `exe` (its RLIVEPATCH_BUILD_ID line).
pub fn counter_patch_for(dir: &Path, name: &str, exe: &Path) -> PathBuf {
    let line = rlp_ok(&["build-id", exe.to_str().unwrap()]);
    patch_in(
        dir,
        name,
        &format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x * 100; }}\nRLIVEPATCH_FUNC(compute, f);\nRLIVEPATCH_NAME(\"{name}\");\n{line}"
        ),
    )
}

/// A patch NAME.so built in `dir` from `source` (NAME.c there), as the README says.
pub fn patch_in(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("{name}.so"));
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root().join("patches/include"))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Run rlivepatch as user nobody with `args`, where `PATCH` stands for a copy of `patch`:
/// the binary and the patch are copied where nobody may read and run them (the checkout
/// may be in a 0700 directory), and removed after.
pub fn rlp_as_nobody(patch: &Path, args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!(
        "rlivepatch-nobody-{}-{}",
        std::process::id(),
        patch.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(patch.file_name().unwrap());
    std::fs::copy(patch, &copy).unwrap();
    let exe = dir.join("rlivepatch");
    std::fs::copy(env!("CARGO_BIN_EXE_rlivepatch"), &exe).unwrap();
    for f in [&copy, &exe] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let copy = copy.display().to_string();
    // A child another test thread forks while the copy is still open for writing holds
    // that descriptor until its own exec: this exec then fails with ETXTBSY until it
    // has. Each try waits for that other exec, which always comes.
    let o = loop {
        match Command::new(&exe)
            .args(
                args.iter()
                    .map(|a| if *a == "PATCH" { copy.as_str() } else { a }),
            )
            .current_dir(&dir)
            .uid(65534)
            .gid(65534)
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            r => break r.unwrap(),
        }
    };
    std::fs::remove_dir_all(&dir).unwrap();
    o
}

/// The counter built as a PIE, started with `arg` (its period in ms), its pid, and the
/// counter patch: how most tests begin.
pub fn counter_pie(arg: &str) -> (Target, String, PathBuf) {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let t = Target::start(&exe, &[arg]);
    let pid = t.pid.to_string();
    (t, pid, patch("counter-fix"))
}

/// An empty directory `name` of this test run's build directory.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = build_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PIE counter (period 5 ms) once it prints values, and its pid.
pub fn running_counter() -> (Target, String) {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let mut t = Target::start(&exe, &["5"]);
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
    let pid = t.pid.to_string();
    (t, pid)
}

/// rlivepatch run with `args`, stopped (SIGSTOP, sent by itself) at fault point `point`:
/// the test changes the world there, then [`StoppedRun::finish`] lets it go on.
pub struct StoppedRun {
    child: Option<std::process::Child>,
}

/// A test that fails before [`StoppedRun::finish`] kills the stopped rlivepatch (its own
/// child, by pid): stopped, it would hold its target traced, and the target's end with it.
impl Drop for StoppedRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl StoppedRun {
    /// Start it and wait for its stop (a `waitpid` report of this test's own child).
    pub fn at(point: &str, args: &[&str], env: &[(&str, &Path)]) -> StoppedRun {
        let child = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(args)
            .envs(env.iter().copied())
            .env("RLIVEPATCH_FAULT", point)
            .env("RLIVEPATCH_FAULT_SIGNAL", "tool:19")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let tool = nix::unistd::Pid::from_raw(child.id() as i32);
        let st =
            nix::sys::wait::waitpid(tool, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)).unwrap();
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Stopped(..)),
            "{args:?} at {point}: {st:?}"
        );
        StoppedRun { child: Some(child) }
    }

    /// Continue it (SIGCONT) and require success; its stderr.
    pub fn finish(mut self) -> String {
        let child = self.child.take().expect("not finished yet");
        let tool = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGCONT).unwrap();
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    }
}
