//! Targets at work: threads calling the functions being changed all the time, many idle
//! threads, a program waiting in `fgets` (the benchmark target, fixtures/bench-target.c).

mod common;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// bench-target next to libbench.so (non-PIE, as the benchmarks build it).
fn bench_target() -> PathBuf {
    cc(
        "libbench.so",
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/libbench.c",
        ],
    );
    let d = build_dir().display().to_string();
    cc(
        "bench-target",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "-no-pie",
            "fixtures/bench-target.c",
            "-pthread",
            "-L",
            &d,
            "-lbench",
            "-Wl,-rpath,$ORIGIN",
        ],
    )
}

fn bench_patch(funcs: usize, island: bool) -> PathBuf {
    let def = format!("-DFUNCS={funcs}");
    let mut flags = vec![def.as_str()];
    if island {
        flags.push("-DISLAND");
    }
    patch_with(
        "bench",
        &format!("bench-{funcs}{}", if island { "-island" } else { "" }),
        &flags,
    )
}

/// bf000(1) as the target computes it now.
fn call(t: &mut Target) -> String {
    t.send("call 1");
    t.wait_line(|l| l.chars().all(|c| c.is_ascii_digit()), T)
}

const ORIGINAL: &str = "4100"; // 1 * 3 + 0x1001
const PATCHED: &str = "4101"; // 1 * 3 + 0x1002

#[test]
fn busy_threads_calling_the_functions_get_every_switch() {
    let exe = bench_target();
    let p = bench_patch(100, false);
    let mut t = Target::start_with_stdin(&exe, &["2", "20"]);
    let pid = t.pid.to_string();
    let base = (t.stable_maps(), t.fd_count());
    let mut caught = 0;
    for _ in 0..5 {
        let r = json(&rlp_ok(&["apply", &pid, p.to_str().unwrap(), "--json"]));
        caught += r["switch"]["caught_returns"].as_u64().unwrap();
        assert_eq!(r["functions"].as_array().unwrap().len(), 100);
        t.assert_running();
        assert_eq!(call(&mut t), PATCHED);
        rlp_ok(&["disable", &pid, "bench"]);
        t.assert_running();
        assert_eq!(call(&mut t), ORIGINAL);
    }
    // Two threads call these functions without pause: now and then one is inside one
    // when the world stops, and is caught on its way out; either way every switch is done.
    println!("caught returns over 5 applies: {caught}");
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}

#[test]
fn a_single_thread_waiting_in_fgets_is_borrowed() {
    // The only thread sits in read() under fgets(), holding stdin's lock: that lock is
    // never taken by the loader, so it is a fine thread for dlopen.
    let exe = bench_target();
    let p = bench_patch(1, true);
    let mut t = Target::start_with_stdin(&exe, &["0", "0"]);
    let pid = t.pid.to_string();
    let r = json(&rlp_ok(&["apply", &pid, p.to_str().unwrap(), "--json"]));
    let via: Vec<&str> = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["via"].as_str().unwrap())
        .collect();
    // mf in the non-PIE executable is too far from the patch for a direct jump.
    assert!(via.contains(&"island") && via.contains(&"jump"), "{r}");
    assert_eq!(call(&mut t), PATCHED);
    rlp_ok(&["disable", &pid, "bench"]);
    assert_eq!(call(&mut t), ORIGINAL);
    t.assert_running();
}

#[test]
fn many_idle_threads_and_many_functions() {
    let exe = bench_target();
    let p = bench_patch(1000, false);
    let mut t = Target::start_with_stdin(&exe, &["2", "300"]);
    let pid = t.pid.to_string();
    let base = (t.stable_maps(), t.fd_count());
    let r = json(&rlp_ok(&["apply", &pid, p.to_str().unwrap(), "--json"]));
    assert_eq!(r["functions"].as_array().unwrap().len(), 1000);
    t.assert_running();
    assert_eq!(call(&mut t), PATCHED);
    let listed = json(&rlp_ok(&["list", &pid, "--json"]));
    assert_eq!(
        listed["patches"][0]["functions"].as_array().unwrap().len(),
        1000,
        "{listed}"
    );
    rlp_ok(&["disable", &pid, "bench"]);
    t.assert_running();
    assert_eq!(call(&mut t), ORIGINAL);
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}
