//! Replacements that call the code they replace (`RLIVEPATCH_FUNC_WRAP`): the original
//! through a trampoline, the patch below when patches stack, the original again under
//! atomic replace; a thread asleep inside the trampoline holds a disable; a
//! `RLIVEPATCH_SYMBOL` to the replaced function (the recursion a first wrapper meets)
//! is refused by `check` and `apply` alike.

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn target() -> Target {
    let exe = fixture("wrap-target", "wrap-target", &[]);
    Target::start_with_stdin(&exe, &[])
}

fn twice(t: &mut Target, n: i32) -> String {
    t.send(&format!("twice {n}"));
    let head = format!("twice {n} =");
    t.wait_line(|l| l.starts_with(&head), T)
}

/// A wrapper of `twice` built from `body` (an expression of `x` and `orig(x)`).
fn twice_wrapper(name: &str, body: &str, replace: bool) -> std::path::PathBuf {
    patch_src(
        name,
        &format!(
            "#include <rlivepatch.h>\nstatic int (*orig)(int);\nstatic int w(int x) {{ return {body}; }}\nRLIVEPATCH_FUNC_WRAP(twice, w, orig);\n{}",
            if replace {
                "RLIVEPATCH_REPLACE();\n"
            } else {
                ""
            }
        ),
    )
}

/// Does the reader sleep in `read` inside the trampoline (raw_read's system call is among
/// the bytes the entry jump covers, so there the pc is outside the original's first 16
/// bytes)?
fn reader_in_trampoline(t: &Target) -> bool {
    let pc = reader_in_read(t);
    let entry = t.symbol_addr("wrap-target", "raw_read");
    !(entry..entry + 16).contains(&pc)
}

/// The pc of the reader thread once it sleeps in `read`, from /proc (the readiness
/// signal: no sleep).
fn reader_in_read(t: &Target) -> u64 {
    let deadline = std::time::Instant::now() + T;
    loop {
        for e in std::fs::read_dir(format!("/proc/{}/task", t.pid)).unwrap() {
            let tid = e.unwrap().file_name().to_string_lossy().into_owned();
            if tid == t.pid.to_string() {
                continue;
            }
            let sc = std::fs::read_to_string(format!("/proc/{}/task/{tid}/syscall", t.pid))
                .unwrap_or_default();
            let f: Vec<&str> = sc.split_whitespace().collect();
            if f.len() == 9 && f[0] == "0" {
                return u64::from_str_radix(f[8].trim_start_matches("0x"), 16).unwrap();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reader never sat in read"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_wrapper_calls_the_original_and_a_thread_in_the_trampoline_holds_the_disable() {
    let mut t = target();
    let pid = t.pid.to_string();
    let p = patch("wrap-read");
    let info = rlp_ok(&["info", p.to_str().unwrap()]);
    assert!(
        info.contains("upper_read (calls the code it replaces)"),
        "{info}"
    );
    let out = rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
    assert!(
        out.contains("it calls the original, through a trampoline at"),
        "{out}"
    );
    t.send("read");
    t.send("feed a");
    assert_eq!(t.wait_line(|l| l.starts_with("got"), T), "got A 1");
    // The reader goes back into the original through the trampoline and sleeps there.
    t.send("read");
    assert!(
        reader_in_trampoline(&t),
        "the reader sleeps in the original itself"
    );
    // Blocked: the thread is inside the trampoline, called from the wrapper (which the
    // check names, as the outermost changed frame).
    let err = rlp_fails(&["disable", &pid, "wrap-read", "--timeout", "1"], 6);
    assert!(
        err.contains("the trampoline into the original raw_read") || err.contains("upper_read"),
        "{err}"
    );
    t.send("feed b");
    assert_eq!(t.wait_line(|l| l.starts_with("got"), T), "got B 1");
    rlp_ok(&["disable", &pid, "wrap-read"]);
    t.send("read");
    t.send("feed c");
    assert_eq!(t.wait_line(|l| l.starts_with("got"), T), "got c 1");
    assert!(t.rlivepatch_maps().iter().all(|m| !m.contains("rlp:")));
}

#[test]
fn wrappers_stack_replace_and_disable_in_any_order() {
    let mut t = target();
    let pid = t.pid.to_string();
    let plus = twice_wrapper("wrap-plus-one", "orig(x) + 1", false);
    let times = twice_wrapper("wrap-times-ten", "orig(x) * 10", false);
    let hundred = twice_wrapper("wrap-replace", "orig(x) + 100", true);
    assert_eq!(twice(&mut t, 3), "twice 3 = 6");
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 7");
    // Stacked: the second wrapper calls the first.
    rlp_ok(&["apply", &pid, times.to_str().unwrap()]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 70");
    let list = rlp_ok(&["list", &pid]);
    assert!(list.contains("it calls w"), "{list}");
    // Any order: the first goes while the second stays, which then calls the original
    // (through the first's trampoline, which it takes over).
    rlp_ok(&["disable", &pid, "wrap-plus-one"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 60");
    let list = rlp_ok(&["list", &pid]);
    assert!(!list.contains("wrap-plus-one"), "{list}");
    // And back: the first on top of the second, then the second goes from under it.
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 61");
    rlp_ok(&["disable", &pid, "wrap-times-ten"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 7");
    // A plain replacement below a wrapper: the wrapper then calls the original through
    // a trampoline the disable makes, which is the wrapper's from then on.
    let plain = patch_src(
        "wrap-plain",
        "#include <rlivepatch.h>\nstatic int p(int x) { return x * 3; }\nRLIVEPATCH_FUNC(twice, p);\n",
    );
    rlp_ok(&["disable", &pid, "wrap-plus-one"]);
    rlp_ok(&["apply", &pid, plain.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 10");
    rlp_ok(&["disable", &pid, "wrap-plain"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 7");
    rlp_ok(&["disable", &pid, "wrap-plus-one"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 6");
    assert!(
        t.rlivepatch_maps().iter().all(|m| !m.contains("island")),
        "the trampoline's island stayed: {:?}",
        t.rlivepatch_maps()
    );
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, times.to_str().unwrap()]);
    // An atomic replace calls the original, whatever was below.
    rlp_ok(&["apply", &pid, hundred.to_str().unwrap()]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 106");
    let list = rlp_ok(&["list", &pid]);
    assert!(
        !list.contains("wrap-plus-one") && !list.contains("wrap-times-ten"),
        "{list}"
    );
    rlp_ok(&["disable", &pid, "wrap-replace"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 6");
    assert!(t.rlivepatch_maps().iter().all(|m| !m.contains("rlp:")));
}

#[test]
fn a_symbol_to_the_replaced_function_is_refused_pointing_to_the_wrapper() {
    let t = target();
    let pid = t.pid.to_string();
    let (entry, before) = t.snapshot_of("wrap-target", "twice");
    let p = patch_src(
        "wrap-recursive",
        "#include <rlivepatch.h>\nRLIVEPATCH_SYMBOL(int (int), old_twice, \"twice\");\nstatic int w(int x) { return (*old_twice)(x) + 1; }\nRLIVEPATCH_FUNC(twice, w);\n",
    );
    for cmd in ["check", "apply"] {
        let err = rlp_fails(&[cmd, &pid, p.to_str().unwrap()], 4);
        assert!(
            err.contains("old_twice names twice, which this patch replaces")
                && err.contains("RLIVEPATCH_FUNC_WRAP(twice, w, old_twice)"),
            "{cmd}: {err}"
        );
    }
    t.assert_untouched(&before, entry);
}

/// An apply of a wrapper that cannot switch (a thread asleep in the original) leaves
/// the process as it was: its trampoline and the patch gone with the undo.
#[test]
fn a_wrapper_that_cannot_switch_leaves_nothing() {
    let mut t = target();
    let pid = t.pid.to_string();
    let entry = t.symbol_addr("wrap-target", "raw_read");
    t.send("read");
    let pc = reader_in_read(&t);
    assert!(
        (entry..entry + 16).contains(&pc),
        "the reader sleeps in raw_read itself"
    );
    let before = t.snapshot(entry);
    let p = patch("wrap-read");
    let e = rlp_fails(&["apply", &pid, p.to_str().unwrap(), "--timeout", "1"], 6);
    assert!(e.contains("raw_read"), "{e}");
    t.assert_untouched(&before, entry);
    t.send("feed x");
    assert_eq!(t.wait_line(|l| l.starts_with("got"), T), "got x 1");
}

/// A thread asleep inside a trampoline unwinds with the original's unwind information:
/// it does not keep other patches from switching (it is not inside what they change).
#[test]
fn a_thread_in_a_trampoline_does_not_hold_other_patches() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, patch("wrap-read").to_str().unwrap()]);
    t.send("read");
    assert!(
        reader_in_trampoline(&t),
        "the reader sleeps in the original itself"
    );
    let other = twice_wrapper("wrap-other", "orig(x) + 1", false);
    let out = rlp_ok(&["check", &pid, other.to_str().unwrap()]);
    assert!(out.contains("would be safe"), "{out}");
    rlp_ok(&["apply", &pid, other.to_str().unwrap(), "--timeout", "5"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 7");
    t.send("feed q");
    assert_eq!(t.wait_line(|l| l.starts_with("got"), T), "got Q 1");
}

/// A disable of a patch under a wrapper killed before its switch and after it: `repair`
/// undoes the first (the wrapper calls the patch again) and finishes the second (the
/// wrapper calls the original, through the trampoline it took over), and the process
/// computes accordingly.
#[test]
fn a_killed_disable_under_a_wrapper_is_repaired() {
    let mut t = target();
    let pid = t.pid.to_string();
    let plus = twice_wrapper("wrap-k-plus-one", "orig(x) + 1", false);
    let times = twice_wrapper("wrap-k-times-ten", "orig(x) * 10", false);
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, times.to_str().unwrap()]);
    killed_then_repaired(
        &mut t,
        "wrap-k-plus-one",
        [
            ("disable:pending", "twice 3 = 70"),
            ("switch:written", "twice 3 = 60"),
        ],
    );
    let list = rlp_ok(&["list", &pid]);
    assert!(!list.contains("wrap-k-plus-one"), "{list}");
    rlp_ok(&["disable", &pid, "wrap-k-times-ten"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 6");
    assert!(t.rlivepatch_maps().iter().all(|m| !m.contains("rlp:")));
}

/// The same with a plain replacement under the wrapper, for which the disable makes a
/// trampoline into the original: killed before the switch, repair frees it (and its
/// island page); killed after, the wrapper has it and calls the original.
#[test]
fn a_killed_disable_that_made_a_trampoline_is_repaired() {
    let mut t = target();
    let pid = t.pid.to_string();
    let maps = t.stable_maps();
    let plain = patch_src(
        "wrap-k-plain",
        "#include <rlivepatch.h>\nstatic int p(int x) { return x * 3; }\nRLIVEPATCH_FUNC(twice, p);\n",
    );
    let plus = twice_wrapper("wrap-k2-plus-one", "orig(x) + 1", false);
    rlp_ok(&["apply", &pid, plain.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, plus.to_str().unwrap()]);
    killed_then_repaired(
        &mut t,
        "wrap-k-plain",
        [
            ("disable:pending", "twice 3 = 10"),
            ("switch:written", "twice 3 = 7"),
        ],
    );
    rlp_ok(&["disable", &pid, "wrap-k2-plus-one"]);
    assert_eq!(twice(&mut t, 3), "twice 3 = 6");
    assert_eq!(t.stable_maps(), maps, "something stayed mapped");
}

/// Disable patch `name`, killed at each point, then repair: `twice 3` is then what each
/// point says (undone before the switch, finished after).
fn killed_then_repaired(t: &mut Target, name: &str, cases: [(&str, &str); 2]) {
    let pid = t.pid.to_string();
    for (point, after) in cases {
        rlp_killed_at(point, &["disable", &pid, name]);
        rlp_ok(&["repair", &pid]);
        assert_eq!(twice(t, 3), after, "{point}");
    }
}
