//! Real targets: target-private symbols, libraries opened later, libc itself and IFUNCs,
//! duplicate static names, build-ids, stripped binaries, C++, deleted executables, and a
//! TCP server patched under load.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn funcs(pid: i32) -> Vec<serde_json::Value> {
    let v = json(&rlp_ok(&["list", &pid.to_string(), "--json"]));
    v["patches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["functions"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn static_variables_static_helpers_and_thread_locals() {
    let exe = fixture("private", "private", &[]);
    let fix = patch("private-fix");
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let parse = |l: &str| -> (i64, i64, i64, i64) {
        let n: Vec<i64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|x| x.parse().ok())
            .collect();
        (n[0], n[1], n[2], n[3]) // i, value, counter, tls
    };
    t.wait_line(|l| l.starts_with("handle"), T);
    rlp_ok(&["apply", &pid, s(&fix)]);
    let patched = t.wait_line(
        |l| {
            l.starts_with("handle") && {
                let (i, v, _, _) = parse(l);
                v == 3 * i + 1000
            }
        },
        T,
    );
    rlp_ok(&["disable", &pid, "private-fix"]);
    t.wait_line(
        |l| {
            l.starts_with("handle") && {
                let (i, v, _, _) = parse(l);
                v == 3 * i
            }
        },
        T,
    );
    // The static counter counted every call, before, during and after: it is the
    // program's own variable the patch incremented.
    let lines: Vec<(i64, i64, i64, i64)> = t
        .seen
        .iter()
        .filter(|l| l.starts_with("handle"))
        .map(|l| parse(l))
        .collect();
    for w in lines.windows(2) {
        assert_eq!(w[1].2, w[0].2 + 1, "counter continues: {w:?}");
    }
    // The thread-local counter moved by 10 per call while patched.
    let (i, _, _, tls) = parse(&patched);
    let next = lines.iter().find(|x| x.0 == i + 1).unwrap();
    if next.1 == 3 * next.0 + 1000 {
        assert_eq!(next.3, tls + 10, "the patch used this thread's copy");
    }
    t.assert_running();
}

#[test]
fn a_plugin_opened_after_start_and_objects_by_path() {
    let dir = build_dir();
    let host = cc(
        "plugin-host",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/plugin-host.c",
            "-pthread",
            "-ldl",
        ],
    );
    let lib = cc(
        "libplugin.so",
        &["-shared", "-fPIC", "-O2", "fixtures/plugin.c"],
    );
    let mut t = Target::start_with_stdin(&host, &["5"]);
    let pid = t.pid.to_string();
    let fix = patch_src(
        "plugin-fix",
        "#include <rlivepatch.h>\nstatic int f(int x) { return -x; }\nRLIVEPATCH_FUNC_IN(\"libplugin.so\", plugin_value, f);\n",
    );
    // An object that is neither loaded nor where the loader would look: a clear error.
    let nowhere = patch_src(
        "plugin-nowhere",
        "#include <rlivepatch.h>\nstatic int f(int x) { return -x; }\nRLIVEPATCH_FUNC_IN(\"libnowhere.so\", plugin_value, f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&nowhere)], 5);
    assert!(
        e.contains("object libnowhere.so is not loaded") && e.contains("--library-path"),
        "{e}"
    );
    // Not loaded yet, but next to the program: pending, and the first value the plugin
    // gives once loaded is the patched one.
    let out = rlp_ok(&["apply", &pid, s(&fix)]);
    assert!(out.contains("pending: libplugin.so"), "{out}");
    t.send(&format!("load {}", lib.display()));
    t.wait_line(|l| l.starts_with("loaded"), T);
    let first = t.wait_line(|l| l.starts_with("plugin("), T);
    assert_eq!(value(&first).1, -value(&first).0, "{first}");
    rlp_ok(&["disable", &pid, "plugin-fix"]);
    t.wait_line(
        |l| l.starts_with("plugin(") && value(l).1 == 5 * value(l).0,
        T,
    );

    // Named by absolute path.
    let by_path = patch_src(
        "plugin-fix-path",
        &format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return -2 * x; }}\nRLIVEPATCH_FUNC_IN(\"{}\", plugin_value, f);\n",
            lib.display()
        ),
    );
    rlp_ok(&["apply", &pid, s(&by_path)]);
    t.wait_line(
        |l| l.starts_with("plugin(") && value(l).1 == -2 * value(l).0 && value(l).0 > 0,
        T,
    );
    rlp_ok(&["disable", &pid, "plugin-fix-path"]);

    // A second copy under another directory: the file name now matches two objects.
    let other = dir.join("plugins2");
    std::fs::create_dir_all(&other).unwrap();
    let copy = other.join("libplugin.so");
    std::fs::copy(&lib, &copy).unwrap();
    t.send(&format!("load {}", copy.display()));
    t.wait_line(|l| l.starts_with("loaded") && l.contains("plugins2"), T);
    let e = rlp_fails(&["apply", &pid, s(&fix)], 5);
    assert!(
        e.contains("matches 2 mappings")
            && e.contains("plugins2/libplugin.so")
            && e.contains("absolute path"),
        "{e}"
    );
    t.assert_running();
}

#[test]
fn a_libc_function_in_a_multithreaded_process() {
    let exe = fixture("libc-user", "libc-user", &[]);
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    rlp_ok(&["apply", &pid, s(&patch("libc-atoi"))]);
    t.wait_line(|l| l.starts_with("atoi=42"), T);
    let f = funcs(t.pid);
    assert_eq!(f[0]["object"], "libc.so.6");
    rlp_ok(&["disable", &pid, "libc-atoi"]);
    t.wait_line(|l| l.starts_with("atoi=21"), T);
    assert_eq!(t.stable_maps(), before);
    t.assert_running();
}

#[test]
fn an_ifunc_patches_the_implementation_the_resolver_picked() {
    let exe = fixture("libc-user", "libc-user", &[]);
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let out = json(&rlp_ok(&[
        "apply",
        &pid,
        s(&patch("libc-strlen")),
        "--json",
    ]));
    let f = &out["functions"][0];
    assert_eq!(f["symbol"], "strlen");
    let implementation = f["ifunc_implementation"].as_str().unwrap();
    assert!(implementation.contains("libc.so.6"), "{out}");
    t.wait_line(|l| l.ends_with("strlen=1010"), T);
    // The resolver itself was never written.
    let libc_path = t
        .maps()
        .lines()
        .find(|l| l.ends_with("libc.so.6"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let file = rlivepatch::elf::symbols::ElfFile::open(Path::new(&libc_path)).unwrap();
    let resolver = file.dynsym().iter().find(|s| s.name == "strlen").unwrap();
    assert_eq!(resolver.kind, rlivepatch::elf::symbols::SymKind::Ifunc);
    let base = t.symbol_base("libc.so.6");
    assert_eq!(
        t.read_mem(base + resolver.value, 5),
        file.bytes_at(resolver.value, 5).unwrap()
    );
    assert_ne!(
        u64::from_str_radix(f["old_addr"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
        base + resolver.value
    );
    rlp_ok(&["disable", &pid, "libc-strlen"]);
    t.wait_line(|l| l.ends_with("strlen=10"), T);
    t.assert_running();
}

#[test]
fn duplicate_static_names_need_a_position() {
    let exe = cc(
        "dupes",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/dupes.c",
            "fixtures/dupes2.c",
        ],
    );
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let ambiguous = patch_src(
        "dupes-any",
        "#include <rlivepatch.h>\nstatic int f(int x) { return 100 * x; }\nRLIVEPATCH_FUNC(scale, f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&ambiguous)], 5);
    assert!(
        e.contains("symbol scale is ambiguous")
            && e.contains("2 occurrences")
            && e.contains("#1 at")
            && e.contains("#2 at"),
        "{e}"
    );
    assert!(e.contains("RLIVEPATCH_FUNC_POS"), "{e}");
    let third = patch_src(
        "dupes-3",
        "#include <rlivepatch.h>\nstatic int f(int x) { return 100 * x; }\nRLIVEPATCH_FUNC_POS(scale, 3, f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&third)], 5);
    assert!(e.contains("2 occurrence(s)") && e.contains("not 3"), "{e}");
    let second = patch_src(
        "dupes-2",
        "#include <rlivepatch.h>\nstatic int f(int x) { return 100 * x; }\nRLIVEPATCH_FUNC_POS(scale, 2, f);\n",
    );
    rlp_ok(&["apply", &pid, s(&second)]);
    // Only the second translation unit's scale() changed.
    let l = t.wait_line(
        |l| {
            l.contains("second")
                && l.ends_with(&format!(
                    "= {}",
                    100 * l.split(['(', ')']).nth(1).unwrap().parse::<i64>().unwrap()
                ))
        },
        T,
    );
    let i: i64 = l.split(['(', ')']).nth(1).unwrap().parse().unwrap();
    assert!(l.starts_with(&format!("first({i}) = {}", 2 * i)), "{l}");
    rlp_ok(&["disable", &pid, "dupes-2"]);
}

#[test]
fn build_ids_pin_a_patch_to_its_binary() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let (entry, before) = t.snapshot_of("counter-pie", "compute");
    let wrong = patch_src(
        "bid-wrong",
        "#include <rlivepatch.h>\nstatic int f(int x) { return x; }\nRLIVEPATCH_FUNC(compute, f);\nRLIVEPATCH_BUILD_ID(\"main\", \"00112233445566778899aabbccddeeff00112233\");\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&wrong)], 5);
    assert!(e.contains("built for a main executable with build-id 00112233445566778899aabbccddeeff00112233, but counter-pie (main executable) in this process has build-id"), "{e}");
    t.assert_untouched(&before, entry);
    // The helper writes the right line.
    let line = rlp_ok(&["build-id", s(&exe)]);
    assert!(
        line.starts_with("RLIVEPATCH_BUILD_ID(\"main\", \"") && line.trim_end().ends_with("\");"),
        "{line}"
    );
    let right = patch_src(
        "bid-right",
        &format!(
            "#include <rlivepatch.h>\nstatic int f(int x) {{ return x; }}\nRLIVEPATCH_FUNC(compute, f);\n{line}"
        ),
    );
    let info = json(&rlp_ok(&["info", s(&right), "--json"]));
    assert_eq!(info["build_ids"][0]["object"], "main");
    rlp_ok(&["apply", &pid, s(&right)]);
    rlp_ok(&["disable", &pid, "bid-right"]);
}

#[test]
fn stripped_binaries_use_their_debug_file() {
    let dbg = fixture("counter", "counter-dbg", &["-fPIE", "-pie"]);
    let dir = build_dir().join("stripped");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let st = std::process::Command::new(cmd).args(args).status().unwrap();
        assert!(st.success(), "{cmd} {args:?}");
    };
    let debug = dir.join("counter.debug");
    run("objcopy", &["--only-keep-debug", s(&dbg), s(&debug)]);
    let stripped = dir.join("counter-stripped");
    run("strip", &["--strip-all", "-o", s(&stripped), s(&dbg)]);
    let id = rlivepatch::elf::symbols::ElfFile::open(&stripped)
        .unwrap()
        .build_id_hex()
        .unwrap();
    let fix = patch("counter-fix");

    let mut t = Target::start(&stripped, &["5"]);
    let pid = t.pid.to_string();
    // No symbols anywhere: the error says what is missing and where it looked.
    let e = rlp_fails(&["apply", &pid, s(&fix)], 5);
    assert!(
        e.contains("function compute not found in counter-stripped")
            && e.contains("it is stripped")
            && e.contains(&format!(".build-id/{}/{}.debug", &id[..2], &id[2..])),
        "{e}"
    );
    // A debug directory with the build-id layout.
    let ddir = dir.join("debug");
    let bid = ddir.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&bid).unwrap();
    std::fs::copy(&debug, bid.join(format!("{}.debug", &id[2..]))).unwrap();
    let out = json(&rlp_ok(&[
        "apply",
        &pid,
        s(&fix),
        "--debug-dir",
        s(&ddir),
        "--json",
    ]));
    assert!(
        out["functions"][0]["debug_file"]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}.debug", &id[2..])),
        "{out}"
    );
    t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 * 100, T);
    rlp_ok(&["disable", &pid, "counter-fix"]);
    drop(t);

    // .gnu_debuglink next to the binary.
    let linked = dir.join("counter-linked");
    run(
        "objcopy",
        &[
            &format!("--add-gnu-debuglink={}", debug.display()),
            s(&stripped),
            s(&linked),
        ],
    );
    let mut t = Target::start(&linked, &["5"]);
    let out = json(&rlp_ok(&["apply", &t.pid.to_string(), s(&fix), "--json"]));
    assert!(
        out["functions"][0]["debug_file"]
            .as_str()
            .unwrap()
            .ends_with("counter.debug"),
        "{out}"
    );
    t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 * 100, T);
    rlp_ok(&["disable", &t.pid.to_string(), "counter-fix"]);
}

#[test]
fn a_cpp_member_function() {
    let exe = cc(
        "cpp-app",
        &[
            "-x",
            "c++",
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/cpp-app.cpp",
            "-lstdc++",
        ],
    );
    let fix = patch("cpp-handle");
    let info = rlp_ok(&["info", s(&fix)]);
    assert!(
        info.contains("app::Handler::handle(int) [_ZN3app7Handler6handleEi]"),
        "{info}"
    );
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    rlp_ok(&["apply", &pid, s(&fix)]);
    t.wait_line(
        |l| l.contains(" = ") && value(l).1 == (value(l).0 + 1) * 10,
        T,
    );
    let list = rlp_ok(&["list", &pid]);
    assert!(
        list.contains("app::Handler::handle(int) [_ZN3app7Handler6handleEi]"),
        "{list}"
    );
    assert_eq!(funcs(t.pid)[0]["demangled"], "app::Handler::handle(int)");
    rlp_ok(&["disable", &pid, "cpp-handle"]);
    t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 + 1, T);
}

#[test]
fn an_executable_deleted_or_replaced_on_disk() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let fix = patch("counter-fix");
    for replace in [false, true] {
        let dir = build_dir().join(format!("deleted-{replace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("counter");
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(&exe, &copy).unwrap();
        let mut t = Target::start(&copy, &["5"]);
        std::fs::remove_file(&copy).unwrap();
        if replace {
            // Another program now at the same path.
            std::fs::copy(greeter(), &copy).unwrap();
        }
        let pid = t.pid.to_string();
        rlp_ok(&["apply", &pid, s(&fix)]);
        t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 * 100, T);
        rlp_ok(&["disable", &pid, "counter-fix"]);
        t.wait_line(|l| l.contains(" = ") && value(l).1 == value(l).0 + 1, T);
    }
}

#[test]
fn a_tcp_server_under_load_through_50_cycles() {
    let exe = fixture("server", "server", &[]);
    let fix = patch("server-fix");
    let t = Target::start(&exe, &[]);
    let port: u16 = t.seen[0]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let pid = t.pid.to_string();
    let ask = |n: i64| -> std::io::Result<i64> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        writeln!(c, "{n}")?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line)?;
        line.trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad answer {line:?}")))
    };
    assert_eq!(ask(14).unwrap(), 29, "the bug");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut wrong) = (0u64, 0u64, 0u64);
            let mut n = 1i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if n % 7 == 0 {
                    continue;
                }
                let ask = |n: i64| -> std::io::Result<i64> {
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    c.set_read_timeout(Some(Duration::from_secs(20)))?;
                    writeln!(c, "{n}")?;
                    let mut line = String::new();
                    BufReader::new(c).read_line(&mut line)?;
                    line.trim()
                        .parse()
                        .map_err(|_| std::io::Error::other("bad answer"))
                };
                match ask(n) {
                    Ok(v) if v == 2 * n => ok += 1,
                    Ok(_) => wrong += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, wrong)
        })
    };
    for _ in 0..50 {
        rlp_ok(&["apply", &pid, s(&fix)]);
        rlp_ok(&["disable", &pid, "server-fix"]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, wrong) = client.join().unwrap();
    assert_eq!((failed, wrong), (0, 0), "{ok} requests answered right");
    assert!(ok > 0);
    rlp_ok(&["apply", &pid, s(&fix)]);
    assert_eq!(ask(14).unwrap(), 28, "the fix");
    rlp_ok(&["disable", &pid, "server-fix"]);
    assert_eq!(ask(14).unwrap(), 29);
    t.assert_running();
}

#[test]
fn versioned_symbols_and_unresolvable_target_symbols() {
    let exe = fixture("libc-user", "libc-user", &[]);
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let versioned = patch_src(
        "libc-atoi-versioned",
        "#include <rlivepatch.h>\n#include <stdlib.h>\nstatic int f(const char *s) { return 3 * (int)strtol(s, 0, 10); }\nRLIVEPATCH_FUNC_SYM_IN(\"libc.so.6\", \"atoi@@GLIBC_2.2.5\", f);\n",
    );
    rlp_ok(&["apply", &pid, s(&versioned)]);
    t.wait_line(|l| l.starts_with("atoi=63"), T);
    rlp_ok(&["disable", &pid, "libc-atoi-versioned"]);
    let wrong_version = patch_src(
        "libc-atoi-badver",
        "#include <rlivepatch.h>\nstatic int f(const char *s) { (void)s; return 0; }\nRLIVEPATCH_FUNC_SYM_IN(\"libc.so.6\", \"atoi@@GLIBC_9.9\", f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&wrong_version)], 5);
    assert!(e.contains("atoi@@GLIBC_9.9 not found"), "{e}");

    let entry = t.symbol_addr("libc-user", "main");
    let before = t.snapshot(entry);
    let missing = patch_src(
        "missing-symbol",
        "#include <rlivepatch.h>\nRLIVEPATCH_SYMBOL(int, nope, \"no_such_variable\");\nstatic int f(const char *s) { (void)s; return *nope; }\nRLIVEPATCH_FUNC_IN(\"libc.so.6\", atoi, f);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&missing)], 5);
    assert!(e.contains("symbol no_such_variable (used by the patch as nope) cannot be resolved in libc-user (main executable)"), "{e}");
    t.assert_untouched(&before, entry);
}

/// A program these tests did not build: the system's own bash, as Debian ships it
/// (stripped; `brand`, the generator behind `$RANDOM`, is exported for loadable
/// builtins). Patched, `$RANDOM` is 7, 8, 7, 8... (bash draws again while a value equals
/// the last one, so a constant would spin); disabled, it is random again, and the
/// shell's mappings are as before.
#[test]
fn the_system_bash_gets_its_random_numbers_patched() {
    let p = patch_src(
        "bash-brand",
        "#include <rlivepatch.h>\n\
         static int fixed_brand(void) { static int n; return 7 + (n++ & 1); }\n\
         RLIVEPATCH_FUNC(brand, fixed_brand);\n",
    );
    let mut t = Target::start(
        Path::new("/bin/bash"),
        &[
            "-c",
            "echo ready $$; while :; do echo \"random = $RANDOM\"; sleep 0.01; done",
        ],
    );
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    rlp_ok(&["apply", &pid, s(&p)]);
    // A 7, then two more lines alternating 7 and 8: by chance, one in 2^45.
    t.wait_line(|l| l == "random = 7", T);
    let next = t.next_lines(2);
    let mut sorted = next.clone();
    sorted.sort();
    assert_eq!(sorted, ["random = 7", "random = 8"], "{next:?}");
    assert_eq!(funcs(t.pid)[0]["object"], "bash");
    rlp_ok(&["disable", &pid, "bash-brand"]);
    t.wait_line(
        |l| l.starts_with("random = ") && l != "random = 7" && l != "random = 8",
        T,
    );
    assert_eq!(t.stable_maps(), before);
    t.assert_running();
}

/// Debian's python3.11 (-O3, LTO and PGO, `.cold` splits, stripped, its debug file in the
/// -dbg package), fetched and unpacked by scripts/fetch-python.sh.
fn debian_python() -> std::path::PathBuf {
    let dir = root().join("target/real/python3.11");
    let st = std::process::Command::new(root().join("scripts/fetch-python.sh"))
        .arg(&dir)
        .status()
        .expect("running scripts/fetch-python.sh");
    assert!(st.success(), "scripts/fetch-python.sh failed");
    dir
}

#[test]
fn debians_python_built_with_lto_and_pgo() {
    let dir = debian_python();
    let debug = dir.join("usr/lib/debug");
    let mut t = Target::start(
        &dir.join("usr/bin/python3.11"),
        &[
            "-S",
            "-c",
            "import os, time\nprint('ready', os.getpid(), flush=True)\n\
             while True:\n    print('time', time.time(), flush=True)\n    time.sleep(0.01)",
        ],
    );
    let pid = t.pid.to_string();
    let before = t.stable_maps();
    // A static function inlined into every caller has no code to patch: the callers are
    // named, from the debug file.
    let inlined = patch_src(
        "py-get-clock",
        "#include <rlivepatch.h>\n\
         static int fixed(void *t, void *info, int raise) { (void)t; (void)info; (void)raise; return 0; }\n\
         RLIVEPATCH_FUNC(py_get_system_clock, fixed);\n",
    );
    let e = rlp_fails(&["apply", &pid, s(&inlined), "--debug-dir", s(&debug)], 5);
    assert!(
        e.contains("inlined it into") && e.contains("_PyTime_GetSystemClockWithInfo"),
        "{e}"
    );
    // time.time() by its source name: LTO renamed it time_time.lto_priv.0 and split off
    // a .cold part; it is reached only through the module's method table.
    let fix = patch_src(
        "py-time",
        "#include <rlivepatch.h>\n\
         typedef struct _object PyObject;\n\
         RLIVEPATCH_SYMBOL(PyObject *(double), PyFloat_FromDouble, \"PyFloat_FromDouble\");\n\
         static PyObject *fixed_time(PyObject *m, PyObject *a) { (void)m; (void)a; return PyFloat_FromDouble(42.0); }\n\
         RLIVEPATCH_FUNC(time_time, fixed_time);\n",
    );
    let out = json(&rlp_ok(&[
        "apply",
        &pid,
        s(&fix),
        "--debug-dir",
        s(&debug),
        "--json",
    ]));
    let f = &out["functions"][0];
    assert_eq!(f["parts"][0]["name"], "time_time.lto_priv.0.cold", "{f}");
    assert!(
        !f["notes"].to_string().contains("nothing in the process"),
        "the method table's pointer reaches it: {f}"
    );
    t.wait_line(|l| l == "time 42.0", T);
    rlp_ok(&["disable", &pid, "py-time"]);
    t.wait_line(|l| l.starts_with("time ") && l != "time 42.0", T);
    assert_eq!(t.stable_maps(), before);
    t.assert_running();
}

/// The reference to a library rlivepatch takes to find its thread-local storage
/// (`dlopen(RTLD_NOLOAD)`) is given back even when the next step fails: the program can
/// still unload the library.
#[test]
fn a_failed_lookup_of_thread_local_storage_keeps_no_reference_to_the_library() {
    let host = cc(
        "plugin-host",
        &[
            "-O2",
            "-fomit-frame-pointer",
            "fixtures/plugin-host.c",
            "-pthread",
            "-ldl",
        ],
    );
    let lib = cc(
        "libplugin.so",
        &["-shared", "-fPIC", "-O2", "fixtures/plugin.c"],
    );
    let fix = patch_src(
        "plugin-tls",
        "#include <rlivepatch.h>\nRLIVEPATCH_TLS(long, calls, \"plugin_calls\", \"libplugin.so\");\nstatic int f(int x) { (*calls())++; return 7 * x; }\nRLIVEPATCH_FUNC_IN(\"libplugin.so\", plugin_value, f);\n",
    );
    let mut t = Target::start_with_stdin(&host, &["5"]);
    let pid = t.pid.to_string();
    t.send(&format!("load {}", lib.display()));
    t.wait_line(|l| l.starts_with("loaded"), T);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rlivepatch"))
        .args(["apply", &pid, s(&fix)])
        .env("RLIVEPATCH_FAULT", "fail:tls:dlinfo")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(t.rlivepatch_maps().is_empty(), "{:?}", t.rlivepatch_maps());
    t.send("unload");
    t.wait_line(|l| l == "unloaded", T);
    assert!(
        !t.maps().contains("libplugin.so"),
        "the library stayed loaded"
    );
    t.assert_running();
}
