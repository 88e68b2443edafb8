//! The fleet benchmark, side by side with SUSE libpulp: the same processes, patched by
//! each tool in turn, in one interleaved run.
//!
//! Every process runs `fixtures/fleet-worker.c` over `libfleet.so`, built with libpulp's
//! flags (patchable entries, `ulp post`) and started with libpulp's library preloaded, so
//! that both tools patch the very same code in the very same processes: rlivepatch with
//! `apply --object libfleet.so` / `disable`, libpulp with `ulp trigger` / `--revert`
//! (without `-p`: every process with libpulp loaded, which are only these). Each worker
//! writes `fleet_value(slot)` into its slot of a shared file every 100 ms, so every
//! process is checked from the outside to run the new code after an apply and the old
//! one after the undo. The figure is the command's wall time divided by the processes;
//! the load average and CPU pressure are recorded with each block.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One fleet size: wall times (ms) of each command, per run.
#[derive(Default, Clone)]
pub struct Row {
    pub processes: usize,
    pub rlp_apply: Vec<f64>,
    pub rlp_disable: Vec<f64>,
    pub ulp_apply: Vec<f64>,
    pub ulp_revert: Vec<f64>,
    /// Runs in which some process did not show the expected code in time.
    pub not_flipped: usize,
    /// The highest 1-minute load average and CPU pressure (some, avg10) seen at the
    /// start of a block.
    pub load: f64,
    pub pressure: f64,
}

/// What the fleet benchmark found, with the host's limits.
#[derive(Default, Clone)]
pub struct Fleet {
    pub rows: Vec<Row>,
    pub libpulp: String,
    pub host: String,
}

struct Built {
    worker: PathBuf,
    lib_dir: PathBuf,
    preload: PathBuf,
    ulp: PathBuf,
    rlp_patch: PathBuf,
    ulp_patch: PathBuf,
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// libpulp's install prefix (built once by scripts/libpulp.sh, cached under target/).
pub fn libpulp(root: &Path) -> Result<PathBuf> {
    eprintln!("bench: building libpulp (scripts/libpulp.sh, cached under target/libpulp)");
    let o = Command::new(root.join("scripts/libpulp.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/libpulp.sh")?;
    if !o.status.success() {
        bail!("scripts/libpulp.sh failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// The flags libpulp needs a library built with (its README).
pub const LIBPULP_FLAGS: [&str; 8] = [
    "-O2",
    "-g",
    "-fPIC",
    "-shared",
    "-fpatchable-function-entry=16,14",
    "-fno-inline",
    "-Wl,--build-id",
    "-Wl,--hash-style=sysv",
];

/// Build `src` (relative to `root`) into a library libpulp can patch, at `out`: its
/// flags, then `ulp post`.
pub fn libpulp_lib(root: &Path, ulp: &Path, src: &str, out: &Path) -> Result<()> {
    super::cc(root, &[&LIBPULP_FLAGS[..], &[src]].concat(), out)?;
    run(Command::new(ulp).arg("post").arg(out))
}

/// Build a libpulp patch from `src` replacing `old` with `new` in `lib`, packed.
pub fn ulp_patch_of(
    ulp: &Path,
    src: &Path,
    lib: &Path,
    old: &str,
    new: &str,
    out: &Path,
) -> Result<()> {
    let src = src.to_str().context("a UTF-8 path")?;
    super::cc(
        Path::new("."),
        &[
            "-O2",
            "-fPIC",
            "-shared",
            "-fpatchable-function-entry=16,14",
            src,
        ],
        out,
    )?;
    let dsc = out.with_extension("dsc");
    std::fs::write(
        &dsc,
        format!("{}\n@{}\n{old}:{new}\n", out.display(), lib.display()),
    )?;
    run(Command::new(ulp).arg("packer").arg(&dsc))
}

fn build(root: &Path, dir: &Path) -> Result<Built> {
    let prefix = libpulp(root)?;
    let ulp = prefix.join("bin/ulp");
    std::fs::create_dir_all(dir)?;
    let lib = dir.join("libfleet.so");
    libpulp_lib(root, &ulp, "fixtures/libfleet.c", &lib)?;
    let worker = dir.join("fleet-worker");
    super::cc(
        root,
        &[
            "-O2",
            "-g",
            "fixtures/fleet-worker.c",
            &format!("-L{}", dir.display()),
            "-lfleet",
            &format!("-Wl,-rpath,{}", dir.display()),
        ],
        &worker,
    )?;
    let rlp_patch = dir.join("fleet-fix.so");
    super::cc(
        root,
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
            "patches/include",
            "patches/fleet-fix.c",
        ],
        &rlp_patch,
    )?;
    let ulp_patch = dir.join("fleet-fix-ulp.so");
    ulp_patch_of(
        &ulp,
        &root.join("fixtures/fleet-fix-ulp.c"),
        &lib,
        "fleet_value",
        "fleet_value_ulp",
        &ulp_patch,
    )?;
    Ok(Built {
        worker,
        lib_dir: dir.to_path_buf(),
        preload: prefix.join("lib/libpulp.so"),
        ulp,
        rlp_patch,
        ulp_patch,
    })
}

/// The running fleet: the workers (killed by pid when dropped) and their shared file.
struct Workers {
    children: Vec<Child>,
    shm: PathBuf,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Workers {
    fn start(b: &Built, n: usize) -> Result<Workers> {
        let shm = b.lib_dir.join(format!("fleet-{n}.shm"));
        std::fs::write(&shm, vec![0u8; 4 * n])?;
        let mut w = Workers {
            children: Vec::with_capacity(n),
            shm,
        };
        for i in 0..n {
            let c = Command::new(&b.worker)
                .arg(&w.shm)
                .arg(i.to_string())
                .env("LD_PRELOAD", &b.preload)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting worker {i} of {n}"))?;
            w.children.push(c);
        }
        if !w.all_run(|x| x * 2 + 1, Duration::from_secs(120))? {
            bail!("the {n} workers did not all start");
        }
        Ok(w)
    }

    /// Does every worker show `f(slot)` within `limit`?
    fn all_run(&self, f: impl Fn(i32) -> i32, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            let bytes = std::fs::read(&self.shm)?;
            let ok = bytes
                .chunks_exact(4)
                .enumerate()
                .all(|(i, c)| i32::from_le_bytes(c.try_into().unwrap()) == f(i as i32));
            if ok {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Wall time of `cmd` in ms; it must succeed.
pub fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let o = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(ms)
}

/// The 1-minute load average and the CPU pressure (some, avg10; 0 without PSI).
pub fn load_now() -> (f64, f64) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let pressure = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|p| {
            p.lines()
                .next()?
                .split_whitespace()
                .find_map(|f| f.strip_prefix("avg10="))?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    (load, pressure)
}

fn host() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemAvailable"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        .unwrap_or_default();
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    format!(
        "{procs} processes on the host before the fleet started, kernel.pid_max {}, kernel.threads-max {}, {} MiB available",
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
        mem.parse::<u64>().unwrap_or(0) / 1024
    )
}

/// Run the fleets of `sizes` processes, `runs` interleaved rounds each.
pub fn measure(root: &Path, rlp: &Path, dir: &Path, sizes: &[usize], runs: usize) -> Result<Fleet> {
    let b = build(root, &dir.join("fleet"))?;
    let mut out = Fleet {
        libpulp: "SUSE libpulp 0.3.17 (commit 91791f5d, ../shared/peers), built by scripts/libpulp.sh with its defaults".into(),
        host: host(),
        rows: Vec::new(),
    };
    for &n in sizes {
        eprintln!("bench: fleet of {n} processes");
        let w = Workers::start(&b, n)?;
        let mut row = Row {
            processes: n,
            ..Default::default()
        };
        for r in 0..runs {
            // Each tool goes first in every other round.
            for tool in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                let (load, pressure) = load_now();
                row.load = row.load.max(load);
                row.pressure = row.pressure.max(pressure);
                let limit = Duration::from_secs(60);
                let flipped = if tool == 0 {
                    row.rlp_apply.push(timed(
                        Command::new(rlp)
                            .args(["apply", "--object", "libfleet.so"])
                            .arg(&b.rlp_patch),
                    )?);
                    let on = w.all_run(|x| x * 3 + 1, limit)?;
                    row.rlp_disable.push(timed(Command::new(rlp).args([
                        "disable",
                        "--object",
                        "libfleet.so",
                        "fleet-fix",
                    ]))?);
                    on && w.all_run(|x| x * 2 + 1, limit)?
                } else {
                    row.ulp_apply.push(timed(
                        Command::new(&b.ulp)
                            .args(["trigger", "-q"])
                            .arg(&b.ulp_patch),
                    )?);
                    let on = w.all_run(|x| x * 5 + 1, limit)?;
                    row.ulp_revert.push(timed(
                        Command::new(&b.ulp)
                            .args(["trigger", "-q", "--revert"])
                            .arg(&b.ulp_patch),
                    )?);
                    on && w.all_run(|x| x * 2 + 1, limit)?
                };
                if !flipped {
                    row.not_flipped += 1;
                    eprintln!(
                        "bench: fleet of {n}: some process did not flip (tool {tool}, round {r})"
                    );
                }
            }
        }
        out.rows.push(row);
    }
    Ok(out)
}

fn med(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

impl Fleet {
    /// The section of BENCHMARKS.md.
    pub fn markdown(&self, m: &mut String, cpus: usize) {
        use std::fmt::Write as _;
        let _ = writeln!(m, "## A fleet, side by side with libpulp\n");
        let _ = writeln!(
            m,
            "The same processes (`fixtures/fleet-worker.c` over `libfleet.so`, built with libpulp's flags and started with `libpulp.so` preloaded), patched by each tool in turn, interleaved: `rlivepatch apply --object libfleet.so` / `disable` against `ulp trigger` / `ulp trigger --revert` (all processes with libpulp loaded). Per process: the command's wall time (median over the rounds) divided by the processes; every process was checked from the outside to run the new code after each apply and the old code after each undo. {}. {}. Load: the highest 1-minute load average and CPU pressure (some avg10, %) at the start of a block; a block with a load above the {cpus} CPUs is marked *loaded*.\n",
            self.libpulp, self.host
        );
        let _ = writeln!(
            m,
            "| processes | rlivepatch apply / process (ms) | libpulp apply / process (ms) | libpulp / rlivepatch | rlivepatch disable / process | libpulp revert / process | libpulp / rlivepatch | all flipped | load, pressure |"
        );
        let _ = writeln!(m, "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
        for r in &self.rows {
            let n = r.processes as f64;
            let (ra, ua) = (med(&r.rlp_apply) / n, med(&r.ulp_apply) / n);
            let (rd, ud) = (med(&r.rlp_disable) / n, med(&r.ulp_revert) / n);
            let loaded = if r.load > cpus as f64 {
                " *loaded*"
            } else {
                ""
            };
            let _ = writeln!(
                m,
                "| {} | {ra:.2} | {ua:.2} | {:.2} | {rd:.2} | {ud:.2} | {:.2} | {} | {:.1}, {:.1}{loaded} |",
                r.processes,
                ua / ra,
                ud / rd,
                if r.not_flipped == 0 {
                    "yes".to_string()
                } else {
                    format!("no ({} blocks)", r.not_flipped)
                },
                r.load,
                r.pressure
            );
        }
        let _ = writeln!(m);
    }
}
