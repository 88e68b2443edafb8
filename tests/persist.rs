//! Processes started later: `rlivepatch persist` registers a patch, and a process
//! started with the autoload library runs it from the first call of main on; other
//! builds, the kill switches, an untrusted registry file and `unpersist` leave new
//! processes unpatched; the systemd drop-in and /etc/ld.so.preload are written.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

struct Registry {
    dir: PathBuf,
    reg: PathBuf,
}

fn registry(name: &str) -> Registry {
    let dir = build_dir().join(format!("persist-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Registry {
        reg: dir.join("persist"),
        dir,
    }
}

fn rlp_in(r: &Registry, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .env("RLIVEPATCH_REGISTRY", &r.reg)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// A build of the counter of this test's own, and a patch for it with its build-id.
fn counter_and_fix(r: &Registry, tag: &str) -> (PathBuf, PathBuf) {
    let exe = r.dir.join(format!("counter-{tag}"));
    let st = Command::new("cc")
        .args(["-O2", "-g"])
        // A build-id of the test's own (two identical builds would share one).
        .arg(format!(
            "-Wl,--build-id=0x{}",
            hex_of(&format!("persist-{tag}"))
        ))
        .arg(root().join("fixtures/counter.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success());
    let so = counter_patch_for(&r.dir, &format!("fix-{tag}"), &exe);
    (exe, so)
}

/// Start `exe` with the autoload library; returns its first value line and its stderr
/// so far. `env` adds variables.
fn first_value(r: &Registry, exe: &Path, env: &[(&str, &str)]) -> (String, String) {
    let lib = rlp_in(r, &["autoload", "--library"]).1.trim().to_string();
    let reg = r.reg.display().to_string();
    let mut all = vec![
        ("LD_PRELOAD", lib.as_str()),
        ("RLIVEPATCH_REGISTRY", reg.as_str()),
    ];
    all.extend_from_slice(env);
    let (_, line, err) = first_line(exe, &all);
    (line, err)
}

/// Start `exe` with exactly `env` added (none of this test run's preload): its pid, its
/// first value line and its stderr so far.
fn first_line(exe: &Path, env: &[(&str, &str)]) -> (u32, String, String) {
    let mut cmd = Command::new(exe);
    cmd.arg("1000")
        .env_remove("LD_PRELOAD")
        .env_remove("RLIVEPATCH_REGISTRY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // "ready PID", then the first value.
    out.read_line(&mut line).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    // This test's own process, by pid.
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    (
        pid,
        line.trim().to_string(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// A registry of its own with a counter build whose patch is persisted: the registry,
/// the build, and what `persist` printed.
fn persisted(name: &str, tag: &str) -> (Registry, PathBuf, String) {
    let r = registry(name);
    let (exe, so) = counter_and_fix(&r, tag);
    let (code, out, err) = rlp_in(&r, &["persist", so.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (r, exe, out)
}

#[test]
fn a_persisted_patch_runs_from_the_first_call_of_main() {
    let (r, exe, out) = persisted("main", "a");
    let (other, _) = counter_and_fix(&r, "b");
    assert!(out.contains("persisted patch fix-a"), "{out}");
    let (_, list, _) = rlp_in(&r, &["persist", "--list"]);
    assert!(
        list.contains("fix-a") && list.contains("for main "),
        "{list}"
    );
    // Patched before main: the very first value is the patch's, 20 times out of 20.
    for _ in 0..20 {
        let (first, err) = first_value(&r, &exe, &[]);
        assert_eq!(first, "compute(0) = 0", "{err}");
        assert!(err.is_empty(), "{err}");
    }
    // Another build: untouched, silent.
    let (first, err) = first_value(&r, &other, &[]);
    assert_eq!(first, "compute(0) = 1");
    assert!(err.is_empty(), "{err}");
    // The kill switches.
    let (first, _) = first_value(&r, &exe, &[("RLIVEPATCH_AUTOLOAD", "0")]);
    assert_eq!(first, "compute(0) = 1");
    std::fs::write(r.reg.join("disabled"), "").unwrap();
    let (first, _) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 1");
    std::fs::remove_file(r.reg.join("disabled")).unwrap();
    // A registry file others may write: nothing loaded, and the file named.
    let entry = r.reg.join("fix-a.so");
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (first, err) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 1");
    assert!(
        err.contains(&entry.display().to_string()) && err.contains("writable by others"),
        "{err}"
    );
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (first, _) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 0");
    // Unpersisted: new processes run without it.
    let (code, _, err) = rlp_in(&r, &["unpersist", "fix-a"]);
    assert_eq!(code, 0, "{err}");
    let (first, _) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 1");
    let (code, _, err) = rlp_in(&r, &["unpersist", "fix-a"]);
    assert_eq!(code, 5, "{err}");
}

#[test]
fn a_patch_without_build_ids_cannot_be_persisted() {
    let r = registry("bare");
    let (code, _, err) = rlp_in(&r, &["persist", patch("counter-fix").to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("RLIVEPATCH_BUILD_ID"), "{err}");
}

#[test]
fn autoload_writes_the_drop_in_and_the_preload_line() {
    let r = registry("units");
    let root = r.dir.join("root");
    let (code, out, err) = rlp_in(
        &r,
        &[
            "autoload",
            "--unit",
            "nginx",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("daemon-reload"), "{out}");
    let conf = std::fs::read_to_string(
        root.join("etc/systemd/system/nginx.service.d/rlivepatch-autoload.conf"),
    )
    .unwrap();
    let lib = rlp_in(&r, &["autoload", "--library"]).1.trim().to_string();
    assert!(
        conf.contains(&format!("Environment=LD_PRELOAD={lib}")),
        "{conf}"
    );
    assert!(conf.contains("Environment=RLIVEPATCH_REGISTRY="), "{conf}");
    for _ in 0..2 {
        let (code, _, err) = rlp_in(
            &r,
            &["autoload", "--system", "--root", root.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{err}");
    }
    let preload = std::fs::read_to_string(root.join("etc/ld.so.preload")).unwrap();
    assert_eq!(preload, format!("{lib}\n"), "written once");
}

/// A daemon this test started: killed, by pid, if the test ends without stopping it.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rlivepatch watch` in registry `r` for `exe`, with more environment; ready once it
/// says it watches.
fn watch(
    r: &Registry,
    exe: &Path,
    env: &[(&str, &str)],
) -> (Daemon, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rlivepatch"));
    cmd.args(["watch", "--exe", exe.to_str().unwrap()])
        .env("RLIVEPATCH_REGISTRY", &r.reg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let daemon = Daemon(child);
    wait_stderr(&rx, |l| l.contains("watching 1 program"));
    (daemon, rx)
}

/// Start `exe` as a program does (no preload of ours); its pid and first value line.
fn first_plain(exe: &Path, env: &[(&str, &str)]) -> (u32, String) {
    let (pid, line, _) = first_line(exe, env);
    (pid, line)
}

#[test]
fn the_watch_daemon_has_every_exec_run_the_patch_from_main_on() {
    let (r, exe, _) = persisted("watch", "w");
    let (other, _) = counter_and_fix(&r, "x");
    let (mut daemon, log) = watch(&r, &exe, &[]);
    for _ in 0..20 {
        let (pid, first) = first_plain(&exe, &[]);
        assert_eq!(first, "compute(0) = 0", "pid {pid}");
        let l = wait_stderr(&log, |l| l.contains(&format!("pid {pid}:")));
        assert!(l.contains("autoload library added"), "{l}");
    }
    // Another program is never stopped nor traced: the daemon does not hear of it.
    let mut others = Vec::new();
    for _ in 0..20 {
        let (pid, first) = first_plain(&other, &[]);
        assert_eq!(first, "compute(0) = 1");
        others.push(pid);
    }
    // One more exec of the watched program is the daemon's next event: everything it
    // heard before it is in the log by then, and none of it is about the others.
    let (barrier, _) = first_plain(&exe, &[]);
    let mut heard = Vec::new();
    loop {
        let l = log
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the daemon's line for the last exec");
        let last = l.contains(&format!("pid {barrier}:"));
        heard.push(l);
        if last {
            break;
        }
    }
    for o in &others {
        let about = format!("pid {o}:");
        assert!(
            !heard.iter().any(|l| l.contains(&about)),
            "the daemon heard of another program's exec (pid {o}): {heard:?}"
        );
    }
    // The kill switch in the program's environment.
    let (pid, first) = first_plain(&exe, &[("RLIVEPATCH_AUTOLOAD", "0")]);
    assert_eq!(first, "compute(0) = 1");
    let l = wait_stderr(&log, |l| l.contains(&format!("pid {pid}:")));
    assert!(l.contains("left alone"), "{l}");
    // This test's daemon, by pid: SIGTERM (systemd's stop) ends it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = daemon.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGTERM)
    );
    let heard: Vec<String> = log.try_iter().collect();
    for pid in others {
        assert!(
            !heard.iter().any(|l| l.contains(&format!("pid {pid}:"))),
            "{heard:?}"
        );
    }
}

#[test]
fn a_watch_daemon_killed_while_it_holds_an_exec_leaves_nothing_stopped() {
    let (r, exe, _) = persisted("watch-kill", "k");
    // SIGKILL while the exec waits for the answer, and once the process is seized: the
    // program starts and runs (unpatched), and nothing traces it.
    for point in ["watch:holding", "watch:seized"] {
        let (mut daemon, _log) = watch(&r, &exe, &[("RLIVEPATCH_FAULT", point)]);
        let mut child = Command::new(&exe)
            .arg("5")
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            lines.push(l.trim().to_string());
        }
        assert!(lines[0].starts_with("ready"), "{point}: {lines:?}");
        assert_eq!(lines[1], "compute(0) = 1", "{point}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("TracerPid:\t0"), "{point}: {status}");
        let st = daemon.0.wait().unwrap();
        assert!(!st.success(), "{point}: the daemon was killed");
        // This test's own process, by pid.
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_persisted_library_patch_waits_in_processes_started_without_the_library() {
    let r = registry("wait");
    let dir = r.dir.join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libcoming.so");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2"])
        .arg(root().join("fixtures/coming-plugin.c"))
        .arg("-o")
        .arg(&lib)
        .status()
        .unwrap();
    assert!(st.success());
    let id = rlp_ok(&[
        "build-id",
        lib.to_str().unwrap(),
        "--object",
        "libcoming.so",
    ]);
    let so = patch_in(
        &r.dir,
        "wait-fix",
        &format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x * 7; }}\nRLIVEPATCH_FUNC_IN(\"libcoming.so\", coming_value, f);\nRLIVEPATCH_NAME(\"wait-fix\");\n{id}"
        ),
    );
    let (code, _, err) = rlp_in(&r, &["persist", "--wait", so.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A program that loads the library only later, started with the autoload library.
    let host = fixture("coming-host", "coming-host", &[]);
    let preload = rlp_in(&r, &["autoload", "--library"]).1.trim().to_string();
    let mut child = Command::new(&host)
        .env("LD_PRELOAD", &preload)
        .env("RLIVEPATCH_REGISTRY", &r.reg)
        .env("LD_LIBRARY_PATH", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "{line}");
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "load libcoming.so").unwrap();
        stdin.flush().unwrap();
    }
    line.clear();
    out.read_line(&mut line).unwrap();
    // This test's own process, by pid.
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        line.trim(),
        "loaded ctor=7 value=14",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Without --wait, such a process is not a candidate: it runs the original.
    let (code, _, err) = rlp_in(&r, &["persist", so.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let index = std::fs::read_to_string(r.reg.join("index")).unwrap();
    assert!(!index.contains("wait "), "{index}");
}

/// What every private-mount script starts with: a tmpfs of its own on `$T`, /var/lib
/// overlaid so that the test's directory is /var/lib/rlivepatch (its registry the
/// default one), and `first_value EXE [VAR=VALUE...]`, which prints the first value
/// line of EXE run as user nobody with those variables (its stderr goes to $T/stderr).
const PRIVATE_MOUNTS: &str = r#"
set -e
mount -t tmpfs rlivepatch-test "$T"
mkdir -p "$T/var/rlivepatch" "$T/varw" "$T/etc" "$T/etcw" "$T/lib" "$T/libw"
mount -t overlay overlay -o lowerdir=/var/lib,upperdir="$T/var",workdir="$T/varw" /var/lib
mount --bind "$DIR" /var/lib/rlivepatch
first_value() {
    local exe=$1; shift
    coproc P { exec setpriv --reuid=65534 --regid=65534 --clear-groups env "$@" "$exe" 1000 2>>"$T/stderr"; }
    local ready first
    read -t 30 -r ready <&"${P[0]}" || ready="no ready line"
    read -t 30 -r first <&"${P[0]}" || first="no value line"
    kill "$P_PID" 2>/dev/null || true
    wait "$P_PID" || true
    echo "$first"
}
"#;

/// Run `script` (after [`PRIVATE_MOUNTS`]) as root in a private mount namespace: nothing
/// of the host's /etc, /var/lib or /usr/lib changes. Its stdout lines, and the stderr
/// of the programs it ran.
fn in_private_mounts(r: &Registry, script: &str) -> (Vec<String>, String) {
    let t = r.dir.join("mnt");
    std::fs::create_dir_all(&t).unwrap();
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!(
            "{PRIVATE_MOUNTS}\n{script}\ncat \"$T/stderr\" >&2 2>/dev/null || true"
        ))
        .env("T", &t)
        .env("DIR", &r.dir)
        .env("RLP", env!("CARGO_BIN_EXE_rlivepatch"))
        .env_remove("LD_PRELOAD")
        .env_remove("RLIVEPATCH_REGISTRY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    (out.lines().map(str::to_string).collect(), err)
}

/// What user nobody runs in the set-user-ID tests, in a directory anyone may enter: the
/// counter build and its set-user-ID root copy (same build-id), a copy of rlivepatch
/// (the autoload helper a plain program runs as nobody), the registry. Removed when
/// dropped.
struct Public {
    dir: PathBuf,
    plain: PathBuf,
    suid: PathBuf,
    rlp: PathBuf,
}

impl Drop for Public {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 0755 directory of a temporary file system that honours set-user-ID bits.
fn public_dir(tag: &str) -> PathBuf {
    let nosuid = |d: &Path| {
        nix::sys::statvfs::statvfs(d)
            .map(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
            .unwrap_or(true)
    };
    let base = [std::env::temp_dir(), PathBuf::from("/var/tmp")]
        .into_iter()
        .find(|d| !nosuid(d))
        .expect("a temporary directory that honours set-user-ID bits");
    let dir = base.join(format!("rlivepatch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A registry in a public directory (what nobody's processes read: the build directory
/// may be private) whose patch for a counter build of its own is persisted by a copy of
/// rlivepatch there (which the registry then names as the autoload helper), with a
/// set-user-ID root copy of the counter.
fn persisted_publicly(tag: &str) -> (Registry, Public) {
    let dir = public_dir(tag);
    let r = Registry {
        reg: dir.join("persist"),
        dir: dir.clone(),
    };
    let (exe, so) = counter_and_fix(&r, tag);
    // Written by other processes: a file this multi-threaded test process had open for
    // writing could still be held by a child another test forks, and its exec would fail
    // with ETXTBSY.
    let install = |mode: &str, from: &Path, to: &Path| {
        let st = Command::new("install")
            .args(["-m", mode])
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let p = Public {
        suid: dir.join(format!("counter-{tag}-suid")),
        rlp: dir.join("rlivepatch"),
        plain: exe,
        dir,
    };
    install("4755", &p.plain, &p.suid);
    install("0755", Path::new(env!("CARGO_BIN_EXE_rlivepatch")), &p.rlp);
    let o = Command::new(&p.rlp)
        .args(["persist", so.to_str().unwrap()])
        .env("RLIVEPATCH_REGISTRY", &r.reg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (r, p)
}

#[test]
fn a_set_user_id_program_run_by_anyone_runs_the_persisted_patch() {
    let (r, p) = persisted_publicly("s");
    let (exe, suid) = (&p.plain, &p.suid);
    assert!(
        r.dir.join("librlivepatch-autoload.so").exists(),
        "persist writes the autoload library"
    );
    // The library as the namespace shows it: the registry's directory is mounted on
    // /var/lib/rlivepatch there.
    let lib = PathBuf::from("/var/lib/rlivepatch/librlivepatch-autoload.so");
    // The host-wide route: /etc/ld.so.preload names the library (here only).
    let script = format!(
        r#"
echo {lib} > "$T/etc/ld.so.preload"
mount -t overlay overlay -o lowerdir=/etc,upperdir="$T/etc",workdir="$T/etcw" /etc
switches="RLIVEPATCH_AUTOLOAD=0 RLIVEPATCH_REGISTRY=/nonexistent"
echo "plain, switches: $(first_value {exe} $switches)"
echo "plain, fault: $(first_value {exe} RLIVEPATCH_FAULT=apply:attached)"
echo "suid, switches: $(first_value {suid} $switches)"
echo "suid, fault: $(first_value {suid} RLIVEPATCH_FAULT=apply:attached RLIVEPATCH_FAULT_SIGNAL=9)"
echo "suid, nothing: $(first_value {suid})"
touch "$DIR/persist/disabled"
echo "suid, disabled: $(first_value {suid} $switches)"
rm "$DIR/persist/disabled"
"#,
        lib = lib.display(),
        exe = exe.display(),
        suid = suid.display(),
    );
    let (lines, err) = in_private_mounts(&r, &script);
    // Where the program is not set-user-ID, its user's variables are its user's to set:
    // they keep it unpatched (the kill switch), or kill the helper (a test build's fault
    // point): so the lines below could fail.
    assert!(
        lines.contains(&"plain, switches: compute(0) = 1".to_string()),
        "{lines:?}\n{err}"
    );
    assert!(
        lines.contains(&"plain, fault: compute(0) = 1".to_string()),
        "{lines:?}\n{err}"
    );
    assert!(err.contains("failed"), "{err}");
    // A set-user-ID program: none of them reaches the library or its helper.
    for l in ["suid, switches", "suid, fault", "suid, nothing"] {
        assert!(
            lines.contains(&format!("{l}: compute(0) = 0")),
            "{l}: {lines:?}\n{err}"
        );
    }
    // The registry's kill switch is the one that works.
    assert!(
        lines.contains(&"suid, disabled: compute(0) = 1".to_string()),
        "{lines:?}\n{err}"
    );
    assert!(
        !Path::new("/etc/ld.so.preload").exists() || {
            let host = std::fs::read_to_string("/etc/ld.so.preload").unwrap_or_default();
            !host.contains(&lib.display().to_string())
        }
    );
}

#[test]
fn the_watch_daemon_covers_set_user_id_programs_through_the_secure_copy() {
    let (r, p) = persisted_publicly("ws");
    let suid = &p.suid;
    let host_copy = Path::new("/usr/lib/x86_64-linux-gnu/librlivepatch-autoload.so");
    let host_had_it = host_copy.exists();
    let script = format!(
        r#"
mount -t overlay overlay -o lowerdir=/usr/lib/x86_64-linux-gnu,upperdir="$T/lib",workdir="$T/libw" /usr/lib/x86_64-linux-gnu
coproc W {{ exec "$RLP" watch --exe {suid} 2>&1; }}
while read -t 30 -r line <&"${{W[0]}}"; do case $line in *watching*) break;; esac; done
echo "suid: $(first_value {suid} RLIVEPATCH_AUTOLOAD=0 RLIVEPATCH_FAULT=apply:attached)"
while read -t 30 -r line <&"${{W[0]}}"; do case $line in *pid*) echo "watch: $line"; break;; esac; done
kill "$W_PID"
wait "$W_PID" || true
echo "copy: $(stat -c '%a %U' /usr/lib/x86_64-linux-gnu/librlivepatch-autoload.so)"
"#,
        suid = suid.display(),
    );
    let (lines, err) = in_private_mounts(&r, &script);
    assert!(
        lines.contains(&"suid: compute(0) = 0".to_string()),
        "{lines:?}\n{err}"
    );
    let said = lines.iter().find(|l| l.starts_with("watch:")).unwrap();
    assert!(said.contains("secure copy"), "{said}");
    // Set-user-ID (the loader's condition), never executable, root's.
    assert!(lines.contains(&"copy: 4644 root".to_string()), "{lines:?}");
    assert_eq!(
        host_copy.exists(),
        host_had_it,
        "the host's /usr/lib is untouched"
    );
}

/// The autoload route and the watch daemon change processes: each change is a line of
/// the audit trail (test builds send it to RLIVEPATCH_LOG_SOCKET).
#[test]
fn autoload_and_watch_are_in_the_audit_trail() {
    let (r, exe, _) = persisted("audit", "au");
    let sock_path = r.dir.join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let socket = sock_path.display().to_string();
    let (mut daemon, log) = watch(&r, &exe, &[("RLIVEPATCH_LOG_SOCKET", &socket)]);
    let (pid, first) = first_plain(&exe, &[("RLIVEPATCH_LOG_SOCKET", &socket)]);
    assert_eq!(first, "compute(0) = 0");
    wait_stderr(&log, |l| l.contains(&format!("pid {pid}:")));
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("an audit line");
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let of = |op: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("]: {op} ")))
            .unwrap_or_else(|| panic!("no {op} line in {lines:?}"))
            .clone()
    };
    let w = of("watch");
    assert!(
        w.contains(&format!(" pid={pid} ")) && w.contains("autoload library added"),
        "{w}"
    );
    let a = of("autoload apply");
    assert!(
        a.contains(&format!(" pid={pid} "))
            && a.contains("patch=fix-au")
            && a.contains("outcome=\"ok\""),
        "{a}"
    );
    // This test's daemon, by pid.
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
}

/// The host's signature policy holds on the autoload route too: an unsigned persisted
/// patch does not run in a new process, and the refusal is said.
#[test]
fn the_signature_policy_holds_for_the_autoload_route() {
    let (r, exe, _) = persisted("policy", "po");
    let host = r.dir.join("etc");
    std::fs::create_dir_all(host.join("keys")).unwrap();
    std::fs::write(host.join("policy"), "require-signature\n").unwrap();
    let policy = host.display().to_string();
    let (first, err) = first_value(&r, &exe, &[("RLIVEPATCH_POLICY_DIR", &policy)]);
    assert_eq!(first, "compute(0) = 1", "{err}");
    assert!(err.contains("not signed"), "{err}");
    // Without the policy, the same start runs the patch (the line above could fail).
    let (first, err) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 0", "{err}");
}

/// Persisted with `--require-signature` and a keyring: every autoload verifies the
/// registry's copy again, so a copy replaced by an unsigned one does not run.
#[test]
fn a_patch_persisted_with_a_signature_requirement_is_verified_at_each_start() {
    let r = registry("signed");
    let (exe, so) = counter_and_fix(&r, "sg");
    let keys = r.dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("ops");
    assert_eq!(rlp_in(&r, &["keygen", key.to_str().unwrap()]).0, 0);
    let signed = r.dir.join("fix-signed.so");
    std::fs::copy(&so, &signed).unwrap();
    let (code, _, err) = rlp_in(
        &r,
        &[
            "sign",
            "--key",
            keys.join("ops.key").to_str().unwrap(),
            signed.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    // The private key elsewhere: the keyring holds public keys only.
    std::fs::rename(keys.join("ops.key"), r.dir.join("ops.key")).unwrap();
    let (code, _, err) = rlp_in(
        &r,
        &[
            "persist",
            "--require-signature",
            "--keyring",
            keys.to_str().unwrap(),
            signed.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (first, err) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 0", "{err}");
    // The registry's copy replaced by the unsigned build of the same fix.
    std::fs::copy(&so, r.reg.join("fix-sg.so")).unwrap();
    let (first, err) = first_value(&r, &exe, &[]);
    assert_eq!(first, "compute(0) = 1", "{err}");
    assert!(err.contains("not signed"), "{err}");
}
