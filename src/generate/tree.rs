//! Source trees and unified diffs: copies of the project to build in (the operator's tree
//! is never written), and the diffs applied to a copy with GNU patch, their path prefix
//! found as `patch` users expect (`-p1` for `git diff`, else `-p0`, `-p2`...).

use crate::error::Result;
use crate::{bail, err};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A unified diff to apply.
#[derive(Debug, Clone)]
pub struct Diff {
    /// The diff file.
    pub path: PathBuf,
    /// The files it changes, relative to the tree (after stripping `strip` components).
    pub files: Vec<PathBuf>,
    /// Leading path components to strip (`patch -pN`).
    pub strip: usize,
}

/// Copy the tree `from` to `to` (a new directory), with modification times, so that a
/// build system there sees what it built as up to date. What no build reads stays out:
/// version control (`.git`...) and cache directories (tagged with `CACHEDIR.TAG`, as
/// cargo's `target/` is).
pub fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| err!(Build, "cannot create {}: {e}", to.display()))?;
    let script = "tar -C \"$1\" -cf - --exclude-vcs --exclude-caches-all . | tar -C \"$2\" -xpf -";
    let out = Command::new("sh")
        .args(["-c", script, "copy"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| err!(Build, "cannot run tar: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(to);
        bail!(
            Build,
            "cannot copy {} to {} ({}); check the space left there",
            from.display(),
            to.display(),
            last_line(&out.stderr)
        );
    }
    Ok(())
}

/// The last line of a command's output that says something.
pub fn last_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// Remove the build directories of CMake and Meson from a copy of a tree: they record
/// the tree's absolute path and refuse to run from anywhere else; the build command
/// makes them again.
pub fn drop_build_dirs(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.join("CMakeCache.txt").is_file() || d.join("meson-private").is_dir() {
            let _ = std::fs::remove_dir_all(&d);
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != ".git" {
                stack.push(e.path());
            }
        }
    }
}

/// Make every C or C++ source and header under `dir` newer than anything built from it.
pub fn touch_sources(dir: &Path) {
    let now = std::time::SystemTime::now();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name() != ".git" {
                    stack.push(p);
                }
                continue;
            }
            let source = matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("c" | "cc" | "cpp" | "cxx" | "C" | "h" | "hh" | "hpp" | "hxx" | "inc")
            );
            if source && let Ok(f) = std::fs::File::options().write(true).open(&p) {
                let _ = f.set_modified(now);
            }
        }
    }
}

/// The paths a unified diff names, as written after `+++ ` (new files) or `--- ` (a file
/// it deletes), without the date a `diff -u` header carries.
fn named_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut old: Option<String> = None;
    for line in text.lines() {
        let path = |rest: &str| {
            let p = rest.split('\t').next().unwrap_or(rest).trim_end();
            p.trim_matches('"').to_string()
        };
        if let Some(rest) = line.strip_prefix("--- ") {
            old = Some(path(rest));
        } else if let Some(rest) = line.strip_prefix("+++ ") {
            let new = path(rest);
            let pick = if new == "/dev/null" {
                old.take()
            } else {
                Some(new)
            };
            if let Some(p) = pick
                && p != "/dev/null"
                && !out.contains(&p)
            {
                out.push(p);
            }
            old = None;
        }
    }
    out
}

/// The paths of the files a diff creates (`--- /dev/null`), as `+++ ` names them.
fn created_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from_null = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("--- ") {
            from_null = rest.split('\t').next().unwrap_or(rest).trim_end() == "/dev/null";
        } else if let Some(rest) = line.strip_prefix("+++ ") {
            if from_null {
                let p = rest.split('\t').next().unwrap_or(rest).trim_end();
                out.push(p.trim_matches('"').to_string());
            }
            from_null = false;
        }
    }
    out
}

fn strip_components(p: &str, n: usize) -> Option<PathBuf> {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    (parts.len() > n).then(|| parts[n..].iter().collect())
}

/// One file's part of a unified diff: its header and hunks, as text.
struct FilePart {
    /// The path as the diff names it.
    name: String,
    text: String,
}

/// The diff's parts, one per file (everything before the first file header, such as a
/// patch's description, is dropped).
fn file_parts(text: &str) -> Vec<FilePart> {
    let mut parts: Vec<FilePart> = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let starts =
            lines[i].starts_with("--- ") && lines.get(i + 1).is_some_and(|l| l.starts_with("+++ "));
        if starts {
            let names = named_paths(&format!("{}{}", lines[i], lines[i + 1]));
            parts.push(FilePart {
                name: names.first().cloned().unwrap_or_default(),
                text: String::new(),
            });
        }
        if let Some(p) = parts.last_mut() {
            // A git header of the next file belongs to it, not to this one.
            if !(lines[i].starts_with("diff ") || lines[i].starts_with("index ")) {
                p.text.push_str(lines[i]);
            }
        }
        i += 1;
    }
    parts
}

/// Is `f` C or C++ code, or a header of it (what the compiler reads)?
pub fn is_code(f: &Path) -> bool {
    matches!(
        f.extension().and_then(|e| e.to_str()),
        Some(
            "c" | "cc"
                | "cpp"
                | "cxx"
                | "C"
                | "c++"
                | "h"
                | "hh"
                | "hpp"
                | "hxx"
                | "inc"
                | "def"
                | "s"
                | "S"
                | "sx"
                | "asm"
        )
    )
}

/// What applying a series of diffs did.
pub struct Applied {
    /// Each diff as applied.
    pub diffs: Vec<Diff>,
    /// Files whose hunks did not apply and that are no code (tests, documentation): left
    /// as they were, listed in the report.
    pub skipped: Vec<String>,
}

/// Apply `diffs` to `tree` in order, as `patch` would one after the other: each one to
/// the tree the ones before it made. Messages name the diffs as given and the tree as
/// `shown` (the operator's `--source`, not a copy of it). A file that is no code (a test,
/// documentation) whose hunks do not apply is left as it was and listed, as a file no
/// binary is built from.
pub fn apply_series(diffs: &[PathBuf], tree: &Path, shown: &Path) -> Result<Applied> {
    let mut out = Applied {
        diffs: Vec::new(),
        skipped: Vec::new(),
    };
    for (k, path) in diffs.iter().enumerate() {
        let before: Vec<String> = diffs[..k].iter().map(|d| d.display().to_string()).collect();
        let after = if before.is_empty() {
            String::new()
        } else {
            format!(" after {}", before.join(", "))
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err!(Build, "cannot read diff {}: {e}", path.display()))?;
        let names = named_paths(&text);
        if names.is_empty() {
            bail!(
                Build,
                "{} is not a unified diff (no ---/+++ file headers); give `git diff` or `diff -u` output",
                path.display()
            );
        }
        let strip = strip_level(&names, &created_paths(&text), tree).ok_or_else(|| {
            err!(
                Build,
                "the diff {} names files that are not in {}{after} ({}); check --source (the tree the binary was built from)",
                path.display(),
                shown.display(),
                names.join(", ")
            )
        })?;
        let mut d = Diff {
            path: path.clone(),
            files: names
                .iter()
                .filter_map(|n| strip_components(n, strip))
                .collect(),
            strip,
        };
        match patch(&d.path, strip, tree, true) {
            Ok(()) => patch(&d.path, strip, tree, false)
                .map_err(|w| err!(Build, "applying {}: {w}", path.display()))?,
            Err(why) => {
                // File by file: code that does not apply is an error; anything else is
                // left as it was.
                let mut failed_code = None;
                let mut ok_parts = Vec::new();
                for part in file_parts(&text) {
                    let Some(f) = strip_components(&part.name, strip) else {
                        continue;
                    };
                    let tmp = std::env::temp_dir().join(format!(
                        "rlivepatch-part-{}-{}.diff",
                        std::process::id(),
                        ok_parts.len() + out.skipped.len()
                    ));
                    std::fs::write(&tmp, &part.text)
                        .map_err(|e| err!(Build, "cannot write {}: {e}", tmp.display()))?;
                    let fits = patch(&tmp, strip, tree, true);
                    match fits {
                        Ok(()) => ok_parts.push(tmp),
                        Err(w) if !is_code(&f) => {
                            let _ = std::fs::remove_file(&tmp);
                            d.files.retain(|x| x != &f);
                            out.skipped.push(format!(
                                "{} (the hunks of {} for it do not apply: {w})",
                                f.display(),
                                path.display()
                            ));
                        }
                        Err(w) => {
                            let _ = std::fs::remove_file(&tmp);
                            failed_code.get_or_insert((f, w));
                        }
                    }
                }
                if let Some((f, w)) = failed_code {
                    for p in &ok_parts {
                        let _ = std::fs::remove_file(p);
                    }
                    bail!(
                        Build,
                        "the diff {} does not apply to {}{after}: {} ({w}); is --source the tree the binary was built from, and the diff made against it (or a diff it needs missing before it)?",
                        path.display(),
                        shown.display(),
                        f.display()
                    );
                }
                if ok_parts.is_empty() {
                    bail!(
                        Build,
                        "the diff {} does not apply to {}{after} ({why})",
                        path.display(),
                        shown.display()
                    );
                }
                for p in &ok_parts {
                    let r = patch(p, strip, tree, false);
                    let _ = std::fs::remove_file(p);
                    r.map_err(|w| err!(Build, "applying {}: {w}", path.display()))?;
                }
            }
        }
        out.diffs.push(d);
    }
    Ok(out)
}

/// The strip level (`patch -pN`) whose paths name files of `tree`: every file the diff
/// changes exists there (or, for a diff that only adds files, their directories do);
/// files it creates may come with directories of their own.
fn strip_level(names: &[String], created: &[String], tree: &Path) -> Option<usize> {
    for need_existing in [true, false] {
        for strip in [1, 0, 2, 3, 4] {
            let files: Option<Vec<(PathBuf, bool)>> = names
                .iter()
                .map(|n| strip_components(n, strip).map(|p| (p, created.contains(n))))
                .collect();
            let Some(files) = files else { continue };
            // A file the diff creates fits anywhere (patch makes its directories).
            let fits = files.iter().all(|(f, new)| {
                let p = tree.join(f);
                *new || p.exists() || p.parent().is_some_and(|d| d.is_dir())
            }) && (!need_existing || files.iter().any(|(f, _)| tree.join(f).exists()));
            if fits {
                return Some(strip);
            }
        }
    }
    None
}

/// Run GNU patch: apply `diff` to `tree` (or only check, with `dry_run`). The error is
/// patch's own first words.
fn patch(diff: &Path, strip: usize, tree: &Path, dry_run: bool) -> std::result::Result<(), String> {
    let mut cmd = Command::new("patch");
    cmd.arg(format!("-p{strip}"))
        .args([
            "--batch",
            "--forward",
            "--silent",
            "--no-backup-if-mismatch",
        ])
        .arg("--reject-file=-")
        .arg("-d")
        .arg(tree)
        .arg("-i")
        .arg(diff);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run patch (GNU patch applies the diff): {e}; install it (apt-get install patch)"
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stdout);
    Err(why
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find(|l| !l.trim().is_empty())
        .unwrap_or("patch failed")
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_git_and_plain_diffs() {
        let git = "diff --git a/lib/x.c b/lib/x.c\n--- a/lib/x.c\n+++ b/lib/x.c\n@@ -1 +1 @@\n";
        assert_eq!(named_paths(git), ["b/lib/x.c"]);
        let plain = "--- x.c.orig\t2024-01-01 10:00:00\n+++ x.c\t2024-01-02\n@@ -1 +1 @@\n";
        assert_eq!(named_paths(plain), ["x.c"]);
        let deleted = "--- a/old.c\n+++ /dev/null\n@@ -1 +0,0 @@\n";
        assert_eq!(named_paths(deleted), ["a/old.c"]);
        assert_eq!(
            strip_components("b/lib/x.c", 1),
            Some(PathBuf::from("lib/x.c"))
        );
        assert_eq!(strip_components("x.c", 1), None);
    }
}
