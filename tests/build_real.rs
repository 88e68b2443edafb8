//! `rlivepatch build` on real projects from Debian's source packages, built with their
//! own build systems, patched live with the security fixes Debian ships as patches.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The upstream tree of Debian's source package `pkg` and its patches, fetched by
/// scripts/fetch-source.sh (cached under target/real), copied to a directory of the
/// test's own and built there with `build` (a shell command).
fn source_package(pkg: &str, test: &str, build: &str) -> (PathBuf, PathBuf) {
    for tool in ["make", "patch", "cmake"] {
        require_tool(tool);
    }
    let cache = root().join("target/real").join(pkg);
    let st = Command::new(root().join("scripts/fetch-source.sh"))
        .arg(pkg)
        .arg(&cache)
        .status()
        .expect("running scripts/fetch-source.sh");
    assert!(st.success(), "scripts/fetch-source.sh {pkg} failed");
    let tree = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{pkg}"));
    let _ = std::fs::remove_dir_all(&tree);
    let st = Command::new("cp")
        .arg("-a")
        .arg(cache.join("orig"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("sh")
        .arg("-c")
        .arg(build)
        .current_dir(&tree)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "make in {}", tree.display());
    (tree, cache.join("patches"))
}

fn build(src: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .arg("build")
        .arg("--source")
        .arg(src)
        .args(args)
        .env("RLIVEPATCH_CACHE", src.with_extension("cache"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// CVE-2022-28805 (Lua generates wrong code when `_ENV` is `<const>`: a heap over-read
/// in the interpreter), fixed in lparser.c's `singlevar` by Debian's 0004 patch: the
/// interpreter, built from lua 5.4.4 by its Makefile (PIE, -O2), compiles chunks fed on
/// its stdin; the exploit's chunk is compiled into bad code before the patch, and the
/// right error after it, while the interpreter keeps running.
#[test]
fn lua_cve_2022_28805_from_debians_patch() {
    let (tree, patches) = source_package("lua5.4", "cve", "make -j2");
    let out = tree.with_extension("so");
    let fix = patches.join("0004-cve-2022-28805.patch");
    let lua = tree.join("src/lua");
    let (code, json_out, err) = build(
        &tree,
        &[
            "--diff",
            fix.to_str().unwrap(),
            "--binary",
            lua.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let report = json(&json_out);
    let funcs = report["functions"].as_array().unwrap();
    assert!(
        funcs
            .iter()
            .any(|f| f["name"] == "singlevar" && f["why"] == "the diff changed it"),
        "{report}"
    );

    let repl = tree.join("repl.lua");
    std::fs::write(
        &repl,
        "io.stdout:setvbuf('line')\nprint('ready')\nfor line in io.lines() do\n  local f, e = load(line)\n  if f then print('ok', pcall(f)) else print('err', e) end\nend\n",
    )
    .unwrap();
    let mut t = Target::start_with_stdin(&lua, &[repl.to_str().unwrap()]);
    let exploit = "local _ENV <const> = 42; local y = x";
    let ask = |t: &mut Target, chunk: &str| {
        t.send(chunk);
        t.wait_line(
            |l| l.starts_with("ok") || l.starts_with("err"),
            Duration::from_secs(10),
        )
    };
    let before = ask(&mut t, exploit);
    assert!(before.contains("needs too many registers"), "{before}");
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    let after = ask(&mut t, exploit);
    assert!(after.contains("attempt to index a number value"), "{after}");
    // Everything else compiles as before.
    assert_eq!(
        ask(
            &mut t,
            "local t = {} for i = 1, 10 do t[i] = i * i end return #t, t[10], string.format('%5.2f', 1/3)"
        ),
        "ok\ttrue\t10\t100\t 0.33"
    );
    let name = report["name"].as_str().unwrap();
    rlp_ok(&["disable", &t.pid.to_string(), name]);
    let again = ask(&mut t, exploit);
    assert!(again.contains("needs too many registers"), "{again}");
}

/// expat's build: cmake, the library only.
const EXPAT_BUILD: &str = "cmake -S expat -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEXPAT_BUILD_TESTS=OFF -DEXPAT_BUILD_DOCS=OFF -DEXPAT_BUILD_EXAMPLES=OFF >/dev/null && cmake --build build -j2";

/// CVE-2024-45490 (XML_ParseBuffer accepts a negative length), CVE-2024-45491 and
/// CVE-2024-45492, Debian's three patches for expat 2.5.0 at once, built by cmake into
/// libexpat.so: the last two guard integer overflows that cannot happen where `size_t` is
/// wider than `unsigned int`, and change no code on x86_64, so the patch carries
/// XML_ParseBuffer alone. A server of four threads parsing without a pause (each parse
/// a request, checked) takes the patch under load: no request fails, and the exploit's
/// call is refused from then on. Debian's fix for CVE-2023-52425 changes the parser's
/// structure: refused, nothing written.
#[test]
fn expat_fixes_under_load_and_a_layout_change_refused() {
    let (tree, patches) = source_package("expat", "cve", EXPAT_BUILD);
    let lib = std::fs::canonicalize(tree.join("build/libexpat.so")).unwrap();
    let server = tree.join("xml-server");
    let st = Command::new("cc")
        .arg("-O2")
        .arg(root().join("fixtures/xml-server.c"))
        .arg("-I")
        .arg(tree.join("expat/lib"))
        .arg("-I")
        .arg(tree.join("build"))
        .arg("-L")
        .arg(tree.join("build"))
        .arg("-lexpat")
        .arg("-lpthread")
        .arg(format!("-Wl,-rpath,{}", tree.join("build").display()))
        .arg("-o")
        .arg(&server)
        .status()
        .unwrap();
    assert!(st.success());
    let out = tree.with_extension("so");
    let p = |n: &str| patches.join(n).display().to_string();
    let (code, json_out, err) = build(
        &tree,
        &[
            "--build",
            EXPAT_BUILD,
            "--diff",
            &p("CVE-2024-45490.patch"),
            "--diff",
            &p("CVE-2024-45491.patch"),
            "--diff",
            &p("CVE-2024-45492.patch"),
            "--binary",
            lib.to_str().unwrap(),
            "--name",
            "expat-cves",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let report = json(&json_out);
    let names: Vec<&str> = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    // Line numbers moved by the fix (expat passes __LINE__ to its accounting) change no
    // other function.
    assert_eq!(names, ["XML_ParseBuffer"], "{report}");

    let mut t = Target::start_with_stdin(&server, &[]);
    let ask = |t: &mut Target, cmd: &str| {
        t.send(cmd);
        let head = format!("{cmd} ");
        t.wait_line(|l| l.starts_with(&head), Duration::from_secs(10))
    };
    assert_eq!(ask(&mut t, "neg"), "neg status 1 error 0");
    let requests = |line: &str| -> (u64, u64) {
        let w: Vec<&str> = line.split_whitespace().collect();
        (w[2].parse().unwrap(), w[4].parse().unwrap())
    };
    let (before, _) = requests(&ask(&mut t, "stats"));
    rlp_ok(&["apply", &t.pid.to_string(), out.to_str().unwrap()]);
    // XML_ERROR_INVALID_ARGUMENT.
    assert_eq!(ask(&mut t, "neg"), "neg status 0 error 41");
    let (after, failed) = requests(&ask(&mut t, "stats"));
    assert!(after > before, "the workers stopped: {before} then {after}");
    assert_eq!(failed, 0);
    rlp_ok(&["disable", &t.pid.to_string(), "expat-cves"]);
    assert_eq!(ask(&mut t, "neg"), "neg status 1 error 0");
    let (_, failed) = requests(&ask(&mut t, "stats"));
    assert_eq!(failed, 0);

    // A fix that adds fields to the parser's structure.
    let layout = tree.with_extension("layout.so");
    let (code, _, err) = build(
        &tree,
        &[
            "--build",
            EXPAT_BUILD,
            "--diff",
            &p("expat-2.5.0-CVE-2023-52425.patch"),
            "--binary",
            lib.to_str().unwrap(),
            "-o",
            layout.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains("struct XML_ParserStruct changes layout") && err.contains("shadow variable"),
        "{err}"
    );
    assert!(!layout.exists());
}
