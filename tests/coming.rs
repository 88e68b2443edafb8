//! Objects that come later: a patch applied while the object it changes is not loaded
//! is applied by the runtime's hook in the loader when the object comes, before any of
//! its code runs (the kernel's klp_module_coming).

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn host() -> std::path::PathBuf {
    fixture("coming-host", "coming-host", &[])
}

/// libcoming.so in a directory of its own (the loader would not find it by itself).
fn plugin() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = build_dir().join("coming-lib");
    std::fs::create_dir_all(&dir).unwrap();
    let built = cc(
        "libcoming.so",
        &["-shared", "-fPIC", "-O2", "fixtures/coming-plugin.c"],
    );
    let lib = dir.join("libcoming.so");
    // Put in place once per build: the tests run at once, and a copy renamed over the
    // one another test's process maps would be a library replaced on disk under it.
    if std::fs::read(&lib).ok() != std::fs::read(&built).ok() {
        let tmp = dir.join(format!(".libcoming.so.{:?}", std::thread::current().id()));
        std::fs::copy(&built, &tmp).unwrap();
        std::fs::rename(&tmp, &lib).unwrap();
    }
    (dir, lib)
}

/// A patch named `name` whose coming_value(x) is x * k; `more` adds declarations.
fn times(name: &str, k: i32, more: &str) -> std::path::PathBuf {
    patch_src(
        name,
        &format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x * {k}; }}\nRLIVEPATCH_FUNC_IN(\"libcoming.so\", coming_value, f);\n{more}"
        ),
    )
}

fn fix() -> std::path::PathBuf {
    times("coming-fix", 7, "")
}

/// The host started, libcoming.so built where the loader would not look by itself.
fn started() -> (std::path::PathBuf, std::path::PathBuf, Target, String) {
    let (dir, lib) = plugin();
    let t = Target::start_with_stdin(&host(), &[]);
    let pid = t.pid.to_string();
    (dir, lib, t, pid)
}

/// Send a command, return its answer (the next line starting with `answer`).
fn ask(t: &mut Target, cmd: &str, answer: &str) -> String {
    t.send(cmd);
    t.wait_line(|l| l.starts_with(answer), T)
}

fn copies(pid: &str) -> Vec<serde_json::Value> {
    let v = json(&rlp_ok(&["list", "--json", pid]));
    v["patches"][0]["coming"][0]["copies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn loader_hook_bytes(t: &Target) -> Vec<u8> {
    t.snapshot_of("ld-linux-x86-64.so.2", "_dl_debug_state")
        .1
        .code
}

#[test]
fn a_library_loaded_after_the_apply_runs_the_new_code_from_its_constructor_on() {
    let (dir, lib, mut t, pid) = started();
    let hook_before = loader_hook_bytes(&t);
    let out = rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix())]);
    assert!(
        out.contains("pending: libcoming.so is not loaded") && out.contains("coming_value"),
        "{out}"
    );
    assert_ne!(loader_hook_bytes(&t), hook_before, "the loader is hooked");
    let list = rlp_ok(&["list", &pid]);
    assert!(
        list.contains("coming_value in libcoming.so: pending"),
        "{list}"
    );
    assert!(copies(&pid).is_empty());

    // The constructor calls coming_value(1): 7 is the patch's answer, 5 the original's.
    let load = format!("load {}", lib.display());
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=7 value=14");
    assert_eq!(ask(&mut t, "call", "value="), "value=14");
    let c = copies(&pid);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["state"], "patched");

    // dlclose: pending again; dlopen again (maybe elsewhere): patched again.
    ask(&mut t, "close", "closed");
    assert!(copies(&pid).is_empty());
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=7 value=14");
    ask(&mut t, "close", "closed");

    // A child forked while pending loads it: patched; the parent stays pending.
    let child = ask(&mut t, &format!("fork {}", lib.display()), "child");
    assert_eq!(child, "child ctor=7 value=14");
    ask(&mut t, "", "forked");
    assert!(copies(&pid).is_empty(), "the parent loaded nothing");

    // A copy in another namespace (dlmopen) is reported, not silently left.
    let dlm = ask(&mut t, &format!("dlmopen {}", lib.display()), "dlmopen");
    assert_eq!(dlm, "dlmopen ctor=5 value=10");
    let c = copies(&pid);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["state"], "other-namespace");
    assert!(rlp_ok(&["list", &pid]).contains("namespace 1 (dlmopen) is NOT patched"));

    // Loaded while applied, then disabled: the copy goes back to the original code.
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=7 value=14");
    rlp_ok(&["disable", &pid, "coming-fix"]);
    assert_eq!(ask(&mut t, "call", "value="), "value=10");
    assert_eq!(
        loader_hook_bytes(&t),
        hook_before,
        "the loader has its code back"
    );
    assert!(!t.maps().contains("rlp:"), "runtime and patch unloaded");
    t.assert_running();
}

#[test]
fn disabled_while_pending_later_loads_stay_unpatched() {
    let (dir, lib, mut t, pid) = started();
    let (at, before) = t.snapshot_of("ld-linux-x86-64.so.2", "_dl_debug_state");
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix())]);
    rlp_ok(&["disable", &pid, "coming-fix"]);
    t.assert_untouched(&before, at);
    let load = format!("load {}", lib.display());
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=5 value=10");
}

#[test]
fn a_gconv_module_glibc_loads_for_iconv_is_patched() {
    let gconv = "/usr/lib/x86_64-linux-gnu/gconv/ISO8859-2.so";
    if !std::path::Path::new(gconv).exists() {
        panic!("{gconv} is missing: glibc's gconv modules are part of libc6");
    }
    let mut t = Target::start_with_stdin(&host(), &[]);
    let pid = t.pid.to_string();
    // The module's conversion function answers "illegal input" (EILSEQ, 84).
    let p = patch_src(
        "coming-gconv",
        "#include <rlivepatch.h>\n#include <gconv.h>\n\
         static int g(struct __gconv_step *s, struct __gconv_step_data *d, const unsigned char **in, const unsigned char *end, unsigned char **out, size_t *n, int flush, int consume)\n\
         { (void)s; (void)d; (void)in; (void)end; (void)out; (void)n; (void)flush; (void)consume; return __GCONV_ILLEGAL_INPUT; }\n\
         RLIVEPATCH_FUNC_IN(\"ISO8859-2.so\", gconv, g);\n",
    );
    let out = rlp_ok(&["apply", &pid, s(&p)]);
    assert!(out.contains("pending: ISO8859-2.so"), "{out}");
    assert_eq!(ask(&mut t, "iconv", "iconv"), "iconv error 84");
    let list = rlp_ok(&["list", &pid]);
    assert!(list.contains("gconv in ISO8859-2.so: loaded at"), "{list}");
    rlp_ok(&["disable", &pid, "coming-gconv"]);
    assert_eq!(ask(&mut t, "iconv", "iconv"), "iconv ok");
    t.assert_running();
}

#[test]
fn eight_threads_loading_and_unloading_during_apply_and_disable_cycles() {
    let (dir, lib, mut t, pid) = started();
    let cycles = env_count("RLP_COMING_CYCLES", 100);
    // The patch marks each copy its hook patched (post_patch of the object), in the
    // copy's own hook_marked: the host checks that exactly those copies' constructors
    // got the new code.
    // (A copy loaded before an apply gets the callback too, after its constructor ran:
    // ctor_value is no longer -1 then.)
    let nm = std::process::Command::new("nm").arg(&lib).output().unwrap();
    let nm = String::from_utf8_lossy(&nm.stdout);
    let off = |name: &str| {
        nm.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .and_then(|l| u64::from_str_radix(l.split(' ').next().unwrap(), 16).ok())
            .unwrap_or_else(|| panic!("{name} in libcoming.so"))
    };
    let (marked, ctor) = (off("hook_marked"), off("ctor_value"));
    let marking = times(
        "coming-mark",
        7,
        &format!(
            "static void mark(void *base) {{ char *b = base; if (*(volatile int *)(b + {ctor:#x}) == -1) *(volatile int *)(b + {marked:#x}) = 1; }}\nRLIVEPATCH_OBJECT_CALLBACKS(\"libcoming.so\", 0, mark, 0, 0);\n"
        ),
    );
    // The threads load, check and unload until the cycles are over.
    ask(&mut t, &format!("churn {}", lib.display()), "churning");
    // An apply resolves against the objects of the moment: a library loaded or unloaded
    // before its hold on the loader makes it stop with nothing changed and say to retry
    // (exit 6), as an operator would; every other outcome is a failure.
    let mut refused = 0;
    for _ in 0..cycles {
        let mut tries = 0;
        loop {
            let (code, _, err) = rlp_full(&[
                "apply",
                "--library-path",
                s(&dir),
                &pid,
                s(&marking),
                "--timeout",
                "30",
            ]);
            if code == 0 {
                break;
            }
            assert!(code == 6 && err.contains("retry"), "{err}");
            refused += 1;
            tries += 1;
            assert!(tries < 50, "{err}");
        }
        let (code, _, err) = rlp_full(&["disable", &pid, "coming-mark", "--timeout", "30"]);
        assert_eq!(code, 0, "{err}");
    }
    println!("{cycles} cycles, {refused} applies refused and retried");
    let sum = ask(&mut t, "stop", "churn");
    println!("{sum}");
    let n = |k: &str| -> i64 {
        let at = sum.find(&format!("{k}=")).unwrap() + k.len() + 1;
        sum[at..].split(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(n("bad"), 0, "{sum}");
    assert!(
        n("patched") > 0 && n("original") > 0 && n("patched") + n("original") == n("loads"),
        "{sum}"
    );
    // Quiet again: the next copy is the original, and with the patch, the patched one.
    let load = format!("load {}", lib.display());
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=5 value=10");
    ask(&mut t, "close", "closed");
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix())]);
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=7 value=14");
    rlp_ok(&["disable", &pid, "coming-fix"]);
    assert_eq!(ask(&mut t, "call", "value="), "value=10");
    t.assert_running();
}

#[test]
fn a_failure_leaves_the_process_as_it_was_and_a_killed_run_is_finished_by_repair() {
    let (dir, lib, mut t, pid) = started();
    let (at, before) = t.snapshot_of("ld-linux-x86-64.so.2", "_dl_debug_state");
    let fix = fix();
    let apply = ["apply", "--library-path", s(&dir), &pid, s(&fix)];
    // What the hook cannot do is refused before anything is touched.
    let wrap = patch_src(
        "coming-wrap",
        "#include <rlivepatch.h>\nstatic int (*orig)(int);\nstatic int f(int x) { return orig(x) + 1; }\nRLIVEPATCH_FUNC_WRAP_IN(\"libcoming.so\", coming_value, f, orig);\n",
    );
    let e = rlp_fails(&["apply", "--library-path", s(&dir), &pid, s(&wrap)], 5);
    assert!(
        e.contains("cannot be patched while libcoming.so is not loaded")
            && e.contains("RLIVEPATCH_FUNC_WRAP"),
        "{e}"
    );
    t.assert_untouched(&before, at);
    // Ctrl-C of the operator just before the switch: undone, exit 7.
    for point in ["apply:planned", "apply:pre_patched"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(apply)
            .env("RLIVEPATCH_FAULT", point)
            .env("RLIVEPATCH_FAULT_SIGNAL", format!("tool:{}", libc::SIGINT))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(7), "{point}: {o:?}");
        t.assert_untouched(&before, at);
    }
    // Killed at the switch (here it writes nothing: the only function waits for its
    // object) and after the pre_patch: `repair` finishes or undoes it, and what comes
    // then agrees with what `list` says.
    let load = format!("load {}", lib.display());
    for point in ["apply:switched", "apply:post_patched", "apply:committed"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
            .args(apply)
            .env("RLIVEPATCH_FAULT", point)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{point}");
        rlp_ok(&["repair", &pid]);
        let applied = rlp_ok(&["list", &pid]).contains("coming-fix");
        let want = if applied {
            "loaded ctor=7 value=14"
        } else {
            "loaded ctor=5 value=10"
        };
        assert_eq!(ask(&mut t, &load, "loaded"), want, "{point}");
        if applied {
            rlp_ok(&["disable", &pid, "coming-fix"]);
            assert_eq!(ask(&mut t, "call", "value="), "value=10");
        }
        ask(&mut t, "close", "closed");
        t.assert_untouched(&before, at);
    }
}

#[test]
fn object_callbacks_run_when_a_copy_comes_and_goes_and_may_refuse_it() {
    let (dir, lib, mut t, pid) = started();
    // The callbacks say what they got on the program's stdout; pre_patch refuses every
    // second copy.
    let p = patch_src(
        "coming-callbacks",
        "#include <rlivepatch.h>\n#include <stdio.h>\n#include <string.h>\n#include <unistd.h>\n\
         static int f(int x) { return x * 7; }\n\
         static void say(const char *what, void *base) { char b[64]; int n = snprintf(b, sizeof b, \"cb %s %d\\n\", what, base != 0); write(1, b, n); }\n\
         static int calls;\n\
         static int pre(void *base) { say(\"pre_patch\", base); return calls++ % 2; }\n\
         static void post(void *base) { say(\"post_patch\", base); }\n\
         static void pre_un(void *base) { say(\"pre_unpatch\", base); }\n\
         static void post_un(void *base) { say(\"post_unpatch\", base); }\n\
         RLIVEPATCH_FUNC_IN(\"libcoming.so\", coming_value, f);\n\
         RLIVEPATCH_OBJECT_CALLBACKS(\"libcoming.so\", pre, post, pre_un, post_un);\n",
    );
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&p)]);
    let load = format!("load {}", lib.display());
    t.send(&load);
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb pre_patch 1");
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb post_patch 1");
    assert_eq!(
        t.wait_line(|l| l.starts_with("loaded"), T),
        "loaded ctor=7 value=14"
    );
    // dlclose: the going callbacks, once the copy is unmapped.
    t.send("close");
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb pre_unpatch 1");
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb post_unpatch 1");
    t.wait_line(|l| l == "closed", T);
    // The next copy is refused by pre_patch: it runs the original code, and says why.
    t.send(&load);
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb pre_patch 1");
    assert_eq!(
        t.wait_line(|l| l.starts_with("loaded"), T),
        "loaded ctor=5 value=10"
    );
    let list = rlp_ok(&["list", &pid]);
    assert!(
        list.contains("is NOT patched") && list.contains("a pre_patch callback refused this copy"),
        "{list}"
    );
    ask(&mut t, "close", "closed");
    rlp_ok(&["disable", &pid, "coming-callbacks"]);
    // Loaded when the patch is applied and disabled: they run there, for that copy.
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=5 value=10");
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&p)]);
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb pre_patch 1");
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb post_patch 1");
    assert_eq!(ask(&mut t, "call", "value="), "value=14");
    rlp_ok(&["disable", &pid, "coming-callbacks"]);
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb pre_unpatch 1");
    assert_eq!(t.wait_line(|l| l.starts_with("cb"), T), "cb post_unpatch 1");
    assert_eq!(ask(&mut t, "call", "value="), "value=10");
    t.assert_running();
}

#[test]
fn stacked_and_replacing_patches_wait_for_the_same_object() {
    let (dir, lib, mut t, pid) = started();
    let nine = times("coming-nine", 9, "");
    let replace = times("coming-replace", 11, "RLIVEPATCH_REPLACE();\n");
    let load = format!("load {}", lib.display());
    // Two pending patches: the newer one runs; disabled, the one below it.
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix())]);
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&nine)]);
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=9 value=18");
    rlp_ok(&["disable", &pid, "coming-nine"]);
    assert_eq!(ask(&mut t, "call", "value="), "value=14");
    ask(&mut t, "close", "closed");
    // An atomic replace takes over, also for the copies that come later.
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&replace)]);
    let list = rlp_ok(&["list", &pid]);
    assert!(!list.contains("coming-fix"), "{list}");
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=11 value=22");
    rlp_ok(&["disable", &pid, "coming-replace"]);
    assert_eq!(ask(&mut t, "call", "value="), "value=10");
    ask(&mut t, "close", "closed");
    assert_eq!(ask(&mut t, &load, "loaded"), "loaded ctor=5 value=10");
    assert!(!t.maps().contains("rlp:"), "{}", t.maps());
}

/// rlivepatch's working memory stays mapped while a patch is loaded, and the next
/// operation adopts it (the same memfd at the same place) instead of mapping its own; a
/// child forked meanwhile inherits the patch but not that memory (a run on the child must
/// not work in its parent's memory), and runs on the child map their own. It goes with
/// the last patch.
#[test]
fn the_working_memory_stays_with_the_patches_and_is_not_inherited() {
    let (dir, lib, mut t, pid) = started();
    let scratch = |pid: &str| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("/memfd:rlivepatch-scratch"))
            .map(str::to_string)
            .collect()
    };
    let (maps, fds) = (t.stable_maps(), t.fd_count());
    assert_eq!(
        ask(&mut t, &format!("load {}", lib.display()), "loaded"),
        "loaded ctor=5 value=10"
    );
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix())]);
    assert_eq!(ask(&mut t, "call", "value="), "value=14");
    let kept = scratch(&pid);
    assert_eq!(kept.len(), 2, "the code page and the data: {kept:?}");

    // A second patch: the same memory, adopted.
    let fix2 = times("coming-fix2", 9, "");
    rlp_ok(&["apply", "--library-path", s(&dir), &pid, s(&fix2)]);
    assert_eq!(ask(&mut t, "call", "value="), "value=18");
    assert_eq!(scratch(&pid), kept, "a new mapping instead of the kept one");

    // A child has the patches, not the memory; a run on it leaves nothing behind.
    let child = ask(&mut t, "spawn", "spawned")
        .trim_start_matches("spawned ")
        .to_string();
    assert!(
        scratch(&child).is_empty(),
        "inherited: {:?}",
        scratch(&child)
    );
    let listed = rlp_ok(&["list", &child]);
    assert!(
        listed.contains("coming-fix2") && !listed.contains("repair"),
        "{listed}"
    );
    rlp_ok(&["disable", &child, "coming-fix2"]);
    rlp_ok(&["disable", &child, "coming-fix"]);
    let child_maps = std::fs::read_to_string(format!("/proc/{child}/maps")).unwrap();
    assert!(
        !child_maps.contains("/memfd:rlivepatch-") && !child_maps.contains("/memfd:rlp:"),
        "{child_maps}"
    );
    assert_eq!(scratch(&pid), kept, "the parent's memory changed");
    // SAFETY: kill(2) on the child this test had the host fork.
    unsafe { libc::kill(child.parse().unwrap(), libc::SIGKILL) };
    assert_eq!(ask(&mut t, "reap", "reaped"), format!("reaped {child}"));

    // The last patch takes it away.
    rlp_ok(&["disable", &pid, "coming-fix2"]);
    assert_eq!(scratch(&pid), kept);
    rlp_ok(&["disable", &pid, "coming-fix"]);
    assert_eq!(ask(&mut t, "call", "value="), "value=10");
    assert!(scratch(&pid).is_empty(), "{:?}", scratch(&pid));
    ask(&mut t, "close", "closed");
    assert_eq!((t.stable_maps(), t.fd_count()), (maps, fds));
    t.assert_running();
}
