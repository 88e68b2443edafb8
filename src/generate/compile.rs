//! Compile the translation units a diff touches, twice: from the pristine tree and from
//! the patched one, with the binary's own command plus `-ffunction-sections
//! -fdata-sections -g` (one function per section, for the object diff; debug
//! information, for layouts and the report; neither changes the code GCC generates).

use super::wrapper::CompileCommand;
use crate::error::Result;
use crate::{bail, err};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One translation unit compiled twice.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Its source, relative to the tree.
    pub source: PathBuf,
    /// Its command (paths in the pristine tree).
    pub command: CompileCommand,
    /// The object built from the pristine tree.
    pub pristine: PathBuf,
    /// The object built from the patched tree.
    pub patched: PathBuf,
}

/// Options that only write files beside the object, or split the debug information out:
/// dropped (the copies are scratch, and the passes need the object alone).
fn dropped(arg: &str) -> (bool, bool) {
    match arg {
        "-MD" | "-MMD" | "-MP" | "-gsplit-dwarf" => (true, false),
        "-MF" | "-MT" | "-MQ" | "-o" => (true, true),
        a if a.starts_with("-Wp,-MD") || a.starts_with("-Wp,-MMD") => (true, false),
        _ => (false, false),
    }
}

/// `cmd` rewritten to build `out` in `to` (a copy of the tree `from`), as the passes need
/// it. Refuses link-time optimisation, whose objects hold no code to compare.
pub fn command_for(
    cmd: &CompileCommand,
    from: &Path,
    to: &Path,
    out: &Path,
    source: &Path,
) -> Result<(PathBuf, Vec<String>)> {
    let moved = |s: &str| -> String {
        let f = from.display().to_string();
        match s.find(&f) {
            Some(i) => format!("{}{}{}", &s[..i], to.display(), &s[i + f.len()..]),
            None => s.to_string(),
        }
    };
    let mut args = Vec::with_capacity(cmd.arguments.len() + 6);
    let mut skip = false;
    for a in &cmd.arguments {
        if skip {
            skip = false;
            continue;
        }
        if a.starts_with("-flto") {
            crate::refuse!(
                Lto,
                "{} is compiled with {a} (link-time optimisation): not supported; the binary must be built without -flto",
                cmd.file.display()
            );
        }
        let (drop, with_value) = dropped(a);
        if drop {
            skip = with_value;
            continue;
        }
        args.push(moved(a));
    }
    args.extend([
        "-ffunction-sections".to_string(),
        "-fdata-sections".to_string(),
        "-g".to_string(),
        format!("-ffile-prefix-map={}={}", to.display(), source.display()),
        "-o".to_string(),
        out.display().to_string(),
    ]);
    let dir = PathBuf::from(moved(&cmd.directory.display().to_string()));
    Ok((dir, args))
}

/// Compile the patched `unit` once more as position-independent code, into `out`: code
/// built without `-fPIE` (a non-PIE program's) takes addresses as 32-bit constants, which
/// cannot reach a shared object loaded anywhere. The diff is made with the binary's own
/// flags; only the changed functions' code comes from here.
pub fn compile_pic(
    unit: &Unit,
    pristine: &Path,
    patched: &Path,
    source: &Path,
    out: &Path,
) -> Result<()> {
    let (dir, mut args) = command_for(&unit.command, pristine, patched, out, source)?;
    // Last wins over the command's -fno-PIE / -fno-pic.
    let at = args.len() - 2;
    args.insert(at, "-fPIE".into());
    run(
        &dir,
        &args,
        &format!("{} (patched, position-independent)", unit.source.display()),
    )
}

/// Run one compile; a failure names the unit and shows the compiler's first error.
fn run(dir: &Path, args: &[String], what: &str) -> Result<()> {
    let out = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .map_err(|e| err!(Build, "cannot run {}: {e}", args[0]))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let first = text
            .lines()
            .find(|l| l.contains("error"))
            .or_else(|| text.lines().next())
            .unwrap_or("")
            .to_string();
        bail!(Build, "compiling {what} failed: {first}");
    }
    Ok(())
}

/// The headers each command's unit includes (`-MM`), for a diff that touches headers.
pub fn includes(cmd: &CompileCommand) -> Vec<PathBuf> {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    for a in &cmd.arguments {
        if skip {
            skip = false;
            continue;
        }
        let (drop, with_value) = dropped(a);
        if drop || a == "-c" {
            skip = with_value;
            continue;
        }
        args.push(a.clone());
    }
    args.extend(["-MM".into(), "-MF".into(), "-".into()]);
    let Ok(out) = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(&cmd.directory)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .replace("\\\n", " ")
        .split_whitespace()
        .skip(1)
        .map(|p| cmd.directory.join(p))
        .collect()
}

/// Compile `units` (commands whose paths are in `pristine`) from both trees into `work`,
/// two at a time.
pub fn compile_all(
    units: &[(PathBuf, CompileCommand)],
    pristine: &Path,
    patched: &Path,
    source: &Path,
    work: &Path,
) -> Result<Vec<Unit>> {
    let mut jobs = Vec::new();
    let mut out = Vec::new();
    for (i, (rel, cmd)) in units.iter().enumerate() {
        let stem = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let p = work.join(format!("{i}-{stem}.pristine.o"));
        let q = work.join(format!("{i}-{stem}.patched.o"));
        let (d1, a1) = command_for(cmd, pristine, pristine, &p, source)?;
        let (d2, a2) = command_for(cmd, pristine, patched, &q, source)?;
        jobs.push((d1, a1, format!("{} (pristine)", rel.display())));
        jobs.push((d2, a2, format!("{} (patched)", rel.display())));
        out.push(Unit {
            source: rel.clone(),
            command: cmd.clone(),
            pristine: p,
            patched: q,
        });
    }
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let chunks: Vec<_> = jobs.chunks(jobs.len().div_ceil(2).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    for (d, a, what) in chunk {
                        run(d, a, what)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err!(Build, "a compile thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(out)
}
