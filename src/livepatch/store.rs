//! The record kept inside the target process.
//!
//! It lives in a private mapping of a memfd named `rlivepatch-state`, so that a later
//! rlivepatch finds it in `/proc/pid/maps`, it dies with the process (a new process that
//! reuses the pid has none), and a child forked after a patch inherits a private copy
//! (`list` in the child is true, and changing one process leaves the other's record as it
//! was). The record is JSON in one of two slots with a generation number and a checksum:
//! a write that is cut short leaves the other slot valid.

use crate::error::Result;
use crate::livepatch::record::{FORMAT, Record};
use crate::os::process::{Mapping, Process};
use crate::os::ptrace::Tracer;
use crate::remote::inject::{Injector, Step};
use crate::{bail, err};

/// The memfd name; maps shows `/memfd:rlivepatch-state (deleted)`.
pub const MEMFD_NAME: &str = "rlivepatch-state";
/// Size of the mapping (pages are only allocated when written).
pub const STATE_SIZE: u64 = 8 << 20;
const HEADER: u64 = 4096;
const SLOT_SIZE: u64 = (STATE_SIZE - HEADER) / 2;
const MAGIC: &[u8; 8] = b"RLPSTAT1";
/// Where the record lives in one process.
#[derive(Debug, Clone, Copy)]
pub struct Store {
    /// Address of the mapping.
    pub addr: u64,
    generation: u64,
    /// The target's descriptor of the memfd, while it is not mapped yet
    /// ([`Store::unmapped`]): the record is written into the file, and the mapping shows
    /// it from the moment it is made.
    unmapped: Option<i32>,
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
                Ok(Some((
                    Store {
                        addr,
                        generation,
                        unmapped: None,
                    },
                    rec,
                )))
            }
            None => Ok(Some((
                Store {
                    addr,
                    generation: 0,
                    unmapped: None,
                },
                Record {
                    format: FORMAT,
                    ..Default::default()
                },
            ))),
        }
    }

    /// Create the state mapping in the target (through the borrowed thread).
    pub fn create(
        inj: &mut Injector,
        tr: &mut Tracer,
        proc: &Process,
        made: Option<i32>,
    ) -> Result<Store> {
        let fd = match made {
            Some(fd) => {
                let filled = crate::remote::inject::fill_memfd(
                    proc,
                    fd,
                    MEMFD_NAME,
                    MAGIC,
                    Some(STATE_SIZE),
                );
                if let Err(e) = filled {
                    inj.syscall(tr, libc::SYS_close, &[fd as u64])?;
                    return Err(e);
                }
                fd
            }
            None => inj.memfd_sized(tr, proc, MEMFD_NAME, MAGIC, Some(STATE_SIZE))?,
        };
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let map = [0, STATE_SIZE, prot, libc::MAP_PRIVATE as u64, fd as u64, 0];
        let steps = [
            Step::syscall(libc::SYS_mmap, &map),
            Step::syscall(libc::SYS_close, &[fd as u64]),
        ];
        let done = inj.batch(tr, &steps, "mapping the state memfd")?;
        if done.len() < 2 {
            inj.syscall(tr, libc::SYS_close, &[fd as u64])?;
        }
        let addr =
            crate::remote::inject::returned(done[0] as i64, "mapping the state memfd", proc.pid)?;
        Ok(Store {
            addr,
            generation: 0,
            unmapped: None,
        })
    }

    /// The state in the target's memfd `fd` (made empty, still open there), filled and
    /// sized but not mapped: its mapping is made in the target's next hand-over
    /// ([`Store::map_steps`]), which has other work too, so that the record costs the
    /// apply no hand-over of its own. Until then the record is written into the file,
    /// where no later rlivepatch looks: one killed meanwhile leaves no record, only
    /// rlivepatch's memory and descriptors, which the next run clears as it clears
    /// those of a run killed before the record was made.
    pub fn unmapped(proc: &Process, fd: i32) -> Result<Store> {
        crate::remote::inject::fill_memfd(proc, fd, MEMFD_NAME, MAGIC, Some(STATE_SIZE))?;
        Ok(Store {
            addr: 0,
            generation: 0,
            unmapped: Some(fd),
        })
    }

    /// The target's descriptor of a state not mapped yet.
    pub fn unmapped_fd(&self) -> Option<i32> {
        self.unmapped
    }

    /// The steps that map a state made with [`Store::unmapped`] and close its
    /// descriptor, for the front of a batch; [`Store::mapped_by`] takes their results.
    pub fn map_steps(fd: i32) -> [Step; 2] {
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        // The fault stands for a mapping the kernel refuses (EBADF here; ENOMEM, or a
        // limit on the process's mappings, in life).
        let mapped = if crate::os::fault::fails("state:map") {
            u64::MAX
        } else {
            fd as u64
        };
        let map = [0, STATE_SIZE, prot, libc::MAP_PRIVATE as u64, mapped, 0];
        [
            Step::syscall(libc::SYS_mmap, &map),
            Step::syscall(libc::SYS_close, &[fd as u64]),
        ]
    }

    /// The state is mapped at what [`Store::map_steps`]' mmap returned (`ret`), or the
    /// error that says why not (the descriptor is still the caller's then).
    pub fn mapped_by(&mut self, ret: u64, pid: i32) -> Result<()> {
        self.addr = crate::remote::inject::returned(ret as i64, "mapping the state memfd", pid)?;
        self.unmapped = None;
        Ok(())
    }

    /// The mapping that holds the record, as `/proc/PID/maps` shows it (its device and
    /// inode aside).
    pub fn mapping(&self) -> Mapping {
        Mapping {
            start: self.addr,
            end: self.addr + STATE_SIZE,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev: (0, 0),
            inode: 0,
            path: format!("/memfd:{MEMFD_NAME}"),
            deleted: true,
        }
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
        // (Not mapped yet: `addr` is 0 and `base` the offset in the file.)
        // Header and body in one write to the slot not in use: a torn write (rlivepatch
        // killed midway) fails the header's checksum, and the other slot stands.
        let mut slot = generation_no.to_le_bytes().to_vec();
        slot.extend((body.len() as u64).to_le_bytes());
        slot.extend(checksum(&body).to_le_bytes());
        slot.extend(&body);
        match self.unmapped {
            Some(fd) => write_file_at(proc, fd, base, &slot)?,
            None => proc.write_unverified(base, &slot)?,
        }
        self.generation = generation_no;
        Ok(())
    }

    /// Unmap the state (when nothing is left to remember). A state not mapped yet has
    /// nothing to unmap: its descriptor is closed with the run's other memfds.
    pub fn remove(self, inj: &mut Injector, tr: &mut Tracer) -> Result<()> {
        if self.unmapped.is_some() {
            return Ok(());
        }
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

/// Write `bytes` at `offset` of the target's descriptor `fd`, through `/proc/PID/fd`.
fn write_file_at(proc: &Process, fd: i32, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{}/fd/{fd}", proc.pid);
    if crate::os::fault::fails("state:file") {
        bail!(
            Failed,
            "writing the rlivepatch state into {path}: Input/output error"
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(bytes, offset))
        .map_err(|e| err!(Failed, "writing the rlivepatch state into {path}: {e}"))
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
