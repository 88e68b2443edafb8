//! One process, side by side with SUSE libpulp: the same bench-target process (1 or 2
//! busy threads calling libbench.so's functions, 0, 100 or 1000 idle threads), over a
//! libbench.so built with libpulp's flags and started with libpulp's library preloaded,
//! patched in turn by `rlivepatch apply PID` / `disable` and `ulp trigger -p PID` /
//! `--revert`, one function (bf000), interleaved. Measured: each command's wall time
//! (rlivepatch without its trace, as an operator runs it) and the pause the busy threads
//! saw (the longest gap between two calls, as in the pause table). Each apply is checked
//! to have taken (`call 1` answers the patch's value) and each undo to have reverted.

use super::fleet::{libpulp, libpulp_lib, load_now, timed, ulp_patch_of};
use super::{Built, Opts, Target, stat};
use anyhow::{Result, bail};
use std::path::Path;
use std::process::Command;

/// One cell of the matrix.
#[derive(Default, Clone)]
pub struct Cell {
    pub busy: usize,
    pub idle: usize,
    pub rlp_apply: Vec<f64>,
    pub rlp_disable: Vec<f64>,
    pub rlp_pause: Vec<f64>,
    pub ulp_apply: Vec<f64>,
    pub ulp_revert: Vec<f64>,
    pub ulp_pause: Vec<f64>,
    /// The floor program (scripts/floor.c) on the same process, ms.
    pub floor: Vec<f64>,
    /// The pause the busy threads saw while `true` ran: what starting any program costs
    /// them (on CPUs the busy threads fill, the new process takes one from them).
    pub start_pause: Vec<f64>,
    pub load: f64,
    pub pressure: f64,
}

/// Measure the matrix (idle threads as in `o.idle`).
pub fn measure(root: &Path, o: &Opts, b: &Built) -> Result<Vec<Cell>> {
    let prefix = libpulp(root)?;
    let ulp = prefix.join("bin/ulp");
    let dir = o.build.join("single-ulp");
    std::fs::create_dir_all(&dir)?;
    let lib = dir.join("libbench.so");
    libpulp_lib(root, &ulp, "fixtures/libbench.c", &lib)?;
    let patch = dir.join("bench-fix-ulp.so");
    ulp_patch_of(
        &ulp,
        &root.join("fixtures/bench-fix-ulp.c"),
        &lib,
        "bf000",
        "nf000_ulp",
        &patch,
    )?;
    let rlp_patch = &b.patch.iter().find(|(n, _)| *n == 1).unwrap().1;
    // The floor: seize, interrupt and wait for every thread, read their registers, one
    // injected dlopen and dlclose of an empty library, detach.
    let floor = dir.join("floor");
    super::cc(root, &["-O2", "-Wall", "scripts/floor.c"], &floor)?;
    let empty_src = dir.join("floor-empty.c");
    std::fs::write(&empty_src, "int floor_empty_marker = 1;\n")?;
    let empty = dir.join("libfloor-empty.so");
    let empty_src = empty_src.to_str().unwrap_or_default();
    super::cc(root, &["-O2", "-shared", "-fPIC", empty_src], &empty)?;
    let preload = prefix.join("lib/libpulp.so");
    let mut cells = Vec::new();
    for busy in [1, 2] {
        for &idle in &o.idle {
            let mut t = Target::start_env(
                &b.target,
                busy,
                idle,
                &[("LD_LIBRARY_PATH", &dir), ("LD_PRELOAD", &preload)],
            )?;
            let pid = t.pid.to_string();
            let mut c = Cell {
                busy,
                idle,
                ..Default::default()
            };
            let rlp = |args: &[&str]| timed(Command::new(&o.rlp).args(args));
            let ulp_run = |args: &[&str]| timed(Command::new(&ulp).args(args));
            let want = |t: &mut Target, v: i64, what: &str| -> Result<()> {
                if t.cmd("call 1")? != v.to_string() {
                    bail!("{what} did not take in bench-target {}", t.pid);
                }
                Ok(())
            };
            let plain = 3 + 0x1001;
            // One warm-up cycle of each: the first run of a binary pays page faults.
            rlp(&["apply", &pid, rlp_patch.to_str().unwrap()])?;
            rlp(&["disable", &pid, "bench"])?;
            ulp_run(&["trigger", "-q", "-p", &pid, patch.to_str().unwrap()])?;
            ulp_run(&[
                "trigger",
                "-q",
                "--revert",
                "-p",
                &pid,
                patch.to_str().unwrap(),
            ])?;
            for r in 0..o.runs {
                c.floor.push(floor_ms(&floor, &pid, &empty)?);
                t.cmd("reset")?;
                timed(&mut Command::new("true"))?;
                c.start_pause.push(t.gap_ms()?);
                for tool in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                    let (load, pressure) = load_now();
                    c.load = c.load.max(load);
                    c.pressure = c.pressure.max(pressure);
                    t.cmd("reset")?;
                    if tool == 0 {
                        c.rlp_apply
                            .push(rlp(&["apply", &pid, rlp_patch.to_str().unwrap()])?);
                        c.rlp_pause.push(t.gap_ms()?);
                        want(&mut t, 3 + 0x1002, "rlivepatch apply")?;
                        c.rlp_disable.push(rlp(&["disable", &pid, "bench"])?);
                        want(&mut t, plain, "rlivepatch disable")?;
                    } else {
                        let p = patch.to_str().unwrap();
                        c.ulp_apply
                            .push(ulp_run(&["trigger", "-q", "-p", &pid, p])?);
                        c.ulp_pause.push(t.gap_ms()?);
                        want(&mut t, 3 + 0x1003, "ulp trigger")?;
                        c.ulp_revert
                            .push(ulp_run(&["trigger", "-q", "--revert", "-p", &pid, p])?);
                        want(&mut t, plain, "ulp trigger --revert")?;
                    }
                }
            }
            eprintln!(
                "  busy {busy} idle {idle:4}: apply rlivepatch {:.1} ms, libpulp {:.1} ms; pause {:.2} / {:.2} ms",
                stat(&c.rlp_apply).med,
                stat(&c.ulp_apply).med,
                stat(&c.rlp_pause).med,
                stat(&c.ulp_pause).med
            );
            cells.push(c);
        }
    }
    Ok(cells)
}

/// One run of the floor program: its own measure of its work, in ms.
fn floor_ms(floor: &Path, pid: &str, lib: &Path) -> Result<f64> {
    let o = Command::new(floor).arg(pid).arg(lib).output()?;
    if !o.status.success() {
        bail!("floor failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let us: f64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("floor said {out:?}"))?;
    Ok(us / 1e3)
}

/// The section of BENCHMARKS.md.
pub fn markdown(cells: &[Cell], m: &mut String, cpus: usize) {
    use std::fmt::Write as _;
    if cells.is_empty() {
        return;
    }
    let _ = writeln!(m, "## One process, side by side with libpulp\n");
    let _ = writeln!(
        m,
        "The same bench-target process (busy threads calling libbench.so in a loop, plus idle ones), its libbench.so built with libpulp's flags and libpulp.so preloaded, patched in turn by `rlivepatch apply PID` / `disable` (no trace) and `ulp trigger -p PID` / `--revert`, one function, interleaved rounds; median (min–max), ms. *Pause*: the longest gap between two calls a busy thread saw during the apply; *start*: the same while `true` runs, what starting any program costs the busy threads (with 2 busy threads on the 2 CPUs the new process takes a CPU from one of them): no command's pause is below it. *Floor*: `scripts/floor.c` on the same process, the least any ptrace livepatcher does (seize, interrupt and wait for every thread, read their registers, one injected `dlopen` and `dlclose` of an empty library, detach), its own measure. Load: the highest 1-minute load average and CPU pressure (some avg10, %) at the start of a round; above the {cpus} CPUs it is marked *loaded*.\n"
    );
    let _ = writeln!(
        m,
        "| busy | idle | rlivepatch apply | libpulp apply | libpulp / rlivepatch | floor | rlivepatch / floor | rlivepatch pause | libpulp pause | libpulp / rlivepatch | start | rlivepatch disable | libpulp revert | load, pressure |"
    );
    let _ = writeln!(
        m,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cells {
        let f = |v: &[f64]| super::fmt(stat(v));
        let ratio = |a: &[f64], b: &[f64]| stat(a).med / stat(b).med;
        let loaded = if c.load > cpus as f64 {
            " *loaded*"
        } else {
            ""
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {:.2} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} | {:.1}, {:.1}{loaded} |",
            c.busy,
            c.idle,
            f(&c.rlp_apply),
            f(&c.ulp_apply),
            ratio(&c.ulp_apply, &c.rlp_apply),
            f(&c.floor),
            ratio(&c.rlp_apply, &c.floor),
            f(&c.rlp_pause),
            f(&c.ulp_pause),
            ratio(&c.ulp_pause, &c.rlp_pause),
            f(&c.start_pause),
            f(&c.rlp_disable),
            f(&c.ulp_revert),
            c.load,
            c.pressure
        );
    }
    let _ = writeln!(m);
}
