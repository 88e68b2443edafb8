//! The corpus of real published fixes (scripts/corpus.py, CORPUS.md), in part: rows of
//! jq (an executable over a shared library, autotools) and expat (a library, CMake), each
//! built from Debian's source package with the project's own build system, and patched
//! into a running process with a live check. `scripts/corpus.sh` runs every row.

mod common;
use common::*;
use std::process::Command;

#[test]
fn rows_of_jq_and_expat_build_and_patch_running_processes() {
    require_tool("python3");
    require_tool("dpkg-buildflags");
    let fixes = [
        "stack-exhaustion", // a jump table; live: the depth marker
        "CVE-2026-39956",   // live: an assertion kills jq before
        "CVE-2026-43896",   // two diffs in order, a .localalias; live: merge depth
        "CVE-2026-47770",   // refused: a thread-local variable
        "CVE-2026-44777",   // refused: a structure's layout
        "CVE-2024-45490",   // live: four threads parsing while patched
        "CVE-2024-45491",   // refused: the same code on x86_64
        "CVE-2023-52425",   // refused: the parser's layout
    ];
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("corpus.json");
    let o = Command::new("python3")
        .arg(root().join("scripts/corpus.py"))
        .args(["--only", "jq,expat", "--fix", &fixes.join(",")])
        .args(["--output", "-", "--json"])
        .arg(&out)
        .env("RLIVEPATCH", env!("CARGO_BIN_EXE_rlivepatch"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let rows: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("no results: {stderr}")),
    )
    .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), fixes.len(), "{stderr}");
    for r in rows {
        let id = r["fix"]["id"].as_str().unwrap();
        let verdict = r["verdict"].as_str().unwrap();
        assert!(
            verdict == "built" || verdict == "correctly refused",
            "{id}: {verdict}: {}",
            r["result"]["message"]
        );
        if r["fix"].get("live").is_some() {
            assert_eq!(
                r["live"]["ok"], true,
                "{id}: live check: {}",
                r["live"]["text"]
            );
        }
    }
    assert!(o.status.success(), "{stderr}");
}
