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

/// bench-target started with `busy` busy threads and `idle` idle ones; its pid as text.
fn start_bench(busy: &str, idle: &str) -> (Target, String) {
    let t = Target::start_with_stdin(&bench_target(), &[busy, idle]);
    let pid = t.pid.to_string();
    (t, pid)
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
    let p = bench_patch(100, false);
    let (mut t, pid) = start_bench("2", "20");
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
    let p = bench_patch(1, true);
    let (mut t, pid) = start_bench("0", "0");
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
    let p = bench_patch(1000, false);
    let (mut t, pid) = start_bench("2", "300");
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

/// A thread asleep when rlivepatch attaches (where each thread sleeps is read once, then)
/// and at work by the switch: its stop shows it was at work, and it is let go at once and
/// stopped again with the threads on a CPU (not held stopped while the others are
/// checked). The switch waits for a thread inside the changed function meanwhile, which
/// is when the sleeper is woken.
#[test]
fn a_thread_asleep_at_the_attach_and_at_work_at_the_switch_counts_as_at_work() {
    use std::io::BufRead;
    let exe = fixture("waking", "waking", &[]);
    let mut t = Target::start_with_stdin(&exe, &[]);
    // (Printed by the threads as they start: before or after "ready".)
    let worker: i32 = t.wait_seen(|l| l.starts_with("worker "), T)[7..]
        .trim()
        .parse()
        .unwrap();
    t.wait_seen(|l| l.starts_with("blocker "), T);
    let fix = patch("counter-fix");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &t.pid.to_string(), fix.to_str().unwrap()])
        .env("RLIVEPATCH_TRACE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its trace read as it comes (a full pipe would stop it).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for l in err.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // The blocker holds the switch (a return trampoline planted for it); the worker is
    // woken and at work before the blocker is let out.
    while !seen.iter().any(|l: &String| l.contains("switch:planted")) {
        match rx.recv_timeout(T) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("no planted trampoline ({e}): {seen:?}"),
        }
    }
    t.send("wake");
    let woke = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.wait_line(|l| l.starts_with("compute("), T);
    }));
    if let Err(e) = woke {
        seen.extend(rx.try_iter());
        let states: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", t.pid))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
                let sys = std::fs::read_to_string(p.join("syscall")).unwrap_or_default();
                format!("{stat:.40} | {sys:.30}")
            })
            .collect();
        eprintln!("threads: {states:#?}\nrlivepatch: {seen:#?}");
        std::panic::resume_unwind(e);
    }
    t.send("unblock");
    t.wait_line(|l| l == "unblocked", T);
    let ok = child.wait().unwrap().success();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(ok, "{seen:?}");
    let at_work = format!("thread {worker} was at work");
    assert!(
        seen.iter().any(|l| l.contains(&at_work)),
        "the worker was not found at work: {seen:?}"
    );
    // The worker runs the new code.
    t.wait_line(
        |l| {
            let (i, v) = value(l);
            v == i * 100
        },
        T,
    );
}

/// Each thread's slice, as read from `/proc`, for the threads in `before`.
fn slices_of(t: &Target, before: &std::collections::BTreeMap<i32, u64>) -> Vec<(i32, u64)> {
    let now = t.slices();
    before
        .keys()
        .map(|tid| (*tid, *now.get(tid).unwrap_or(&0)))
        .collect()
}

#[test]
fn on_crowded_cpus_the_threads_waited_for_get_a_short_slice_and_then_theirs_back() {
    let p = bench_patch(1, false);
    // More busy threads than CPUs: every CPU has a thread waiting for it.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let busy = (cpus + 1).to_string();
    let (mut t, pid) = start_bench(busy.as_str(), "2");
    let before = t.slices();
    if before.is_empty() {
        return skip(
            "on_crowded_cpus_the_threads_waited_for_get_a_short_slice_and_then_theirs_back",
            "the kernel shows no se.slice in /proc/PID/task/TID/sched",
        );
    }
    let expected: Vec<(i32, u64)> = before.iter().map(|(t, s)| (*t, *s)).collect();
    // Interrupted once the patch is loaded (the threads were waited for): undone, and
    // the slices given back with the rest.
    let (at, snap) = t.snapshot_of("libbench.so", "bf000");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &pid, p.to_str().unwrap()])
        .env("RLIVEPATCH_FAULT", "apply:pre_patched")
        .env("RLIVEPATCH_FAULT_SIGNAL", format!("tool:{}", libc::SIGINT))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    t.assert_untouched(&snap, at);
    assert_eq!(
        slices_of(&t, &before),
        expected,
        "slices after the interrupted apply"
    );
    let out = rlp_env(
        &["apply", &pid, p.to_str().unwrap()],
        &[("RLIVEPATCH_TRACE", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The path was taken where the kernel has custom slices (6.12 on; before, it
    // ignores the request and nothing changes).
    let taken = err.contains("short slice for");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    assert!(
        taken || (major, minor) < (6, 12),
        "no short slice on {release}: {err}"
    );
    assert_eq!(call(&mut t), PATCHED);
    assert_eq!(slices_of(&t, &before), expected, "slices after the apply");
    rlp_ok(&["disable", &pid, "bench"]);
    assert_eq!(call(&mut t), ORIGINAL);
    assert_eq!(slices_of(&t, &before), expected, "slices after the disable");
    // Killed while it holds the borrowed thread: that thread keeps the marked slice
    // (100,003 ns) until the next run attaches; `repair` undoes the apply and gives it
    // the default back.
    rlp_killed_at("apply:pending", &["apply", &pid, p.to_str().unwrap()]);
    let left = slices_of(&t, &before);
    assert!(left.iter().any(|(_, s)| *s == 100_003), "{left:?}");
    rlp_ok(&["repair", &pid]);
    assert_eq!(slices_of(&t, &before), expected, "slices after the repair");
    assert_eq!(call(&mut t), ORIGINAL);
    t.assert_running();
}

/// After the switch of a disable, the unload and the keeper's end run on the keeper,
/// kept stopped at the switch, so borrowing it again attaches no thread of the program.
/// It used to be resumed there; when its `/proc` file said `running` on its way back into
/// its wait, every thread was attached, stopped and let go a second time (2 disables in
/// 6 with 100 idle threads, in a release build's trace). Held at the point where the
/// disable is committed (rlivepatch stops itself there), the keeper is in a tracing stop
/// and every thread of the program runs free; then each thread is let go once, but the
/// one attached after the keeper ended to unmap rlivepatch's memory.
#[test]
fn after_the_switch_the_keeper_waits_stopped_for_the_unload() {
    use std::collections::BTreeSet;
    let p = bench_patch(1, false);
    let (mut t, pid) = start_bench("1", "30");
    let tasks = || -> BTreeSet<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    };
    let state = |tid: i32| -> (char, i32) {
        let dir = format!("/proc/{pid}/task/{tid}");
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap();
        let st = stat.rsplit(") ").next().unwrap().chars().next().unwrap();
        let status = std::fs::read_to_string(format!("{dir}/status")).unwrap();
        (st, field(&status.replace(":\t", "="), "TracerPid") as i32)
    };
    let base = (t.stable_maps(), t.fd_count());
    let program = tasks();
    rlp_ok(&["apply", &pid, p.to_str().unwrap()]);
    assert_eq!(call(&mut t), PATCHED);
    let keeper: Vec<i32> = tasks().difference(&program).copied().collect();
    assert_eq!(keeper.len(), 1, "one thread more: the keeper");
    let keeper = keeper[0];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["disable", &pid, "bench"])
        .env("RLIVEPATCH_TRACE", "1")
        .env("RLIVEPATCH_FAULT", "disable:committed")
        .env("RLIVEPATCH_FAULT_SIGNAL", format!("tool:{}", libc::SIGSTOP))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(child.stderr.take().unwrap());
    let tool = child.id() as i32;
    wait_for("rlivepatch to stop itself after the switch", || {
        std::fs::read_to_string(format!("/proc/{tool}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().unwrap().starts_with('T'))
    });
    let (keeper_state, keeper_tracer) = state(keeper);
    let traced: Vec<i32> = program
        .iter()
        .copied()
        .filter(|&t| state(t).1 != 0)
        .collect();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(tool, libc::SIGCONT) };
    let ok = child.wait().unwrap().success();
    let err: Vec<String> = rx.iter().collect();
    assert!(ok, "{err:?}");
    assert_eq!(
        (keeper_state, keeper_tracer),
        ('t', tool),
        "the keeper is held stopped by rlivepatch after the switch"
    );
    assert!(
        traced.is_empty(),
        "program threads still traced: {traced:?}"
    );
    let mut detached = std::collections::BTreeMap::<&str, usize>::new();
    for l in &err {
        if let Some(rest) = l.split("detach thread ").nth(1) {
            *detached.entry(rest.split(' ').next().unwrap()).or_default() += 1;
        }
    }
    assert!(detached.len() >= program.len(), "{detached:?}");
    let twice: Vec<_> = detached.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1, "let go more than once: {twice:?}");
    assert_eq!(call(&mut t), ORIGINAL);
    assert_eq!((t.stable_maps(), t.fd_count()), base);
}
