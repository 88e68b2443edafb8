//! Print what callers of a function rely on, read from an ELF file and its debug
//! information: `cargo run --example contract -- FILE SYMBOL...` (`RLP_DEBUG_FILE=PATH`
//! for a separate debug file). A development aid for
//! the contract analysis; `rlivepatch check` reports the same against a process.

use rlivepatch::contract::clobber::Analysis;
use rlivepatch::contract::code::CodeMap;
use rlivepatch::contract::dwarf::DebugInfo;
use rlivepatch::elf::symbols::{ElfFile, find_function};
use std::path::Path;
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = Arc::new(ElfFile::open(Path::new(&args[1])).expect("an ELF file"));
    let map = CodeMap::new(file.clone(), &file);
    // A separate debug file, when the object is stripped: RLP_DEBUG_FILE=PATH.
    let debug = match std::env::var_os("RLP_DEBUG_FILE") {
        Some(p) => DebugInfo::load(&ElfFile::open(Path::new(&p)).expect("the debug file")),
        None => DebugInfo::load(&file),
    };
    for sym in &args[2..] {
        let s = find_function(&file, sym, 0).expect("the function");
        let parts = map.parts(sym, s.value, s.size);
        let e = Analysis::new(&map).effects_of_parts(&parts);
        let refs = map.refs_to(s.value);
        println!("{sym} at {:#x}, {} bytes", s.value, s.size);
        for p in &parts {
            println!("  part {} {:#x}..{:#x}", p.name, p.start, p.end);
        }
        println!(
            "  clobbers {:?}; writes memory {}; calls {}",
            e.clobbers.names(),
            e.writes_memory,
            e.calls
        );
        println!(
            "  direct calls {}, jumps {}, addresses {}",
            refs.calls, refs.jumps, refs.addresses
        );
        let at: Vec<&str> = map.functions_at(s.value).map(|f| f.name.as_str()).collect();
        println!("  symbols at its address: {at:?}");
        if let Some(d) = &debug
            && let Some(sub) = d.subprogram_at(s.value)
        {
            println!(
                "  dwarf: {} nocall {} consts {:?} removed {:?} variadic {} stack {:?} returns {:?} lto {} inlined into {:?}",
                sub.name,
                sub.nocall,
                sub.const_params,
                sub.removed_params,
                sub.variadic,
                sub.stack_args,
                sub.returns_value,
                sub.lto,
                d.inlined_into(&sub)
            );
        }
    }
}
