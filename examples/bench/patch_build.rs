//! The benchmarks of `rlivepatch build`: the time to make a patch from a security fix
//! against one plain build of the project (Lua 5.4.4 from Debian's source package), and
//! the cost of the bindings of a generated patch (calls through stubs, data through
//! thunks when the patch is far from the program's data, in place when near) against
//! the original code. Included by bench.rs.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What was measured.
#[derive(Default)]
pub struct BuildBench {
    /// `make clean && make -j2` of Lua, ms.
    pub plain: Vec<f64>,
    /// `rlivepatch build` of CVE-2022-28805 with an empty cache (learns the build), ms.
    pub cold: Vec<f64>,
    /// The same with the build learned (cached), ms.
    pub warm: Vec<f64>,
    /// Its phases in the last warm run.
    pub phases: Vec<(String, f64)>,
    /// ns per call of `handle` (PIE program; the patch loaded next to it: data and the
    /// call in place), original then patched.
    pub near: [Vec<f64>; 2],
    /// ns per call of `handle` in a copy of the program that reserved the address space
    /// around it (the patch far away: data through thunks, the call through a stub).
    pub far: [Vec<f64>; 2],
    /// ns per call of `calc` (shared library: data in place), original then patched.
    pub lib: [Vec<f64>; 2],
    /// ns per call of `handle` and of `calc` in the project built from the fixed source
    /// (the fixes compiled in): what the patched code is to be as fast as, since the
    /// fixes add work of their own.
    pub fixed: [Vec<f64>; 2],
    /// Calls per measurement.
    pub calls: u64,
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Measure, `runs` times each, side by side.
pub fn measure(root: &Path, rlp: &Path, dir: &Path, runs: usize) -> Result<BuildBench> {
    std::fs::create_dir_all(dir)?;
    let mut b = BuildBench {
        calls: 20_000_000,
        ..Default::default()
    };
    build_time(root, rlp, dir, runs, &mut b)?;
    bindings(root, rlp, dir, runs, &mut b)?;
    Ok(b)
}

fn build_time(root: &Path, rlp: &Path, dir: &Path, runs: usize, b: &mut BuildBench) -> Result<()> {
    let cache = root.join("target/real/lua5.4");
    run(Command::new(root.join("scripts/fetch-source.sh"))
        .arg("lua5.4")
        .arg(&cache))?;
    let tree = dir.join("lua");
    let _ = std::fs::remove_dir_all(&tree);
    run(Command::new("cp")
        .arg("-a")
        .arg(cache.join("orig"))
        .arg(&tree))?;
    let fix = cache.join("patches/0004-cve-2022-28805.patch");
    let patch = dir.join("lua-cve.so");
    let build = |cache_dir: &Path| -> Result<std::process::Output> {
        run(Command::new(rlp)
            .args(["build", "--source"])
            .arg(&tree)
            .arg("--diff")
            .arg(&fix)
            .arg("--binary")
            .arg(tree.join("src/lua"))
            .arg("-o")
            .arg(&patch)
            .arg("--json")
            .env("RLIVEPATCH_CACHE", cache_dir))
    };
    for i in 0..runs.max(3) {
        let t = Instant::now();
        run(Command::new("sh")
            .arg("-c")
            .arg("make clean >/dev/null && make -j2 >/dev/null 2>&1")
            .current_dir(&tree))?;
        b.plain.push(ms(t));
        let c = dir.join(format!("build-cache-{i}"));
        let _ = std::fs::remove_dir_all(&c);
        let t = Instant::now();
        build(&c)?;
        b.cold.push(ms(t));
        let t = Instant::now();
        let out = build(&c)?;
        b.warm.push(ms(t));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        b.phases = j["phases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&c);
    }
    Ok(())
}

/// The project fixture's `bench N`: ns per call of handle and of calc.
fn ask(stdin: &mut std::process::ChildStdin, out: &mut impl BufRead, n: u64) -> Result<(f64, f64)> {
    writeln!(stdin, "bench {n}")?;
    stdin.flush()?;
    let mut line = String::new();
    out.read_line(&mut line)?;
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() < 3 || w[0] != "bench" {
        bail!("unexpected answer {line:?}");
    }
    Ok((w[1].parse()?, w[2].parse()?))
}

fn bindings(root: &Path, rlp: &Path, dir: &Path, runs: usize, b: &mut BuildBench) -> Result<()> {
    let proj = dir.join("project");
    let _ = std::fs::remove_dir_all(&proj);
    std::fs::create_dir_all(&proj)?;
    for e in std::fs::read_dir(root.join("fixtures/project"))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), proj.join(e.file_name()))?;
        }
    }
    run(Command::new("make").current_dir(&proj))?;
    let diffs = root.join("fixtures/project/diffs");
    let make = |diff: &str, binary: &str| -> Result<PathBuf> {
        let out = dir.join(format!("bench-{diff}.so"));
        run(Command::new(rlp)
            .args(["build", "--source"])
            .arg(&proj)
            .arg("--diff")
            .arg(diffs.join(format!("{diff}.diff")))
            .arg("--binary")
            .arg(proj.join(binary))
            .arg("-o")
            .arg(&out)
            .env("RLIVEPATCH_CACHE", dir.join("project-cache")))?;
        Ok(out)
    };
    let handle = make("handle", "app")?;
    let calc = make("calc", "libcalc.so")?;
    // The same project with the fixes applied to its source and built as usual.
    let fixed = dir.join("project-fixed");
    let _ = std::fs::remove_dir_all(&fixed);
    run(Command::new("cp").arg("-a").arg(&proj).arg(&fixed))?;
    run(Command::new("make").arg("clean").current_dir(&fixed))?;
    for diff in ["handle", "calc"] {
        run(Command::new("patch")
            .args(["-p1", "-s", "-i"])
            .arg(diffs.join(format!("{diff}.diff")))
            .current_dir(&fixed))?;
    }
    run(Command::new("make").current_dir(&fixed))?;
    // The same program twice: as it starts, and after `crowd` (it reserves the address
    // space within 2.5 GiB of itself, but for holes of 3 pages); then the fixed build.
    let mut apps = Vec::new();
    for crowd in [false, true, false] {
        let app = if apps.len() == 2 { &fixed } else { &proj };
        let mut child = Command::new(app.join("app"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if crowd {
            writeln!(stdin, "crowd")?;
            line.clear();
            out.read_line(&mut line)?;
            if !line.starts_with("crowded ") {
                bail!("unexpected answer {line:?}");
            }
        }
        apps.push((child, stdin, out));
    }
    let patches = [vec![&handle, &calc], vec![&handle]];
    for _ in 0..runs.max(3) {
        for (k, (child, stdin, out)) in apps.iter_mut().enumerate() {
            let pid = child.id().to_string();
            let (h, c) = ask(stdin, out, b.calls)?;
            if k == 2 {
                b.fixed[0].push(h);
                b.fixed[1].push(c);
                continue;
            }
            let (row, lib) = if k == 0 {
                (&mut b.near, Some(&mut b.lib))
            } else {
                (&mut b.far, None)
            };
            row[0].push(h);
            for p in &patches[k] {
                let o = run(Command::new(rlp).arg("apply").arg(&pid).arg(p))?;
                let text = String::from_utf8_lossy(&o.stdout);
                let want = if k == 0 {
                    "0 through thunks"
                } else {
                    "0 direct"
                };
                if p == &&handle && !text.contains(want) {
                    bail!(
                        "the apply to the {} program bound otherwise: {text}",
                        ["plain", "crowded"][k]
                    );
                }
            }
            let (h2, c2) = ask(stdin, out, b.calls)?;
            row[1].push(h2);
            if let Some(lib) = lib {
                lib[0].push(c);
                lib[1].push(c2);
            }
            // By the files they were applied from (their names come from them too).
            for p in &patches[k] {
                run(Command::new(rlp).arg("disable").arg(&pid).arg(p))?;
            }
        }
    }
    for (mut child, stdin, _) in apps {
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}
