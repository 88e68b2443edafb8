//! Who decides what runs in a process: signed patches, keyrings, the host's policy.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// rlivepatch with `env`: its exit code, stdout and stderr.
fn rlp_in(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
    let o = rlp_env(args, &env);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Signed, unsigned, tampered and foreign-signed patches, with keyrings given on the
/// command line and by the host's policy (a policy directory of the test's own: tests
/// never touch the host's /etc). Every refusal is exit 4 with the target untouched.
#[test]
fn only_patches_signed_by_a_known_key_run_where_signatures_are_required() {
    let (mut t, pid) = running_counter();
    let (entry, snap) = t.snapshot_of("counter-pie", "compute");
    let dir = fresh_dir("trust");
    let keys = dir.join("keys");
    let other = dir.join("other");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    rlp_ok(&["keygen", keys.join("ops").to_str().unwrap()]);
    rlp_ok(&["keygen", other.join("stranger").to_str().unwrap()]);
    // The private keys stay out of the keyring directory's way: only *.pub count.
    let fix = patch("counter-fix");
    let copy = |name: &str| {
        let p = dir.join(name);
        std::fs::copy(&fix, &p).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (signed, unsigned, tampered, foreign) = (
        copy("signed.so"),
        copy("unsigned.so"),
        copy("tampered.so"),
        copy("foreign.so"),
    );
    let ops_key = keys.join("ops.key");
    rlp_ok(&["sign", "--key", ops_key.to_str().unwrap(), &signed]);
    rlp_ok(&["sign", "--key", ops_key.to_str().unwrap(), &tampered]);
    rlp_ok(&[
        "sign",
        "--key",
        other.join("stranger.key").to_str().unwrap(),
        &foreign,
    ]);
    // One byte of what is loaded changed after signing.
    let mut b = std::fs::read(&tampered).unwrap();
    b[0x40] ^= 1;
    std::fs::write(&tampered, b).unwrap();
    let keyring = keys.to_str().unwrap();
    let info = rlp_ok(&["info", &signed, "--keyring", keyring]);
    assert!(info.contains("signed: yes, by ops"), "{info}");
    let info = rlp_ok(&["info", &unsigned]);
    assert!(info.contains("signed: no"), "{info}");

    let refused = |t: &Target, args: &[&str], env: &[(&str, &Path)], why: &str| {
        let (code, _, err) = rlp_in(args, env);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
        t.assert_untouched(&snap, entry);
    };
    let need = ["--require-signature", "--keyring", keyring];
    refused(
        &t,
        &[&["apply", &pid, &unsigned][..], &need].concat(),
        &[],
        "is not signed",
    );
    refused(
        &t,
        &[&["check", &pid, &foreign][..], &need].concat(),
        &[],
        "in no keyring",
    );
    // A signature that does not verify is refused even where none is required.
    refused(&t, &["apply", &pid, &tampered], &[], "does not verify");
    // Signed by a key of the keyring: it runs.
    rlp_ok(&[&["apply", &pid, &signed][..], &need].concat());
    t.wait_line(
        |l| l.contains(" = ") && value(l).1 == value(l).0 * 100,
        Duration::from_secs(10),
    );
    rlp_ok(&["disable", &pid, "counter-fix"]);

    // The host's policy: required, with its own keyring; no flag turns it off.
    let host = dir.join("etc");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("policy"), "require-signature\n").unwrap();
    std::fs::create_dir_all(host.join("keys")).unwrap();
    std::fs::copy(keys.join("ops.pub"), host.join("keys/ops.pub")).unwrap();
    let env = [("RLIVEPATCH_POLICY_DIR", host.as_path())];
    refused(&t, &["apply", &pid, &unsigned], &env, "is not signed");
    refused(
        &t,
        &["apply", &pid, &unsigned, "--allow-untrusted"],
        &env,
        "--allow-untrusted is refused",
    );
    refused(&t, &["apply", &pid, &foreign], &env, "in no keyring");
    let (code, _, err) = rlp_in(&["apply", &pid, &signed], &env);
    assert_eq!(code, 0, "{err}");
    rlp_ok(&["disable", &pid, "counter-fix"]);
    t.assert_running();
}

/// Every change to a process is a line of the system log: who, which process, which
/// patch (its SHA-256 and signer), and the outcome, refusals included. The test gives
/// the log a socket of its own (test builds honour RLIVEPATCH_LOG_SOCKET).
#[test]
fn every_change_is_in_the_audit_trail() {
    let (t, pid) = running_counter();
    let dir = fresh_dir("audit");
    let sock_path = dir.join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = [("RLIVEPATCH_LOG_SOCKET", sock_path.as_path())];
    let fix = patch("counter-fix");
    let next = || {
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("an audit line");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let (code, _, err) = rlp_in(&["apply", &pid, fix.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    let line = next();
    let sha = {
        use std::io::Write;
        let o = Command::new("sha256sum").arg(&fix).output().unwrap();
        let _ = std::io::stderr().flush();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    // The program's build-id, as `rlivepatch build-id` reads it.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let id_line = rlp_ok(&["build-id", exe.to_str().unwrap()]);
    let id = id_line.split('"').nth(3).unwrap().to_string();
    assert!(id.len() >= 16, "{id_line}");
    for want in [
        "rlivepatch[",
        "]: apply uid=0 ",
        &format!(" pid={pid} "),
        &format!(" build_id={id}"),
        "counter-pie",
        "patch=counter-fix",
        &format!("sha256={sha}"),
        "signer=\"none\"",
        "outcome=\"ok\"",
    ] {
        assert!(line.contains(want), "{want}: {line}");
    }
    let (code, _, _) = rlp_in(&["disable", &pid, "counter-fix"], &env);
    assert_eq!(code, 0);
    let line = next();
    assert!(
        line.contains("]: disable uid=0") && line.contains("patch counter-fix: ok"),
        "{line}"
    );
    // A refusal is in the trail too.
    let (code, _, _) = rlp_in(&["disable", &pid, "counter-fix"], &env);
    assert_eq!(code, 5);
    let line = next();
    assert!(
        line.contains("]: disable") && line.contains("Mismatch"),
        "{line}"
    );
    t.assert_running();
}

/// The file is read once, and what was checked is what runs: a signed patch swapped for
/// an unsigned one while rlivepatch is stopped midway (after it read and verified the
/// file, before the process loads it) still loads the signed bytes.
#[test]
fn a_file_swapped_during_an_apply_never_runs_unverified() {
    let (mut t, pid) = running_counter();
    let dir = fresh_dir("trust-swap");
    rlp_ok(&["keygen", dir.join("ops").to_str().unwrap()]);
    let host = dir.join("etc");
    std::fs::create_dir_all(host.join("keys")).unwrap();
    std::fs::write(host.join("policy"), "require-signature\n").unwrap();
    std::fs::copy(dir.join("ops.pub"), host.join("keys/ops.pub")).unwrap();
    let target = dir.join("fix.so");
    std::fs::copy(patch("counter-fix"), &target).unwrap();
    rlp_ok(&[
        "sign",
        "--key",
        dir.join("ops.key").to_str().unwrap(),
        target.to_str().unwrap(),
    ]);
    // rlivepatch stops itself (SIGSTOP) once it holds the process.
    let run = StoppedRun::at(
        "apply:attached",
        &["apply", &pid, target.to_str().unwrap()],
        &[("RLIVEPATCH_POLICY_DIR", &host)],
    );
    // The swap: an unsigned patch with another behaviour, renamed over the file.
    let swap = dir.join("swap.so");
    std::fs::copy(patch("counter-fix2"), &swap).unwrap();
    std::fs::rename(&swap, &target).unwrap();
    run.finish();
    // The signed patch's behaviour (x * 100), never the swapped one's (x * 1000).
    let l = t.wait_line(
        |l| l.contains(" = ") && value(l).0 > 0 && value(l).1 == value(l).0 * 100,
        Duration::from_secs(10),
    );
    assert_ne!(value(&l).1, value(&l).0 * 1000, "{l}");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("swap.so"), "{maps}");
    rlp_ok(&["disable", &pid, "counter-fix"]);
}

/// A caller that is not root but may trace other users' processes (CAP_SYS_PTRACE) gets
/// the same trust check: a patch file owned by a third user is refused, the target (a
/// process of root's) untouched.
#[test]
fn a_caller_that_may_trace_others_gets_the_trust_check() {
    use std::os::unix::fs::PermissionsExt;
    let (t, _) = running_counter();
    let (entry, snap) = t.snapshot_of("counter-pie", "compute");
    // What nobody runs and reads, where anyone may enter (the build directory may be
    // private); rlivepatch's copy written by another process (see rlp_as_nobody).
    let dir = std::env::temp_dir().join(format!("rlivepatch-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rlp = dir.join("rlivepatch");
    let st = Command::new("install")
        .args(["-m", "0755", env!("CARGO_BIN_EXE_rlivepatch")])
        .arg(&rlp)
        .status()
        .unwrap();
    assert!(st.success());
    let file = dir.join("fix.so");
    std::fs::copy(patch("counter-fix"), &file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&file, Some(1234), Some(1234)).unwrap();
    let run = |caps: bool| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        if caps {
            cmd.args(["--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace"]);
        }
        let o = cmd
            .arg(&rlp)
            .args(["apply", &t.pid.to_string(), file.to_str().unwrap()])
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(true);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("owned by uid 1234"), "{err}");
    t.assert_untouched(&snap, entry);
    // Without the capability the kernel refuses the process itself; the file is not
    // what stops it.
    let (code, err) = run(false);
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("owned by uid 1234"), "{err}");
    t.assert_untouched(&snap, entry);
    std::fs::remove_dir_all(&dir).unwrap();
}
