//! Stack unwinding of a stopped thread with DWARF CFI (`.eh_frame`, and `.debug_frame`
//! where present), through signal frames.
//!
//! Targets are built without frame pointers, so only CFI gives the return addresses. A
//! stack counts as complete only when the CFI says the outermost frame has no return
//! address (`_start`, `clone`/`clone3` mark theirs undefined); a frame without unwind
//! information, an unreadable stack or a loop is *unreliable*, never assumed safe.
//!
//! Unwind tables are located once per object and kept for the whole run (retries reuse
//! them); each rule row is cached by address when it is made of simple rules.

use crate::elf::objects::{LoadedObject, Objects};
use crate::elf::symbols::ElfFile;
use crate::os::process::Process;
use crate::os::ptrace::Regs;
use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection, UnwindTableRow,
};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

type R<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// DWARF register numbers of x86_64.
const RSP: u16 = 7;
const RA: u16 = 16;
const NREGS: usize = 17;

/// One frame of an unwound stack.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// The instruction pointer: the exact pc for the innermost frame and for a frame
    /// interrupted by a signal, a return address otherwise.
    pub pc: u64,
    /// `pc` is an exact instruction address (not a return address).
    pub exact: bool,
    /// Where this frame's return address is stored on the stack (`None` at the base).
    pub ra_slot: Option<u64>,
    /// This frame is a signal trampoline (`__restore_rt`): the frame above it was
    /// interrupted by a signal.
    pub signal: bool,
}

impl Frame {
    /// The last frame a walk reaches (no return address known past it).
    fn outermost(pc: u64, exact: bool) -> Frame {
        Frame {
            pc,
            exact,
            ra_slot: None,
            signal: false,
        }
    }
}

/// An unwound stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// `None` when the unwind reached the base; otherwise why it is unreliable.
    pub unreliable: Option<Unreliable>,
}

/// Why a stack could not be unwound to its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreliable {
    /// A frame without call-frame information (a program built without unwind tables,
    /// hand-written assembly, start-up code), as opposed to anything else (no code
    /// mapped, a loop, an unreadable stack, bad tables).
    pub no_unwind_info: bool,
    /// What stopped the walk, and where, in words.
    pub text: String,
}

impl Unreliable {
    fn other(text: impl Into<String>) -> Option<Unreliable> {
        Some(Unreliable {
            no_unwind_info: false,
            text: text.into(),
        })
    }

    fn no_info(text: String) -> Option<Unreliable> {
        Some(Unreliable {
            no_unwind_info: true,
            text,
        })
    }
}

impl std::fmt::Display for Unreliable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why one step of an unwind failed.
enum StepError {
    /// No call-frame information covers the pc.
    NoUnwindInfo,
    /// Anything else, in words.
    Bad(String),
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError::Bad(s)
    }
}

/// A pc range to be treated as another address: a return trampoline standing for the
/// return address it replaced.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    /// Start of the range.
    pub start: u64,
    /// End of the range.
    pub end: u64,
    /// The address it stands for.
    pub target: u64,
}

/// Code relocated from a function (a wrapper's trampoline into the original): a thread
/// stopped there unwinds with the original's CFI at the instruction it stands for.
#[derive(Debug, Clone)]
pub struct Relocated {
    /// Start of the relocated code.
    pub start: u64,
    /// End of it.
    pub end: u64,
    /// The original function's entry.
    pub orig: u64,
    /// (offset here, offset in the original) for each instruction, in order.
    pub points: Vec<(u32, u32)>,
}

impl Relocated {
    /// The original address `pc` (in the relocated code) stands for.
    fn original(&self, pc: u64) -> u64 {
        let off = (pc - self.start) as u32;
        let i = self
            .points
            .partition_point(|p| p.0 <= off)
            .saturating_sub(1);
        self.points
            .get(i)
            .map_or(self.orig, |p| self.orig + p.1 as u64)
    }
}

/// Simple rules, cached per lookup address.
#[derive(Debug, Clone)]
struct SimpleRow {
    cfa_reg: u16,
    cfa_off: i64,
    rules: Vec<(u16, SimpleRule)>,
    signal: bool,
}

#[derive(Debug, Clone, Copy)]
enum SimpleRule {
    Undefined,
    Offset(i64),
    ValOffset(i64),
    Register(u16),
}

struct ModuleTables {
    file: Arc<ElfFile>,
    bias: u64,
    bases: BaseAddresses,
    eh_frame: Option<(usize, usize)>,
    eh_frame_hdr: Option<(usize, usize)>,
    debug_frame: Option<(usize, usize)>,
    /// FDE index when there is no `.eh_frame_hdr`: (start, end, offset), sorted.
    eh_index: Option<Arc<FdeIndex>>,
    debug_index: Option<Arc<FdeIndex>>,
}

/// (start, end, offset) of each FDE of a section, sorted.
type FdeIndex = Vec<(u64, u64, usize)>;

/// The FDE indexes of a file: `.eh_frame`'s (when it has no `.eh_frame_hdr`) and
/// `.debug_frame`'s; the file is kept with them, so that its address names it alone.
type FileIndexes = (Arc<ElfFile>, Option<Arc<FdeIndex>>, Option<Arc<FdeIndex>>);

/// The FDE indexes of each file parsed in this run (by the address of its shared parse):
/// a fleet run builds them once per object file, not once per process.
static FDE_INDEXES: std::sync::LazyLock<std::sync::Mutex<HashMap<usize, FileIndexes>>> =
    std::sync::LazyLock::new(Default::default);

/// Unwinds threads of one process, caching tables per object.
pub struct Unwinder {
    modules: HashMap<(u64, String), Option<Rc<ModuleTables>>>,
    rows: HashMap<u64, Option<SimpleRow>>,
    ctx: Box<UnwindContext<usize>>,
    /// Pc ranges that stand for other addresses (return trampolines).
    pub aliases: Vec<Alias>,
    /// Relocated code: wrappers' trampolines (see [`Relocated`]).
    pub relocated: Vec<Relocated>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

/// How an unwind that found no CFI for a frame says so (a program built without unwind
/// tables, hand-written assembly).
pub const NO_UNWIND_INFO: &str = "no unwind information";

/// Is `addr` in the entry code of the dynamic loader (`_start`, then `_dl_start_user`,
/// which calls the constructors and jumps to the program's entry)?
fn in_loader_start(obj: &LoadedObject, addr: u64) -> bool {
    let Ok(file) = obj.file() else { return false };
    let Ok(bias) = obj.bias() else { return false };
    let loader = file.interp.is_none()
        && file
            .soname
            .as_deref()
            .is_some_and(|s| s.starts_with("ld-linux") || s.starts_with("ld64.so"));
    let Some(entry) = file.entry() else {
        return false;
    };
    let v = addr.wrapping_sub(bias);
    loader && v >= entry && v < entry + 128
}

/// Stack memory: the part of a stopped thread's stack its frames use, read with as few
/// `process_vm_readv` as possible; reads outside the stack go to the process.
///
/// A first window from the stack pointer (see [`FIRST_WINDOW`]), grown up to the end of
/// the stack's mapping when the unwind reads past it, at least doubling each time. The
/// whole rest of the mapping was read at first: a thread's mapping ends with its
/// thread-local storage and thread descriptor (with a preloaded library's TLS, 6 KiB of
/// the bench target's 9 KiB, its frames the other 2 KiB), the main thread's with the
/// environment; the pages copied were most of the check's system time.
pub struct StackMem<'a> {
    base: u64,
    /// The end of the stack's mapping (at most 8 MiB above `base`): the window grows up
    /// to there.
    end: u64,
    bytes: std::cell::RefCell<Vec<u8>>,
    /// A read came short (an unreadable page): the window grows no more.
    short: std::cell::Cell<bool>,
    proc: &'a Process,
}

/// The first window of a stack: 2 KiB from the stack pointer, to the end of that page.
const FIRST_WINDOW: u64 = 2048;

impl<'a> StackMem<'a> {
    fn new(proc: &'a Process, base: u64, end: u64, bytes: Vec<u8>, asked: usize) -> Self {
        StackMem {
            base,
            end,
            short: std::cell::Cell::new(bytes.len() < asked),
            bytes: std::cell::RefCell::new(bytes),
            proc,
        }
    }

    /// Read the stack of a stopped thread whose stack pointer is `sp` (its mapping ends
    /// the stack; a page when no mapping holds it).
    pub fn of_thread(
        proc: &'a Process,
        maps: &[crate::os::process::Mapping],
        sp: u64,
    ) -> StackMem<'a> {
        let (end, len) = Self::window(maps, sp);
        Self::new(proc, sp, end, proc.read_vm(sp, len), len)
    }

    /// [`StackMem::of_thread`] of several stopped threads whose stack pointers are
    /// `sps`, their first windows read together (see [`Process::read_vm_many`]).
    pub fn of_threads(
        proc: &'a Process,
        maps: &[crate::os::process::Mapping],
        sps: &[u64],
    ) -> Vec<StackMem<'a>> {
        let windows: Vec<(u64, usize)> = sps.iter().map(|&sp| Self::window(maps, sp)).collect();
        let ranges: Vec<(u64, usize)> = sps
            .iter()
            .zip(&windows)
            .map(|(&sp, &(_, len))| (sp, len))
            .collect();
        proc.read_vm_many(&ranges)
            .into_iter()
            .zip(sps.iter().zip(windows))
            .map(|(bytes, (&sp, (end, len)))| Self::new(proc, sp, end, bytes, len))
            .collect()
    }

    /// The end of the stack that holds `sp` and the length of its first window.
    fn window(maps: &[crate::os::process::Mapping], sp: u64) -> (u64, usize) {
        let end = crate::os::process::mapping_at(maps, sp)
            .map(|m| m.end)
            .unwrap_or(sp + 4096)
            .min(sp.saturating_add(8 << 20));
        let first = sp
            .saturating_add(FIRST_WINDOW)
            .checked_next_multiple_of(4096)
            .unwrap_or(u64::MAX)
            .min(end);
        (end, first.saturating_sub(sp) as usize)
    }

    /// Grow the window to hold `to` (whole pages, at least twice what it was).
    fn grow(&self, to: u64) {
        let mut bytes = self.bytes.borrow_mut();
        let have = self.base + bytes.len() as u64;
        let want = to
            .max(have.saturating_add(bytes.len() as u64))
            .checked_next_multiple_of(4096)
            .unwrap_or(u64::MAX)
            .min(self.end);
        if want <= have {
            return;
        }
        let more = self.proc.read_vm(have, (want - have) as usize);
        self.short.set(more.len() < (want - have) as usize);
        bytes.extend_from_slice(&more);
    }

    /// The 8 bytes at `addr`. A frame of garbage may give any address at all: one whose
    /// 8 bytes would wrap around the address space is none.
    fn u64_at(&self, addr: u64) -> Option<u64> {
        let end = addr.checked_add(8)?;
        if addr >= self.base && end <= self.end {
            let have = self.base.saturating_add(self.bytes.borrow().len() as u64);
            if end > have && !self.short.get() {
                self.grow(end);
            }
            let bytes = self.bytes.borrow();
            if end <= self.base.saturating_add(bytes.len() as u64) {
                let o = (addr - self.base) as usize;
                return Some(u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()));
            }
        }
        self.proc.read_u64(addr).ok()
    }
}

impl Unwinder {
    /// An unwinder with empty caches.
    pub fn new() -> Unwinder {
        Unwinder {
            modules: HashMap::new(),
            rows: HashMap::new(),
            ctx: Box::new(UnwindContext::new()),
            aliases: Vec::new(),
            relocated: Vec::new(),
        }
    }

    fn tables(&mut self, obj: &LoadedObject) -> Option<Rc<ModuleTables>> {
        let key = (obj.start, obj.path.clone());
        if let Some(t) = self.modules.get(&key) {
            return t.clone();
        }
        let t = load_tables(obj).map(Rc::new);
        self.modules.insert(key, t.clone());
        t
    }

    /// Unwind a stopped thread from its registers.
    pub fn unwind(&mut self, objects: &Objects, mem: &StackMem, regs: &Regs) -> Stack {
        let mut r: [Option<u64>; NREGS] = [None; NREGS];
        for (i, v) in [
            regs.rax, regs.rdx, regs.rcx, regs.rbx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15, regs.rip,
        ]
        .into_iter()
        .enumerate()
        {
            r[i] = Some(v);
        }
        let mut frames = Vec::new();
        let mut pc = regs.rip;
        let mut exact = true;
        let unreliable = loop {
            if frames.len() >= 1024 {
                break Unreliable::other("more than 1024 frames");
            }
            if let Some(a) = self.aliases.iter().find(|a| a.start <= pc && pc < a.end) {
                pc = a.target;
            }
            // In a trampoline: the frame keeps its own address (the trampoline counts in
            // the switch check as such), the CFI is the original's.
            let cfi_pc = match self.relocated.iter().find(|m| m.start <= pc && pc < m.end) {
                Some(m) => m.original(pc),
                None => pc,
            };
            let lookup = if exact {
                cfi_pc
            } else {
                cfi_pc.wrapping_sub(1)
            };
            let Some(obj) = objects.by_addr(lookup).filter(|o| o.is_code(lookup)) else {
                frames.push(Frame::outermost(pc, exact));
                break Unreliable::other(format!("no code mapped at {pc:#x}"));
            };
            let Some(tables) = self.tables(obj) else {
                frames.push(Frame::outermost(pc, exact));
                break Unreliable::no_info(format!("{NO_UNWIND_INFO} in {}", obj.file_name()));
            };
            let step = self.step(&tables, lookup, &mut r, mem);
            match step {
                Err(_) if frames.is_empty() && in_clone_syscall(regs, mem) => {
                    // Stopped on the way out of the clone system call, where glibc leaves
                    // the code without CFI on purpose. The new thread (0 returned) has no
                    // frames yet: its stack is complete. The parent is in a leaf that goes
                    // straight to `ret`: the return address is at the stack pointer.
                    if regs.rax == 0 {
                        frames.push(Frame::outermost(pc, exact));
                        break None;
                    }
                    let slot = regs.rsp;
                    let Some(ra) = mem.u64_at(slot).filter(|_| returns_straight(mem, pc)) else {
                        frames.push(Frame::outermost(pc, exact));
                        break Unreliable::no_info(format!(
                            "{NO_UNWIND_INFO} at {}",
                            objects.symbolize(pc)
                        ));
                    };
                    frames.push(Frame {
                        pc,
                        exact,
                        ra_slot: Some(slot),
                        signal: false,
                    });
                    r[RSP as usize] = slot.checked_add(8);
                    pc = ra;
                    exact = false;
                    continue;
                }
                Err(_) if !frames.is_empty() && in_loader_start(obj, lookup) => {
                    // A process still starting (its libraries' constructors run, the
                    // autoload library's among them): the outermost frame is the dynamic
                    // loader's entry code, which has no CFI and never returns.
                    frames.push(Frame::outermost(pc, exact));
                    break None;
                }
                Err(StepError::NoUnwindInfo) => {
                    frames.push(Frame::outermost(pc, exact));
                    break Unreliable::no_info(format!(
                        "{NO_UNWIND_INFO} at {}",
                        objects.symbolize(pc)
                    ));
                }
                Err(StepError::Bad(why)) => {
                    frames.push(Frame::outermost(pc, exact));
                    break Unreliable::other(format!("{why} at {}", objects.symbolize(pc)));
                }
                Ok(None) => {
                    frames.push(Frame::outermost(pc, exact));
                    break None;
                }
                Ok(Some((ra, slot, signal))) => {
                    frames.push(Frame {
                        pc,
                        exact,
                        ra_slot: slot,
                        signal,
                    });
                    if ra == 0 {
                        break Unreliable::other(format!(
                            "return address 0 above {}",
                            objects.symbolize(pc)
                        ));
                    }
                    if frames.len() > 1
                        && frames
                            .iter()
                            .rev()
                            .skip(1)
                            .any(|f| f.pc == ra && f.ra_slot == slot)
                    {
                        break Unreliable::other("the stack loops");
                    }
                    pc = ra;
                    exact = signal;
                }
            }
        };
        Stack { frames, unreliable }
    }

    /// One step: apply the CFI row at `lookup` to `regs`. Returns the return address and
    /// where it was read from, or `None` at the base of the stack.
    fn step(
        &mut self,
        t: &ModuleTables,
        lookup: u64,
        regs: &mut [Option<u64>; NREGS],
        mem: &StackMem,
    ) -> Result<Option<(u64, Option<u64>, bool)>, StepError> {
        if let Some(Some(row)) = self.rows.get(&lookup) {
            let row = row.clone();
            return Ok(apply_simple(&row, regs, mem)?);
        }
        let v = lookup.wrapping_sub(t.bias);
        let data = t.file.data();
        // Try .eh_frame, then .debug_frame.
        if let Some((off, len)) = t.eh_frame {
            let eh = EhFrame::new(&data[off..off + len], LittleEndian);
            let fde = match (t.eh_frame_hdr, &t.eh_index) {
                (Some((ho, hl)), _) => EhFrameHdr::new(&data[ho..ho + hl], LittleEndian)
                    .parse(&t.bases, 8)
                    .ok()
                    .and_then(|h| {
                        h.table().and_then(|tab| {
                            tab.fde_for_address(&eh, &t.bases, v, EhFrame::cie_from_offset)
                                .ok()
                        })
                    }),
                (None, Some(idx)) => find_in_index(idx, v).and_then(|o| {
                    eh.fde_from_offset(&t.bases, gimli::EhFrameOffset(o), EhFrame::cie_from_offset)
                        .ok()
                }),
                _ => None,
            };
            if let Some(fde) = fde {
                let signal = fde.cie().is_signal_trampoline();
                let enc = fde.cie().encoding();
                let row = fde
                    .unwind_info_for_address(&eh, &t.bases, &mut self.ctx, v)
                    .map_err(|e| format!("bad unwind information ({e})"))?
                    .clone();
                return Ok(self.finish_row(&eh, enc, &row, signal, lookup, regs, mem)?);
            }
        }
        if let (Some((off, len)), Some(idx)) = (t.debug_frame, &t.debug_index) {
            let df = DebugFrame::new(&data[off..off + len], LittleEndian);
            if let Some(o) = find_in_index(idx, v)
                && let Ok(fde) = df.fde_from_offset(
                    &t.bases,
                    gimli::DebugFrameOffset(o),
                    DebugFrame::cie_from_offset,
                )
            {
                let enc = fde.cie().encoding();
                let row = fde
                    .unwind_info_for_address(&df, &t.bases, &mut self.ctx, v)
                    .map_err(|e| format!("bad unwind information ({e})"))?
                    .clone();
                return Ok(self.finish_row(&df, enc, &row, false, lookup, regs, mem)?);
            }
        }
        Err(StepError::NoUnwindInfo)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_row<'d, S: UnwindSection<R<'d>>>(
        &mut self,
        section: &S,
        enc: gimli::Encoding,
        row: &UnwindTableRow<usize>,
        signal: bool,
        lookup: u64,
        regs: &mut [Option<u64>; NREGS],
        mem: &StackMem,
    ) -> Result<Option<(u64, Option<u64>, bool)>, String> {
        if let Some(simple) = simplify(row, signal) {
            self.rows.insert(lookup, Some(simple.clone()));
            return apply_simple(&simple, regs, mem);
        }
        self.rows.insert(lookup, None);
        // General rules with DWARF expressions (signal trampolines, PLT entries).
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                reg(regs, register.0)?.wrapping_add(*offset as u64)
            }
            CfaRule::Expression(e) => {
                let expr = e
                    .get(section)
                    .map_err(|e| format!("bad CFA expression ({e})"))?;
                eval(expr, enc, None, regs, mem)?
            }
        };
        let old = *regs;
        let mut ra_slot = None;
        let mut ra_defined = true;
        for (register, rule) in row.registers() {
            let i = register.0 as usize;
            if i >= NREGS {
                continue;
            }
            let value = match rule {
                RegisterRule::Undefined => None,
                RegisterRule::SameValue => old[i],
                RegisterRule::Offset(n) => {
                    let at = cfa.wrapping_add(*n as u64);
                    if i == RA as usize {
                        ra_slot = Some(at);
                    }
                    mem.u64_at(at)
                }
                RegisterRule::ValOffset(n) => Some(cfa.wrapping_add(*n as u64)),
                RegisterRule::Register(r2) => old.get(r2.0 as usize).copied().flatten(),
                RegisterRule::Expression(e) => {
                    let expr = e
                        .get(section)
                        .map_err(|e| format!("bad register expression ({e})"))?;
                    let at = eval(expr, enc, Some(cfa), &old, mem)?;
                    if i == RA as usize {
                        ra_slot = Some(at);
                    }
                    mem.u64_at(at)
                }
                RegisterRule::ValExpression(e) => {
                    let expr = e
                        .get(section)
                        .map_err(|e| format!("bad register expression ({e})"))?;
                    Some(eval(expr, enc, Some(cfa), &old, mem)?)
                }
                RegisterRule::Constant(c) => Some(*c),
                _ => None,
            };
            if i == RA as usize && matches!(rule, RegisterRule::Undefined) {
                ra_defined = false;
            }
            regs[i] = value;
        }
        if !ra_defined {
            return Ok(None);
        }
        // A signal trampoline restores rsp itself (through an expression rule); for
        // ordinary frames the caller's rsp is the CFA.
        if !row.registers().any(|(r, _)| r.0 == RSP) {
            regs[RSP as usize] = Some(cfa);
        }
        if row.register(Register(RA)).is_none() {
            // Default x86_64 rule: the return address is just below the CFA.
            ra_slot = Some(cfa.wrapping_sub(8));
            regs[RA as usize] = mem.u64_at(cfa.wrapping_sub(8));
        }
        let ra = regs[RA as usize].ok_or("unreadable return address")?;
        Ok(Some((ra, ra_slot, signal)))
    }
}

/// Is the thread stopped just after a `clone`/`clone3` system call instruction?
fn in_clone_syscall(regs: &Regs, mem: &StackMem) -> bool {
    const SYS_CLONE: u64 = 56;
    const SYS_CLONE3: u64 = 435;
    (regs.orig_rax == SYS_CLONE || regs.orig_rax == SYS_CLONE3)
        && mem
            .proc
            .read(regs.rip.wrapping_sub(2), 2)
            .is_ok_and(|b| b == [0x0f, 0x05])
}

/// Does the code at `pc` reach a `ret` through tests and conditional branches only (no
/// stack change, no call)? Then the return address is at the stack pointer.
fn returns_straight(mem: &StackMem, pc: u64) -> bool {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
    let Ok(code) = mem.proc.read(pc, 32) else {
        return false;
    };
    for ins in Decoder::with_ip(64, &code, pc, DecoderOptions::NONE)
        .into_iter()
        .take(8)
    {
        match ins.flow_control() {
            FlowControl::Return => return true,
            FlowControl::ConditionalBranch => {}
            FlowControl::Next if matches!(ins.mnemonic(), Mnemonic::Test | Mnemonic::Cmp) => {}
            _ => return false,
        }
    }
    false
}

fn reg(regs: &[Option<u64>; NREGS], r: u16) -> Result<u64, String> {
    regs.get(r as usize)
        .copied()
        .flatten()
        .ok_or_else(|| format!("register {r} unknown"))
}

fn find_in_index(idx: &[(u64, u64, usize)], v: u64) -> Option<usize> {
    let i = idx.partition_point(|e| e.0 <= v);
    let e = idx.get(i.checked_sub(1)?)?;
    (v < e.1).then_some(e.2)
}

fn simplify(row: &UnwindTableRow<usize>, signal: bool) -> Option<SimpleRow> {
    let (cfa_reg, cfa_off) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => (register.0, *offset),
        _ => return None,
    };
    let mut rules = Vec::new();
    for (r, rule) in row.registers() {
        let s = match rule {
            RegisterRule::Undefined => SimpleRule::Undefined,
            RegisterRule::SameValue => continue,
            RegisterRule::Offset(n) => SimpleRule::Offset(*n),
            RegisterRule::ValOffset(n) => SimpleRule::ValOffset(*n),
            RegisterRule::Register(r2) => SimpleRule::Register(r2.0),
            _ => return None,
        };
        rules.push((r.0, s));
    }
    Some(SimpleRow {
        cfa_reg,
        cfa_off,
        rules,
        signal,
    })
}

fn apply_simple(
    row: &SimpleRow,
    regs: &mut [Option<u64>; NREGS],
    mem: &StackMem,
) -> Result<Option<(u64, Option<u64>, bool)>, String> {
    let cfa = reg(regs, row.cfa_reg)?.wrapping_add(row.cfa_off as u64);
    let old = *regs;
    let mut ra_slot = Some(cfa.wrapping_sub(8));
    let mut ra = None;
    let mut ra_rule = false;
    for &(r, rule) in &row.rules {
        let i = r as usize;
        if i >= NREGS {
            continue;
        }
        let v = match rule {
            SimpleRule::Undefined => {
                if r == RA {
                    return Ok(None);
                }
                None
            }
            SimpleRule::Offset(n) => {
                let at = cfa.wrapping_add(n as u64);
                if r == RA {
                    ra_slot = Some(at);
                }
                mem.u64_at(at)
            }
            SimpleRule::ValOffset(n) => Some(cfa.wrapping_add(n as u64)),
            SimpleRule::Register(r2) => old.get(r2 as usize).copied().flatten(),
        };
        if r == RA {
            ra_rule = true;
            ra = v;
        }
        regs[i] = v;
    }
    if !ra_rule {
        ra = mem.u64_at(cfa.wrapping_sub(8));
    }
    regs[RSP as usize] = Some(cfa);
    let ra = ra.ok_or("unreadable return address")?;
    regs[RA as usize] = Some(ra);
    Ok(Some((ra, ra_slot, row.signal)))
}

fn eval(
    expr: gimli::Expression<R>,
    enc: gimli::Encoding,
    initial: Option<u64>,
    regs: &[Option<u64>; NREGS],
    mem: &StackMem,
) -> Result<u64, String> {
    let mut ev = expr.evaluation(enc);
    if let Some(v) = initial {
        ev.set_initial_value(v);
    }
    let mut res = ev.evaluate().map_err(|e| format!("expression: {e}"))?;
    for _ in 0..64 {
        match res {
            gimli::EvaluationResult::Complete => {
                let pieces = ev.result();
                return match pieces.first().map(|p| p.location) {
                    Some(gimli::Location::Address { address }) => Ok(address),
                    Some(gimli::Location::Value { value }) => {
                        value.to_u64(!0).map_err(|e| e.to_string())
                    }
                    _ => Err("unsupported expression result".into()),
                };
            }
            gimli::EvaluationResult::RequiresRegister { register, .. } => {
                let v = reg(regs, register.0)?;
                res = ev
                    .resume_with_register(gimli::Value::Generic(v))
                    .map_err(|e| e.to_string())?;
            }
            gimli::EvaluationResult::RequiresMemory { address, size, .. } => {
                let v = mem
                    .u64_at(address)
                    .ok_or("unreadable memory in expression")?;
                let v = if size < 8 {
                    v & ((1u64 << (size * 8)) - 1)
                } else {
                    v
                };
                res = ev
                    .resume_with_memory(gimli::Value::Generic(v))
                    .map_err(|e| e.to_string())?;
            }
            _ => return Err("unsupported expression".into()),
        }
    }
    Err("expression too long".into())
}

fn load_tables(obj: &LoadedObject) -> Option<ModuleTables> {
    let file = obj.file().ok()?;
    let bias = obj.bias().ok()?;
    let range = |name: &str| {
        let s = file.section(name)?;
        if s.nobits || s.size == 0 {
            return None;
        }
        let end = usize::try_from(s.offset.checked_add(s.size)?).ok()?;
        (end <= file.data().len()).then_some((s.offset as usize, s.size as usize))
    };
    let addr = |name: &str| file.section(name).map(|s| s.addr).unwrap_or(0);
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(addr(".eh_frame_hdr"))
        .set_eh_frame(addr(".eh_frame"))
        .set_text(addr(".text"))
        .set_got(addr(".got"));
    let eh_frame = range(".eh_frame");
    let eh_frame_hdr = range(".eh_frame_hdr");
    let debug_frame = range(".debug_frame");
    let data = file.data();
    let key = Arc::as_ptr(&file) as usize;
    let cached = FDE_INDEXES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .map(|(_, e, d)| (e.clone(), d.clone()));
    let (eh_index, debug_index) = match cached {
        Some(c) => c,
        None => {
            let eh_index = match (eh_frame, eh_frame_hdr) {
                (Some((o, l)), None) => {
                    let eh = EhFrame::new(&data[o..o + l], LittleEndian);
                    Some(Arc::new(build_index(&eh, &bases)))
                }
                _ => None,
            };
            let debug_index = debug_frame.map(|(o, l)| {
                let df = DebugFrame::new(&data[o..o + l], LittleEndian);
                Arc::new(build_index(&df, &bases))
            });
            FDE_INDEXES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (file.clone(), eh_index.clone(), debug_index.clone()));
            (eh_index, debug_index)
        }
    };
    if eh_frame.is_none() && debug_frame.is_none() {
        return None;
    }
    Some(ModuleTables {
        file: file.clone(),
        bias,
        bases,
        eh_frame,
        eh_frame_hdr,
        debug_frame,
        eh_index,
        debug_index,
    })
}

fn build_index<'d, S: UnwindSection<R<'d>>>(
    section: &S,
    bases: &BaseAddresses,
) -> Vec<(u64, u64, usize)>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut out = Vec::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = entry
            && let Ok(fde) = partial.parse(S::cie_from_offset)
        {
            out.push((fde.initial_address(), fde.end_address(), fde.offset()));
        }
    }
    out.sort_unstable();
    out
}

/// The code ranges of the object's `.eh_frame` FDEs, (start, end) in file addresses,
/// sorted: one for each function (and for each split-off part of one) the compiler
/// emitted unwind information for.
pub fn fde_ranges(file: &ElfFile) -> std::sync::Arc<Vec<(u64, u64)>> {
    file.fde_ranges
        .get_or_init(|| {
            let Some(s) = file.section(".eh_frame") else {
                return Default::default();
            };
            let Some(data) = file.section_data(s) else {
                return Default::default();
            };
            let bases = BaseAddresses::default()
                .set_eh_frame(s.addr)
                .set_text(file.section(".text").map(|t| t.addr).unwrap_or(0));
            let eh = EhFrame::new(data, LittleEndian);
            std::sync::Arc::new(
                build_index(&eh, &bases)
                    .into_iter()
                    .map(|(a, b, _)| (a, b))
                    .collect(),
            )
        })
        .clone()
}

/// Is the unwind table of this object able to tell the range of the function at `vaddr`
/// (file address)? Returns (start, end) from the FDE, for functions without a size.
pub fn fde_range(file: &ElfFile, vaddr: u64) -> Option<(u64, u64)> {
    let idx = fde_ranges(file);
    let i = idx.partition_point(|e| e.0 <= vaddr);
    let e = idx.get(i.checked_sub(1)?)?;
    (vaddr < e.1).then_some((e.0, e.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_window_grows_to_the_frames_read_and_no_further_than_the_stack() {
        // A "stack" of 64 KiB in this process, each word its own offset.
        let words: Vec<u64> = (0..8192u64).map(|i| i * 8).collect();
        let base = words.as_ptr() as u64;
        let end = base + 8192 * 8;
        let proc = Process::open(std::process::id() as i32).unwrap();
        // The stack's mapping, as /proc/PID/maps would show it.
        let maps = crate::os::process::parse_maps(&format!(
            "{:x}-{end:x} rw-p 00000000 00:00 0\n",
            base & !4095
        ));
        let mem = StackMem::of_threads(&proc, &maps, &[base]).pop().unwrap();
        let first = mem.bytes.borrow().len() as u64;
        assert!(first >= FIRST_WINDOW && first < end - base, "{first}");
        // Deep frames: the window grows to hold them, in a few reads.
        assert_eq!(mem.u64_at(base + 40_000), Some(40_000));
        let grown = mem.bytes.borrow().len() as u64;
        assert!(grown >= 40_008 && grown <= end - base, "{grown}");
        assert_eq!(mem.u64_at(end - 8), Some(8191 * 8));
        assert_eq!(mem.bytes.borrow().len() as u64, end - base);
        // Past the stack's end: read from the process, not into the window.
        assert_eq!(mem.u64_at(end), proc.read_u64(end).ok());
        assert_eq!(mem.bytes.borrow().len() as u64, end - base);
        drop(words);
    }

    #[test]
    fn a_garbage_frame_reads_nothing_near_the_ends_of_the_address_space() {
        let proc = Process::open(std::process::id() as i32).unwrap();
        let mem = StackMem::new(&proc, 0x1000, 0x1040, vec![7u8; 64], 64);
        assert_eq!(mem.u64_at(0x1000), Some(0x0707_0707_0707_0707));
        for addr in [u64::MAX, u64::MAX - 3, u64::MAX - 7, 0, 8] {
            assert_eq!(mem.u64_at(addr), None, "{addr:#x}");
        }
        let high = StackMem::new(&proc, u64::MAX - 15, u64::MAX, vec![1u8; 16], 16);
        assert_eq!(high.u64_at(u64::MAX - 15), Some(0x0101_0101_0101_0101));
        assert_eq!(high.u64_at(u64::MAX - 3), None);
    }
}
