//! Every process at once: selection by build-id read from each process's own mapping
//! (an old build still running after the file was replaced is another build), one
//! result per process, idempotent runs, the exit codes fleet tools read, processes in
//! other pid and mount namespaces, processes that are not targets never attached.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The counter built twice (other flags, other build-id) at one path: the first build's
/// processes keep running after the file was replaced by the second.
struct Builds {
    dir: PathBuf,
    path: PathBuf,
    old: Vec<Target>,
    new: Vec<Target>,
}

fn builds(name: &str, old: usize, new: usize) -> Builds {
    let dir = build_dir().join(format!("fleet-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("counter");
    // A build-id of the test's own: every test's builds differ from every other's (two
    // identical builds are one build, and --all would rightly take both).
    let build = |flags: &str, out: &Path| {
        let id: String = format!("fleet-{name}{flags}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tag = format!("-Wl,--build-id=0x{id}");
        let st = Command::new("cc")
            .args(["-O2", "-g", flags, &tag])
            .arg(root().join("fixtures/counter.c"))
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success());
    };
    build("-O1", &path);
    let olds = (0..old).map(|_| Target::start(&path, &["20"])).collect();
    // The update: a new file at the same path (rename, as package managers do).
    let tmp = dir.join(".counter.new");
    build("-fno-omit-frame-pointer", &tmp);
    std::fs::rename(&tmp, &path).unwrap();
    let news = (0..new).map(|_| Target::start(&path, &["20"])).collect();
    Builds {
        dir,
        path,
        old: olds,
        new: news,
    }
}

/// A patch for the new build (its build-id recorded).
fn fix_for(b: &Builds, name: &str) -> PathBuf {
    counter_patch_for(&b.dir, name, &b.path)
}

/// The process prints the patched values (compute(i) = i * 100) from now on.
fn patched(t: &mut Target) {
    t.assert_settled(
        2,
        |l| {
            let (i, v) = value(l);
            i > 0 && v == i * 100
        },
        "patched",
    );
}

/// The process prints the original values (compute(i) = i + 1) from now on.
fn still_original(t: &mut Target) {
    t.assert_settled(
        2,
        |l| {
            let (i, v) = value(l);
            v == i + 1
        },
        "original",
    );
}

/// The rlivepatch state mapping appears only in a process rlivepatch attached to.
fn untouched(t: &Target) -> bool {
    !t.maps().contains("rlivepatch-state")
}

fn pids(v: &serde_json::Value, result: &str) -> Vec<i64> {
    let mut p: Vec<i64> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == result)
        .map(|r| r["pid"].as_i64().unwrap())
        .collect();
    p.sort();
    p
}

fn sorted(ts: &[Target]) -> Vec<i64> {
    let mut p: Vec<i64> = ts.iter().map(|t| t.pid as i64).collect();
    p.sort();
    p
}

#[test]
fn apply_all_patches_every_process_of_the_build_once() {
    let mut b = builds("all", 2, 3);
    let fix = fix_for(&b, "fleet-fix");
    let other = Target::start(
        &fixture("counter", "counter-pie", &["-fPIE", "-pie"]),
        &["20"],
    );
    let (code, out, err) = rlp_full(&["apply", "--all", fix.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["changed"], true);
    assert_eq!(v["failed"], false);
    assert_eq!(pids(&v, "applied"), sorted(&b.new), "{v}");
    // The old build, still running from the replaced file: another build, untouched.
    assert_eq!(pids(&v, "mismatch"), sorted(&b.old), "{v}");
    for t in b.new.iter_mut() {
        patched(t);
    }
    for t in b.old.iter_mut() {
        still_original(t);
        assert!(untouched(t));
    }
    // Another program: not a line of the report, never attached.
    assert!(!out.contains(&format!("\"pid\": {},", other.pid)));
    assert!(untouched(&other));
    // Records carry the start time (a reused pid is another process), and for each
    // process patched how long its threads were held stopped.
    let rec = &v["processes"][0];
    assert!(rec["start_time"].as_u64().unwrap() > 0 && rec["exe"].is_string());
    let applied = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["result"] == "applied")
        .unwrap();
    assert!(applied["pause_ms"].as_f64().unwrap() > 0.0, "{applied}");
    // A note that holds for every process is printed once for the run, and is in the
    // record of each process it concerns.
    let notes: Vec<&str> = err.lines().filter(|l| l.contains(": note: ")).collect();
    let mut once: Vec<&str> = notes
        .iter()
        .map(|l| l.split_once(": note: ").unwrap().1)
        .collect();
    once.sort();
    once.dedup();
    assert!(!notes.is_empty() && notes.len() == once.len(), "{err}");
    for r in v["processes"].as_array().unwrap() {
        if r["result"] == "applied" {
            assert!(r["notes"].to_string().contains(once[0]), "{r}");
        }
    }

    // Again: nothing to do, and it says so.
    let (code, out, _) = rlp_full(&["apply", "--all", fix.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["changed"], false);
    assert_eq!(pids(&v, "already-applied"), sorted(&b.new));

    // The compliance report and the lists, read without stopping anything.
    let v = json(&rlp_ok(&[
        "check",
        "--all",
        fix.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(pids(&v, "covered"), sorted(&b.new));
    assert_eq!(pids(&v, "mismatch"), sorted(&b.old));
    let v = json(&rlp_ok(&["list", "--all", "--json"]));
    for p in sorted(&b.new) {
        let r = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["pid"] == p)
            .unwrap();
        assert_eq!(r["patches"][0], "fleet-fix");
    }
    // --exe narrows; --exclude-pid takes one out.
    let keep = b.new[0].pid.to_string();
    let v = json(&rlp_ok(&[
        "disable",
        "--exe",
        b.path.to_str().unwrap(),
        "--exclude-pid",
        &keep,
        "fleet-fix",
        "--json",
    ]));
    assert_eq!(v["counts"]["disabled"], 2, "{v}");
    let v = json(&rlp_ok(&["disable", "--all", "fleet-fix", "--json"]));
    assert_eq!(pids(&v, "disabled"), vec![b.new[0].pid as i64]);
    let v = json(&rlp_ok(&["disable", "--all", "fleet-fix", "--json"]));
    assert_eq!(v["changed"], false);
}

#[test]
fn exit_codes_say_what_happened() {
    let b = builds("codes", 0, 2);
    let fix = fix_for(&b, "codes-fix");
    require_tool("strace");
    // One target traced by another tool: blocked, the other applied: partial.
    let traced = b.new[0].pid.to_string();
    let mut strace = Command::new("strace")
        .args(["-p", &traced, "-o", "/dev/null"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // strace says when it has attached.
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(strace.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("attached"), "{line}");
    }
    let (code, out, err) = rlp_full(&[
        "apply",
        "--exe",
        b.path.to_str().unwrap(),
        fix.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 12, "{err}");
    let v = json(&out);
    assert_eq!(v["failed"], true);
    assert_eq!(pids(&v, "blocked"), vec![b.new[0].pid as i64], "{v}");
    assert_eq!(pids(&v, "applied"), vec![b.new[1].pid as i64], "{v}");
    // Only the traced one: every selected process failed.
    let (code, _, _) = rlp_full(&["apply", "--pid", &traced, fix.to_str().unwrap()]);
    assert_eq!(code, 13);
    let _ = strace.kill();
    let _ = strace.wait();
    // A pid that does not exist: gone, not a failure.
    let (code, out, _) = rlp_full(&[
        "apply",
        "--pid",
        "999999999",
        fix.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["counts"]["gone"], 1);
    // Nothing matched: fine, unless --require-match.
    let exe = b.dir.join("nothing-runs-this");
    std::fs::write(&exe, "").unwrap();
    let (code, _, _) = rlp_full(&[
        "apply",
        "--object",
        "libnothing-maps-this.so.9",
        fix.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let (code, _, _) = rlp_full(&[
        "apply",
        "--object",
        "libnothing-maps-this.so.9",
        "--require-match",
        fix.to_str().unwrap(),
    ]);
    assert_eq!(code, 15);
    // Refused before touching any process: not a patch.
    let (code, out, err) = rlp_full(&["apply", "--all", exe.to_str().unwrap(), "--json"]);
    assert_eq!(code, 14, "{err}");
    assert_eq!(json(&out)["failed"], true);
    // A patch for a main executable without a build-id needs --exe.
    let bare = patch("counter-fix");
    let e = rlp_fails(&["apply", "--all", bare.to_str().unwrap()], 14);
    assert!(e.contains("--exe PATH"), "{e}");
}

#[test]
fn a_process_in_other_namespaces_is_found_and_patched() {
    require_tool("unshare");
    let b = builds("ns", 0, 0);
    let fix = fix_for(&b, "ns-fix");
    // A new pid and mount namespace, /proc of its own: the counter is pid 1 there.
    let mut t = Target::start(
        Path::new("/usr/bin/unshare"),
        &[
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            // The counter goes with unshare when the test ends.
            "--kill-child",
            b.path.to_str().unwrap(),
            "20",
        ],
    );
    // The counter is the child of unshare.
    let child: i32 = std::fs::read_to_string(format!("/proc/{}/task/{}/children", t.pid, t.pid))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let v = json(&rlp_ok(&[
        "apply",
        "--all",
        fix.to_str().unwrap(),
        "--json",
    ]));
    let r = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == child)
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(r["result"], "applied", "{r}");
    assert_eq!(r["ns_pid"], 1);
    patched(&mut t);
    let text = rlp_ok(&["list", "--all"]);
    assert!(
        text.contains(&format!("pid {child} (counter, pid 1 in its namespace)")),
        "{text}"
    );
}

/// contrib/ansible/rollout.yml against localhost, twice: `changed`, then `ok`.
#[test]
fn the_ansible_playbook_rolls_out_then_reports_ok() {
    require_tool("ansible-playbook");
    let mut b = builds("ansible", 0, 2);
    let fix = fix_for(&b, "ansible-fix");
    let play = |b: &Builds| {
        let o = Command::new("ansible-playbook")
            .args(["-i", "localhost,", "-c", "local"])
            .arg(root().join("contrib/ansible/rollout.yml"))
            .arg("-e")
            .arg(format!("rlivepatch={}", env!("CARGO_BIN_EXE_rlivepatch")))
            .arg("-e")
            .arg(format!("patch={}", fix.display()))
            .arg("-e")
            .arg(
                serde_json::json!({ "selector": format!("--exe {}", b.path.display()) })
                    .to_string(),
            )
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCALHOST_WARNING", "false")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.lines()
            .find(|l| l.starts_with("localhost"))
            .unwrap_or_default()
            .to_string()
    };
    let first = play(&b);
    assert!(
        first.contains("changed=1") && first.contains("failed=0"),
        "{first}"
    );
    for t in b.new.iter_mut() {
        patched(t);
    }
    let second = play(&b);
    assert!(
        second.contains("changed=0") && second.contains("failed=0"),
        "{second}"
    );
}

/// `--exe` as an operator types it: a relative path is a path (resolved from the working
/// directory), a bare name selects programs of that name and says so, a path where no
/// file is is refused (exit 14), and a program no process runs is "nothing matched"
/// (exit 15) naming the processes of another build of it that do run. Before, each of
/// these printed "no process matched" and exited 0.
#[test]
fn exe_selects_as_typed_and_an_empty_match_says_why() {
    let b = builds("exe", 1, 1);
    let fix = fix_for(&b, "exe-fix");
    let fix = fix.to_str().unwrap();
    let in_dir = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(args)
            .current_dir(&b.dir)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    // A relative path: the new build's process is patched, the old one is a mismatch.
    let (code, out, err) = in_dir(&["apply", "--exe", "./counter", fix, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(pids(&v, "applied"), vec![b.new[0].pid as i64], "{out}");
    // The notes printed for a process are in its record too, for a tool reading JSON.
    let printed: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once(": note: ").map(|(_, n)| n))
        .collect();
    assert!(
        !printed.is_empty(),
        "the counter's compute gets a note: {err}"
    );
    let rec = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["result"] == "applied")
        .unwrap();
    for n in &printed {
        assert!(
            rec["notes"].to_string().contains(&n[..n.len().min(40)]),
            "{n}: {rec}"
        );
    }
    let (code, _, err) = in_dir(&["disable", "--exe", "./counter", "exe-fix"]);
    assert_eq!(code, 0, "{err}");
    // A bare name selects the programs of that name, and says so.
    let (code, out, err) = in_dir(&["apply", "--exe", "counter", fix, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is a name, not a path"), "{err}");
    assert_eq!(
        pids(&json(&out), "applied"),
        vec![b.new[0].pid as i64],
        "{out}"
    );
    rlp_ok(&["disable", "--exe", b.path.to_str().unwrap(), "exe-fix"]);
    // A path where no file is.
    let (code, _, err) = in_dir(&["apply", "--exe", "sbin/counter", fix]);
    assert_eq!(code, 14, "{err}");
    assert!(err.contains("no such file"), "{err}");
    // A copy of the program that no process runs: nothing matched, and why.
    let copy = b.dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(&b.path, copy.join("counter")).unwrap();
    let (code, out, err) = in_dir(&["apply", "--exe", "copy/counter", fix]);
    let err = format!("{out}{err}");
    assert_eq!(code, 15, "{err}");
    assert!(err.contains("no process runs"), "{err}");
    assert!(
        err.contains(&b.old[0].pid.to_string()) && err.contains(&b.new[0].pid.to_string()),
        "the processes of the other builds are named: {err}"
    );
    still_original(&mut b.new.into_iter().next().unwrap());
}

/// Run as a user who cannot read root's processes, a fleet run names the processes it
/// could not read, and one that may run the program `--exe` names (its name says so)
/// is a failure of the run (exit 13 here, the only one), not a silent skip with exit 0.
#[test]
fn processes_that_cannot_be_read_are_named_and_count() {
    let b = builds("unreadable", 0, 1);
    let fix = fix_for(&b, "unreadable-fix");
    let o = rlp_as_nobody(
        &fix,
        &[
            "apply",
            "--exe",
            b.path.to_str().unwrap(),
            "PATCH",
            "--json",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(13), "{out}{err}");
    let v = json(&out);
    // (Other tests' counters run too: each is one more.)
    assert!(
        pids(&v, "permission").contains(&(b.new[0].pid as i64)),
        "{v}"
    );
    // The others are named too (pid 1 is root's).
    assert!(
        v["msg"].to_string().contains("1 (")
            || v["unreadable_processes"].to_string().contains("[1,"),
        "{v}"
    );
    still_original(&mut b.new.into_iter().next().unwrap());
}

#[test]
fn a_file_the_processes_share_is_analysed_once_per_worker() {
    // Three processes mapping the same C library, one worker: what callers of atoi rely
    // on is worked out from libc once (the trace names each analysis), and every process
    // runs the new code.
    let exe = fixture("libc-user", "libc-user", &[]);
    let mut ts: Vec<Target> = (0..3).map(|_| Target::start(&exe, &["5"])).collect();
    let pids: Vec<String> = ts.iter().map(|t| t.pid.to_string()).collect();
    let fix = patch("libc-atoi");
    let mut args = vec!["apply", "--jobs", "1"];
    for p in &pids {
        args.extend(["--pid", p.as_str()]);
    }
    args.push(s(&fix));
    // (Nothing kept from an earlier run: see `contract::kept`.)
    let cache = fresh_dir("analysed-once");
    let out = rlp_env(
        &args,
        &[("RLIVEPATCH_TRACE", "1"), ("RLIVEPATCH_CACHE", s(&cache))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let analyses = err
        .lines()
        .filter(|l| l.contains("contract analysis of") && l.contains("libc.so.6"))
        .count();
    assert_eq!(analyses, 1, "{err}");
    for t in &mut ts {
        t.wait_line(|l| l.starts_with("atoi=42"), Duration::from_secs(10));
    }
    let mut args = vec!["disable"];
    for p in &pids {
        args.extend(["--pid", p.as_str()]);
    }
    args.push("libc-atoi");
    rlp_ok(&args);
    for t in &mut ts {
        t.wait_line(|l| l.starts_with("atoi=21"), Duration::from_secs(10));
    }
}
