//! The record of applied patches, kept inside the target process.
//!
//! It lives in a private mapping of a memfd named `rlivepatch-state`, so that a later
//! rlivepatch finds it in `/proc/pid/maps`, it dies with the process (a new process that
//! reuses the pid has none), and a child forked after a patch inherits a private copy
//! (`list` in the child is true, and changing one process leaves the other's record as it
//! was). The record is JSON in one of two slots with a generation number and a checksum:
//! a write that is cut short leaves the other slot valid.

use crate::contract::code::Part;
use crate::error::Result;
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::Tracer;
use crate::patch::StateDecl;
use crate::remote::inject::{Injector, Scratch};
use crate::{bail, err};
use serde::{Deserialize, Serialize};

/// The memfd name; maps shows `/memfd:rlivepatch-state (deleted)`.
pub const MEMFD_NAME: &str = "rlivepatch-state";
/// Size of the mapping (pages are only allocated when written).
pub const STATE_SIZE: u64 = 8 << 20;
const HEADER: u64 = 4096;
const SLOT_SIZE: u64 = (STATE_SIZE - HEADER) / 2;
const MAGIC: &[u8; 8] = b"RLPSTAT1";
/// Version of the record format.
pub const FORMAT: u32 = 2;

/// One replaced function of an applied patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedFunc {
    /// Path of the object the function is in.
    pub object: String,
    /// The old function's symbol.
    pub symbol: String,
    /// The old function's entry.
    pub old_addr: u64,
    /// The old function's size.
    pub old_size: u64,
    /// The original bytes at the entry (they equal the file's).
    #[serde(with = "hex_bytes")]
    pub orig: Vec<u8>,
    /// The new function's name in the patch.
    pub new_name: String,
    /// The new function's address.
    pub new_addr: u64,
    /// The new function's size (0 when the patch does not say).
    pub new_size: u64,
    /// The island slot this patch's jump goes through, when the new function is out of
    /// reach of a 32-bit displacement.
    pub island: Option<u64>,
    /// For an IFUNC: the implementation the resolver picked, which is what was patched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<String>,
    /// The separate debug file the old symbol came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// The parts of the old function split off from its body (`work.cold`), at run-time
    /// addresses: a thread there is inside the function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// The parts of the new function split off from its body, at run-time addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_parts: Vec<Part>,
    /// Other names of the old function the patch replaces with it (aliases, or functions
    /// the compiler folded into the same code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The preserving path the entry jumps to, when callers rely on registers the old
    /// function leaves alone (see [`crate::remote::preserve`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve: Option<Preserve>,
    /// `RLIVEPATCH_FUNC_WRAP`: the new function calls the code it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap: Option<Wrap>,
    /// In a copy of an object loaded after the apply (its load address): the runtime's
    /// hook patched it, and the record knows it from the runtime's table
    /// ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<u64>,
}

/// A replacement that calls the code it replaces (`RLIVEPATCH_FUNC_WRAP`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wrap {
    /// The patch's function pointer (run-time address).
    pub slot: u64,
    /// What it holds: a trampoline into the original, or the function of the patch below.
    pub target: u64,
    /// The trampoline (two island slots), when it calls the original: the original's
    /// first instructions, relocated, then a jump back into it.
    pub trampoline: Option<u64>,
    /// For each instruction of the trampoline, its offset and the offset of the
    /// original instruction it stands for (the unwinder reads the original's CFI).
    #[serde(default)]
    pub points: Vec<(u32, u32)>,
}

/// A redirect through the preserving path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preserve {
    /// Its entry in the runtime's table.
    pub index: u32,
    /// Its stub: two island slots the entry jumps to.
    pub stub: u64,
    /// The registers kept for the callers, for messages.
    pub keeps: Vec<String>,
    /// The thunk's code up to its call of the new function, which reads the entry: a
    /// thread there is on its way into the new function. (The rest of the thunk is
    /// checked when the runtime may go: [`crate::ops::disable::plan`].)
    pub thunk: (u64, u64),
}

impl AppliedFunc {
    /// Where the old entry jumps: the preserving stub, an island slot, or the new function.
    pub fn target(&self) -> u64 {
        match (&self.preserve, self.island) {
            (Some(p), _) => p.stub,
            (None, Some(slot)) => slot,
            (None, None) => self.new_addr,
        }
    }

    /// The island slots the redirect uses.
    pub fn slots(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.island.into_iter().collect();
        if let Some(p) = &self.preserve {
            v.extend([p.stub, p.stub + crate::remote::redirect::SLOT_SIZE]);
        }
        if let Some(t) = self.wrap.as_ref().and_then(|w| w.trampoline) {
            v.extend([t, t + crate::remote::redirect::SLOT_SIZE]);
        }
        v
    }
}

/// One applied patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedPatch {
    /// Its name.
    pub name: String,
    /// The file it was loaded from.
    pub path: String,
    /// `dlopen` handle.
    pub handle: u64,
    /// Load bias of the patch.
    pub base: u64,
    /// The memfd holding the patch in the target (kept open while loaded, so that its
    /// `/proc/PID/fd/N` name is unique).
    pub fd: i32,
    /// Switched without the consistency check: its code is never unloaded.
    pub forced: bool,
    /// An atomic-replace patch.
    pub replace: bool,
    /// System states it declares.
    pub states: Vec<StateDecl>,
    /// Callbacks at run-time addresses: pre_patch, post_patch, pre_unpatch, post_unpatch.
    pub callbacks: [Option<u64>; 4],
    /// The functions it replaces.
    pub funcs: Vec<AppliedFunc>,
    /// When it was applied (seconds since the epoch).
    pub applied_at: u64,
    /// Disabled, but its code stays mapped because it was forced.
    #[serde(default)]
    pub disabled: bool,
    /// Run-time addresses of its `struct rlp_state`s, in declaration order.
    #[serde(default)]
    pub state_addrs: Vec<u64>,
    /// Island slot pairs holding the thunks of its bound places (`RLP_KIND_RELOC` out of
    /// reach of the patch): the patch's code uses them as long as it is loaded.
    #[serde(default)]
    pub thunks: Vec<u64>,
    /// Its functions in objects the process had not loaded when it was applied, at file
    /// addresses: the runtime's hook patches each copy that comes ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coming: Vec<crate::livepatch::coming::ComingFunc>,
    /// Callbacks of objects it changes (`RLIVEPATCH_OBJECT_CALLBACKS`), at run-time
    /// addresses: pre_patch, post_patch, pre_unpatch, post_unpatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_callbacks: Vec<(String, [Option<u64>; 4])>,
}

impl AppliedPatch {
    /// The island slots the patch uses: its redirects', and its thunks' while its code
    /// stays (`unloading`).
    pub fn slots(&self, unloading: bool) -> Vec<u64> {
        let mut v: Vec<u64> = self.funcs.iter().flat_map(|f| f.slots()).collect();
        if unloading {
            for t in &self.thunks {
                v.extend([*t, t + crate::remote::redirect::SLOT_SIZE]);
            }
        }
        v
    }
}

/// A page of island slots near some code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Island {
    /// Page address.
    pub addr: u64,
    /// Slots in use.
    pub used: Vec<u64>,
}

/// How far an operation got. Each stage is recorded before its step starts, so that a
/// run killed midway leaves enough for the next one to finish or undo it, running each
/// callback at most once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Apply: loading the patch (and the runtime).
    #[default]
    Loading,
    /// Apply: loaded, symbols and islands set up.
    Loaded,
    /// Apply: pre_patch is running or ran.
    PrePatching,
    /// Disable: pre_unpatch is running or ran.
    PreUnpatching,
    /// The switch is running or ran.
    Switching,
    /// Apply: post_patch is running or ran.
    PostPatching,
    /// Disable: post_unpatch is running or ran.
    PostUnpatching,
}

/// An operation in progress, recorded from its first step so that a run killed midway
/// can be recognised and finished or undone by the next one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// `apply` or `disable`.
    pub op: String,
    /// The patch.
    pub patch: String,
    /// rlivepatch's pid and start time.
    pub tool_pid: i32,
    /// rlivepatch's start time (ticks since boot), to tell a dead run from a live one.
    pub tool_start: u64,
    /// How far it got.
    #[serde(default)]
    pub stage: Stage,
    /// The patch being loaded (apply), once loaded.
    pub loading: Option<AppliedPatch>,
    /// Entry writes of the switch: address, bytes before, bytes after.
    pub writes: Vec<(u64, String, String)>,
    /// Scratch memory of the run.
    pub scratch: Option<Scratch>,
    /// Island pages mapped by this run.
    pub new_islands: Vec<u64>,
}

/// The whole record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Record {
    /// Format version.
    pub format: u32,
    /// Applied patches, oldest first (the stack order).
    pub patches: Vec<AppliedPatch>,
    /// Island pages.
    pub islands: Vec<Island>,
    /// An operation in progress.
    pub pending: Option<Pending>,
    /// The rlivepatch runtime, when loaded.
    #[serde(default)]
    pub runtime: Option<crate::remote::runtime::RuntimeRecord>,
    /// The jump written into the loader's debugger notification point, while a patch
    /// waits for objects to come ([`crate::livepatch::coming`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<crate::livepatch::coming::Hook>,
}

impl Pending {
    /// A new pending operation of this rlivepatch.
    pub fn new(op: &str, patch: &str) -> Pending {
        Pending {
            op: op.to_string(),
            patch: patch.to_string(),
            tool_pid: std::process::id() as i32,
            tool_start: crate::os::process::start_time("/proc/self/stat").unwrap_or(0),
            stage: Stage::Loading,
            loading: None,
            writes: Vec::new(),
            scratch: None,
            new_islands: Vec::new(),
        }
    }

    /// Is the rlivepatch that recorded it still running?
    pub fn tool_alive(&self) -> bool {
        crate::os::process::start_time(&format!("/proc/{}/stat", self.tool_pid))
            == Some(self.tool_start)
    }
}

impl Record {
    /// A patch by name.
    pub fn patch(&self, name: &str) -> Option<&AppliedPatch> {
        self.patches.iter().find(|p| p.name == name)
    }

    /// The patches active on the function at `old_addr`, oldest first.
    pub fn stack_of(&self, old_addr: u64) -> Vec<(&AppliedPatch, &AppliedFunc)> {
        self.patches
            .iter()
            .filter(|p| !p.disabled)
            .filter_map(|p| {
                p.funcs
                    .iter()
                    .find(|f| f.old_addr == old_addr)
                    .map(|f| (p, f))
            })
            .collect()
    }

    /// Is there nothing left to remember?
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
            && self.islands.is_empty()
            && self.pending.is_none()
            && self.runtime.is_none()
            && self.hook.is_none()
    }
}

/// Where the record lives in one process.
#[derive(Debug, Clone, Copy)]
pub struct Store {
    /// Address of the mapping.
    pub addr: u64,
    generation: u64,
}

fn checksum(b: &[u8]) -> u64 {
    // FNV-1a: enough to tell a torn write from a whole one.
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Find the state mapping in `maps`.
pub fn find_mapping(maps: &[Mapping]) -> Option<u64> {
    let name = format!("/memfd:{MEMFD_NAME}");
    maps.iter()
        .find(|m| m.path == name && m.offset == 0)
        .map(|m| m.start)
}

impl Store {
    /// Read the record of a process: `None` when it has no state mapping.
    pub fn load(proc: &Process, maps: &[Mapping]) -> Result<Option<(Store, Record)>> {
        let Some(addr) = find_mapping(maps) else {
            return Ok(None);
        };
        let header = proc.read(addr, 16)?;
        if &header[..8] != MAGIC {
            bail!(
                Failed,
                "the rlivepatch state of process {} at {addr:#x} is not readable (bad magic)",
                proc.pid
            );
        }
        let mut best: Option<(u64, Record)> = None;
        for slot in 0..2 {
            let base = addr + HEADER + slot * SLOT_SIZE;
            let head = proc.read(base, 24)?;
            let generation_no = u64::from_le_bytes(head[0..8].try_into().unwrap());
            let len = u64::from_le_bytes(head[8..16].try_into().unwrap());
            let sum = u64::from_le_bytes(head[16..24].try_into().unwrap());
            if generation_no == 0 || len == 0 || len > SLOT_SIZE - 24 {
                continue;
            }
            let body = proc.read(base + 24, len as usize)?;
            if checksum(&body) != sum {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Record>(&body) else {
                continue;
            };
            if best.as_ref().is_none_or(|(g, _)| generation_no > *g) {
                best = Some((generation_no, rec));
            }
        }
        match best {
            Some((generation, rec)) => {
                if rec.format > FORMAT {
                    bail!(
                        Failed,
                        "process {} was patched by a newer rlivepatch (state format {}); use that version",
                        proc.pid,
                        rec.format
                    );
                }
                Ok(Some((Store { addr, generation }, rec)))
            }
            None => Ok(Some((
                Store {
                    addr,
                    generation: 0,
                },
                Record {
                    format: FORMAT,
                    ..Default::default()
                },
            ))),
        }
    }

    /// Create the state mapping in the target (through the borrowed thread).
    pub fn create(inj: &mut Injector, tr: &mut Tracer, proc: &Process) -> Result<Store> {
        let fd = inj.memfd_with(tr, proc, MEMFD_NAME, MAGIC)?;
        let r = (|| -> Result<u64> {
            let t = inj.syscall(tr, libc::SYS_ftruncate, &[fd as u64, STATE_SIZE])?;
            if t < 0 {
                bail!(
                    Failed,
                    "ftruncate of the state memfd failed: {}",
                    std::io::Error::from_raw_os_error(-t as i32)
                );
            }
            let a = inj.syscall(
                tr,
                libc::SYS_mmap,
                &[
                    0,
                    STATE_SIZE,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    libc::MAP_PRIVATE as u64,
                    fd as u64,
                    0,
                ],
            )?;
            if a < 0 {
                bail!(
                    Failed,
                    "mapping the state memfd failed: {}",
                    std::io::Error::from_raw_os_error(-a as i32)
                );
            }
            Ok(a as u64)
        })();
        inj.syscall(tr, libc::SYS_close, &[fd as u64])?;
        Ok(Store {
            addr: r?,
            generation: 0,
        })
    }

    /// Write the record (the slot not holding the newest one).
    pub fn save(&mut self, proc: &Process, rec: &Record) -> Result<()> {
        let body = serde_json::to_vec(rec).map_err(|e| err!(Failed, "encoding the state: {e}"))?;
        if body.len() as u64 > SLOT_SIZE - 24 {
            bail!(
                Failed,
                "the rlivepatch state of process {} outgrew its {} bytes; disable some patches",
                proc.pid,
                SLOT_SIZE
            );
        }
        let generation_no = self.generation + 1;
        let base = self.addr + HEADER + (generation_no % 2) * SLOT_SIZE;
        // Body first, then the header that makes it valid.
        proc.write(base + 24, &body)?;
        let mut head = generation_no.to_le_bytes().to_vec();
        head.extend((body.len() as u64).to_le_bytes());
        head.extend(checksum(&body).to_le_bytes());
        proc.write(base, &head)?;
        self.generation = generation_no;
        Ok(())
    }

    /// Unmap the state (when nothing is left to remember).
    pub fn remove(self, inj: &mut Injector, tr: &mut Tracer) -> Result<()> {
        let r = inj.syscall(tr, libc::SYS_munmap, &[self.addr, STATE_SIZE])?;
        if r < 0 {
            bail!(
                Failed,
                "unmapping the state failed: {}",
                std::io::Error::from_raw_os_error(-r as i32)
            );
        }
        Ok(())
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::elf::symbols::hex(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        (0..s.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// Read the record of a process without attaching to it.
pub fn read_record(pid: i32) -> Result<(Process, Vec<Mapping>, Record)> {
    let proc = Process::open(pid)?;
    let maps = proc.maps()?;
    let rec = Store::load(&proc, &maps)?
        .map(|(_, r)| r)
        .unwrap_or_default();
    Ok((proc, maps, rec))
}

/// Release island slots; returns the pages left empty (to unmap after the switch).
pub fn free_slots(rec: &mut Record, slots: &[u64]) -> Vec<u64> {
    let mut empty = Vec::new();
    for isl in rec.islands.iter_mut() {
        isl.used.retain(|u| !slots.contains(u));
        if isl.used.is_empty() {
            empty.push(isl.addr);
        }
    }
    rec.islands.retain(|i| !i.used.is_empty());
    empty
}
