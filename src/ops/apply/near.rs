//! Where a generated patch is loaded: next to the data its code reaches RIP-relatively
//! and the functions it calls (`RLP_KIND_RELOC` displacements), so that each access is
//! the compiler's own instruction with its displacement written in place, instead of a
//! thunk next to the data and two indirect jumps, and each call a direct call instead of
//! one through a stub.
//!
//! The dynamic loader maps an object at its first segment's link-time address when that
//! range is free (the address is an `mmap` hint), and a shared object is linked at 0: it
//! lands wherever the kernel puts new mappings, within 2 GiB of the libraries but
//! terabytes from a position-independent executable. So the patch is moved
//! ([`crate::elf::rebase`]) to a free range from which every datum it binds is within
//! reach, below the object that holds the data when it can (the brk heap grows up from
//! the end of the executable, which a range above would stop). When there is none, or the
//! file cannot be moved, or the loader puts it elsewhere all the same, each far access
//! takes its thunk as before: the apply reports which form each access got.

use crate::elf::rebase;
use crate::os::process::Mapping;
use crate::patch::RelocKind;
use crate::remote::relocate::RelocFill;

const PAGE: u64 = 4096;
/// The most a RIP-relative displacement reaches (either way, from the end of the
/// instruction).
const REACH: u64 = i32::MAX as u64;

/// What is loaded, and where it was meant to land.
pub(super) struct Load {
    /// The patch's bytes, moved or as they are.
    pub bytes: Vec<u8>,
    /// How far the bytes were moved (0: not moved). The patch's own addresses (its file
    /// addresses plus the base) stay those of the file as it was: base = the loader's
    /// bias + `delta`.
    pub delta: u64,
    /// Why it was not moved although it binds data (for the report).
    pub kept: Option<String>,
}

/// Does the patch reach anything in the process through a displacement?
pub(super) fn binds(places: &[RelocFill]) -> bool {
    places.iter().any(|p| p.kind != RelocKind::Abs64)
}

/// The bytes to load for `bytes`, whose code binds `places`, in a process with `maps`.
pub(super) fn load(bytes: &[u8], places: &[RelocFill], maps: &[Mapping]) -> Load {
    let kept = |why: String| Load {
        bytes: bytes.to_vec(),
        delta: 0,
        kept: Some(why),
    };
    let values: Vec<u64> = places
        .iter()
        .filter(|p| matches!(p.kind, RelocKind::Rel32 { .. } | RelocKind::Call32 { .. }))
        .map(|p| p.value)
        .collect();
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return Load {
            bytes: bytes.to_vec(),
            delta: 0,
            kept: None,
        };
    };
    let (span, align) = match rebase::span(bytes).and_then(|s| Ok((s, rebase::alignment(bytes)?))) {
        Ok(v) => v,
        Err(e) => return kept(format!("the patch file cannot be moved ({e})")),
    };
    let min = crate::os::process::mmap_min_addr();
    let Some(at) = placement(maps, span.1 - span.0, align, lo, hi, min) else {
        return kept(format!(
            "no free range of {} KiB there",
            (span.1 - span.0) / 1024 + 8
        ));
    };
    let delta = at.wrapping_sub(span.0);
    match rebase::rebase(bytes, delta) {
        Ok(moved) => Load {
            bytes: moved,
            delta,
            kept: None,
        },
        Err(e) => kept(format!("the patch file cannot be moved ({e})")),
    }
}

/// The address for an object of `len` bytes (aligned to `align`) from which every
/// address in `lo..=hi` is within reach of a RIP-relative displacement: in a free gap of
/// `maps`, with a free page on each side, the closest below the data first.
pub(super) fn placement(
    maps: &[Mapping],
    len: u64,
    align: u64,
    lo: u64,
    hi: u64,
    min_addr: u64,
) -> Option<u64> {
    let align = align.max(PAGE);
    let fits = |a: u64| hi.saturating_sub(a) < REACH && (a + len).saturating_sub(lo) < REACH;
    // The brk heap grows into the gap above it: never there.
    let heap = crate::os::process::heap_growth(maps);
    let mut below = Vec::new();
    let mut other = Vec::new();
    for (s, e) in crate::os::process::free_ranges(maps, min_addr) {
        let (s, e) = (s + PAGE, e.saturating_sub(PAGE));
        if e < s + len {
            continue;
        }
        if e <= lo {
            // Below the data: as high as it goes.
            let a = (e - len) & !(align - 1);
            if a >= s && fits(a) {
                below.push(a);
            }
        } else {
            let mut a = (s + align - 1) & !(align - 1);
            if let Some((h0, h1)) = heap
                && a < h1
                && a + len > h0
            {
                a = (h1 + align - 1) & !(align - 1);
            }
            if a + len <= e && fits(a) {
                other.push(a);
            }
        }
    }
    below
        .into_iter()
        .max()
        .or_else(|| other.into_iter().min_by_key(|&a| a.abs_diff(lo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, end: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            read: true,
            write: false,
            exec: false,
            shared: false,
            offset: 0,
            dev: (0, 0),
            inode: 0,
            path: path.into(),
            deleted: false,
        }
    }

    /// Where a 20 KiB patch reaching 0x1000 bytes from `lo` goes among `maps`.
    fn place(maps: &[Mapping], lo: u64) -> Option<u64> {
        placement(maps, 0x5000, 0x1000, lo, lo + 0x1000, 65536)
    }

    #[test]
    fn a_patch_goes_below_the_executable_within_reach() {
        let maps = [
            map(0x5555_0000_0000, 0x5555_0001_0000, "/bin/app"),
            map(0x5555_0100_0000, 0x5555_0200_0000, "[heap]"),
            map(0x7f00_0000_0000, 0x7f00_1000_0000, "/lib/libc.so.6"),
        ];
        let a = place(&maps, 0x5555_0000_8000).unwrap();
        assert!(a + 0x5000 < 0x5555_0000_0000, "{a:#x}");
        assert!(0x5555_0000_9000 - a < REACH);
    }

    #[test]
    fn no_room_within_reach_is_none() {
        // Everything within 2 GiB of the data is taken.
        let maps = [
            map(0x1_0000_0000, 0x3_0000_0000, "[anon]"),
            map(0x3_0000_0000, 0x3_0001_0000, "/bin/app"),
            map(0x3_0001_0000, 0x5_0000_0000, "[anon]"),
        ];
        assert_eq!(place(&maps, 0x3_0000_8000), None);
    }

    #[test]
    fn the_heap_keeps_room_to_grow() {
        let maps = [
            map(0x10000, 0x5555_0000_0000, "[anon]"),
            map(0x5555_0000_0000, 0x5555_0001_0000, "/bin/app"),
            map(0x5555_0002_0000, 0x5555_0003_0000, "[heap]"),
        ];
        let a = place(&maps, 0x5555_0000_8000).unwrap();
        let growth = 0x5555_0002_0000..0x5555_0002_0000 + (1 << 30);
        assert!(
            !growth.contains(&a) && !growth.contains(&(a + 0x5000 - 1)),
            "{a:#x}"
        );
    }
}
