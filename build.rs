//! Builds the runtime that rlivepatch loads into patched processes (shadow variables and
//! system states) with the system C compiler; the binary embeds it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("librlivepatch-runtime.so");
    let src = "runtime/rlivepatch-runtime.c";
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
            "-Wl,-z,now",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build the runtime: {e}"));
    assert!(status.success(), "building {src} failed");

    // The autoload library (LD_PRELOAD): processes started later run persisted patches.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("librlivepatch-autoload.so");
    let src = "runtime/rlivepatch-autoload.c";
    println!("cargo:rerun-if-changed={src}");
    let status = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-g",
            "-fvisibility=hidden",
            "-Wall",
            "-Wextra",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build the autoload library: {e}"));
    assert!(status.success(), "building {src} failed");
}
