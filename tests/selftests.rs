//! The Linux kernel's livepatch selftests (tools/testing/selftests/livepatch/), ported to
//! processes: test-livepatch, test-callbacks, test-shadow-vars and test-state. As in the
//! kernel's harness, the patches print a line from each callback and the tests compare
//! the exact sequence of lines; the livepatch-target fixture plays the kernel.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn target() -> Target {
    let exe = fixture("livepatch-target", "livepatch-target", &[]);
    Target::start_with_stdin(&exe, &["10"])
}

fn target_env(var: &str, value: &str) -> Target {
    let exe = fixture("livepatch-target", "livepatch-target", &[]);
    // SAFETY-free: the variable is for the child only.
    let mut cmd = std::process::Command::new("env");
    let _ = &mut cmd;
    let wrapper = build_dir().join(format!("lpt-env-{var}-{value}.sh"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport {var}={value}\nexec {} \"$@\"\n",
            exe.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    Target::start_with_stdin(&wrapper, &["10"])
}

/// The fields of the fixture's status line.
fn status(t: &mut Target) -> (String, String, String, i32) {
    t.next_lines(1);
    let l = t.wait_line(|l| l.starts_with("cmdline:"), T);
    let f: Vec<&str> = l
        .split(" | ")
        .map(|x| x.split_once(": ").unwrap().1)
        .collect();
    (f[0].into(), f[1].into(), f[2].into(), f[3].parse().unwrap())
}

const LP: &str = "this has been live patched";

fn callbacks(t: &mut Target) -> Vec<String> {
    t.printed(|l| l.starts_with("test_klp"))
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn names(pid: i32) -> Vec<String> {
    let v = json(&rlp_ok(&["list", &pid.to_string(), "--json"]));
    v["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn p(name: &str) -> PathBuf {
    patch(name)
}

// ---- test-livepatch.sh ----

#[test]
fn livepatch_basic_function_patching() {
    let mut t = target();
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    assert_eq!(status(&mut t).0, "original");
    rlp_ok(&["apply", &pid, s(&p("livepatch-sample"))]);
    assert_eq!(status(&mut t).0, LP);
    rlp_ok(&["disable", &pid, "livepatch-sample"]);
    assert_eq!(status(&mut t).0, "original");
    assert_eq!(t.stable_maps(), before);
}

#[test]
fn livepatch_multiple_patches_disabled_in_reverse_and_out_of_order() {
    let mut t = target();
    let pid = t.pid.to_string();
    let (a, b) = (p("livepatch-sample"), p("livepatch-meminfo"));
    for order in [
        ["livepatch-meminfo", "livepatch-sample"],
        ["livepatch-sample", "livepatch-meminfo"],
    ] {
        rlp_ok(&["apply", &pid, s(&a)]);
        rlp_ok(&["apply", &pid, s(&b)]);
        let st = status(&mut t);
        assert_eq!((st.0.as_str(), st.1.as_str()), (LP, LP));
        assert_eq!(names(t.pid), ["livepatch-sample", "livepatch-meminfo"]);
        rlp_ok(&["disable", &pid, order[0]]);
        let st = status(&mut t);
        let first_gone = if order[0] == "livepatch-sample" {
            (st.0.as_str(), st.1.as_str()) == ("original", LP)
        } else {
            (st.0.as_str(), st.1.as_str()) == (LP, "original")
        };
        assert!(first_gone, "{order:?}: {st:?}");
        rlp_ok(&["disable", &pid, order[1]]);
        let st = status(&mut t);
        assert_eq!((st.0.as_str(), st.1.as_str()), ("original", "original"));
        assert!(names(t.pid).is_empty());
    }
}

#[test]
fn livepatch_atomic_replace_over_three_patches() {
    let mut t = target();
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    rlp_ok(&["apply", &pid, s(&p("livepatch-sample"))]);
    rlp_ok(&["apply", &pid, s(&p("livepatch-meminfo"))]);
    rlp_ok(&["apply", &pid, s(&p("livepatch-uptime"))]);
    let st = status(&mut t);
    assert_eq!((st.0.as_str(), st.1.as_str(), st.2.as_str()), (LP, LP, LP));
    // An atomic replace patch that changes only meminfo: the others go back to the original
    // in the same switch, and only it remains.
    let r = p_replace("livepatch-meminfo");
    let out = json(&rlp_ok(&["apply", &pid, s(&r), "--json"]));
    assert_eq!(
        out["replaced"],
        serde_json::json!(["livepatch-sample", "livepatch-meminfo", "livepatch-uptime"])
    );
    let st = status(&mut t);
    assert_eq!(
        (st.0.as_str(), st.1.as_str(), st.2.as_str()),
        ("original", LP, "original")
    );
    assert_eq!(names(t.pid), ["livepatch-meminfo-replace"]);
    let list = json(&rlp_ok(&["list", &pid, "--json"]));
    assert_eq!(list["patches"][0]["replace"], true);
    assert_eq!(
        t.maps()
            .lines()
            .filter(|l| l.contains("r-xp") && !l.contains("rlp:runtime"))
            .filter(|l| !l.contains("/memfd:rlivepatch-scratch"))
            .count()
            - before.join("\n").matches("r-xp").count(),
        2,
        "only the replace patch (and one island page) stay mapped, with the runtime and rlivepatch's working memory"
    );
    rlp_ok(&["disable", &pid, "livepatch-meminfo-replace"]);
    let st = status(&mut t);
    assert_eq!(
        (st.0.as_str(), st.1.as_str(), st.2.as_str()),
        ("original", "original", "original")
    );
    assert_eq!(t.stable_maps(), before);
}

fn p_replace(name: &str) -> PathBuf {
    patch_with(name, &format!("{name}-replace"), &["-DREPLACE"])
}

// ---- test-callbacks.sh ----

fn demo() -> PathBuf {
    p("callbacks-demo")
}

fn demo2(replace: bool) -> PathBuf {
    if replace {
        patch_with(
            "callbacks-demo",
            "callbacks-demo2-replace",
            &["-DDEMO2", "-DREPLACE"],
        )
    } else {
        patch_with("callbacks-demo", "callbacks-demo2", &["-DDEMO2"])
    }
}

#[test]
fn callbacks_enable_and_disable_order() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&demo())]);
    rlp_ok(&["disable", &pid, "test_klp_callbacks_demo"]);
    assert_eq!(
        callbacks(&mut t),
        lines(&[
            "test_klp_callbacks_demo: pre_patch_callback: main",
            "test_klp_callbacks_demo: post_patch_callback: main",
            "test_klp_callbacks_demo: pre_unpatch_callback: main",
            "test_klp_callbacks_demo: post_unpatch_callback: main",
        ])
    );
}

#[test]
fn callbacks_pre_patch_failure_cancels() {
    let mut t = target_env("PRE_PATCH_RET", "-19");
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    let e = rlp_fails(&["apply", &pid, s(&demo())], 1);
    assert!(
        e.contains("pre_patch callback of patch test_klp_callbacks_demo returned -19"),
        "{e}"
    );
    // Only pre_patch ran; the patch was unloaded; nothing is left.
    assert_eq!(
        callbacks(&mut t),
        lines(&["test_klp_callbacks_demo: pre_patch_callback: main"])
    );
    assert_eq!(t.stable_maps(), before);
    assert!(names(t.pid).is_empty());
}

#[test]
fn callbacks_busy_target_times_out_and_reverses() {
    let mut t = target();
    let pid = t.pid.to_string();
    t.send("busy");
    t.wait_line(|l| l == "busymod_work_func enter", T);
    let before = t.stable_maps();
    let e = rlp_fails(&["apply", &pid, s(&demo()), "--timeout", "1"], 6);
    assert!(e.contains("busymod_work_func"), "{e}");
    // pre_patch ran, the transition was reversed: post_unpatch, never pre_unpatch.
    assert_eq!(
        callbacks(&mut t),
        lines(&[
            "test_klp_callbacks_demo: pre_patch_callback: main",
            "test_klp_callbacks_demo: post_unpatch_callback: main"
        ])
    );
    assert_eq!(t.stable_maps(), before);
    t.send("release");
    t.wait_line(|l| l == "busymod_work_func exit", T);
}

#[test]
fn callbacks_of_multiple_patches() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&demo())]);
    rlp_ok(&["apply", &pid, s(&demo2(false))]);
    rlp_ok(&["disable", &pid, "test_klp_callbacks_demo2"]);
    rlp_ok(&["disable", &pid, "test_klp_callbacks_demo"]);
    assert_eq!(
        callbacks(&mut t),
        lines(&[
            "test_klp_callbacks_demo: pre_patch_callback: main",
            "test_klp_callbacks_demo: post_patch_callback: main",
            "test_klp_callbacks_demo2: pre_patch_callback: main",
            "test_klp_callbacks_demo2: post_patch_callback: main",
            "test_klp_callbacks_demo2: pre_unpatch_callback: main",
            "test_klp_callbacks_demo2: post_unpatch_callback: main",
            "test_klp_callbacks_demo: pre_unpatch_callback: main",
            "test_klp_callbacks_demo: post_unpatch_callback: main",
        ])
    );
}

#[test]
fn callbacks_atomic_replace_runs_only_the_new_patch_callbacks() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&demo())]);
    rlp_ok(&["apply", &pid, s(&demo2(true))]);
    assert_eq!(names(t.pid), ["test_klp_callbacks_demo2_replace"]);
    rlp_ok(&["disable", &pid, "test_klp_callbacks_demo2_replace"]);
    assert_eq!(
        callbacks(&mut t),
        lines(&[
            "test_klp_callbacks_demo: pre_patch_callback: main",
            "test_klp_callbacks_demo: post_patch_callback: main",
            "test_klp_callbacks_demo2_replace: pre_patch_callback: main",
            "test_klp_callbacks_demo2_replace: post_patch_callback: main",
            "test_klp_callbacks_demo2_replace: pre_unpatch_callback: main",
            "test_klp_callbacks_demo2_replace: post_unpatch_callback: main",
        ])
    );
}

// ---- test-shadow-vars.sh ----

#[test]
fn shadow_variables_api() {
    let mut t = target();
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    // The test patch exercises the API in pre_patch, then refuses to apply.
    let e = rlp_fails(&["apply", &pid, s(&p("test-shadow-vars"))], 1);
    assert!(e.contains("returned 1"), "{e}");
    let n = "test_klp_shadow_vars";
    let expected = format!(
        "{n}: rlp_shadow_get(obj=PTR1, id=0x1234) = PTR0
{n}:   got expected NULL result
{n}: shadow_ctor: PTR3 -> PTR2
{n}: rlp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR2) = PTR3
{n}: shadow_ctor: PTR6 -> PTR5
{n}: rlp_shadow_alloc(obj=PTR1, id=0x1235, size=8, ctor=PTR4, ctor_data=PTR5) = PTR6
{n}: shadow_ctor: PTR8 -> PTR7
{n}: rlp_shadow_alloc(obj=PTR9, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR7) = PTR8
{n}: shadow_ctor: PTR11 -> PTR10
{n}: rlp_shadow_alloc(obj=PTR9, id=0x1235, size=8, ctor=PTR4, ctor_data=PTR10) = PTR11
{n}: shadow_ctor: PTR13 -> PTR12
{n}: rlp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR12) = PTR13
{n}: shadow_ctor: PTR16 -> PTR15
{n}: rlp_shadow_alloc(obj=PTR14, id=0x1235, size=8, ctor=PTR4, ctor_data=PTR15) = PTR16
{n}: rlp_shadow_get(obj=PTR1, id=0x1234) = PTR3
{n}:   got expected PTR3 -> PTR2 result
{n}: rlp_shadow_get(obj=PTR1, id=0x1235) = PTR6
{n}:   got expected PTR6 -> PTR5 result
{n}: rlp_shadow_get(obj=PTR9, id=0x1234) = PTR8
{n}:   got expected PTR8 -> PTR7 result
{n}: rlp_shadow_get(obj=PTR9, id=0x1235) = PTR11
{n}:   got expected PTR11 -> PTR10 result
{n}: rlp_shadow_get(obj=PTR14, id=0x1234) = PTR13
{n}:   got expected PTR13 -> PTR12 result
{n}: rlp_shadow_get(obj=PTR14, id=0x1235) = PTR16
{n}:   got expected PTR16 -> PTR15 result
{n}: rlp_shadow_get_or_alloc(obj=PTR1, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR2) = PTR3
{n}:   got expected PTR3 -> PTR2 result
{n}: rlp_shadow_get_or_alloc(obj=PTR9, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR7) = PTR8
{n}:   got expected PTR8 -> PTR7 result
{n}: rlp_shadow_get_or_alloc(obj=PTR14, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR12) = PTR13
{n}:   got expected PTR13 -> PTR12 result
{n}: rlp_shadow_alloc(obj=PTR1, id=0x1234, size=8, ctor=PTR4, ctor_data=PTR2) = PTR0
{n}:   got expected NULL result
{n}: shadow_dtor(obj=PTR1, shadow_data=PTR3)
{n}: rlp_shadow_free(obj=PTR1, id=0x1234, dtor=PTR17)
{n}: rlp_shadow_get(obj=PTR1, id=0x1234) = PTR0
{n}:   got expected NULL result
{n}: shadow_dtor(obj=PTR9, shadow_data=PTR8)
{n}: rlp_shadow_free(obj=PTR9, id=0x1234, dtor=PTR17)
{n}: rlp_shadow_get(obj=PTR9, id=0x1234) = PTR0
{n}:   got expected NULL result
{n}: shadow_dtor(obj=PTR14, shadow_data=PTR13)
{n}: rlp_shadow_free(obj=PTR14, id=0x1234, dtor=PTR17)
{n}: rlp_shadow_get(obj=PTR14, id=0x1234) = PTR0
{n}:   got expected NULL result
{n}: rlp_shadow_get(obj=PTR1, id=0x1235) = PTR6
{n}:   got expected PTR6 -> PTR5 result
{n}: rlp_shadow_get(obj=PTR9, id=0x1235) = PTR11
{n}:   got expected PTR11 -> PTR10 result
{n}: rlp_shadow_get(obj=PTR14, id=0x1235) = PTR16
{n}:   got expected PTR16 -> PTR15 result
{n}: rlp_shadow_free_all(id=0x1235, dtor=PTR0)
{n}: rlp_shadow_get(obj=PTR1, id=0x1235) = PTR0
{n}:   got expected NULL result
{n}: rlp_shadow_get(obj=PTR9, id=0x1235) = PTR0
{n}:   got expected NULL result
{n}: rlp_shadow_get(obj=PTR14, id=0x1235) = PTR0
{n}:   got expected NULL result
{n}: done"
    );
    assert_eq!(callbacks(&mut t).join("\n"), expected);
    // The store is empty again, so the runtime was unloaded with the patch. (The patch's
    // own allocations may have grown malloc's arenas: compare what rlivepatch maps.)
    let ours = |m: &[String]| {
        m.iter()
            .filter(|l| l.contains("/memfd:rlp:") || l.contains("/memfd:rlivepatch-"))
            .count()
    };
    assert_eq!(ours(&t.stable_maps()), ours(&before));
    assert_eq!(ours(&before), 0);
}

// ---- test-state.sh ----

fn state(v: u32) -> PathBuf {
    match v {
        1 => p("state-v1"),
        2 => p("state-v2"),
        _ => patch_with("state-v2", "state-v3", &["-DNAME=\"test_klp_state3\""]),
    }
}

fn loglevel(t: &mut Target) -> i32 {
    status(t).3
}

fn state_lines(name: &str, steps: &[&str]) -> Vec<String> {
    steps.iter().map(|s| format!("{name}: {s}")).collect()
}

const ALLOC: &str = "allocate_loglevel_state: allocating space to store console_loglevel";
const ALREADY: &str = "allocate_loglevel_state: space to store console_loglevel already allocated";
const FIX: &str = "fix_console_loglevel: fixing console_loglevel";
const TAKE: &str = "fix_console_loglevel: taking over the console_loglevel change";
const RESTORE: &str = "restore_console_loglevel: restoring console_loglevel";
const FREE: &str = "free_loglevel_state: freeing space for the stored console_loglevel";

#[test]
fn state_system_state_modification() {
    let mut t = target();
    let pid = t.pid.to_string();
    assert_eq!(loglevel(&mut t), 4);
    rlp_ok(&["apply", &pid, s(&state(1))]);
    assert_eq!(loglevel(&mut t), 15);
    rlp_ok(&["disable", &pid, "test_klp_state"]);
    assert_eq!(loglevel(&mut t), 4);
    assert_eq!(
        callbacks(&mut t),
        state_lines(
            "test_klp_state",
            &[
                "pre_patch_callback: main",
                ALLOC,
                "post_patch_callback: main",
                FIX,
                "pre_unpatch_callback: main",
                RESTORE,
                "post_unpatch_callback: main",
                FREE
            ]
        )
    );
}

#[test]
fn state_taking_over_system_state_modification() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&state(1))]);
    rlp_ok(&["apply", &pid, s(&state(2))]);
    assert_eq!(names(t.pid), ["test_klp_state2"]);
    assert_eq!(loglevel(&mut t), 15);
    rlp_ok(&["disable", &pid, "test_klp_state2"]);
    assert_eq!(loglevel(&mut t), 4);
    let mut want = state_lines(
        "test_klp_state",
        &[
            "pre_patch_callback: main",
            ALLOC,
            "post_patch_callback: main",
            FIX,
        ],
    );
    want.extend(state_lines(
        "test_klp_state2",
        &[
            "pre_patch_callback: main",
            ALREADY,
            "post_patch_callback: main",
            TAKE,
            "pre_unpatch_callback: main",
            RESTORE,
            "post_unpatch_callback: main",
            FREE,
        ],
    ));
    assert_eq!(callbacks(&mut t), want);
}

#[test]
fn state_compatible_cumulative_livepatches() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&state(2))]);
    rlp_ok(&["apply", &pid, s(&state(3))]);
    rlp_ok(&["apply", &pid, s(&state(2))]);
    assert_eq!(names(t.pid), ["test_klp_state2"]);
    rlp_ok(&["disable", &pid, "test_klp_state2"]);
    assert_eq!(loglevel(&mut t), 4);
    let mut want = state_lines(
        "test_klp_state2",
        &[
            "pre_patch_callback: main",
            ALLOC,
            "post_patch_callback: main",
            FIX,
        ],
    );
    want.extend(state_lines(
        "test_klp_state3",
        &[
            "pre_patch_callback: main",
            ALREADY,
            "post_patch_callback: main",
            TAKE,
        ],
    ));
    want.extend(state_lines(
        "test_klp_state2",
        &[
            "pre_patch_callback: main",
            ALREADY,
            "post_patch_callback: main",
            TAKE,
            "pre_unpatch_callback: main",
            RESTORE,
            "post_unpatch_callback: main",
            FREE,
        ],
    ));
    assert_eq!(callbacks(&mut t), want);
}

#[test]
fn state_incompatible_cumulative_livepatches() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&state(2))]);
    let maps = t.stable_maps();
    let e = rlp_fails(&["apply", &pid, s(&state(1))], 5);
    assert!(
        e.contains("patch test_klp_state is not compatible with the already installed livepatches"),
        "{e}"
    );
    // Refused before anything was loaded.
    assert_eq!(t.stable_maps(), maps);
    assert_eq!(names(t.pid), ["test_klp_state2"]);
    rlp_ok(&["disable", &pid, "test_klp_state2"]);
    let mut want = state_lines(
        "test_klp_state2",
        &[
            "pre_patch_callback: main",
            ALLOC,
            "post_patch_callback: main",
            FIX,
        ],
    );
    want.extend(state_lines(
        "test_klp_state2",
        &[
            "pre_unpatch_callback: main",
            RESTORE,
            "post_unpatch_callback: main",
            FREE,
        ],
    ));
    assert_eq!(callbacks(&mut t), want);
}

// ---- samples/livepatch ----

#[test]
fn sample_shadow_fix1_then_fix2_takes_over() {
    let exe = fixture("shadow-target", "shadow-target", &[]);
    let mut t = Target::start(&exe, &["10", "50"]);
    let before = t.stable_maps();
    let pid = t.pid.to_string();
    let leaks = |l: &str| -> (i64, i64) {
        let v: Vec<i64> = l.split(['=', ' ']).filter_map(|x| x.parse().ok()).collect();
        (v[0], v[1])
    };
    // The bug: nothing is ever freed.
    let l = t.wait_line(|l| l.starts_with("leaks:"), T);
    assert_eq!(leaks(&l).1, 0);
    rlp_ok(&["apply", &pid, s(&p("shadow-fix1"))]);
    // Dummies made before the fix leak; those made after have their buffer freed.
    t.wait_line(
        |l| l.starts_with("livepatch_fix1_dummy_free:") && l.ends_with("leaked!"),
        T,
    );
    t.wait_line(|l| l.starts_with("livepatch_fix1_dummy_leak_dtor:"), T);
    // fix2 replaces fix1 and frees the buffers fix1 attached: it took over its shadow data.
    let out = json(&rlp_ok(&["apply", &pid, s(&p("shadow-fix2")), "--json"]));
    assert_eq!(out["replaced"], serde_json::json!(["shadow-fix1"]));
    t.wait_line(|l| l.starts_with("livepatch_fix2_dummy_leak_dtor:"), T);
    t.wait_line(|l| l.contains("check counter ="), T);
    assert!(
        !t.seen
            .iter()
            .any(|l| l.starts_with("livepatch_fix2") && l.ends_with("leaked!")),
        "fix2 found every buffer fix1 attached"
    );
    rlp_ok(&["disable", &pid, "shadow-fix2"]);
    // Every buffer allocated under the fixes was freed.
    let (a1, f1) = leaks(&t.wait_line(|l| l.starts_with("leaks:"), T));
    assert!(f1 > 0 && f1 < a1);
    assert_eq!(t.stable_maps(), before, "patches and runtime unloaded");
    t.assert_running();
}

#[test]
fn sample_livepatch_and_callbacks_demo() {
    let mut t = target();
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&p("livepatch-sample"))]);
    rlp_ok(&["apply", &pid, s(&demo())]);
    assert_eq!(status(&mut t).0, LP);
    let text = rlp_ok(&["list", &pid]);
    assert!(
        text.contains("1. livepatch-sample") && text.contains("2. test_klp_callbacks_demo"),
        "{text}"
    );
    rlp_ok(&["disable", &pid, "livepatch-sample"]);
    rlp_ok(&["disable", &pid, "test_klp_callbacks_demo"]);
    assert_eq!(status(&mut t).0, "original");
}
