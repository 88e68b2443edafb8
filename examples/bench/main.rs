//! The benchmarks behind BENCHMARKS.md (run them with `scripts/bench.sh`).
//!
//! Every figure is measured in one run, side by side, on the same machine:
//! - pause: the longest gap between two consecutive calls that a busy thread of the target
//!   sees while rlivepatch applies or disables a patch, measured by the target itself
//!   (fixtures/bench-target.c), for 2 busy threads plus 0, 100 or 1000 idle ones and
//!   patches of 1, 100 or 1000 functions; beside it the same measure with no patching
//!   (the noise) and the time rlivepatch held the busy threads stopped (its own trace);
//! - wall time of apply and disable;
//! - gdb doing the same hot patch (dlopen, then a jump written at each entry), timed and
//!   measured the same way;
//! - call overhead: original, through a direct jump, through an island, and a direct call
//!   of the replacement;
//! - server impact: latency of a loopback request loop against fixtures/server.c while
//!   apply/disable cycles run, and without.

mod exec_latency;
mod fleet;
mod patch_build;
mod single;

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Opts {
    runs: usize,
    gdb_runs: usize,
    out: PathBuf,
    plot: PathBuf,
    rlp: PathBuf,
    build: PathBuf,
    idle: Vec<usize>,
    funcs: Vec<usize>,
    server_secs: u64,
    /// Fleet sizes (processes).
    fleet: Vec<usize>,
    fleet_runs: usize,
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        runs: 11,
        gdb_runs: 3,
        out: root.join("BENCHMARKS.md"),
        plot: root.join("BENCHMARKS-pause.png"),
        // The binary `cargo run --release --example bench` built along with this one
        // (target/<triple>/release/examples/bench -> target/<triple>/release/rlivepatch).
        rlp: std::env::current_exe()?
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("rlivepatch"))
            .unwrap_or_else(|| root.join("target/x86_64-unknown-linux-gnu/release/rlivepatch")),
        build: root.join("target/bench"),
        idle: vec![0, 100, 1000],
        funcs: vec![1, 100, 1000],
        server_secs: 5,
        fleet: vec![10, 100, 1000, 4000],
        fleet_runs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--runs" => o.runs = val()?.parse()?,
            "--gdb-runs" => o.gdb_runs = val()?.parse()?,
            "--out" => o.out = val()?.into(),
            "--plot" => o.plot = val()?.into(),
            "--rlivepatch" => o.rlp = val()?.into(),
            "--server-secs" => o.server_secs = val()?.parse()?,
            // Only the section on `rlivepatch build`, printed (BENCHMARKS.md untouched).
            "--only-build" => {
                let b = patch_build::measure(&root, &o.rlp, &o.build, 3)?;
                let r = Report {
                    build: b,
                    ..Default::default()
                };
                let mut m = String::new();
                r.build_markdown(&mut m);
                print!("{m}");
                return Ok(());
            }
            // Only the section on the watch daemon's cost to execs, printed.
            "--only-exec" => {
                let r = Report {
                    exec: exec_latency::measure(&root, &o.rlp, &o.build, o.runs.max(31))?,
                    ..Default::default()
                };
                let mut m = String::new();
                r.exec_markdown(&mut m);
                print!("{m}");
                return Ok(());
            }
            // Fleet sizes, comma-separated (before --only-fleet).
            "--fleet-sizes" => {
                o.fleet = val()?
                    .split(',')
                    .map(|n| n.parse())
                    .collect::<std::result::Result<_, _>>()?;
            }
            // Only the fleet side by side with libpulp, printed.
            "--only-fleet" => {
                let r = Report {
                    fleet: fleet::measure(&root, &o.rlp, &o.build, &o.fleet, o.fleet_runs)?,
                    ..Default::default()
                };
                let mut m = String::new();
                r.fleet.markdown(&mut m, cpus());
                print!("{m}");
                return Ok(());
            }
            "--fleet-runs" => o.fleet_runs = val()?.parse()?,
            // Only one process side by side with libpulp, printed.
            "--only-single" => {
                std::fs::create_dir_all(&o.build)?;
                let b = build(&root, &o.build)?;
                let cells = single::measure(&root, &o, &b)?;
                let mut m = String::new();
                single::markdown(&cells, &mut m, cpus());
                print!("{m}");
                return Ok(());
            }
            "--quick" => {
                // A quick run is a smoke test: the committed numbers stay.
                o.out = root.join("target/bench/BENCHMARKS-quick.md");
                o.plot = root.join("target/bench/BENCHMARKS-quick-pause.png");
                o.idle = vec![0, 100];
                o.funcs = vec![1, 100];
                o.runs = 2;
                o.gdb_runs = 1;
                o.server_secs = 2;
                o.fleet = vec![10, 100];
                o.fleet_runs = 2;
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    std::fs::create_dir_all(&o.build)?;
    let b = build(&root, &o.build)?;
    let mut report = Report {
        machine: machine(),
        ..Default::default()
    };
    eprintln!("bench: pause and wall time");
    for &idle in &o.idle {
        pause_cases(&o, &b, idle, &mut report)?;
    }
    if o.gdb_runs > 0 {
        eprintln!("bench: gdb");
        for &idle in &o.idle {
            for &funcs in &o.funcs {
                gdb_case(&o, &b, idle, funcs, &mut report)?;
            }
        }
    }
    eprintln!("bench: one process, side by side with libpulp");
    report.single = single::measure(&root, &o, &b)?;
    eprintln!("bench: fleets, side by side with libpulp");
    report.fleet = fleet::measure(&root, &o.rlp, &o.build, &o.fleet, o.fleet_runs)?;
    eprintln!("bench: call overhead");
    report.calls = call_overhead(&o, &b)?;
    eprintln!("bench: server impact");
    report.server = server_impact(&o, &b)?;
    eprintln!("bench: patches from a diff");
    report.build = patch_build::measure(&root, &o.rlp, &o.build, o.runs.min(5))?;
    eprintln!("bench: execs under the watch daemon");
    report.exec = exec_latency::measure(&root, &o.rlp, &o.build, o.runs.max(31))?;
    let md = report.markdown(&o);
    std::fs::write(&o.out, md)?;
    plot(&o, &report)?;
    eprintln!("bench: wrote {}", o.out.display());
    Ok(())
}

/// What the benchmarks run.
struct Built {
    target: PathBuf,
    patch: Vec<(usize, PathBuf)>,
    island: PathBuf,
    /// bench-target built with -DWIDE.
    wide_target: PathBuf,
    /// bench-preserve.so with MODE 0, 1, 2.
    preserve: Vec<PathBuf>,
    server: PathBuf,
    server_fix: PathBuf,
    gdb_shim: PathBuf,
}

fn cc(root: &Path, args: &[&str], out: &Path) -> Result<()> {
    let st = Command::new("cc")
        .args(args)
        .arg("-o")
        .arg(out)
        .current_dir(root)
        .status()
        .context("running cc")?;
    if !st.success() {
        bail!("cc {args:?} failed");
    }
    Ok(())
}

fn build(root: &Path, dir: &Path) -> Result<Built> {
    let d = dir.to_str().unwrap();
    let fixture = ["-O2", "-fomit-frame-pointer", "-g", "-Wall"];
    let lib = dir.join("libbench.so");
    cc(
        root,
        &[&fixture[..], &["-shared", "-fPIC", "fixtures/libbench.c"]].concat(),
        &lib,
    )?;
    // Not PIE: mf lies in the low 2 GiB, far from every shared object (the island case).
    let rpath = format!("-Wl,-rpath,{d}");
    let ldir = format!("-L{d}");
    // The target, and the same with -DWIDE (its code uses ymm registers).
    let target_with = |out: &Path, extra: &[&str]| {
        let base = [
            "-no-pie",
            "fixtures/bench-target.c",
            "-pthread",
            &ldir,
            "-lbench",
            &rpath,
        ];
        cc(root, &[&fixture[..], extra, &base[..]].concat(), out)
    };
    let target = dir.join("bench-target");
    target_with(&target, &[])?;
    let wide_target = dir.join("bench-target-wide");
    target_with(&wide_target, &["-DWIDE"])?;
    let patch_args = ["-shared", "-fPIC", "-O2", "-I", "patches/include"];
    let mut preserve = Vec::new();
    for mode in 0..3 {
        let out = dir.join(format!("bench-preserve-{mode}.so"));
        let def = format!("-DMODE={mode}");
        cc(
            root,
            &[&patch_args[..], &[&def, "patches/bench-preserve.c"]].concat(),
            &out,
        )?;
        preserve.push(out);
    }
    let mut patch = Vec::new();
    for n in [1usize, 100, 1000] {
        let out = dir.join(format!("bench-{n}.so"));
        let def = format!("-DFUNCS={n}");
        cc(
            root,
            &[&patch_args[..], &[&def, "patches/bench.c"]].concat(),
            &out,
        )?;
        patch.push((n, out));
    }
    let island = dir.join("bench-island.so");
    cc(
        root,
        &[
            &patch_args[..],
            &["-DFUNCS=1", "-DISLAND", "patches/bench.c"],
        ]
        .concat(),
        &island,
    )?;
    let server = dir.join("server");
    cc(
        root,
        &[&fixture[..], &["fixtures/server.c", "-pthread"]].concat(),
        &server,
    )?;
    let server_fix = dir.join("server-fix.so");
    cc(
        root,
        &[&patch_args[..], &["patches/server-fix.c"]].concat(),
        &server_fix,
    )?;
    // gdb 13 cannot restore registers on CPUs with AMX without it (see the file).
    let gdb_shim = dir.join("gdb-xstate-shim.so");
    cc(
        root,
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "scripts/gdb-xstate-shim.c",
            "-ldl",
        ],
        &gdb_shim,
    )?;
    Ok(Built {
        gdb_shim,
        target,
        patch,
        island,
        wide_target,
        preserve,
        server,
        server_fix,
    })
}

/// A running bench-target, driven through its stdin.
struct Target {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    pid: i32,
}

impl Target {
    fn start(bin: &Path, busy: usize, idle: usize) -> Result<Target> {
        Self::start_env(bin, busy, idle, &[])
    }

    /// [`Target::start`] with more environment variables.
    fn start_env(bin: &Path, busy: usize, idle: usize, env: &[(&str, &Path)]) -> Result<Target> {
        let mut child = Command::new(bin)
            .args([busy.to_string(), idle.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("bench-target said {line:?}"))?;
        Ok(Target {
            child,
            stdin,
            out,
            pid,
        })
    }

    fn cmd(&mut self, c: &str) -> Result<String> {
        writeln!(self.stdin, "{c}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        if line.is_empty() || line.starts_with("error") {
            bail!("bench-target: {c:?} failed: {line:?}");
        }
        Ok(line.trim().to_string())
    }

    /// The longest gap since the last reset, in ms.
    fn gap_ms(&mut self) -> Result<f64> {
        let l = self.cmd("gap")?;
        Ok(l.split_whitespace().next().unwrap().parse::<f64>()? / 1e6)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this benchmark started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One rlivepatch run: wall time, and from its trace the longest time the threads that
/// were at work were held stopped.
struct Run {
    wall_ms: f64,
    stopped_ms: f64,
}

fn rlivepatch(o: &Opts, args: &[&str]) -> Result<Run> {
    let t0 = Instant::now();
    let out = Command::new(&o.rlp)
        .args(args)
        .env("RLIVEPATCH_TRACE", "1")
        .output()
        .context("running rlivepatch")?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("rlivepatch {args:?} failed: {err}");
    }
    Ok(Run {
        wall_ms,
        stopped_ms: stop_window(&err),
    })
}

/// From rlivepatch's trace: the longest stretch between stopping the threads on a CPU
/// ("stop all") and letting them run again ("busy resumed", or "resumed" and "detached"
/// when a failed attempt or the end of a session lets everyone go).
fn stop_window(trace: &str) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since: Option<f64> = None;
    for l in trace.lines() {
        let Some(rest) = l.strip_prefix("rlivepatch: trace") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let Some(ms) = it.next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let name = rest.split(") ").nth(1).unwrap_or("");
        match name {
            "stop all" => {
                since.get_or_insert(ms);
            }
            "busy resumed" | "resumed" | "detach all" | "detached" => {
                if let Some(s) = since.take() {
                    longest = longest.max(ms - s);
                }
            }
            _ => {}
        }
    }
    longest
}

/// Median, min, max.
#[derive(Clone, Copy, Default)]
struct Stat {
    med: f64,
    min: f64,
    max: f64,
}

fn stat(v: &[f64]) -> Stat {
    if v.is_empty() {
        return Stat::default();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Stat {
        med,
        min: s[0],
        max: s[n - 1],
    }
}

#[derive(Default)]
struct Case {
    idle: usize,
    funcs: usize,
    noise: Vec<f64>,
    apply_pause: Vec<f64>,
    disable_pause: Vec<f64>,
    apply_stopped: Vec<f64>,
    disable_stopped: Vec<f64>,
    apply_wall: Vec<f64>,
    disable_wall: Vec<f64>,
    gdb_pause: Vec<f64>,
    gdb_wall: Vec<f64>,
    gdb_crashed: usize,
    floor: Vec<f64>,
}

#[derive(Default)]
struct Report {
    machine: String,
    cases: Vec<Case>,
    calls: Calls,
    server: Server,
    build: patch_build::BuildBench,
    exec: exec_latency::ExecBench,
    fleet: fleet::Fleet,
    single: Vec<single::Cell>,
}

fn pause_cases(o: &Opts, b: &Built, idle: usize, r: &mut Report) -> Result<()> {
    let mut t = Target::start(&b.target, 2, idle)?;
    let pid = t.pid.to_string();
    for &funcs in &o.funcs {
        let patch = &b.patch.iter().find(|(n, _)| *n == funcs).unwrap().1;
        let mut c = Case {
            idle,
            funcs,
            ..Default::default()
        };
        // One warm-up cycle: the first run of a new binary pays for page faults.
        rlivepatch(o, &["apply", &pid, patch.to_str().unwrap()])?;
        rlivepatch(o, &["disable", &pid, "bench"])?;
        for _ in 0..o.runs {
            t.cmd("reset")?;
            let a = rlivepatch(o, &["apply", &pid, patch.to_str().unwrap(), "--json"])?;
            c.apply_pause.push(t.gap_ms()?);
            if t.cmd("call 1")? != (3 + 0x1002).to_string() {
                bail!("the patch did not take");
            }
            c.apply_wall.push(a.wall_ms);
            c.apply_stopped.push(a.stopped_ms);
            t.cmd("reset")?;
            let d = rlivepatch(o, &["disable", &pid, "bench", "--json"])?;
            c.disable_pause.push(t.gap_ms()?);
            c.disable_wall.push(d.wall_ms);
            c.disable_stopped.push(d.stopped_ms);
            // The noise: the same measure over as long a window, nothing patched.
            t.cmd("reset")?;
            std::thread::sleep(Duration::from_secs_f64(a.wall_ms / 1e3));
            c.noise.push(t.gap_ms()?);
            // The floor: what merely starting rlivepatch costs the busy threads.
            t.cmd("reset")?;
            Command::new(&o.rlp).arg("--version").output()?;
            c.floor.push(t.gap_ms()?);
        }
        eprintln!(
            "  idle {idle:4} funcs {funcs:4}: pause {:.2} ms (noise {:.2}), apply {:.1} ms",
            stat(&c.apply_pause).med,
            stat(&c.noise).med,
            stat(&c.apply_wall).med
        );
        r.cases.push(c);
    }
    Ok(())
}

/// gdb doing the same hot patch: attach, call dlopen, write a jump at each entry,
/// detach. A fresh target each run (gdb leaves no record to undo the patch with).
fn gdb_case(o: &Opts, b: &Built, idle: usize, funcs: usize, r: &mut Report) -> Result<()> {
    let patch = &b.patch.iter().find(|(n, _)| *n == funcs).unwrap().1;
    let script = o.build.join(format!("gdb-{funcs}.gdb"));
    let mut s = String::from("set pagination off\nset confirm off\n");
    writeln!(
        s,
        "call (void *)dlopen(\"{}\", 2)",
        patch.canonicalize()?.display()
    )?;
    for i in 0..funcs {
        writeln!(s, "set $o = (unsigned char *)&bf{i:03}")?;
        writeln!(s, "set $n = (unsigned char *)&nf{i:03}")?;
        writeln!(s, "set *(unsigned char *)$o = 0xe9")?;
        writeln!(s, "set *(int *)($o + 1) = (int)($n - ($o + 5))")?;
    }
    s.push_str("detach\nquit\n");
    std::fs::write(&script, s)?;
    let c = r
        .cases
        .iter_mut()
        .find(|c| c.idle == idle && c.funcs == funcs)
        .context("gdb case without an rlivepatch case")?;
    for _ in 0..o.gdb_runs {
        let mut t = Target::start(&b.target, 2, idle)?;
        t.cmd("reset")?;
        let t0 = Instant::now();
        let out = Command::new("gdb")
            .args(["-nx", "-batch", "-p", &t.pid.to_string(), "-x"])
            .arg(&script)
            .env("LD_PRELOAD", &b.gdb_shim)
            .output()
            .context("running gdb (scripts/setup.sh installs it)")?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || err.contains("No symbol") {
            bail!("gdb failed: {err}");
        }
        // The target may not survive: the script writes `jmp rel32` whatever the
        // distance, and a patch mapped more than 2 GiB away makes it jump into nowhere.
        let (Ok(gap), Ok(v)) = (t.gap_ms(), t.cmd("call 1")) else {
            c.gdb_crashed += 1;
            continue;
        };
        if v != (3 + 0x1002).to_string() {
            c.gdb_crashed += 1;
            continue;
        }
        c.gdb_pause.push(gap);
        c.gdb_wall.push(wall);
    }
    eprintln!(
        "  gdb idle {idle:4} funcs {funcs:4}: pause {:.1} ms, wall {:.1} ms",
        stat(&c.gdb_pause).med,
        stat(&c.gdb_wall).med
    );
    Ok(())
}

#[derive(Default)]
struct Calls {
    original: Vec<f64>,
    direct_jump: Vec<f64>,
    direct_call: Vec<f64>,
    original_far: Vec<f64>,
    island: Vec<f64>,
    island_call: Vec<f64>,
    calls_per_run: u64,
    /// Direct calls of pf: original, island, preserving (general registers), preserving
    /// (and xmm low halves), preserving (and the XSAVE state, in the wide target).
    preserving: [Vec<f64>; 5],
}

fn call_overhead(o: &Opts, b: &Built) -> Result<Calls> {
    let n: u64 = 50_000_000;
    let mut t = Target::start(&b.target, 0, 0)?;
    let pid = t.pid.to_string();
    let island = b.island.to_str().unwrap();
    let ns = |t: &mut Target, what: &str| -> Result<f64> {
        Ok(t.cmd(&format!("time {what} {n}"))?.parse()?)
    };
    let mut c = Calls {
        calls_per_run: n,
        ..Default::default()
    };
    for _ in 0..o.runs.max(3) {
        c.original.push(ns(&mut t, "lib")?);
        c.original_far.push(ns(&mut t, "main")?);
        let out = Command::new(&o.rlp)
            .args(["apply", &pid, island, "--json"])
            .output()?;
        if !out.status.success() {
            bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let funcs = j["functions"]
            .as_array()
            .context("no functions in --json")?;
        let func = |sym: &str, via: &str| -> Result<String> {
            let f = funcs
                .iter()
                .find(|f| f["symbol"] == sym)
                .with_context(|| format!("{sym} not patched"))?;
            if f["via"] != via {
                bail!("{sym} was expected to go through {via}: {f}");
            }
            Ok(f["new_addr"].as_str().unwrap_or_default().to_string())
        };
        let (near, far) = (func("bf000", "jump")?, func("mf", "island")?);
        c.direct_jump.push(ns(&mut t, "lib")?);
        c.island.push(ns(&mut t, "main")?);
        c.direct_call.push(ns(&mut t, &near)?);
        c.island_call.push(ns(&mut t, &far)?);
        rlivepatch(o, &["disable", &pid, "bench"])?;
    }
    preserving_overhead(o, b, &mut c)?;
    Ok(c)
}

/// Direct calls of `pf` from a caller that keeps values in caller-saved registers across
/// them: through an island (a replacement that leaves them alone), and through the
/// preserving path keeping general registers, the low halves of xmm registers, or the
/// whole vector state (XSAVE, for an object that uses ymm registers).
fn preserving_overhead(o: &Opts, b: &Built, c: &mut Calls) -> Result<()> {
    let n = c.calls_per_run / 2;
    let plain = Target::start(&b.target, 0, 0)?;
    let wide = Target::start(&b.wide_target, 0, 0)?;
    let mut ts = [plain, wide];
    let direct = |t: &mut Target| -> Result<f64> {
        let r = t.cmd(&format!("direct {n}"))?;
        if r.ends_with("bad") {
            bail!("a caller of pf got a wrong result: {r}");
        }
        Ok(r.parse()?)
    };
    let cases: [(usize, Option<usize>, &str); 5] = [
        (0, None, ""),
        (0, Some(0), "island"),
        (0, Some(1), "preserving"),
        (0, Some(2), "preserving"),
        (1, Some(2), "preserving"),
    ];
    for _ in 0..o.runs.max(3) {
        for (i, (ti, mode, via)) in cases.iter().enumerate() {
            let t = &mut ts[*ti];
            let pid = t.pid.to_string();
            if let Some(mode) = mode {
                let path = b.preserve[*mode].to_str().unwrap();
                let out = Command::new(&o.rlp)
                    .args(["apply", &pid, path, "--json"])
                    .output()?;
                if !out.status.success() {
                    bail!("apply failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                if j["functions"][0]["via"] != *via {
                    bail!("pf was expected to go through {via}: {j}");
                }
            }
            c.preserving[i].push(direct(t)?);
            if mode.is_some() {
                rlivepatch(o, &["disable", &pid, "bench-preserve"])?;
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Server {
    quiet: Vec<f64>,
    patching: Vec<f64>,
    cycles: u64,
    invalid: u64,
    secs: u64,
}

/// Latency of a loopback request loop (2 client threads, one connection each) against
/// the 4-thread server fixture, with and without apply/disable cycles running.
fn server_impact(o: &Opts, b: &Built) -> Result<Server> {
    let mut child = Command::new(&b.server)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server fixture")?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 3 || f[0] != "ready" {
        bail!("server said {line:?}");
    }
    let pid: i32 = f[1].parse()?;
    let port: u16 = f[2].parse()?;
    let result = (|| -> Result<Server> {
        let mut s = Server {
            secs: o.server_secs,
            ..Default::default()
        };
        let dur = Duration::from_secs(o.server_secs);
        let (quiet, bad) = load(port, dur, None)?;
        s.quiet = quiet;
        s.invalid += bad;
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicU64::new(0));
        let patcher = {
            let (stop, cycles) = (stop.clone(), cycles.clone());
            let rlp = o.rlp.clone();
            let fix = b.server_fix.clone();
            std::thread::spawn(move || -> Result<()> {
                let pid = pid.to_string();
                while !stop.load(Ordering::Relaxed) {
                    for args in [
                        vec!["apply", &pid, fix.to_str().unwrap()],
                        vec!["disable", &pid, "server-fix"],
                    ] {
                        let st = Command::new(&rlp).args(&args).output()?;
                        if !st.status.success() {
                            bail!("{args:?}: {}", String::from_utf8_lossy(&st.stderr));
                        }
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        let (patching, bad) = load(port, dur, Some(&stop))?;
        stop.store(true, Ordering::Relaxed);
        patcher.join().unwrap()?;
        s.patching = patching;
        s.invalid += bad;
        s.cycles = cycles.load(Ordering::Relaxed);
        Ok(s)
    })();
    // SAFETY: kill(2) on the child this benchmark started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    result
}

/// Run the request loop for `dur`; returns latencies (µs) and the count of wrong answers
/// (an answer is right before the fix, 2n or 2n+1 for multiples of 7, and after it).
fn load(port: u16, dur: Duration, stop: Option<&AtomicBool>) -> Result<(Vec<f64>, u64)> {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let bad = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + dur;
    let mut handles = Vec::new();
    for k in 0..2 {
        let (lat, bad) = (lat.clone(), bad.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            let s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            let mut w = s.try_clone()?;
            let mut r = BufReader::new(s);
            let mut mine = Vec::new();
            let mut n: i64 = k * 1_000_000;
            let mut line = String::new();
            while Instant::now() < end {
                n += 1;
                let t0 = Instant::now();
                writeln!(w, "{n}")?;
                line.clear();
                r.read_line(&mut line)?;
                mine.push(t0.elapsed().as_secs_f64() * 1e6);
                let v: i64 = line.trim().parse().unwrap_or(-1);
                if v != 2 * n && !(n % 7 == 0 && v == 2 * n + 1) {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat.lock().unwrap().extend(mine);
            Ok(())
        }));
    }
    for h in handles {
        h.join().unwrap()?;
    }
    let _ = stop;
    let v = std::mem::take(&mut *lat.lock().unwrap());
    Ok((v, bad.load(Ordering::Relaxed)))
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i]
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{ncpu} CPUs ({cpu}), Linux {}", kernel.trim())
}

/// A gdb cell: the figure over the runs the target survived, and how many it did not.
fn gdb_cell(c: &Case, v: &[f64]) -> String {
    let runs = v.len() + c.gdb_crashed;
    match (v.is_empty(), c.gdb_crashed) {
        (true, 0) => "–".into(),
        (true, n) => format!("target crashed {n}/{runs}"),
        (false, 0) => fmt(stat(v)),
        (false, n) => format!("{} (target crashed {n}/{runs})", fmt(stat(v))),
    }
}

fn fmt(s: Stat) -> String {
    format!("{:.2} ({:.2}–{:.2})", s.med, s.min, s.max)
}

impl Report {
    fn markdown(&self, o: &Opts) -> String {
        let mut m = String::new();
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            m,
            "# Benchmarks\n\nMeasured {date} on {}, all in one run of `scripts/bench.sh` \
             ({} runs per case, {} for gdb). Each cell: median (min–max). Regenerate with \
             `scripts/bench.sh`; the analysis below the tables is kept by hand in \
             `scripts/bench-notes.md` and appended.\n",
            self.machine, o.runs, o.gdb_runs
        );
        let _ = writeln!(
            m,
            "## Pause\n\nThe longest gap between two consecutive calls seen by one of 2 busy \
             threads of `fixtures/bench-target.c` while the command runs, in ms. *Noise*: \
             the same measure over as long a window with nothing patched. *Stopped*: how \
             long rlivepatch held the threads that were at work stopped (its own trace).\n"
        );
        m.push_str("| idle threads | functions | noise | floor (`rlivepatch --version`) | rlivepatch apply | stopped (apply) | rlivepatch disable | stopped (disable) | gdb |\n");
        m.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.cases {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.idle,
                c.funcs,
                fmt(stat(&c.noise)),
                fmt(stat(&c.floor)),
                fmt(stat(&c.apply_pause)),
                fmt(stat(&c.apply_stopped)),
                fmt(stat(&c.disable_pause)),
                fmt(stat(&c.disable_stopped)),
                gdb_cell(c, &c.gdb_pause)
            );
        }
        let _ = writeln!(
            m,
            "\n![pause per case]({})\n",
            o.plot.file_name().unwrap().to_string_lossy()
        );
        m.push_str("## Wall time\n\nFrom starting the command to its exit, in ms.\n\n");
        m.push_str(
            "| idle threads | functions | rlivepatch apply | rlivepatch disable | gdb (same hot patch) | gdb / rlivepatch |\n|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.cases {
            let a = stat(&c.apply_wall);
            let g = stat(&c.gdb_wall);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                c.idle,
                c.funcs,
                fmt(a),
                fmt(stat(&c.disable_wall)),
                gdb_cell(c, &c.gdb_wall),
                if c.gdb_wall.is_empty() {
                    "–".into()
                } else {
                    format!("{:.1}x", g.med / a.med)
                }
            );
        }
        let c = &self.calls;
        let base = stat(&c.direct_call).med;
        let _ = writeln!(
            m,
            "\n## Call overhead\n\nns per call, {} indirect calls per run (`time` command of \
             the target, no busy threads); ratio to a direct call of the replacement.\n",
            c.calls_per_run
        );
        m.push_str("| call | ns/call | ratio |\n|---|---:|---:|\n");
        for (name, v) in [
            ("original `bf000` (libbench.so)", &c.original),
            ("patched `bf000`, through a direct jump", &c.direct_jump),
            ("direct call of the replacement `nf000`", &c.direct_call),
            (
                "original `mf` (executable, over 2 GiB away)",
                &c.original_far,
            ),
            ("patched `mf`, through an island", &c.island),
            ("direct call of the replacement `nmf`", &c.island_call),
        ] {
            let s = stat(v);
            let _ = writeln!(m, "| {name} | {} | {:.2} |", fmt(s), s.med / base);
        }
        let _ = writeln!(
            m,
            "\nA direct jump costs {:.2} ns per call over a direct call of the replacement; \
             an island {:.2} ns.\n",
            stat(&c.direct_jump).med - base,
            stat(&c.island).med - stat(&c.island_call).med
        );
        let base = stat(&c.preserving[0]).med;
        let _ = writeln!(
            m,
            "### The preserving path\n\nns per call, {} direct calls of `pf` per run (`direct` \
             command of the target) from a caller that keeps values in caller-saved registers \
             across them (`-fipa-ra`); ratio to the original. The replacements \
             (`patches/bench-preserve.c`) differ only in the registers they change.\n",
            c.calls_per_run / 2
        );
        m.push_str("| call | ns/call | ratio |\n|---|---:|---:|\n");
        for (name, v) in [
            ("original `pf`", &c.preserving[0]),
            (
                "patched, replacement leaves the registers alone: island",
                &c.preserving[1],
            ),
            (
                "patched, replacement changes rcx-r11: preserving path",
                &c.preserving[2],
            ),
            (
                "... and xmm2-3 (object uses SSE only): + xmm low halves",
                &c.preserving[3],
            ),
            (
                "... and xmm2-3 (object uses ymm): + XSAVE/XRSTOR",
                &c.preserving[4],
            ),
        ] {
            let s = stat(v);
            let _ = writeln!(m, "| {name} | {} | {:.2} |", fmt(s), s.med / base);
        }
        let _ = writeln!(
            m,
            "\nThe preserving path costs {:.1} ns per call over an island for general \
             registers, {:.1} ns with the low halves of the xmm registers, {:.1} ns with \
             the whole vector state.\n",
            stat(&c.preserving[2]).med - stat(&c.preserving[1]).med,
            stat(&c.preserving[3]).med - stat(&c.preserving[1]).med,
            stat(&c.preserving[4]).med - stat(&c.preserving[1]).med
        );
        let s = &self.server;
        let _ = writeln!(
            m,
            "## Server impact\n\nLatency of a loopback request loop (2 clients, one \
             connection each, `fixtures/server.c` with 4 threads) for {} s, in µs; while \
             patching, apply and disable of `patches/server-fix.c` run back to back ({} \
             cycles). Wrong answers: {}.\n",
            s.secs, s.cycles, s.invalid
        );
        m.push_str("| | requests | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n");
        for (name, v) in [
            ("no patching", &s.quiet),
            ("apply/disable cycles", &s.patching),
        ] {
            let _ = writeln!(
                m,
                "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99),
                percentile(v, 1.0)
            );
        }
        single::markdown(&self.single, &mut m, cpus());
        self.fleet.markdown(&mut m, cpus());
        self.build_markdown(&mut m);
        self.exec_markdown(&mut m);
        m.push_str("\n## Targets\n\n");
        let find = |idle, funcs| {
            self.cases
                .iter()
                .find(|c| c.idle == idle && c.funcs == funcs)
        };
        let verdict = |ok: bool| if ok { "met" } else { "missed" };
        if let Some(c) = find(100, 100) {
            let p = stat(&c.apply_pause).med;
            let st = stat(&c.apply_stopped).med;
            let _ = writeln!(
                m,
                "- pause ≤ 1 ms with 2 busy + 100 idle threads and 100 functions: {} \
                 ({p:.2} ms; threads held stopped {st:.2} ms)",
                verdict(p <= 1.0)
            );
        }
        if let Some(c) = find(1000, 1000) {
            let p = stat(&c.apply_pause).med;
            let st = stat(&c.apply_stopped).med;
            let _ = writeln!(
                m,
                "- pause ≤ 20 ms with 1000 idle threads and 1000 functions: {} ({p:.2} ms; \
                 threads held stopped {st:.2} ms)",
                verdict(p <= 20.0)
            );
        }
        if let Some(c) = find(0, 1) {
            let a = stat(&c.apply_wall).med;
            let _ = writeln!(
                m,
                "- apply ≤ 50 ms for a typical target (2 busy threads, 1 function): {} \
                 ({a:.1} ms)",
                verdict(a <= 50.0)
            );
        }
        // The target says "a typical target and at least 10x faster than gdb": the
        // typical case decides; every other case is reported beside it, the closest
        // named, so that a miss there is seen too.
        let ratio = |c: &Case| stat(&c.gdb_wall).med / stat(&c.apply_wall).med;
        if let Some(c) = find(0, 1).filter(|c| !c.gdb_wall.is_empty()) {
            let typical = ratio(c);
            let closest = self
                .cases
                .iter()
                .filter(|c| !c.gdb_wall.is_empty())
                .min_by(|a, b| ratio(a).total_cmp(&ratio(b)));
            let (min, at) = closest.map_or((typical, (0, 1)), |c| (ratio(c), (c.idle, c.funcs)));
            let _ = writeln!(
                m,
                "- at least 10x faster than gdb for a typical target: {} ({typical:.1}x); \
                 every case: {} ({min:.1}x in the closest, {} idle threads and {} \
                 functions)",
                verdict(typical >= 10.0),
                verdict(min >= 10.0),
                at.0,
                at.1
            );
        }
        let d = stat(&c.direct_jump).med - base;
        let _ = writeln!(
            m,
            "- a call through a direct jump within 1 ns of a direct call: {} ({d:.2} ns)",
            verdict(d <= 1.0)
        );
        let notes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-notes.md");
        if let Ok(n) = std::fs::read_to_string(notes) {
            m.push('\n');
            m.push_str(&n);
        }
        m
    }
}

impl Report {
    /// The section on `rlivepatch build`.
    fn exec_markdown(&self, m: &mut String) {
        let cases = &self.exec.cases;
        if cases.is_empty() || cases[0].1.is_empty() {
            return;
        }
        let base = stat(&cases[0].1).med;
        let _ = writeln!(
            m,
            "\n## Programs started under `rlivepatch watch`\n\nms from `fork` to the first \
             value line of `main` (fixtures/counter.c), {} starts per case, the daemon's cases \
             interleaved; ratio to the start without the daemon.\n\n| | ms | ratio |\n|---|---:|---:|",
            cases[0].1.len()
        );
        for (name, v) in cases {
            let s = stat(v);
            let _ = writeln!(m, "| {name} | {} | {:.2} |", fmt(s), s.med / base);
        }
    }

    fn build_markdown(&self, m: &mut String) {
        let b = &self.build;
        if b.plain.is_empty() {
            return;
        }
        let plain = stat(&b.plain).med;
        let _ = writeln!(
            m,
            "## Patches from a diff\n\n`rlivepatch build` of Debian's fix for CVE-2022-28805 \
             against Lua 5.4.4 (one unit recompiled twice), against one plain build of Lua \
             (`make clean && make -j2`), in ms; ratio to the plain build. *Cold*: the build \
             is learned first (one full build under the compiler wrapper, in a copy); *warm*: \
             learned before (cached).\n"
        );
        m.push_str("| | ms | ratio |\n|---|---:|---:|\n");
        for (name, v) in [
            ("plain build of the project", &b.plain),
            ("`rlivepatch build`, cold", &b.cold),
            ("`rlivepatch build`, warm", &b.warm),
        ] {
            let s = stat(v);
            let _ = writeln!(m, "| {name} | {} | {:.2} |", fmt(s), s.med / plain);
        }
        let phases: Vec<String> = b
            .phases
            .iter()
            .map(|(n, t)| format!("{n} {t:.0}"))
            .collect();
        let _ = writeln!(m, "\nPhases of a warm build, ms: {}.\n", phases.join(", "));
        let _ = writeln!(
            m,
            "### Bindings\n\nns per call, {} calls per run (`bench` command of \
             `fixtures/project`), before and after the patches made from \
             `fixtures/project/diffs`. `handle` of the PIE program reads and writes three of \
             the program's variables (five accesses) and calls its static `clamp`: the apply \
             loads the patch within 2 GiB of the program (moved to a free range below it), \
             so the accesses and the call are the compiler's own instructions with their \
             displacements written in place. In a copy of the program that reserved the \
             address space around itself first (`crowd`), the patch lands terabytes away: \
             each access goes through a thunk next to the data (two indirect jumps) and \
             the call through a stub. `calc` of the shared library reads and writes its \
             variables in place. The fixes add one comparison each, so the patched code \
             is also measured against the project built from the fixed source (*fixed*: \
             the same code compiled in, reached by direct calls): *patched - fixed* is what \
             the patch itself costs, a jump at the function's entry and the bindings. \
             Interleaved rounds; original and patched in the same process.\n",
            b.calls
        );
        m.push_str(
            "| function | original | patched | patched - original (ns) | ratio | fixed | patched - fixed (ns) |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (name, v, fixed) in [
            ("`handle`: near (in place)", &b.near, &b.fixed[0]),
            ("`handle`: far (thunks, stub)", &b.far, &b.fixed[0]),
            ("`calc`: library (in place)", &b.lib, &b.fixed[1]),
        ] {
            let (a, p, f) = (stat(&v[0]), stat(&v[1]), stat(fixed));
            let _ = writeln!(
                m,
                "| {name} | {} | {} | {:.2} | {:.2} | {} | {:.2} |",
                fmt(a),
                fmt(p),
                p.med - a.med,
                p.med / a.med,
                fmt(f),
                p.med - f.med
            );
        }
        m.push('\n');
    }
}

/// The pause per case as a PNG, with gnuplot.
fn plot(o: &Opts, r: &Report) -> Result<()> {
    let dat = o.build.join("pause.dat");
    let mut d = String::from("case noise floor apply disable gdb\n");
    for c in &r.cases {
        let g = if c.gdb_pause.is_empty() {
            "NaN".to_string()
        } else {
            format!("{:.3}", stat(&c.gdb_pause).med)
        };
        let _ = writeln!(
            d,
            "\"{}i/{}f\" {:.3} {:.3} {:.3} {:.3} {g}",
            c.idle,
            c.funcs,
            stat(&c.noise).med.max(0.001),
            stat(&c.floor).med.max(0.001),
            stat(&c.apply_pause).med.max(0.001),
            stat(&c.disable_pause).med.max(0.001),
        );
    }
    std::fs::write(&dat, d)?;
    let gp = format!(
        "set terminal pngcairo size 1100,520 font ',10'\n\
         set output '{}'\n\
         set title 'Longest gap seen by a busy thread (ms, log scale; median of runs)'\n\
         set style data histograms\n\
         set style histogram clustered gap 1\n\
         set style fill solid 0.8 border -1\n\
         set logscale y\n\
         set yrange [0.01:*]\n\
         set grid ytics\n\
         set xlabel 'idle threads / functions in the patch'\n\
         set key top left\n\
         plot '{}' using 2:xtic(1) title 'noise (no patching)', '' using 3 title 'floor (rlivepatch --version)', \
         '' using 4 title 'rlivepatch apply', '' using 5 title 'rlivepatch disable', '' using 6 title 'gdb'\n",
        o.plot.display(),
        dat.display()
    );
    let gpf = o.build.join("pause.gp");
    std::fs::write(&gpf, gp)?;
    let st = Command::new("gnuplot")
        .arg(&gpf)
        .status()
        .context("running gnuplot (scripts/setup.sh installs it with RLIVEPATCH_SETUP_BENCH=1)")?;
    if !st.success() {
        bail!("gnuplot failed");
    }
    Ok(())
}
