//! Every error of apply/disable is one line naming the cause and the fix, a nonzero exit
//! code, and leaves the target untouched with nothing loaded in it.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn counter() -> (Target, u64, Snapshot) {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let mut t = Target::start(&exe, &["5"]);
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
    let (entry, snap) = t.snapshot_of("counter-pie", "compute");
    (t, entry, snap)
}

/// The target prints patched values (counter-fix: `x * 100`).
fn wait_patched(t: &mut Target) {
    t.wait_line(
        |l| {
            let (i, v) = value(l);
            v == i * 100
        },
        Duration::from_secs(10),
    );
}

/// The target keeps printing unpatched values.
fn still_original(t: &mut Target) {
    for l in t.next_lines(2) {
        let (i, v) = value(&l);
        assert_eq!(v, i + 1, "{l}");
    }
}

#[test]
fn no_such_process() {
    let fix = patch("counter-fix");
    let e = rlp_fails(&["apply", "99999999", fix.to_str().unwrap()], 3);
    assert!(e.contains("no process with pid 99999999"), "{e}");
    let e = rlp_fails(&["list", "99999999"], 3);
    assert!(e.contains("no process"), "{e}");
}

#[test]
fn no_permission_explains_ptrace() {
    let (mut t, entry, snap) = counter();
    let fix = patch("counter-fix");
    // Run rlivepatch as nobody against a root process.
    let o = rlp_as_nobody(&fix, &["apply", &t.pid.to_string(), "PATCH"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no permission to trace process"), "{err}");
    assert!(err.contains("CAP_SYS_PTRACE"), "{err}");
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

#[test]
fn bad_patch_files() {
    let (mut t, entry, snap) = counter();
    let pid = t.pid.to_string();
    let dir = build_dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();

    let e = rlp_fails(&["apply", &pid, "/nonexistent/patch.so"], 4);
    assert!(e.contains("does not exist"), "{e}");

    let text = dir.join("text.so");
    std::fs::write(&text, "this is not a shared object\n").unwrap();
    let e = rlp_fails(&["apply", &pid, text.to_str().unwrap()], 4);
    assert!(e.contains("not an ELF file"), "{e}");

    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let e = rlp_fails(&["apply", &pid, exe.to_str().unwrap()], 4);
    assert!(e.contains("is an executable, not a shared object"), "{e}");

    let mut arm = std::fs::read(patch("counter-fix")).unwrap();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let arm_path = dir.join("arm.so");
    std::fs::write(&arm_path, &arm).unwrap();
    let e = rlp_fails(&["apply", &pid, arm_path.to_str().unwrap()], 4);
    assert!(e.contains("not built for x86_64"), "{e}");

    let plain = greeter().with_file_name("libgreet.so");
    let e = rlp_fails(&["apply", &pid, plain.to_str().unwrap()], 4);
    assert!(e.contains("no rlivepatch metadata"), "{e}");

    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

#[test]
fn object_not_loaded() {
    let (mut t, entry, snap) = counter();
    let p = patch_src(
        "err-no-object",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC_IN(\"libnotloaded.so.1\", compute, f);\n",
    );
    let e = rlp_fails(&["apply", &t.pid.to_string(), p.to_str().unwrap()], 5);
    assert!(
        e.contains("object libnotloaded.so.1 is not loaded in process"),
        "{e}"
    );
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

#[test]
fn symbol_not_found() {
    let (mut t, entry, snap) = counter();
    let p = patch_src(
        "err-no-symbol",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(no_such_function, f);\n",
    );
    let e = rlp_fails(&["apply", &t.pid.to_string(), p.to_str().unwrap()], 5);
    assert!(
        e.contains("function no_such_function not found in counter-pie"),
        "{e}"
    );
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

#[test]
fn function_shorter_than_the_jump() {
    let (mut t, entry, snap) = counter();
    let p = patch_src(
        "err-tiny",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x + 2; }\nRLIVEPATCH_FUNC(tiny, f);\n",
    );
    let e = rlp_fails(&["apply", &t.pid.to_string(), p.to_str().unwrap()], 5);
    assert!(
        e.contains("function tiny is 4 bytes long, shorter than the 5-byte jump"),
        "{e}"
    );
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

#[test]
fn same_name_twice_and_disabling_unknown_names() {
    let (mut t, entry, _) = counter();
    let pid = t.pid.to_string();
    let fix = patch("counter-fix");
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    wait_patched(&mut t);
    let snap = t.snapshot(entry);

    let e = rlp_fails(&["apply", &pid, fix.to_str().unwrap()], 5);
    assert!(
        e.contains("a patch named counter-fix is already applied"),
        "{e}"
    );
    let e = rlp_fails(&["disable", &pid, "nope"], 5);
    assert!(
        e.contains("no patch named nope is applied") && e.contains("applied: counter-fix"),
        "{e}"
    );
    // Untouched: still patched, one copy loaded.
    t.assert_running();
    assert_eq!(t.snapshot(entry), snap);
    assert_eq!(
        t.maps()
            .lines()
            .filter(|l| l.contains("rlp:counter-fix") && l.contains("r-xp"))
            .count(),
        1
    );
    for l in t.next_lines(2) {
        let (i, v) = value(&l);
        assert_eq!(v, i * 100);
    }
    // A name that differs only in case: the one meant is named.
    let e = rlp_fails(&["disable", &pid, "Counter-Fix"], 5);
    assert!(e.contains("did you mean counter-fix?"), "{e}");
    // The file it was applied from names it too: its path, or its file name.
    rlp_ok(&["disable", &pid, fix.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    rlp_ok(&["disable", &pid, "counter-fix.so"]);
    let e = rlp_fails(&["disable", &pid, "counter-fix"], 5);
    assert!(e.contains("no patch"), "{e}");
    still_original(&mut t);
}

#[test]
fn a_process_that_may_not_create_executable_memfds_is_refused_untouched() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    // vm.memfd_noexec = 2 in a pid namespace of the target's own (never the machine's).
    // unshare stays the parent and kills the target when the test drops it.
    let sh = format!(
        "echo 2 > /proc/sys/vm/memfd_noexec && exec {} 5",
        exe.display()
    );
    let mut t = Target::start(
        std::path::Path::new("unshare"),
        &["--pid", "--kill-child", "sh", "-c", &sh],
    );
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
    let unshare = t.pid;
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("unshare's children");
    t.pid = children.trim().parse().expect("the target's pid");
    let entry = t.symbol_addr("counter-pie", "compute");
    let snap = t.snapshot(entry);
    let fix = patch("counter-fix");
    let e = rlp_fails(&["apply", &t.pid.to_string(), fix.to_str().unwrap()], 3);
    assert!(e.contains("vm.memfd_noexec is 2"), "{e}");
    assert!(e.contains("set it to 1"), "{e}");
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
}

/// The soft limit of open files of process `pid`, set to `n`; returns the old one.
fn set_nofile(pid: i32, n: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit writes one rlimit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: n,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads one rlimit.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// A process at its limit of open files when the memfds of an apply are made (its
/// private memory's fits, and is closed again; of the record's, the runtime's and the
/// patch's, made together, the last does not): the apply is refused with the fix, the
/// two made are closed, and the process is as it was. With room again, it applies.
#[test]
fn a_process_at_its_open_file_limit_is_refused_untouched() {
    let (mut t, entry, snap) = counter();
    let pid = t.pid.to_string();
    let fds: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    // New descriptors take the lowest free numbers, below the limit.
    let low = (0..).find(|f| !fds.contains(f)).unwrap();
    assert!(
        !fds.contains(&(low + 1)) && !fds.contains(&(low + 2)),
        "open fds {fds:?}: three free in a row expected from {low}"
    );
    let old = set_nofile(t.pid, low + 2);
    let fix = patch("counter-fix");
    let e = rlp_fails(&["apply", &pid, fix.to_str().unwrap()], 3);
    assert!(e.contains("RLIMIT_NOFILE") && e.contains("prlimit"), "{e}");
    t.assert_untouched(&snap, entry);
    still_original(&mut t);
    set_nofile(t.pid, old);
    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    wait_patched(&mut t);
}

/// `check` is apply's preflight: what apply refuses, check refuses with the same exit
/// code, and neither touches the process.
#[test]
fn check_refuses_what_apply_refuses_with_the_same_code() {
    let (t, entry, before) = counter();
    let pid = t.pid.to_string();
    let cases = [
        (
            "pre-unknown-symbol",
            "#include <rlivepatch.h>\nRLIVEPATCH_SYMBOL(int, nope, \"no_such_variable\");\nstatic int f(int x) { return x + *nope; }\nRLIVEPATCH_FUNC(compute, f);\n",
            5,
            "no_such_variable",
        ),
        (
            "pre-interposed",
            "#include <rlivepatch.h>\nint abs(int x) { return x * 100; }\nRLIVEPATCH_FUNC(compute, abs);\n",
            4,
            "make abs static",
        ),
        (
            "pre-undefined",
            "#include <rlivepatch.h>\nextern int no_such_function(int);\nstatic int f(int x) { return no_such_function(x); }\nRLIVEPATCH_FUNC(compute, f);\n",
            4,
            "no_such_function",
        ),
    ];
    for (name, src, code, what) in cases {
        let p = patch_src(name, src);
        let c = rlp_fails(&["check", &pid, p.to_str().unwrap()], code);
        let a = rlp_fails(&["apply", &pid, p.to_str().unwrap()], code);
        assert!(c.contains(what) && a.contains(what), "{name}: {c} / {a}");
        t.assert_untouched(&before, entry);
    }
}

/// Each "not found" says what to do next.
#[test]
fn names_not_found_point_the_right_way() {
    let (t, entry, before) = counter();
    let pid = t.pid.to_string();
    let cases = [
        (
            "nf-typo",
            "RLIVEPATCH_FUNC(compte, f);",
            "function compte not found in counter-pie (main executable); did you mean `compute`?",
        ),
        (
            "nf-variable",
            "RLIVEPATCH_FUNC(step, f);",
            "step in counter-pie (main executable) is a variable, not a function",
        ),
        (
            "nf-elsewhere",
            "RLIVEPATCH_FUNC(puts, f);",
            "function puts is not in counter-pie (main executable) but in libc.so.6",
        ),
        (
            "nf-object",
            "RLIVEPATCH_FUNC_IN(\"libc.so\", puts, f);",
            "loaded objects that look alike: libc.so.6",
        ),
        (
            "nf-symbol",
            "RLIVEPATCH_SYMBOL(int, s, \"stpe\");\nRLIVEPATCH_FUNC(compute, g);",
            "did you mean `step`?",
        ),
    ];
    for (name, rec, want) in cases {
        let src = format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x; }}\n{}\n",
            rec.replace(
                "RLIVEPATCH_FUNC(compute, g);",
                "static int g(int x) { return x + *s; }\nRLIVEPATCH_FUNC(compute, g);"
            )
        );
        let p = patch_src(name, &src);
        let e = rlp_fails(&["apply", &pid, p.to_str().unwrap()], 5);
        assert!(e.contains(want), "{name}: {e}");
        // The variable case shows the declaration to use.
        if name == "nf-variable" {
            assert!(
                e.contains("RLIVEPATCH_SYMBOL(type, local, \"step\")"),
                "{e}"
            );
        }
        if name == "nf-elsewhere" {
            assert!(
                e.contains("RLIVEPATCH_FUNC_IN(\"libc.so.6\", puts, new)"),
                "{e}"
            );
        }
    }
    t.assert_untouched(&before, entry);
}

/// A stripped program: only exported functions are visible, and the message says where
/// static ones come from.
#[test]
fn a_stripped_object_says_where_its_symbols_are() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let stripped = build_dir().join("counter-stripped");
    std::fs::copy(&exe, &stripped).unwrap();
    let st = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg(&stripped)
        .status()
        .unwrap();
    assert!(st.success());
    let mut t = Target::start(&stripped, &["5"]);
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
    let p = patch_src(
        "nf-stripped",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(compute, f);\n",
    );
    let e = rlp_fails(&["apply", &t.pid.to_string(), p.to_str().unwrap()], 5);
    assert!(
        e.contains("it is stripped, so only its exported functions are visible")
            && e.contains("nm -D")
            && e.contains("-dbgsym")
            && e.contains("--debug-dir"),
        "{e}"
    );
}

/// `rlivepatch symbols`: what the process has, and what can take a patch, without
/// stopping it.
#[test]
fn symbols_lists_functions_and_variables_and_what_can_take_a_patch() {
    let (t, entry, before) = counter();
    let pid = t.pid.to_string();
    let out = rlp_ok(&["symbols", &pid, "comput?", "--object", "main"]);
    assert!(
        out.contains("global function compute  can take a patch"),
        "{out}"
    );
    let out = rlp_ok(&["symbols", &pid, "tiny", "--object", "main"]);
    assert!(
        out.contains("cannot take a patch: function tiny is 4 bytes long"),
        "{out}"
    );
    let j = json(&rlp_ok(&[
        "symbols", &pid, "step", "--object", "main", "--json",
    ]));
    let step = j
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "step")
        .unwrap();
    assert_eq!(step["kind"], "variable");
    assert_eq!(step["binding"], "local");
    assert!(step["address"].as_str().unwrap().starts_with("0x"));
    // The process ran on, untouched.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");
    t.assert_untouched(&before, entry);
}

/// `"$(pidof x)"` with several processes, quoted or not, gets a message saying so.
#[test]
fn several_pids_are_said_so() {
    for args in [
        vec!["apply", "123 456", "fix.so"],
        vec!["apply", "123", "456", "fix.so"],
        vec!["disable", "123", "456", "name"],
        vec!["list", "123 456"],
    ] {
        let o = rlp(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("process ids") && err.contains("for p in 123 456"),
            "{args:?}: {err}"
        );
    }
}

/// A process whose children run the same program (a master and its workers): apply and
/// list say that those are not covered, and how to cover them.
#[test]
fn children_running_the_same_program_are_named() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let e = exe.display().to_string();
    // The shell starts a child, then becomes the parent: both run the counter.
    let mut t = Target::start(
        std::path::Path::new("/bin/sh"),
        &["-c", &format!("'{e}' 1000 & exec '{e}' 1000")],
    );
    let pid = t.pid.to_string();
    let child = (0..1000)
        .find_map(|_| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            let exe_now = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let first = c.split_whitespace().next().map(str::to_string);
            match (exe_now, first) {
                (Some(x), Some(c)) if x == exe => Some(c),
                _ => {
                    std::thread::yield_now();
                    None
                }
            }
        })
        .expect("the child process");
    // Wait until the child runs the counter too (its own ready line).
    t.wait_line(|l| l.starts_with("ready"), Duration::from_secs(5));
    let fix = patch("counter-fix");
    let (code, out, err) = rlp_full(&["apply", &pid, fix.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "has 1 child process running the same program ({child})"
        )),
        "{err}"
    );
    assert_eq!(
        json(&out)["children"][0].as_i64().unwrap().to_string(),
        child
    );
    // Every note printed is in the JSON report too.
    let printed: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("rlivepatch: "))
        .filter(|l| l.starts_with("note: "))
        .collect();
    assert!(!printed.is_empty(), "{err}");
    let notes = json(&out)["notes"].to_string();
    for n in printed {
        assert!(notes.contains(&n[..n.len().min(60)]), "{n}: {notes}");
    }
    let list = rlp_ok(&["list", &pid]);
    assert!(
        list.contains(&format!("for p in {child}; do rlivepatch apply")),
        "{list}"
    );
    // Patched too, the child is no longer worth a note.
    rlp_ok(&["apply", &child, fix.to_str().unwrap()]);
    let list = rlp_ok(&["list", &pid]);
    assert!(!list.contains("child process"), "{list}");
    rlp_ok(&["disable", &pid, "counter-fix"]);
    rlp_ok(&["disable", &child, "counter-fix"]);
    // A fleet run that patches both says nothing of children; one that leaves the child
    // out says so once, naming it.
    // (By pid: other tests run this program too, and are not this test's to patch.)
    let both = ["--pid", pid.as_str(), "--pid", child.as_str()];
    let (code, _, err) = rlp_full(&[&["apply"], &both[..], &[fix.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("child process"), "{err}");
    rlp_ok(&[&["disable"], &both[..], &["counter-fix"]].concat());
    let (code, _, err) = rlp_full(&["apply", "--pid", &pid, fix.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("child process").count(), 1, "{err}");
    assert!(err.contains(&format!("{child} (child of {pid})")), "{err}");
    rlp_ok(&["disable", &pid, "counter-fix"]);
    // The child, started by this test's shell, by pid.
    let _ = std::process::Command::new("kill").arg(&child).status();
    drop(t);
}

/// The install script into a temporary prefix; a patch built with the installed
/// `rlivepatch sdk --cflags` (which points at the installed header) and applied.
#[test]
fn installed_rlivepatch_builds_and_applies_a_patch() {
    let prefix = build_dir().join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    let st = std::process::Command::new(root().join("scripts/install.sh"))
        .arg(&prefix)
        .env("RLIVEPATCH_BIN", env!("CARGO_BIN_EXE_rlivepatch"))
        .status()
        .unwrap();
    assert!(st.success());
    for f in [
        "bin/rlivepatch",
        "include/rlivepatch.h",
        "share/man/man1/rlivepatch.1",
        "share/bash-completion/completions/rlivepatch",
        "share/zsh/site-functions/_rlivepatch",
        "share/fish/vendor_completions.d/rlivepatch.fish",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    let man = std::fs::read_to_string(prefix.join("share/man/man1/rlivepatch.1")).unwrap();
    assert!(
        man.contains(".TH rlivepatch 1") && man.contains("apply"),
        "{man}"
    );
    // Every page the main page refers to is installed (rlivepatch-apply(1)...).
    let referred: Vec<&str> = man
        .split("rlivepatch\\-")
        .skip(1)
        .filter_map(|r| r.split_once("(1)").map(|(name, _)| name))
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == '\\')
        })
        .collect();
    assert!(referred.len() >= 10, "{man}");
    for n in referred {
        let page = format!("share/man/man1/rlivepatch-{}.1", n.replace("\\-", "-"));
        assert!(prefix.join(&page).is_file(), "{page} not installed");
    }
    // The exit codes keep their lines (not filled into a paragraph).
    assert!(man.contains(".SH \"EXIT STATUS\"\n.nf\n"), "{man}");
    let installed = prefix.join("bin/rlivepatch");
    let out = std::process::Command::new(&installed)
        .args(["sdk", "--cflags"])
        .output()
        .unwrap();
    let cflags = String::from_utf8(out.stdout).unwrap();
    assert!(
        cflags.contains(&format!("-I{}", prefix.join("include").display())),
        "{cflags}"
    );
    // A patch built anywhere with those flags.
    let dir = build_dir().join("elsewhere");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("patches/counter-fix.c"), dir.join("fix.c")).unwrap();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cc {} -o fix.so fix.c", cflags.trim()))
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let (mut t, _, _) = counter();
    let out = std::process::Command::new(&installed)
        .args(["apply", &t.pid.to_string()])
        .arg(dir.join("fix.so"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The patched values come (lines printed before the apply are still queued).
    t.wait_line(
        |l| {
            let (i, v) = value(l);
            i > 0 && v == i * 100
        },
        Duration::from_secs(5),
    );
}

/// Root refused (here: without CAP_SYS_PTRACE, as in a container started without it,
/// against another user's process) is not told to run as root.
#[test]
fn root_refused_is_told_why_not_to_run_as_root() {
    require_tool("setpriv");
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let dir = std::env::temp_dir().join(format!("rlivepatch-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("counter");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The target belongs to nobody.
    let mut t = Target::start_cmd_as(&copy, &["1000"], 65534);
    let fix = patch("counter-fix");
    let o = std::process::Command::new("setpriv")
        .arg("--bounding-set=-sys_ptrace")
        .arg(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &t.pid.to_string(), fix.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("although rlivepatch runs as root")
            && err.contains("without the capability CAP_SYS_PTRACE")
            && !err.contains("run rlivepatch as the target's user or as root"),
        "{err}"
    );
    t.wait_line(|l| l.contains(" = "), Duration::from_secs(5));
}

/// The small things a user notices: plurals, one form for addresses, an object file
/// called an object file, file errors without the path twice or a parser's raw words.
#[test]
fn small_things_read_well() {
    let (t, entry, before) = counter();
    let pid = t.pid.to_string();
    let fix = patch("counter-fix");
    let out = rlp_ok(&["check", &pid, fix.to_str().unwrap()]);
    assert!(out.contains("(1 thread checked)"), "{out}");
    let j = json(&rlp_ok(&["check", &pid, fix.to_str().unwrap(), "--json"]));
    assert_eq!(j["functions"][0]["addr"], format!("{entry:#x}"));
    let list = rlp_ok(&["list", &pid]);
    assert!(list.contains("no patches applied"), "{list}");
    t.assert_untouched(&before, entry);

    let dir = build_dir();
    let obj = dir.join("small.o");
    std::fs::write(dir.join("small.c"), "int x;\n").unwrap();
    let st = std::process::Command::new("cc")
        .arg("-c")
        .arg(dir.join("small.c"))
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success());
    let e = rlp_fails(&["info", obj.to_str().unwrap()], 4);
    assert!(
        e.contains("is an object file (.o), not a shared object"),
        "{e}"
    );
    let e = rlp_fails(&["build-id", "/nonexistent/x.so"], 1);
    assert_eq!(
        e,
        "rlivepatch: error: cannot open /nonexistent/x.so: No such file or directory"
    );
    let e = rlp_fails(&["build-id", dir.join("small.c").to_str().unwrap()], 1);
    assert!(
        e.contains("is not an ELF file") && !e.contains("Malformed"),
        "{e}"
    );
    assert_eq!(e.matches("small.c").count(), 1, "{e}");
}

/// Run rlivepatch with its stdout a pipe whose reader is gone (`| head -1` that ended,
/// `| true`): the operation happens and its exit code stands; printing stops quietly.
fn closed_stdout(args: &[&str]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors of a new pipe; both are ours.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] and fds[1] were just created and are owned here only.
    let (reader, writer) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(args)
        .stdout(std::process::Stdio::from(writer))
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_changes_no_exit_code() {
    let (mut t, _, _) = counter();
    let pid = t.pid.to_string();
    let fix = patch("counter-fix");
    for args in [
        vec!["apply", pid.as_str(), fix.to_str().unwrap()],
        vec!["list", pid.as_str()],
        vec!["symbols", pid.as_str(), "*"],
        vec!["list", pid.as_str(), "--json"],
        vec!["disable", pid.as_str(), "counter-fix", "--json"],
    ] {
        let o = closed_stdout(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if args[0] == "apply" {
            assert!(rlp_ok(&["list", &pid, "--json"]).contains("counter-fix"));
        }
    }
    still_original(&mut t);
    // A failure keeps its own code.
    let o = closed_stdout(&["disable", &pid, "counter-fix"]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A patch file others may change is not loaded into a process by root (exit 4, the
/// target untouched): writable by others or the group, owned by another user, or in a
/// directory others may write without the sticky bit; a sticky one (/tmp) is fine, and
/// --allow-untrusted loads it, saying what it let through.
#[test]
fn patch_files_others_may_change_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (mut t, entry, snap) = counter();
    let pid = t.pid.to_string();
    let fix = patch("counter-fix");
    let dir = build_dir().join("untrusted");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("fix.so");
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let refused = |why: &str| {
        for cmd in ["apply", "check"] {
            let e = rlp_fails(&[cmd, &pid, copy.to_str().unwrap()], 4);
            assert!(
                e.contains(why) && e.contains("--allow-untrusted"),
                "{cmd}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        t.assert_untouched(&snap, entry);
    };
    std::fs::copy(&fix, &copy).unwrap();
    mode(&copy, 0o666);
    refused("writable by others");
    mode(&copy, 0o664);
    refused("writable by its group");
    mode(&copy, 0o644);
    std::os::unix::fs::chown(&copy, Some(65534), None).unwrap();
    refused("owned by uid 65534");
    std::os::unix::fs::chown(&copy, Some(0), None).unwrap();
    mode(&dir, 0o777);
    refused("which others may write");
    // With the sticky bit, others cannot replace root's file there.
    mode(&dir, 0o1777);
    rlp_ok(&["check", &pid, copy.to_str().unwrap()]);
    mode(&dir, 0o777);
    let (code, _, err) = rlp_full(&["apply", &pid, copy.to_str().unwrap(), "--allow-untrusted"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --allow-untrusted: loading"), "{err}");
    mode(&dir, 0o755);
    rlp_ok(&["disable", &pid, "counter-fix"]);
    still_original(&mut t);
}
