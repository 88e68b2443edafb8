//! Line numbers of unchanged code kept as they were. A fix that adds six lines moves every
//! line after it: code that uses `__LINE__` (assertions, logging, expat's accounting)
//! would come out changed in every function below the fix. After each change, the
//! patched copy gets a `#line` directive that gives the next line its pristine number,
//! so only the code inside the change sees new numbers (kpatch recognises line-only
//! changes by pattern instead; this removes them at the source). Debug line information
//! of unchanged code then matches the binary's too.

use crate::err;
use crate::error::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One change between two versions of a file, as `diff -U0` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hunk {
    old_start: u64,
    old_len: u64,
    new_start: u64,
    new_len: u64,
}

fn parse_hunks(text: &str) -> Vec<Hunk> {
    let range = |s: &str| -> Option<(u64, u64)> {
        let mut it = s.splitn(2, ',');
        let start = it.next()?.parse().ok()?;
        let len = it.next().map_or(Some(1), |l| l.parse().ok())?;
        Some((start, len))
    };
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("@@ -")?;
            let (old, rest) = rest.split_once(" +")?;
            let (new, _) = rest.split_once(" @@")?;
            let (old_start, old_len) = range(old)?;
            let (new_start, new_len) = range(new)?;
            Some(Hunk {
                old_start,
                old_len,
                new_start,
                new_len,
            })
        })
        .collect()
}

/// For each line (1-based index - 1): does a block comment stay open at its end? Strings
/// and character literals are skipped, `//` ends the line.
fn open_comments(lines: &[&str]) -> Vec<bool> {
    let mut in_comment = false;
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        let b = l.as_bytes();
        let mut i = 0;
        let mut quote: Option<u8> = None;
        while i < b.len() {
            if in_comment {
                if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    in_comment = false;
                    i += 1;
                }
            } else if let Some(q) = quote {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            } else if b[i] == b'"' || b[i] == b'\'' {
                quote = Some(b[i]);
            } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                in_comment = true;
                i += 1;
            } else if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
                break;
            }
            i += 1;
        }
        out.push(in_comment);
    }
    out
}

/// Can a directive follow line `i` (0-based)? Not inside a comment, a continued line or,
/// as far as a line's end tells, an expression or argument list spanning lines.
fn fits_after(lines: &[&str], open: &[bool], i: usize) -> bool {
    let t = lines[i].trim_end();
    if open[i] || t.ends_with('\\') {
        return false;
    }
    // The end of a preprocessor directive, continued over lines or not.
    let mut j = i;
    while j > 0 && lines[j - 1].trim_end().ends_with('\\') {
        j -= 1;
    }
    if lines[j].trim_start().starts_with('#') {
        return true;
    }
    let t = t.trim_start();
    t.is_empty()
        || t.ends_with(';')
        || t.ends_with('{')
        || t.ends_with('}')
        || t.ends_with("*/")
        || t.starts_with("//")
}

/// Insert the directives into `text` (the patched version) for `hunks`; returns the new text.
fn with_directives(text: &str, hunks: &[Hunk]) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let bare: Vec<&str> = lines.iter().map(|l| l.trim_end_matches('\n')).collect();
    let open = open_comments(&bare);
    // After line `at` (1-based, new numbering), the next line is old line `next_old`.
    let mut inserts: Vec<(usize, u64)> = Vec::new();
    for h in hunks {
        let next_old = if h.old_len > 0 {
            h.old_start + h.old_len
        } else {
            h.old_start + 1
        };
        let after = if h.new_len > 0 {
            h.new_start + h.new_len - 1
        } else {
            h.new_start
        };
        // The first place from there where a directive is harmless, in the unchanged
        // lines up to the next change.
        let mut at = after as usize;
        let limit = hunks
            .iter()
            .map(|g| g.new_start as usize)
            .filter(|&s| s > after as usize)
            .min()
            .unwrap_or(bare.len() + 1)
            .min(bare.len());
        while at < limit && (at == 0 || !fits_after(&bare, &open, at - 1)) {
            at += 1;
        }
        // None before the next change (or the end): the numbers stay moved, which is
        // only conservative.
        if at == 0 || at >= limit || !fits_after(&bare, &open, at - 1) {
            continue;
        }
        let next = next_old + (at as u64 - after);
        // Nothing moved: no directive.
        if next == at as u64 + 1 {
            continue;
        }
        inserts.push((at, next));
    }
    let mut out = String::with_capacity(text.len() + inserts.len() * 16);
    let mut k = 0;
    for (i, l) in lines.iter().enumerate() {
        out.push_str(l);
        while k < inserts.len() && inserts[k].0 == i + 1 {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("#line {}\n", inserts[k].1));
            k += 1;
        }
    }
    out
}

/// Is `path` C or C++ (a source or a header)?
fn is_c(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("c" | "cc" | "cpp" | "cxx" | "C" | "c++" | "h" | "hh" | "hpp" | "hxx" | "inc")
    )
}

/// Per changed file, the pristine line numbers of the lines a diff changed.
pub type Changed = HashMap<PathBuf, Vec<u64>>;

/// For each of `files` (relative to the trees) that the diffs changed: insert the
/// directives into the patched copy, and return the pristine numbers of the lines that
/// changed (a line removed or replaced, or the line after an insertion).
pub fn keep(pristine: &Path, patched: &Path, files: &[PathBuf]) -> Result<Changed> {
    let mut changed = HashMap::new();
    for f in files {
        let (a, b) = (pristine.join(f), patched.join(f));
        if !a.is_file() || !b.is_file() {
            continue;
        }
        let out = Command::new("diff")
            .arg("-U0")
            .arg(&a)
            .arg(&b)
            .output()
            .map_err(|e| err!(Build, "cannot run diff: {e}"))?;
        let hunks = parse_hunks(&String::from_utf8_lossy(&out.stdout));
        if hunks.is_empty() {
            continue;
        }
        let mut lines = Vec::new();
        for h in &hunks {
            if h.old_len > 0 {
                lines.extend(h.old_start..h.old_start + h.old_len);
            } else {
                lines.push(h.old_start + 1);
            }
        }
        changed.insert(f.clone(), lines);
        if !is_c(f) {
            continue;
        }
        let text = std::fs::read_to_string(&b)
            .map_err(|e| err!(Build, "cannot read {}: {e}", b.display()))?;
        let new = with_directives(&text, &hunks);
        if new != text {
            std::fs::write(&b, new)
                .map_err(|e| err!(Build, "cannot write {}: {e}", b.display()))?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hunk(old_start: u64, old_len: u64, new_start: u64, new_len: u64) -> Hunk {
        Hunk {
            old_start,
            old_len,
            new_start,
            new_len,
        }
    }

    /// The lines of `out` and where its (first) directive is.
    fn directive(out: &str) -> (Vec<&str>, usize) {
        let lines: Vec<&str> = out.lines().collect();
        let k = lines.iter().position(|l| l.starts_with("#line")).unwrap();
        (lines, k)
    }

    #[test]
    fn lines_after_a_change_keep_their_numbers() {
        let new = "int a;\nint f(void)\n{\n\tif (a)\n\t\treturn 2;\n\treturn 1;\n}\n\nint g(void)\n{\n\treturn __LINE__;\n}\n";
        // diff -U0: two lines added after old line 3.
        let h = hunk(3, 0, 4, 2);
        let out = with_directives(new, &[h]);
        // The directive follows the change and gives the next line its old number (4:
        // `return 1;`).
        let (lines, k) = directive(&out);
        assert_eq!(lines[k], "#line 4");
        assert_eq!(lines[k + 1], "\treturn 1;");
        assert_eq!(lines[k - 1], "\t\treturn 2;");
        assert_eq!(lines.iter().filter(|l| l.starts_with("#line")).count(), 1);
        assert_eq!(parse_hunks("@@ -3,0 +4,2 @@\n+x\n+y\n"), vec![h]);
    }

    #[test]
    fn no_directive_inside_a_comment_or_a_continued_line() {
        let text = "/* a\n b\n c */\nint x;\n";
        let h = hunk(1, 0, 2, 1);
        let out = with_directives(text, &[h]);
        let (lines, k) = directive(&out);
        assert_eq!(lines[k - 1], " c */");
        let text = "#define M(x) \\\n\t(x + \\\n\t 1)\nint y;\n";
        let out = with_directives(text, &[h]);
        let (lines, k) = directive(&out);
        assert_eq!(lines[k - 1], "\t 1)");
    }
}
