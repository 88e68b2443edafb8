//! The patch: a shared object with rlivepatch metadata, read from the file without
//! loading it.
//!
//! The SDK header (`patches/include/rlivepatch.h`) emits one 80-byte `struct rlp_record`
//! per declaration into the section `.rlivepatch`. Pointers in records (strings, the new
//! functions) are resolved here through the file's dynamic relocations, exactly as the
//! dynamic loader will resolve them, so `info` shows the truth without running anything.

pub mod sdk;
pub mod sign;
pub mod trust;

use crate::elf::symbols::{ElfFile, SymKind};
use crate::error::Result;
use crate::{bail, err};
use std::path::{Path, PathBuf};

/// One record of `.rlivepatch` as it is in the file: `struct rlp_record` of
/// rlivepatch.h (magic, kind, string pointers, pointers, numbers).
struct Raw {
    /// Its index, for messages.
    i: u64,
    /// Its address in the patch.
    at: u64,
    raw: Vec<u8>,
    kind: u32,
}

impl Raw {
    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.raw[o..o + 4].try_into().unwrap())
    }

    /// Number field `k`.
    fn n(&self, k: usize) -> u64 {
        u64::from_le_bytes(self.raw[64 + 8 * k..72 + 8 * k].try_into().unwrap())
    }
}

/// Size of one `struct rlp_record`.
pub const RECORD_SIZE: u64 = 80;
/// "RLP1".
pub const RECORD_MAGIC: u32 = 0x3150_4c52;
/// Offset of `ptr[0]` in a record.
pub const RECORD_PTR0: u64 = 32;

const KIND_NAME: u32 = 1;
const KIND_FUNC: u32 = 2;
const KIND_REPLACE: u32 = 3;
const KIND_CALLBACKS: u32 = 4;
const KIND_STATE: u32 = 5;
const KIND_BUILD_ID: u32 = 6;
const KIND_SYMBOL: u32 = 7;
const KIND_TLS: u32 = 8;
const KIND_RELOC: u32 = 9;
const KIND_OBJECT_CALLBACKS: u32 = 10;

/// One function the patch replaces.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PatchFunc {
    /// The object as the patch names it; `None` is the main executable.
    pub object: Option<String>,
    /// The old function's symbol (maybe mangled or versioned).
    pub old: String,
    /// The kernel's `old_sympos`: 0 unique, N the Nth occurrence.
    pub sympos: u64,
    /// The new function's name in the patch source.
    pub new_name: String,
    /// The new function's address in the patch file's address space.
    #[serde(skip)]
    pub new_vaddr: u64,
    /// Address of this record's `ptr[0]` in the patch file's address space: after
    /// loading, the loader has stored the new function's run-time address there.
    #[serde(skip)]
    pub slot_vaddr: u64,
    /// `RLIVEPATCH_FUNC_WRAP`: the patch's function pointer (file address) that
    /// rlivepatch fills with the code the new function replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_slot: Option<u64>,
}

/// A target symbol the patch's code uses (`RLIVEPATCH_SYMBOL`, `RLIVEPATCH_TLS`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SymbolRef {
    /// A thread-local variable (`RLIVEPATCH_TLS`): the slot is a `struct rlp_tls_index`.
    pub tls: bool,
    /// The object; `None` is the main executable.
    pub object: Option<String>,
    /// The symbol in the target.
    pub symbol: String,
    /// The name of the pointer in the patch source.
    pub local: String,
    /// Address of the pointer variable in the patch file's address space.
    #[serde(skip)]
    pub slot_vaddr: u64,
    /// Added to the symbol's address (generated patches point into objects).
    #[serde(skip_serializing_if = "is_zero")]
    pub addend: i64,
}

impl SymbolRef {
    /// Written by `rlivepatch build` (the symbol names its file address, `name#0xADDR`):
    /// the slot holds an address the program's code takes (a callback it hands on, a
    /// pointer it stores), not the code a wrapper means to call.
    pub fn generated(&self) -> bool {
        self.symbol.contains('#')
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A place in a generated patch bound to the process at apply time (`RLP_KIND_RELOC`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelocRef {
    /// The object; `None` is the main executable.
    pub object: Option<String>,
    /// The symbol in the target.
    pub symbol: String,
    /// Its name, for messages.
    pub local: String,
    /// The place (patch file address).
    #[serde(skip)]
    pub site_vaddr: u64,
    /// A pointer of the patch for a thunk (RIP-relative places).
    #[serde(skip)]
    pub thunk_slot: Option<u64>,
    /// Added to the symbol's address.
    pub addend: i64,
    /// What the place is.
    pub kind: RelocKind,
}

/// The kind of a bound place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelocKind {
    /// A 64-bit address.
    Abs64,
    /// The 32-bit displacement of a RIP-relative operand: `head` bytes from the start of
    /// its instruction of `len` bytes.
    Rel32 {
        /// Bytes from the instruction's start to the displacement.
        head: u8,
        /// The instruction's length.
        len: u8,
    },
    /// The 32-bit displacement of a call or jump that reaches the symbol through a stub
    /// of the patch: written to reach the symbol itself when it is within reach, left
    /// on the stub otherwise.
    Call32 {
        /// Bytes from the instruction's start to the displacement.
        head: u8,
        /// The instruction's length.
        len: u8,
    },
}

/// A system state the patch declares (`RLIVEPATCH_STATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDecl {
    /// The state id.
    pub id: u64,
    /// Its version.
    pub version: u64,
    /// Address of its `struct rlp_state` in the patch file's address space.
    #[serde(default, skip_serializing)]
    pub vaddr: u64,
}

/// The four callbacks, as addresses in the patch file's address space.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Callbacks {
    /// `int pre_patch(void)`.
    pub pre_patch: Option<u64>,
    /// `void post_patch(void)`.
    pub post_patch: Option<u64>,
    /// `void pre_unpatch(void)`.
    pub pre_unpatch: Option<u64>,
    /// `void post_unpatch(void)`.
    pub post_unpatch: Option<u64>,
}

/// A patch file and its metadata.
pub struct Patch {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The patch's name.
    pub name: String,
    /// The parsed file.
    pub file: ElfFile,
    /// The functions it replaces, in declaration order.
    pub funcs: Vec<PatchFunc>,
    /// Atomic replace: replaces every patch applied before it.
    pub replace: bool,
    /// Callbacks.
    pub callbacks: Callbacks,
    /// Callbacks of objects it changes (`RLIVEPATCH_OBJECT_CALLBACKS`), by object name.
    pub object_callbacks: Vec<(String, Callbacks)>,
    /// System states.
    pub states: Vec<StateDecl>,
    /// Build-ids the patch was built for: (object, lowercase hex).
    pub build_ids: Vec<(Option<String>, String)>,
    /// Target symbols its code uses.
    pub symbols: Vec<SymbolRef>,
    /// Places bound to the process at apply time (generated patches).
    pub relocs: Vec<RelocRef>,
    /// Who signed it: the name of its key in the keyring, or the key's id.
    pub signer: Option<String>,
    /// The signature trailer read with it (empty when unsigned): what follows the
    /// loaded bytes in the file, so that a copy (`persist`) can be verified again.
    pub signature: Vec<u8>,
    /// SHA-256 of the file, in hex, once asked (the audit line of every process a fleet
    /// run patches names it).
    sha256: std::sync::OnceLock<String>,
}

impl Patch {
    /// SHA-256 of what is loaded, in hex.
    pub fn sha256(&self) -> &str {
        use sha2::Digest;
        self.sha256.get_or_init(|| {
            sha2::Sha256::digest(self.file.data())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    /// Read and check a patch file (refusing one others may change: see [`trust`]),
    /// under the host's policy (see [`sign::Policy`]).
    pub fn load(path: &Path) -> Result<Patch> {
        Self::load_with(path, &Acceptance::default(), &mut |_| {})
    }

    /// Read and check a patch file: opened once, its owner, mode and directories checked
    /// on that open file (unless `allow_untrusted`, which `say`s what it lets through),
    /// and the bytes read through it are the patch, loaded as they are (no second open
    /// that a swapped file could answer).
    pub fn load_with(path: &Path, how: &Acceptance, say: &mut dyn FnMut(&str)) -> Result<Patch> {
        let shown = path.display();
        let policy = if how.any_file {
            sign::Policy::default()
        } else {
            sign::Policy::host()
        };
        let require = how.require_signature || policy.require_signature;
        if how.allow_untrusted && policy.require_signature {
            bail!(
                Patch,
                "--allow-untrusted is refused: the host's policy (/etc/rlivepatch/policy) requires signed patches"
            );
        }
        let allow_untrusted = how.allow_untrusted || how.any_file;
        let not_read = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => {
                err!(Patch, "patch file {shown} does not exist; check the path")
            }
            _ => err!(Patch, "cannot read patch file {shown}: {e}"),
        };
        let abs = std::fs::canonicalize(path).map_err(not_read)?;
        // (Not opened unless a regular file: opening a FIFO would wait for a writer.)
        if !std::fs::metadata(&abs).map_err(not_read)?.is_file() {
            bail!(Patch, "patch file {shown} is not a regular file");
        }
        let mut f = std::fs::File::open(&abs).map_err(not_read)?;
        let meta = f.metadata().map_err(not_read)?;
        if !meta.is_file() {
            bail!(Patch, "patch file {shown} is not a regular file");
        }
        if meta.len() == 0 {
            bail!(
                Patch,
                "patch file {shown} is empty; rebuild it with cc -shared -fPIC"
            );
        }
        if let Some(why) = trust::untrusted(&abs, &meta) {
            if !allow_untrusted {
                bail!(
                    Patch,
                    "refusing patch file {why} (whoever can change it decides what runs in the process); or pass --allow-untrusted for development"
                );
            }
            say(&format!(
                "warning: --allow-untrusted: loading {shown} although {why}"
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        {
            use std::io::Read;
            f.read_to_end(&mut bytes).map_err(not_read)?;
        }
        if !bytes.starts_with(b"\x7fELF") {
            bail!(
                Patch,
                "{shown} is not an ELF file; a patch is a shared object built with cc -shared -fPIC"
            );
        }
        let mut keyring_dirs = how.keyring.clone();
        keyring_dirs.extend(policy.keyring);
        let signer = signer(&bytes, &sign::Keyring::load(&keyring_dirs), require, &shown)?;
        let (payload, _) = sign::split(&bytes);
        let signature = bytes[payload.len()..].to_vec();
        let bytes = payload.to_vec();
        let file = ElfFile::from_bytes(&abs.display().to_string(), bytes).map_err(|e| {
            err!(
                Patch,
                "{shown} is not a valid ELF shared object ({}); rebuild it with cc -shared -fPIC",
                e.message
            )
        })?;
        let mut p = Self::from_elf(abs, file)?;
        p.signer = signer;
        p.signature = signature;
        crate::os::fault::point("patch:read");
        Ok(p)
    }

    /// Read a patch from bytes (the fuzzer's entry point; `name` stands for the path).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Patch> {
        if !bytes.starts_with(b"\x7fELF") {
            bail!(
                Patch,
                "{name} is not an ELF file; a patch is a shared object built with cc -shared -fPIC"
            );
        }
        let file = ElfFile::from_bytes(name, bytes).map_err(|e| {
            err!(
                Patch,
                "{name} is not a valid ELF shared object ({}); rebuild it with cc -shared -fPIC",
                e.message
            )
        })?;
        Self::from_elf(PathBuf::from(name), file)
    }

    fn from_elf(abs: PathBuf, file: ElfFile) -> Result<Patch> {
        let shown = abs.display().to_string();
        if !file.is_64 {
            bail!(
                Patch,
                "{shown} is a 32-bit ELF file; rlivepatch patches x86_64 processes: build with a 64-bit compiler"
            );
        }
        if !file.is_x86_64 {
            bail!(
                Patch,
                "{shown} is not built for x86_64; build the patch for x86_64"
            );
        }
        if file.is_relocatable() {
            bail!(
                Patch,
                "{shown} is an object file (.o), not a shared object; link the patch: cc -shared -fPIC -o fix.so fix.c (or cc $(rlivepatch sdk --cflags) ...)"
            );
        }
        if !file.is_dyn || is_pie_executable(&file) {
            bail!(
                Patch,
                "{shown} is an executable, not a shared object; build the patch with cc -shared -fPIC"
            );
        }
        let default_name = abs
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".so").to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "patch".into());
        let mut patch = Patch {
            sha256: std::sync::OnceLock::new(),
            path: abs,
            name: default_name,
            file,
            funcs: Vec::new(),
            replace: false,
            callbacks: Callbacks::default(),
            object_callbacks: Vec::new(),
            states: Vec::new(),
            build_ids: Vec::new(),
            symbols: Vec::new(),
            relocs: Vec::new(),
            signer: None,
            signature: Vec::new(),
        };
        patch
            .parse_records()
            .map_err(|e| e.context(format!("patch {shown}")))?;
        Ok(patch)
    }

    fn parse_records(&mut self) -> Result<()> {
        let Some(sec) = self.file.section(".rlivepatch").cloned() else {
            bail!(
                Patch,
                "no rlivepatch metadata (no .rlivepatch section); declare the replaced functions with RLIVEPATCH_FUNC from rlivepatch.h"
            );
        };
        if sec.size == 0 || sec.size % RECORD_SIZE != 0 || sec.nobits {
            bail!(
                Patch,
                "corrupt metadata: section .rlivepatch has {} bytes, not a multiple of {RECORD_SIZE}; rebuild with the rlivepatch.h of this version",
                sec.size
            );
        }
        let mut named = false;
        for i in 0..sec.size / RECORD_SIZE {
            let r = self.raw_record(sec.addr, i)?;
            match r.kind {
                KIND_NAME => {
                    if named {
                        bail!(Patch, "RLIVEPATCH_NAME is given twice");
                    }
                    named = true;
                    self.record_name(&r)?
                }
                KIND_FUNC => self.record_func(&r)?,
                KIND_REPLACE => self.replace = true,
                KIND_CALLBACKS => self.record_callbacks(&r)?,
                KIND_OBJECT_CALLBACKS => self.record_object_callbacks(&r)?,
                KIND_STATE => self.record_state(&r)?,
                KIND_BUILD_ID => self.record_build_id(&r)?,
                KIND_SYMBOL | KIND_TLS => self.record_symbol(&r)?,
                KIND_RELOC => self.record_reloc(&r)?,
                other => bail!(
                    Patch,
                    "corrupt metadata: record {i} has unknown kind {other}; rebuild with the rlivepatch.h of this version"
                ),
            }
        }
        self.check_records()
    }

    /// Record `i` of the section at `addr`, its magic checked.
    fn raw_record(&self, addr: u64, i: u64) -> Result<Raw> {
        let at = addr.checked_add(i * RECORD_SIZE).ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: record {i} is outside the address space"
            )
        })?;
        let raw = self
            .file
            .bytes_at(at, RECORD_SIZE as usize)
            .ok_or_else(|| err!(Patch, "corrupt metadata: record {i} is outside the file"))?
            .to_vec();
        let r = Raw {
            i,
            at,
            raw,
            kind: 0,
        };
        if r.u32_at(0) != RECORD_MAGIC {
            bail!(
                Patch,
                "corrupt metadata: record {i} has a bad magic number; rebuild with the rlivepatch.h of this version"
            );
        }
        Ok(Raw {
            kind: r.u32_at(4),
            ..r
        })
    }

    /// `RLIVEPATCH_NAME`.
    fn record_name(&mut self, r: &Raw) -> Result<()> {
        let name = self
            .s(r, 0)?
            .ok_or_else(|| err!(Patch, "corrupt metadata: RLIVEPATCH_NAME without a name"))?;
        check_name(&name)?;
        self.name = name;
        Ok(())
    }

    /// `RLIVEPATCH_FUNC` and its forms.
    fn record_func(&mut self, r: &Raw) -> Result<()> {
        let old = self.s(r, 1)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: function record {} has no old name",
                r.i
            )
        })?;
        let new_name = self.s(r, 2)?.unwrap_or_else(|| "?".into());
        let new_vaddr = self.p(r, 0)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: function record for {old} has no new function"
            )
        })?;
        if !self.is_code(new_vaddr) {
            bail!(
                Patch,
                "the new function {new_name} for {old} is not code of the patch; give a function defined in the patch"
            );
        }
        self.funcs.push(PatchFunc {
            object: self.s(r, 0)?,
            old,
            sympos: r.n(0),
            new_name,
            new_vaddr,
            slot_vaddr: r.at.wrapping_add(RECORD_PTR0),
            orig_slot: self.p(r, 1)?,
        });
        Ok(())
    }

    /// `RLIVEPATCH_CALLBACKS`.
    fn record_callbacks(&mut self, r: &Raw) -> Result<()> {
        let mut cbs = [None; 4];
        for (k, cb) in cbs.iter_mut().enumerate() {
            *cb = self.p(r, k as u64)?;
            if let Some(v) = *cb
                && !self.is_code(v)
            {
                bail!(Patch, "callback {k} is not code of the patch");
            }
        }
        if self.callbacks.pre_patch.is_some()
            || self.callbacks.post_patch.is_some()
            || self.callbacks.pre_unpatch.is_some()
            || self.callbacks.post_unpatch.is_some()
        {
            bail!(Patch, "RLIVEPATCH_CALLBACKS is given twice");
        }
        self.callbacks = Callbacks {
            pre_patch: cbs[0],
            post_patch: cbs[1],
            pre_unpatch: cbs[2],
            post_unpatch: cbs[3],
        };
        Ok(())
    }

    /// `RLIVEPATCH_OBJECT_CALLBACKS`.
    fn record_object_callbacks(&mut self, r: &Raw) -> Result<()> {
        let object = self
            .s(r, 0)?
            .ok_or_else(|| err!(Patch, "RLIVEPATCH_OBJECT_CALLBACKS names no object"))?;
        let mut cbs = [None; 4];
        for (k, cb) in cbs.iter_mut().enumerate() {
            *cb = self.p(r, k as u64)?;
            if let Some(v) = *cb
                && !self.is_code(v)
            {
                bail!(Patch, "callback {k} of {object} is not code of the patch");
            }
        }
        if self.object_callbacks.iter().any(|(o, _)| *o == object) {
            bail!(
                Patch,
                "RLIVEPATCH_OBJECT_CALLBACKS is given twice for {object}"
            );
        }
        self.object_callbacks.push((
            object,
            Callbacks {
                pre_patch: cbs[0],
                post_patch: cbs[1],
                pre_unpatch: cbs[2],
                post_unpatch: cbs[3],
            },
        ));
        Ok(())
    }

    /// `RLIVEPATCH_STATE`.
    fn record_state(&mut self, r: &Raw) -> Result<()> {
        let vaddr = self.p(r, 0)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: state {} has no struct rlp_state",
                r.n(0)
            )
        })?;
        let st = StateDecl {
            id: r.n(0),
            version: r.n(1),
            vaddr,
        };
        if self.states.iter().any(|x| x.id == st.id) {
            bail!(Patch, "state {} is declared twice", st.id);
        }
        self.states.push(st);
        Ok(())
    }

    /// `RLIVEPATCH_BUILD_ID`.
    fn record_build_id(&mut self, r: &Raw) -> Result<()> {
        let hex = self.s(r, 1)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: RLIVEPATCH_BUILD_ID without a build-id"
            )
        })?;
        let hex = hex.to_ascii_lowercase();
        if hex.is_empty() || hex.len() % 2 != 0 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!(
                Patch,
                "RLIVEPATCH_BUILD_ID: \"{hex}\" is not a hex build-id"
            );
        }
        self.build_ids.push((self.s(r, 0)?, hex));
        Ok(())
    }

    /// `RLIVEPATCH_SYMBOL` and `RLIVEPATCH_TLS`.
    fn record_symbol(&mut self, r: &Raw) -> Result<()> {
        let symbol = self.s(r, 1)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: RLIVEPATCH_SYMBOL without a symbol"
            )
        })?;
        let slot = self.p(r, 0)?.ok_or_else(|| {
            err!(
                Patch,
                "corrupt metadata: RLIVEPATCH_SYMBOL {symbol} has no pointer"
            )
        })?;
        self.symbols.push(SymbolRef {
            tls: r.kind == KIND_TLS,
            object: self.s(r, 0)?,
            symbol,
            local: self.s(r, 2)?.unwrap_or_default(),
            slot_vaddr: slot,
            addend: r.n(0) as i64,
        });
        Ok(())
    }

    /// A place bound at apply time (`RLP_KIND_RELOC`, written by `rlivepatch build`).
    fn record_reloc(&mut self, r: &Raw) -> Result<()> {
        let symbol = self
            .s(r, 1)?
            .ok_or_else(|| err!(Patch, "corrupt metadata: bound place {} has no symbol", r.i))?;
        let site = self
            .p(r, 0)?
            .ok_or_else(|| err!(Patch, "corrupt metadata: bound place {symbol} has no place"))?;
        let class = r.n(1);
        let kind = match class & 0xff {
            1 => RelocKind::Abs64,
            2 => RelocKind::Rel32 {
                head: (class >> 8) as u8,
                len: (class >> 16) as u8,
            },
            3 => RelocKind::Call32 {
                head: (class >> 8) as u8,
                len: (class >> 16) as u8,
            },
            c => bail!(
                Patch,
                "corrupt metadata: bound place {symbol} has unknown class {c}; rebuild the patch with this rlivepatch"
            ),
        };
        let bad_shape = match kind {
            RelocKind::Abs64 => false,
            RelocKind::Rel32 { head, len } => len < 6 || head as u64 + 4 > len as u64,
            // A branch's displacement ends it.
            RelocKind::Call32 { head, len } => len < 5 || head as u64 + 4 != len as u64,
        };
        if bad_shape {
            bail!(
                Patch,
                "corrupt metadata: bound place {symbol} has a bad instruction shape"
            );
        }
        self.relocs.push(RelocRef {
            object: self.s(r, 0)?,
            symbol,
            local: self.s(r, 2)?.unwrap_or_default(),
            site_vaddr: site,
            thunk_slot: self.p(r, 1)?,
            addend: r.n(0) as i64,
            kind,
        });
        Ok(())
    }

    /// What the records say as a whole: something to do, callbacks of objects it
    /// changes, no function twice.
    fn check_records(&self) -> Result<()> {
        let has_callbacks = self.callbacks.pre_patch.is_some()
            || self.callbacks.post_patch.is_some()
            || self.callbacks.pre_unpatch.is_some()
            || self.callbacks.post_unpatch.is_some();
        if self.funcs.is_empty() && !self.replace && !has_callbacks && self.states.is_empty() {
            bail!(
                Patch,
                "declares no function to replace; add RLIVEPATCH_FUNC(old, new)"
            );
        }
        for (o, _) in &self.object_callbacks {
            if !self
                .funcs
                .iter()
                .any(|f| f.object.as_deref() == Some(o.as_str()))
            {
                bail!(
                    Patch,
                    "RLIVEPATCH_OBJECT_CALLBACKS names {o}, in which the patch changes no function; give its functions with RLIVEPATCH_FUNC_IN(\"{o}\", ...), or use RLIVEPATCH_CALLBACKS"
                );
            }
        }
        for (i, a) in self.funcs.iter().enumerate() {
            if self.funcs[..i]
                .iter()
                .any(|b| b.object == a.object && b.old == a.old && b.sympos == a.sympos)
            {
                bail!(Patch, "function {} is declared twice", a.old);
            }
        }
        Ok(())
    }

    /// String field `k` of record `r`.
    fn s(&self, r: &Raw, k: u64) -> Result<Option<String>> {
        self.string_field(r.at.wrapping_add(8 + 8 * k), r.i)
    }

    /// Pointer field `k` of record `r`.
    fn p(&self, r: &Raw, k: u64) -> Result<Option<u64>> {
        self.pointer_field(r.at.wrapping_add(RECORD_PTR0 + 8 * k), r.i)
    }

    fn string_field(&self, vaddr: u64, rec: u64) -> Result<Option<String>> {
        match self.file.pointer_at(vaddr) {
            Ok(None) => Ok(None),
            Ok(Some(p)) => self.file.cstr_at(p).map(Some).ok_or_else(|| {
                err!(
                    Patch,
                    "corrupt metadata: a string of record {rec} points outside the file"
                )
            }),
            Err(sym) => bail!(
                Patch,
                "corrupt metadata: a string of record {rec} points to {sym}, outside the patch"
            ),
        }
    }

    fn pointer_field(&self, vaddr: u64, rec: u64) -> Result<Option<u64>> {
        self.file.pointer_at(vaddr).map_err(|sym| {
            err!(Patch, "record {rec} points to {sym}, which is not defined in the patch; give a function defined in the patch")
        })
    }

    fn is_code(&self, vaddr: u64) -> bool {
        self.file
            .segments
            .iter()
            .any(|s| s.exec && s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.memsz))
    }

    /// Is the new function of `f` a global, default-visibility symbol that another object
    /// could interpose? (A `static` function cannot be.)
    pub fn interposable(&self, f: &PatchFunc) -> bool {
        self.file
            .dynsym()
            .iter()
            .any(|s| s.value == f.new_vaddr && s.global && s.kind == SymKind::Func)
    }
}

fn is_pie_executable(file: &ElfFile) -> bool {
    // A PIE executable is ET_DYN too; tell it by DF_1_PIE, or by an interpreter plus an
    // entry into `_start` (older linkers set no DF_1_PIE).
    let Ok(elf) = crate::elf::headers::parse(file.data()) else {
        return false;
    };
    let pie_flag = elf
        .dynamic
        .as_ref()
        .is_some_and(|d| d.info.flags_1 & goblin::elf::dynamic::DF_1_PIE != 0);
    pie_flag
        || (elf.interpreter.is_some()
            && file
                .symtab()
                .iter()
                .chain(file.dynsym())
                .any(|s| s.name == "main" && s.kind == SymKind::Func)
            && file.soname.is_none())
}

/// Patch names appear in memfd names, messages and `disable` arguments: keep them simple.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || !name.chars().all(|c| c.is_ascii_graphic() && c != '/')
    {
        bail!(
            Patch,
            "patch name \"{name}\" is not valid: use 1-200 printable characters without spaces or '/'"
        );
    }
    Ok(())
}

/// How a patch file is accepted (the host's policy adds to it; see [`sign::Policy`]).
#[derive(Debug, Clone, Default)]
pub struct Acceptance {
    /// Load a file others may change (`--allow-untrusted`), saying so.
    pub allow_untrusted: bool,
    /// More keyring directories (`--keyring`).
    pub keyring: Vec<PathBuf>,
    /// Require a signature by a key of the keyring (`--require-signature`).
    pub require_signature: bool,
    /// Only reading it (`info`, `build` checking what it wrote): no trust or policy.
    pub any_file: bool,
}

/// The signer of the patch file `bytes`: its key's name in `keyring` (or its id).
/// A signature that does not verify is refused always; without one, or by a key not in
/// the keyring, the patch is refused when signatures are required.
fn signer(
    bytes: &[u8],
    keyring: &sign::Keyring,
    require: bool,
    shown: &dyn std::fmt::Display,
) -> Result<Option<String>> {
    let (payload, sig) = sign::split(bytes);
    let Some(sig) = sig else {
        if require {
            bail!(
                Patch,
                "patch file {shown} is not signed, and signatures are required: sign it (rlivepatch sign --key KEY.key {shown})"
            );
        }
        return Ok(None);
    };
    if !sign::verifies(payload, &sig) {
        bail!(
            Patch,
            "patch file {shown} carries a signature that does not verify: it was changed after it was signed; rebuild and sign it again"
        );
    }
    let id: String = sig.key[..8].iter().map(|b| format!("{b:02x}")).collect();
    match keyring.name_of(&sig.key) {
        Some(n) => Ok(Some(n.to_string())),
        None if require => bail!(
            Patch,
            "patch file {shown} is signed by key {id}, which is in no keyring given (--keyring, /etc/rlivepatch/keys): add its .pub there if you trust it"
        ),
        None => Ok(Some(format!("key {id} (in no keyring)"))),
    }
}
