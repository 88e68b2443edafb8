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
/// build system there sees what it built as up to date.
pub fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| err!(Build, "cannot create {}: {e}", parent.display()))?;
    }
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| err!(Build, "cannot run cp: {e}"))?;
    if !st.success() {
        bail!(
            Build,
            "cannot copy {} to {}; check the space left there",
            from.display(),
            to.display()
        );
    }
    Ok(())
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

fn strip_components(p: &str, n: usize) -> Option<PathBuf> {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    (parts.len() > n).then(|| parts[n..].iter().collect())
}

/// Read the diff at `path` and find how it applies to `tree`: the strip level whose
/// paths name files of the tree (checked with `patch --dry-run`).
pub fn read(path: &Path, tree: &Path) -> Result<Diff> {
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
    // The strip level that names a file of the tree; for a diff that only adds files, one
    // that puts them in directories of the tree.
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    for need_existing in [true, false] {
        for strip in [1, 0, 2, 3, 4] {
            let files: Option<Vec<PathBuf>> =
                names.iter().map(|n| strip_components(n, strip)).collect();
            let Some(files) = files else { continue };
            let fits = files.iter().all(|f| {
                let p = tree.join(f);
                p.exists() || p.parent().is_some_and(|d| d.is_dir())
            }) && (!need_existing || files.iter().any(|f| tree.join(f).exists()));
            if !fits {
                continue;
            }
            let d = Diff {
                path: path.clone(),
                files,
                strip,
            };
            run_patch(&d, tree, true)?;
            return Ok(d);
        }
    }
    bail!(
        Build,
        "the diff {} names files that are not in {} ({}); check --source (the tree the binary was built from)",
        path.display(),
        tree.display(),
        names.join(", ")
    );
}

/// Apply `d` to `tree` (or only check that it applies, with `dry_run`).
pub fn run_patch(d: &Diff, tree: &Path, dry_run: bool) -> Result<()> {
    let mut cmd = Command::new("patch");
    cmd.arg(format!("-p{}", d.strip))
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
        .arg(&d.path);
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().map_err(|e| {
        err!(
            Build,
            "cannot run patch (GNU patch applies the diff): {e}; install it (apt-get install patch)"
        )
    })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stdout);
        let why = why
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .find(|l| !l.trim().is_empty())
            .unwrap_or("patch failed")
            .trim()
            .to_string();
        bail!(
            Build,
            "the diff {} does not apply to {} ({why}); is --source the tree the binary was built from, and the diff made against it?",
            d.path.display(),
            tree.display()
        );
    }
    Ok(())
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
