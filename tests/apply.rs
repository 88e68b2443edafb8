//! apply / disable / list / info end to end on real processes (issue: the whole path).

mod common;
use common::*;
use std::time::Duration;

/// Wait until the target prints a value computed by `f` for the line's index.
fn wait_value(t: &mut Target, f: impl Fn(i64) -> i64) -> String {
    t.wait_line(
        |l| {
            l.contains(" = ") && {
                let (i, v) = value(l);
                v == f(i)
            }
        },
        Duration::from_secs(10),
    )
}

fn entry_bytes_of_file(t: &Target, object: &str, symbol: &str) -> Vec<u8> {
    // The bytes at the symbol in the file on disk, through `objdump`-free ELF reading.
    let maps = t.maps();
    let path = maps
        .lines()
        .find(|l| l.ends_with(object))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let file = rlivepatch::elf::symbols::ElfFile::open(std::path::Path::new(&path)).unwrap();
    let sym = rlivepatch::elf::symbols::find_function(&file, symbol, 0).unwrap();
    file.bytes_at(sym.value, 5).unwrap().to_vec()
}

fn patched_functions(pid: i32) -> Vec<serde_json::Value> {
    let v = json(&rlp_ok(&["list", &pid.to_string(), "--json"]));
    v["patches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["functions"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn pie_executable_function_goes_through_an_island() {
    let (mut t, pid, fix) = counter_pie("5");
    let before_maps = t.stable_maps();
    let entry = t.symbol_addr("counter-pie", "compute");
    let orig = t.read_mem(entry, 5);
    assert_eq!(orig, entry_bytes_of_file(&t, "counter-pie", "compute"));
    wait_value(&mut t, |i| i + 1);

    let out = json(&rlp_ok(&["apply", &pid, fix.to_str().unwrap(), "--json"]));
    assert_eq!(out["patch"], "counter-fix");
    wait_value(&mut t, |i| i * 100);
    t.assert_running();
    // The entry is a jmp rel32; the patch is 2^40 away from a PIE, so through an island.
    let jmp = t.read_mem(entry, 5);
    assert_eq!(jmp[0], 0xe9);
    let funcs = patched_functions(t.pid);
    assert_eq!(funcs.len(), 1);
    assert_eq!(funcs[0]["symbol"], "compute");
    assert_eq!(funcs[0]["via"], "island");
    let island = u64::from_str_radix(
        funcs[0]["island"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let target =
        (entry as i64 + 5 + i32::from_le_bytes(jmp[1..5].try_into().unwrap()) as i64) as u64;
    assert_eq!(target, island, "the entry jumps to the island slot");
    assert!(t.maps().contains("/memfd:rlp:counter-fix"));

    rlp_ok(&["disable", &pid, "counter-fix"]);
    wait_value(&mut t, |i| i + 1);
    t.assert_running();
    assert_eq!(t.read_mem(entry, 5), orig, "original entry bytes are back");
    assert_eq!(t.stable_maps(), before_maps, "no mapping left behind");
    assert!(rlp_ok(&["list", &pid]).contains("no patches applied"));
}

#[test]
fn non_pie_executable_function() {
    let exe = fixture("counter", "counter-nopie", &["-fno-PIE", "-no-pie"]);
    let fix = patch("counter-fix");
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let before_maps = t.stable_maps();
    let entry = t.symbol_addr("counter-nopie", "compute");
    assert!(entry < 0x1000_0000, "non-PIE code is at its link address");
    let orig = t.read_mem(entry, 5);

    rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    wait_value(&mut t, |i| i * 100);
    let funcs = patched_functions(t.pid);
    assert_eq!(funcs[0]["via"], "island");
    let island = u64::from_str_radix(
        funcs[0]["island"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert!(
        island < entry,
        "the island goes below the executable, away from the heap"
    );
    t.assert_running();

    rlp_ok(&["disable", &pid, "counter-fix"]);
    wait_value(&mut t, |i| i + 1);
    assert_eq!(t.read_mem(entry, 5), orig);
    assert_eq!(t.stable_maps(), before_maps);
    t.assert_running();
}

#[test]
fn shared_library_function_takes_a_direct_jump() {
    let exe = greeter();
    let fix = patch("greet-fix");
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let before_maps = t.stable_maps();
    let entry = t.symbol_addr("libgreet.so", "greet_value");
    let orig = t.read_mem(entry, 5);
    wait_value(&mut t, |i| i * 2);

    let text = rlp_ok(&["apply", &pid, fix.to_str().unwrap()]);
    assert!(text.contains("direct jump"), "{text}");
    wait_value(&mut t, |i| i * 1000 + 7);
    let funcs = patched_functions(t.pid);
    assert_eq!(funcs[0]["via"], "jump");
    assert_eq!(funcs[0]["object"], "libgreet.so");
    assert!(funcs[0].get("island").is_none());
    t.assert_running();

    rlp_ok(&["disable", &pid, "greet-fix"]);
    wait_value(&mut t, |i| i * 2);
    assert_eq!(t.read_mem(entry, 5), orig);
    assert_eq!(t.stable_maps(), before_maps);
    t.assert_running();
}

#[test]
fn several_patches_and_disabling_one_keeps_the_others() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let lib = greeter();
    let (f1, f2) = (patch("counter-fix"), patch("counter-fix2"));
    let mut t = Target::start(&exe, &["5"]);
    let pid = t.pid.to_string();
    let before_maps = t.stable_maps();

    rlp_ok(&["apply", &pid, f1.to_str().unwrap()]);
    wait_value(&mut t, |i| i * 100);
    rlp_ok(&["apply", &pid, f2.to_str().unwrap()]);
    wait_value(&mut t, |i| i * 1000);
    let list = json(&rlp_ok(&["list", &pid, "--json"]));
    let names: Vec<&str> = list["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["counter-fix", "counter-fix2"], "apply order");

    // Disable the older one: the newer one still wins.
    rlp_ok(&["disable", &pid, "counter-fix"]);
    wait_value(&mut t, |i| i * 1000);
    t.next_lines(3)
        .iter()
        .for_each(|l| assert_eq!(value(l).1, value(l).0 * 1000));
    // Disable the newer one: back to the original.
    rlp_ok(&["disable", &pid, "counter-fix2"]);
    wait_value(&mut t, |i| i + 1);
    assert_eq!(t.stable_maps(), before_maps);

    // And in the other order: the newer one first falls back to the older one.
    rlp_ok(&["apply", &pid, f1.to_str().unwrap()]);
    rlp_ok(&["apply", &pid, f2.to_str().unwrap()]);
    wait_value(&mut t, |i| i * 1000);
    rlp_ok(&["disable", &pid, "counter-fix2"]);
    wait_value(&mut t, |i| i * 100);
    rlp_ok(&["disable", &pid, "counter-fix"]);
    wait_value(&mut t, |i| i + 1);
    assert_eq!(t.stable_maps(), before_maps);
    t.assert_running();
    drop(lib);
}

#[test]
fn the_record_lives_with_the_process() {
    let exe = fixture("counter", "counter-pie", &["-fPIE", "-pie"]);
    let fix = patch("counter-fix");
    let mut a = Target::start(&exe, &["5"]);
    let b = Target::start(&exe, &["5"]);
    rlp_ok(&["apply", &a.pid.to_string(), fix.to_str().unwrap()]);
    wait_value(&mut a, |i| i * 100);
    // A later run finds it; another process of the same program has none.
    assert!(rlp_ok(&["list", &a.pid.to_string()]).contains("counter-fix"));
    assert!(rlp_ok(&["list", &b.pid.to_string()]).contains("no patches applied"));
    assert!(a.maps().contains("/memfd:rlivepatch-state"));
    assert!(b.rlivepatch_maps().is_empty());
    rlp_ok(&["disable", &a.pid.to_string(), "counter-fix"]);
    assert!(
        a.rlivepatch_maps().is_empty(),
        "the record goes away with the last patch"
    );
}

#[test]
fn info_shows_the_patch_offline() {
    let fix = patch("greet-fix");
    let text = rlp_ok(&["info", fix.to_str().unwrap()]);
    assert!(text.contains("patch greet-fix"), "{text}");
    assert!(
        text.contains("libgreet.so: greet_value -> fixed_greet_value"),
        "{text}"
    );
    let v = json(&rlp_ok(&["info", fix.to_str().unwrap(), "--json"]));
    assert_eq!(v["name"], "greet-fix");
    assert_eq!(v["functions"][0]["object"], "libgreet.so");
    assert_eq!(v["functions"][0]["old"], "greet_value");
    assert_eq!(v["functions"][0]["new"], "fixed_greet_value");
    let main = json(&rlp_ok(&[
        "info",
        patch("counter-fix").to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(main["functions"][0]["object"], "main");
}
