//! The runtime's table of objects that come later (`struct rlp_coming` in
//! `runtime/rlivepatch-coming.c`), as rlivepatch reads it, and the words by which it
//! holds the hook.

use crate::error::Result;
use crate::fmt::hex;
use crate::livepatch::record::Record;
use crate::os::process::Process;
use serde::Serialize;

// The table's layout (`struct rlp_coming`; the C source asserts the same offsets).
pub(crate) const BUSY: u64 = 8;
pub(crate) const FROZEN: u64 = 16;
pub(crate) const FROZEN_TID: u64 = 24;
pub(crate) const GENERATION: u64 = 32;
pub(crate) const R_DEBUG: u64 = 40;
pub(crate) const EVENTS: u64 = 64;
pub(crate) const NOBJS: u64 = 72;
pub(crate) const NFUNCS: u64 = 80;
pub(crate) const NCOPIES: u64 = 88;
pub(crate) const LAST_FAILURE: u64 = 96;
pub(crate) const WAITING_DELETE: u64 = 240;
pub(crate) const NCBS: u64 = 248;
pub(crate) const OBJS: u64 = 256;
pub(crate) const OBJ_SIZE: u64 = 112;
pub(crate) const MAX_OBJS: usize = 64;
pub(crate) const FUNCS: u64 = 7424;
pub(crate) const FUNC_SIZE: u64 = 32;
pub(crate) const MAX_FUNCS: usize = 1024;
pub(crate) const COPIES: u64 = 40192;
pub(crate) const COPY_SIZE: u64 = 32;
pub(crate) const MAX_COPIES: u64 = 256;
pub(crate) const CBS: u64 = 48384;
pub(crate) const CB_SIZE: u64 = 40;
pub(crate) const MAX_CBS: usize = 64;

/// The table in a process whose runtime is loaded.
pub fn table(rec: &Record) -> Result<Option<u64>> {
    Ok(match &rec.runtime {
        Some(rt) => Some(rt.base + crate::remote::runtime::layout()?.coming),
        None => None,
    })
}

/// A copy of a pending object, as the hook recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    /// Its load bias (`l_addr`).
    #[serde(serialize_with = "crate::fmt::ser_hex")]
    pub address: u64,
    /// Its build-id.
    pub build_id: String,
    /// `patched`, `unpatched` (see the table's last failure) or `other-namespace`.
    pub state: &'static str,
    /// The link-map namespace (0 is the program's; others come from `dlmopen`).
    pub namespace: u64,
}

/// What the table says now.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Copies of pending objects in the process.
    pub copies: Vec<Copy>,
    /// Why the hook last left a copy unpatched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Loader events the hook has seen.
    pub events: u64,
    #[serde(skip)]
    pub(crate) generation: u64,
    #[serde(skip)]
    pub(crate) objs: Vec<String>,
}

/// Read the table of a process (`None` without a runtime).
pub fn read(proc: &Process, rec: &Record) -> Result<Option<View>> {
    let Some(t) = table(rec)? else {
        return Ok(None);
    };
    let head = proc.read(t, OBJS as usize)?;
    let u = |off: u64| u64::from_le_bytes(head[off as usize..off as usize + 8].try_into().unwrap());
    let nobjs = (u(NOBJS) as usize).min(MAX_OBJS);
    let ncopies = u(NCOPIES).min(MAX_COPIES);
    let objs_raw = proc.read(t + OBJS, nobjs * OBJ_SIZE as usize)?;
    let objs: Vec<String> = objs_raw
        .chunks(OBJ_SIZE as usize)
        .map(|o| {
            let len = (u32::from_le_bytes(o[32..36].try_into().unwrap()) as usize).min(32);
            hex(&o[..len])
        })
        .collect();
    let raw = proc.read(t + COPIES, (ncopies * COPY_SIZE) as usize)?;
    let copies = raw
        .chunks(COPY_SIZE as usize)
        .map(|c| {
            let q = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().unwrap());
            let obj = u32::from_le_bytes(c[16..20].try_into().unwrap()) as usize;
            Copy {
                address: q(0),
                build_id: objs.get(obj).cloned().unwrap_or_default(),
                state: match u32::from_le_bytes(c[20..24].try_into().unwrap()) {
                    1 => "patched",
                    3 => "other-namespace",
                    _ => "unpatched",
                },
                namespace: q(24),
            }
        })
        .collect();
    let fail = &head[LAST_FAILURE as usize..WAITING_DELETE as usize];
    let fail = String::from_utf8_lossy(&fail[..fail.iter().position(|&b| b == 0).unwrap_or(0)])
        .into_owned();
    Ok(Some(View {
        copies,
        last_failure: (!fail.is_empty()).then_some(fail),
        events: u(EVENTS),
        generation: u(GENERATION),
        objs,
    }))
}

/// Let thread `tid` (0: none) pass the held hook.
pub fn let_through(proc: &Process, table: u64, tid: u64) -> Result<()> {
    proc.write(table + FROZEN_TID, &tid.to_le_bytes())
}

/// Let the hook go: threads that wait in it go on.
pub fn unhold(proc: &Process, table: u64) -> Result<()> {
    proc.write(table + FROZEN, &0u64.to_le_bytes())
}
