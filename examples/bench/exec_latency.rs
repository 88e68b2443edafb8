//! The cost of `rlivepatch watch` to the programs started while it runs: the time from
//! `fork` to the exit of a program that does nothing, measured side by side (the cases
//! interleaved, run by run) without the daemon, for a program the daemon does not
//! watch, for a watched one that no persisted patch matches (the exec held for the
//! seize and the environment edit, then the autoload library's check), and for one that
//! a persisted patch matches (the patch applied before main). Included by bench.rs.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What was measured: ms per exec, by case.
#[derive(Default)]
pub struct ExecBench {
    /// Case name and its samples.
    pub cases: Vec<(String, Vec<f64>)>,
}

fn cc(root: &Path, src: &str, out: &Path, extra: &[&str]) -> Result<()> {
    let st = Command::new("cc")
        .args(["-O2", "-g"])
        .args(extra)
        .arg(root.join(src))
        .arg("-o")
        .arg(out)
        .status()?;
    if !st.success() {
        bail!("building {src} failed");
    }
    Ok(())
}

/// Measure `runs` execs of each case.
pub fn measure(root: &Path, rlp: &Path, dir: &Path, runs: usize) -> Result<ExecBench> {
    let dir = dir.join("exec");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let reg = dir.join("registry");
    // Three builds of a program that exits at once ("exit" as its argument): one that no
    // daemon watches, one watched that no patch matches, one watched and patched.
    let quiet = dir.join("quiet");
    let watched = dir.join("watched");
    let patched = dir.join("patched");
    for (exe, id) in [(&quiet, "71"), (&watched, "77"), (&patched, "70")] {
        cc(
            root,
            "fixtures/counter.c",
            exe,
            &[&format!("-Wl,--build-id=0x65786563{id}")],
        )?;
    }
    let id_line = Command::new(rlp).arg("build-id").arg(&patched).output()?;
    let src = dir.join("fix.c");
    std::fs::write(
        &src,
        format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x * 100; }}\nRLIVEPATCH_FUNC(compute, f);\nRLIVEPATCH_NAME(\"exec-fix\");\n{}",
            String::from_utf8_lossy(&id_line.stdout)
        ),
    )?;
    let so = dir.join("fix.so");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-I"])
        .arg(root.join("patches/include"))
        .arg(&src)
        .arg("-o")
        .arg(&so)
        .status()?;
    if !st.success() {
        bail!("building the patch failed");
    }
    let st = Command::new(rlp)
        .args(["persist", so.to_str().unwrap()])
        .env("RLIVEPATCH_REGISTRY", &reg)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("rlivepatch persist failed");
    }
    // A program started, until its first value line (main ran), then killed.
    let once = |exe: &Path| -> Result<f64> {
        let t = Instant::now();
        let mut c = Command::new(exe)
            .arg("1000")
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut out = BufReader::new(c.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        line.clear();
        out.read_line(&mut line)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        // Our own process, by pid.
        let _ = c.kill();
        let _ = c.wait();
        Ok(ms)
    };
    let mut b = ExecBench::default();
    let names = [
        "no daemon",
        "daemon running, program not watched",
        "watched, no persisted patch matches",
        "watched, a persisted patch applied before main",
    ];
    for n in names {
        b.cases.push((n.to_string(), Vec::new()));
    }
    for _ in 0..runs {
        b.cases[0].1.push(once(&quiet)?);
    }
    let mut daemon = Command::new(rlp)
        .args(["watch", "--exe"])
        .arg(&watched)
        .arg("--exe")
        .arg(&patched)
        .env("RLIVEPATCH_REGISTRY", &reg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(daemon.stderr.take().context("stderr")?);
    let mut line = String::new();
    while !line.contains("watching") {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("rlivepatch watch did not start");
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let r = (|| -> Result<()> {
        for _ in 0..runs {
            b.cases[1].1.push(once(&quiet)?);
            b.cases[2].1.push(once(&watched)?);
            b.cases[3].1.push(once(&patched)?);
        }
        Ok(())
    })();
    // The daemon we started, by pid.
    let _ = daemon.kill();
    let _ = daemon.wait();
    r?;
    Ok(b)
}
