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
        reg: dir.join("registry"),
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
