//! Builds, with the system C compiler, what rlivepatch puts into processes and embeds:
//! the runtime it loads into patched processes (shadow variables, system states, the
//! preserving path) and the autoload library for processes started later.

use std::path::PathBuf;
use std::process::Command;

/// `cc -shared` of `src` into `$OUT_DIR/name`, hidden symbols by default.
fn shared_library(src: &str, name: &str, extra: &[&str]) {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(name);
    println!("cargo:rerun-if-changed={src}");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-g",
            "-fvisibility=hidden",
            "-Wall",
            "-Wextra",
        ])
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build {src}: {e}"));
    assert!(status.success(), "building {src} failed");
}

fn main() {
    shared_library(
        "runtime/rlivepatch-runtime.c",
        "librlivepatch-runtime.so",
        &[
            "-Wl,-z,now",
            // Copied into every process that loads it: no debug sections (its symbol
            // table stays, for backtraces and rlivepatch's own lookups).
            "-Wl,--strip-debug",
            "runtime/rlivepatch-coming.c",
            "runtime/rlivepatch-keeper.c",
            "-pthread",
        ],
    );
    println!("cargo:rerun-if-changed=runtime/rlivepatch-coming.c");
    println!("cargo:rerun-if-changed=runtime/rlivepatch-keeper.c");
    shared_library(
        "runtime/rlivepatch-autoload.c",
        "librlivepatch-autoload.so",
        &[],
    );
}
