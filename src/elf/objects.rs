//! The objects mapped in a process: the executable, shared libraries and the vDSO, each
//! with its load bias and (parsed on first use) its ELF file.
//!
//! An object is named the way an operator names it: by file name, soname, absolute path,
//! or `main` for the executable. Files are opened through `/proc/pid/map_files` (the
//! exact inode that is mapped, even if deleted, replaced or in another mount namespace)
//! and otherwise through `/proc/pid/root`, checking the inode.

use crate::elf::buildid::Identity;
use crate::elf::symbols::ElfFile;
use crate::error::Result;
use crate::os::process::{Mapping, Process};
use crate::{bail, err};
use std::cell::OnceCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, LazyLock, Mutex};

/// Where separate debug files are looked for by default (the GDB convention).
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

/// One loaded object.
pub struct LoadedObject {
    /// The path as `/proc/pid/maps` shows it (`[vdso]` for the vDSO).
    pub path: String,
    /// Lowest mapped address.
    pub start: u64,
    /// One past the highest mapped address.
    pub end: u64,
    /// Its mappings.
    pub mappings: Vec<Mapping>,
    /// The main executable.
    pub is_main: bool,
    /// The file was deleted or replaced after it was mapped.
    pub deleted: bool,
    file: OnceCell<std::result::Result<Arc<ElfFile>, crate::error::Error>>,
    debug: OnceCell<Debug>,
    /// The file's [`Identity`], read once per object: a fleet apply asks it of every
    /// object several times (what the process may unload), each a `stat` through /proc.
    identity: OnceCell<Option<Arc<Identity>>>,
    /// Where the mapped file is found and its metadata ([`LoadedObject::mapped_path`]),
    /// looked up once for the identity and the parse.
    mapped: OnceCell<Option<(PathBuf, std::fs::Metadata)>>,
    debug_dirs: Rc<[PathBuf]>,
    /// The process it is mapped in.
    pub pid: i32,
}

/// Where an object's symbols come from when its file has no `.symtab`.
#[derive(Clone)]
enum Debug {
    /// A separate debug file.
    Found(Arc<ElfFile>),
    /// None: the places that were looked at.
    Missing(Vec<PathBuf>),
}

impl LoadedObject {
    /// An object a patch may name: not rlivepatch's own code or other patches.
    pub fn is_patchable(&self) -> bool {
        !self.path.starts_with("/proc/") && !self.path.contains("memfd:") && self.path != "[vdso]"
    }

    /// The file name (last path component).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The object's soname, without parsing the whole file when it was not parsed yet.
    pub fn soname(&self) -> Option<String> {
        if let Some(Ok(f)) = self.file.get() {
            return f.soname.clone();
        }
        if self.path == "[vdso]" {
            return None;
        }
        self.identity().and_then(|i| i.soname.clone())
    }

    /// The file's [`Identity`] (see [`identity`]), kept with the object.
    /// rlivepatch's own private memory (code and stack, the record) is no ELF object:
    /// nothing to read there.
    fn identity(&self) -> Option<Arc<Identity>> {
        if self.path.contains("memfd:rlivepatch-") {
            return None;
        }
        self.identity
            .get_or_init(|| match self.mapped() {
                Some((path, meta)) => identity_of(&path.to_string_lossy(), &meta),
                None => identity(self.pid, &self.mappings[0]),
            })
            .clone()
    }

    /// `DT_NEEDED` of the object's file (from its dynamic table; see [`identity`]).
    pub fn needed(&self) -> Vec<String> {
        if let Some(Ok(f)) = self.file.get() {
            return f.needed.clone();
        }
        self.identity()
            .map(|i| i.needed.clone())
            .unwrap_or_default()
    }

    /// The parsed ELF file, opened on first use.
    pub fn file(&self) -> Result<Arc<ElfFile>> {
        self.file.get_or_init(|| self.open_file_shared()).clone()
    }

    /// The file that has the object's symbols: the object itself when it has a
    /// `.symtab`, else its separate debug file (by build-id, then `.gnu_debuglink`) when
    /// one is found, else the object (with only `.dynsym`).
    pub fn symbols_file(&self) -> Result<Arc<ElfFile>> {
        let file = self.file()?;
        if file.has_symtab() || self.path == "[vdso]" {
            return Ok(file);
        }
        match self.debug.get_or_init(|| self.find_debug(&file)) {
            Debug::Found(d) => Ok(d.clone()),
            Debug::Missing(_) => Ok(file),
        }
    }

    /// The file with the object's DWARF debug information: the object itself when it has
    /// `.debug_info`, else its separate debug file when one is found.
    pub fn debug_info_file(&self) -> Option<Arc<ElfFile>> {
        let file = self.file().ok()?;
        if file.section(".debug_info").is_some_and(|s| !s.nobits) || self.path == "[vdso]" {
            return Some(file);
        }
        match self.debug.get_or_init(|| self.find_debug(&file)) {
            Debug::Found(d) if d.section(".debug_info").is_some_and(|s| !s.nobits) => {
                Some(d.clone())
            }
            _ => None,
        }
    }

    /// The separate debug file used for symbols, if any.
    pub fn debug_file(&self) -> Option<String> {
        match self.debug.get()? {
            Debug::Found(d) => Some(d.path.display().to_string()),
            Debug::Missing(_) => None,
        }
    }

    /// Where debug files were looked for without success (empty if one was found or the
    /// object has a `.symtab`).
    pub fn debug_looked_at(&self) -> Vec<PathBuf> {
        match self.debug.get() {
            Some(Debug::Missing(p)) => p.clone(),
            _ => Vec::new(),
        }
    }

    fn find_debug(&self, file: &ElfFile) -> Debug {
        let dir = Path::new(&self.path).parent().unwrap_or(Path::new("/"));
        let rooted = |p: &Path| PathBuf::from(format!("/proc/{}/root{}", self.pid, p.display()));
        match find_debug_file(file, dir, &self.debug_dirs, &rooted) {
            Ok(f) => Debug::Found(f),
            Err(tried) => Debug::Missing(tried),
        }
    }

    /// The parsed file, shared with every other process of the run that maps the same
    /// file (same device, inode, size and modification time): a fleet run parses each
    /// distinct object, and builds its symbol indexes, once.
    fn open_file_shared(&self) -> Result<Arc<ElfFile>> {
        let first = &self.mappings[0];
        let mapped = (first.inode != 0 && self.path != "[vdso]")
            .then(|| self.mapped())
            .flatten();
        let key = mapped.as_ref().map(|(_, m)| {
            use std::os::unix::fs::MetadataExt;
            (
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime_nsec() as u64 ^ m.mtime() as u64,
            )
        });
        let path = mapped.map(|(p, _)| p);
        let Some(k) = key else {
            return Ok(Arc::new(self.open_file(path)?));
        };
        // A failure is not kept: the next process tries again.
        FILES.get_or_try(k, || Ok(Arc::new(self.open_file(path)?)))
    }

    /// Parse the file, found at `mapped` when the caller found it already.
    fn open_file(&self, mapped: Option<PathBuf>) -> Result<ElfFile> {
        if self.path == "[vdso]" {
            let proc = Process::open(self.pid)?;
            let bytes = proc.read(self.start, (self.end - self.start) as usize)?;
            return ElfFile::from_bytes("[vdso]", bytes);
        }
        let path = match mapped {
            Some(p) => p,
            None => self.mapped_path()?.0,
        };
        let mut f = ElfFile::open(&path).map_err(|e| {
            if path.starts_with(format!("/proc/{}/map_files", self.pid))
                && e.cause == crate::error::Cause::NotFound
                && Process::open(self.pid).is_ok()
            {
                // Gone between reading the maps and opening it: a dlclose.
                err!(
                    Busy,
                    "process {} unloaded {} while rlivepatch was reading it (a dlclose); retry",
                    self.pid,
                    self.path
                )
                .because(crate::error::Cause::Churn)
            } else {
                e
            }
        })?;
        f.path = self.path.clone().into();
        Ok(f)
    }

    /// [`LoadedObject::mapped_path`], looked up once.
    fn mapped(&self) -> Option<(PathBuf, std::fs::Metadata)> {
        self.mapped.get_or_init(|| self.mapped_path().ok()).clone()
    }

    /// A path to the very file the process mapped: through `/proc/pid/map_files` (which
    /// needs CAP_SYS_ADMIN), else its path as the process sees it, when that still names
    /// the same inode (not a file put in its place since); with the file's metadata.
    fn mapped_path(&self) -> Result<(PathBuf, std::fs::Metadata)> {
        let first = &self.mappings[0];
        let by_inode = PathBuf::from(format!(
            "/proc/{}/map_files/{:x}-{:x}",
            self.pid, first.start, first.end
        ));
        match std::fs::metadata(&by_inode) {
            Ok(meta) => return Ok((by_inode, meta)),
            // The process has map_files, but not this range any more: the object was
            // unloaded (a dlclose) since the maps were read, whatever its file is now.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::metadata(format!("/proc/{}/map_files", self.pid)).is_ok() =>
            {
                return Err(err!(
                    Busy,
                    "process {} unloaded {} while rlivepatch was reading it (a dlclose); retry",
                    self.pid,
                    self.path
                )
                .because(crate::error::Cause::Churn));
            }
            Err(_) => {}
        }
        let rooted = PathBuf::from(format!("/proc/{}/root{}", self.pid, self.path));
        let meta = std::fs::metadata(&rooted).map_err(|e| {
            err!(
                Mismatch,
                "cannot open {} of process {}: {e}",
                self.path,
                self.pid
            )
        })?;
        if meta.ino() != first.inode || self.deleted {
            bail!(
                Mismatch,
                "{} was replaced on disk after process {} mapped it, and /proc/{}/map_files is not readable (needs CAP_SYS_ADMIN); run rlivepatch as root or restart the process",
                self.path,
                self.pid,
                self.pid
            );
        }
        Ok((rooted, meta))
    }

    /// The load bias: run-time address = file address + bias.
    pub fn bias(&self) -> Result<u64> {
        let file = self.file()?;
        // The lowest mapping maps the segment that starts at its file offset.
        let m = &self.mappings[0];
        let seg = file
            .segments
            .iter()
            .find(|s| s.offset & !0xfff == m.offset)
            .ok_or_else(|| {
                err!(
                    Failed,
                    "cannot find the segment of {} mapped at {:#x}",
                    self.path,
                    m.start
                )
            })?;
        Ok(m.start.wrapping_sub(seg.vaddr & !0xfff))
    }

    /// Is `addr` in an executable mapping of this object?
    pub fn is_code(&self, addr: u64) -> bool {
        self.mappings.iter().any(|m| m.exec && m.contains(addr))
    }

    /// Does the object span `addr`?
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// How messages name it: the file name, or "main executable NAME".
    pub fn display_name(&self) -> String {
        if self.is_main {
            format!("{} (main executable)", self.file_name())
        } else {
            self.file_name().to_string()
        }
    }
}

/// The separate debug file of `file` (which lives in `dir`, as `rooted` names paths
/// there): by build-id under each of `debug_dirs` and /usr/lib/debug, then by
/// `.gnu_debuglink` next to the file, in its `.debug/`, and under the debug
/// directories. A debug file must have a `.symtab` and, when both have one, the same
/// build-id. Returns the places tried when none fits.
pub fn find_debug_file(
    file: &ElfFile,
    dir: &Path,
    debug_dirs: &[PathBuf],
    rooted: &dyn Fn(&Path) -> PathBuf,
) -> std::result::Result<Arc<ElfFile>, Vec<PathBuf>> {
    let mut tried = Vec::new();
    let dirs: Vec<PathBuf> = debug_dirs
        .iter()
        .cloned()
        .chain([PathBuf::from(DEFAULT_DEBUG_DIR)])
        .collect();
    let accept = |path: &Path, tried: &mut Vec<PathBuf>| -> Option<Arc<ElfFile>> {
        tried.push(path.to_path_buf());
        let f = ElfFile::open(path).ok()?;
        // A debug file must describe this very build.
        if file.build_id.is_some() && f.build_id.is_some() && f.build_id != file.build_id {
            return None;
        }
        f.has_symtab().then(|| Arc::new(f))
    };
    if let Some(id) = file.build_id_hex().filter(|h| h.len() > 2) {
        for d in &dirs {
            let p = d
                .join(".build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..]));
            if let Some(f) = accept(&p, &mut tried) {
                return Ok(f);
            }
        }
    }
    if let Some(link) = &file.debuglink {
        let mut places = vec![
            rooted(&dir.join(link)),
            rooted(&dir.join(".debug").join(link)),
        ];
        for d in &dirs {
            places.push(d.join(dir.strip_prefix("/").unwrap_or(dir)).join(link));
            places.push(d.join(link));
        }
        for p in places {
            if let Some(f) = accept(&p, &mut tried) {
                return Ok(f);
            }
        }
    }
    Err(tried)
}

/// The identities of the files mapped in the processes of this run, by the same key as
/// [`FILES`] (a long-running daemon must not take a new file that reused an inode number
/// for the old one).
static IDENTITIES: LazyLock<Mutex<std::collections::HashMap<FileKey, Option<Arc<Identity>>>>> =
    LazyLock::new(Default::default);

/// The [`Identity`] (build-id, soname, needed) of the file process `pid` maps at `m` (its
/// first mapping), read from its headers once per run however many processes map it,
/// through /proc (the very file mapped: replaced or deleted on disk, or in another mount
/// namespace). A fleet run asks this of every file of every process, and each apply of
/// every object the process loaded (what it may unload).
pub fn identity(pid: i32, m: &Mapping) -> Option<Arc<Identity>> {
    let by_inode = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let rooted = format!("/proc/{pid}/root{}", m.path);
    identity_cached(&by_inode).or_else(|| identity_cached(&rooted))
}

/// The [`Identity`] of process `pid`'s executable, read once per file for the run like
/// [`identity`]: a fleet run's processes mostly run a few programs, and each is checked
/// (and named in the audit trail) before anything else.
pub fn exe_identity(pid: i32) -> Option<Arc<Identity>> {
    identity_cached(&format!("/proc/{pid}/exe"))
}

/// [`exe_identity`] of an opened process, whose executable's metadata it read already.
pub fn exe_identity_of(proc: &Process) -> Option<Arc<Identity>> {
    let (_, meta) = proc.exe_file().ok()?;
    identity_of(&format!("/proc/{}/exe", proc.pid), meta)
}

/// The identity of the file at `path`, from the cache when the file was read already.
fn identity_cached(path: &str) -> Option<Arc<Identity>> {
    identity_of(path, &std::fs::metadata(path).ok()?)
}

/// [`identity_cached`] of the file at `path`, whose metadata `meta` was read already.
fn identity_of(path: &str, meta: &std::fs::Metadata) -> Option<Arc<Identity>> {
    let key = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() as u64 ^ meta.mtime() as u64,
    );
    if let Some(i) = IDENTITIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return i.clone();
    }
    let i = crate::elf::buildid::identity(Path::new(path)).map(Arc::new);
    IDENTITIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, i.clone());
    i
}

/// Files parsed in this run, by (device, inode, size, modification time). Each has its
/// own lock, held while it is parsed: the workers of a fleet run that all reach the C
/// library at once wait for one parse instead of making one each.
type FileKey = (u64, u64, u64, u64);
static FILES: LazyLock<crate::memo::Memo<FileKey, Arc<ElfFile>>> = LazyLock::new(Default::default);

/// The objects of a process at one moment.
pub struct Objects {
    /// In address order.
    pub list: Vec<LoadedObject>,
}

impl Objects {
    /// "object NAME is not loaded in process PID", with the loaded objects that look
    /// alike.
    pub fn not_loaded(&self, name: &str) -> String {
        let pid = self.list.first().map(|o| o.pid).unwrap_or(0);
        let like = self.like(name);
        let alike = if like.is_empty() {
            String::new()
        } else {
            format!("; loaded objects that look alike: {}", like.join(", "))
        };
        format!("object {name} is not loaded in process {pid}{alike}")
    }

    /// The loaded objects whose names look like `name`, for an object that is not loaded.
    pub fn like(&self, name: &str) -> Vec<String> {
        let stem = |n: &str| n.split('.').next().unwrap_or(n).to_ascii_lowercase();
        let want = stem(name.rsplit('/').next().unwrap_or(name));
        let mut out: Vec<String> = self
            .list
            .iter()
            .filter(|o| o.is_patchable())
            .map(|o| o.file_name().to_string())
            .filter(|f| {
                let s = stem(f);
                (!want.is_empty() && (s.starts_with(&want) || want.starts_with(&s)) && s.len() > 1)
                    || crate::fmt::distance(f, name) <= 3
            })
            .collect();
        out.sort();
        out.dedup();
        out.truncate(5);
        out
    }

    /// Group the file-backed mappings (and the vDSO) of `maps` into objects.
    pub fn new(proc: &Process, maps: &[Mapping], debug_dirs: &[PathBuf]) -> Result<Objects> {
        let debug_dirs: Rc<[PathBuf]> = debug_dirs.into();
        let (_, exe_dev, exe_ino) = proc.exe()?;
        let exe_dev = (libc::major(exe_dev), libc::minor(exe_dev));
        let mut list: Vec<LoadedObject> = Vec::new();
        for m in maps {
            let vdso = m.path == "[vdso]";
            if !m.is_file() && !vdso {
                continue;
            }
            // A mapping at file offset 0 starts a new object; later mappings of the same
            // file join the object just before them.
            let joins = list.last().is_some_and(|o: &LoadedObject| {
                let f = &o.mappings[0];
                f.inode == m.inode && f.dev == m.dev && f.path == m.path && (m.offset != 0 || vdso)
            });
            if joins {
                let o = list.last_mut().unwrap();
                o.end = m.end;
                o.mappings.push(m.clone());
                continue;
            }
            if m.offset != 0 && !vdso {
                // A data file mapped at an offset, not a loaded object.
                continue;
            }
            list.push(LoadedObject {
                path: m.path.clone(),
                start: m.start,
                end: m.end,
                mappings: vec![m.clone()],
                is_main: m.inode == exe_ino && m.dev == exe_dev,
                deleted: m.deleted,
                file: OnceCell::new(),
                debug: OnceCell::new(),
                identity: OnceCell::new(),
                mapped: OnceCell::new(),
                debug_dirs: debug_dirs.clone(),
                pid: proc.pid,
            });
        }
        // Only objects with code are interesting (a data file mapped at offset 0 is not).
        list.retain(|o| o.mappings.iter().any(|m| m.exec));
        Ok(Objects { list })
    }

    /// An object the process has not loaded, as if it were mapped at its file addresses
    /// (load bias 0): resolution and the analysis of its callers then work on it as on
    /// a loaded one, and what they find is an offset from wherever it comes to be
    /// loaded. `path` is as the process sees it (under `/proc/PID/root`).
    pub fn unloaded(pid: i32, path: &str, debug_dirs: &[PathBuf]) -> Result<Objects> {
        let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let meta = std::fs::metadata(&rooted)
            .map_err(|e| err!(Mismatch, "cannot read {path} of process {pid}: {e}"))?;
        let file = ElfFile::open(&rooted)?;
        let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let mappings: Vec<Mapping> = file
            .segments
            .iter()
            .map(|s| Mapping {
                start: s.vaddr & !0xfff,
                end: (s.vaddr + s.memsz + 0xfff) & !0xfff,
                read: true,
                write: s.write,
                exec: s.exec,
                shared: false,
                offset: s.offset & !0xfff,
                dev,
                inode: meta.ino(),
                path: path.to_string(),
                deleted: false,
            })
            .collect();
        if mappings.is_empty() || !mappings.iter().any(|m| m.exec) {
            bail!(Mismatch, "{path} has no loadable code");
        }
        let mut f = file;
        f.path = path.into();
        let obj = LoadedObject {
            path: path.to_string(),
            start: mappings[0].start,
            end: mappings.iter().map(|m| m.end).max().unwrap_or(0),
            mappings,
            is_main: false,
            deleted: false,
            file: OnceCell::from(Ok(Arc::new(f))),
            debug: OnceCell::new(),
            identity: OnceCell::new(),
            mapped: OnceCell::new(),
            debug_dirs: debug_dirs.into(),
            pid,
        };
        Ok(Objects { list: vec![obj] })
    }

    /// Take over the parsed files of `old` (the same process a moment earlier) for the
    /// objects still mapped at the same place from the same file: parsing libc again after
    /// each load would cost milliseconds of CPU the target's threads may need.
    pub fn adopt(&mut self, old: Objects) {
        let mut old = old.list;
        for o in &mut self.list {
            let same = |p: &LoadedObject| {
                p.path == o.path
                    && p.start == o.start
                    && p.mappings[0].inode == o.mappings[0].inode
                    && p.mappings[0].dev == o.mappings[0].dev
            };
            if let Some(i) = old.iter().position(same) {
                let p = old.swap_remove(i);
                o.file = p.file;
                o.debug = p.debug;
                o.identity = p.identity;
                o.mapped = p.mapped;
            }
        }
    }

    /// The main executable.
    pub fn main(&self) -> Result<&LoadedObject> {
        self.list
            .iter()
            .find(|o| o.is_main)
            .ok_or_else(|| err!(Target, "cannot find the main executable in the memory map"))
    }

    /// The object containing `addr`.
    pub fn by_addr(&self, addr: u64) -> Option<&LoadedObject> {
        self.list.iter().find(|o| o.contains(addr))
    }

    /// Find an object by the name a patch gives it: `None` or `"main"` for the executable,
    /// an absolute path, a file name or a soname.
    pub fn by_name(&self, name: Option<&str>) -> Result<&LoadedObject> {
        let name = match name {
            None | Some("main") => return self.main(),
            Some(n) => n,
        };
        let mut found: Vec<&LoadedObject> = if name.starts_with('/') {
            let canon = std::fs::canonicalize(name).ok();
            self.list
                .iter()
                .filter(|o| {
                    o.path == name || canon.as_deref().is_some_and(|c| Path::new(&o.path) == c)
                })
                .collect()
        } else {
            self.list.iter().filter(|o| o.file_name() == name).collect()
        };
        if found.is_empty() && !name.starts_with('/') {
            found = self
                .list
                .iter()
                .filter(|o| o.path != "[vdso]" && o.soname().as_deref() == Some(name))
                .collect();
        }
        match found.len() {
            1 => Ok(found[0]),
            0 => {
                let pid = self.list.first().map(|o| o.pid).unwrap_or(0);
                Err(err!(
                    Mismatch,
                    "{}; check the name with `grep {name} /proc/{pid}/maps` (a library opened later with dlopen must be loaded first)",
                    self.not_loaded(name)
                )
                .because(crate::error::Cause::NotFound))
            }
            _ => {
                let paths: Vec<String> = found
                    .iter()
                    .map(|o| format!("{} at {:#x}", o.path, o.start))
                    .collect();
                bail!(
                    Mismatch,
                    "object name {name} matches {} mappings ({}); name it by absolute path",
                    found.len(),
                    paths.join(", ")
                )
            }
        }
    }

    /// The C library (glibc's libc.so.6 or musl's libc.so).
    pub fn libc(&self) -> Option<&LoadedObject> {
        self.list.iter().find(|o| {
            let n = o.file_name();
            n == "libc.so.6"
                || n.starts_with("libc-2.")
                || n.starts_with("ld-musl-")
                || n == "libc.so"
                || n.starts_with("libc.musl")
        })
    }

    /// The dynamic loader (ld-linux).
    pub fn loader(&self) -> Option<&LoadedObject> {
        self.list.iter().find(|o| {
            o.file_name().starts_with("ld-linux")
                || o.file_name().starts_with("ld-2.")
                || o.file_name().starts_with("ld64.so")
        })
    }

    /// Symbolize a run-time address for messages: `function+0xoff (object)`.
    pub fn symbolize(&self, addr: u64) -> String {
        let Some(o) = self.by_addr(addr) else {
            return format!("{addr:#x}");
        };
        let file = o.symbols_file();
        let bias = o.bias();
        match (file, bias) {
            (Ok(f), Ok(b)) => match f.symbolize(addr.wrapping_sub(b)) {
                Some((s, off)) => format!(
                    "{}+{off:#x} ({})",
                    crate::elf::demangle::display(&s.name),
                    o.file_name()
                ),
                None => format!("{addr:#x} ({})", o.file_name()),
            },
            _ => format!("{addr:#x} ({})", o.file_name()),
        }
    }
}

/// Read code at `addr`, saying so when the object holding it went away meanwhile, or is
/// being mapped (the loader maps a new object's whole span from its file first: the pages
/// past the file's end cannot be read until it is laid out), or when objects come and go
/// around it (a library loaded and unloaded in a loop: reads of a mapping the kernel is
/// taking down fail too, and a copy unloaded and loaded again at the same address looks
/// the same in two looks at the maps around the read).
///
/// A page of a laid-out code mapping that its file holds reads unless the mapping
/// changed under the read, so that is churn; only a page past the file's end (a file
/// truncated or rewritten in place under a running program) is a failure of its own.
pub fn read_code(proc: &Process, addr: u64, len: usize) -> Result<Vec<u8>> {
    let read = if crate::os::fault::fails("read_code") {
        Err(err!(
            Failed,
            "reading the memory of process {} at {addr:#x}: Input/output error",
            proc.pid
        ))
    } else {
        proc.read(addr, len)
    };
    read.map_err(|e| {
        if !proc.is_alive() {
            return e;
        }
        let churn = err!(
            Busy,
            "the code at {addr:#x} was unloaded or replaced (a dlclose or dlopen) while rlivepatch worked; nothing was changed: retry"
        )
        .because(crate::error::Cause::Churn);
        let Ok(maps) = proc.maps() else {
            return e;
        };
        let Some(m) = crate::os::process::mapping_at(&maps, addr)
            .filter(|m| m.exec && m.path.starts_with('/') && addr + len as u64 <= m.end)
        else {
            return churn;
        };
        let needed = m.offset + (addr - m.start) + len as u64;
        match mapped_file_size(proc, m) {
            // (The fault stands for a file that shrank under the program.)
            Some(size) if size < needed || crate::os::fault::fails("read_code:short") => e
                .context(format!(
                    "reading the code at {addr:#x}: {} is {size} bytes, shorter than its mapping (truncated or rewritten in place while it runs); restart the program",
                    m.path
                )),
            Some(_) => churn,
            None => e.context(format!("reading the code at {addr:#x}")),
        }
    })
}

/// The size of the file a mapping maps, through the mapping itself (the path may name
/// another file by now), or by its path when the mapping's entry cannot be read.
fn mapped_file_size(proc: &Process, m: &crate::os::process::Mapping) -> Option<u64> {
    let entry = format!("/proc/{}/map_files/{:x}-{:x}", proc.pid, m.start, m.end);
    std::fs::metadata(entry)
        .or_else(|_| std::fs::metadata(&m.path))
        .ok()
        .map(|md| md.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object whose mapping is no longer in the process (unloaded since the maps were
    /// read) is a retry, not a file replaced on disk.
    #[test]
    fn a_mapping_gone_since_the_maps_were_read_is_a_retry() {
        let pid = std::process::id() as i32;
        let proc = Process::open(pid).unwrap();
        let maps = proc.maps().unwrap();
        let objects = Objects::new(&proc, &maps, &[]).unwrap();
        let mut obj = objects
            .list
            .into_iter()
            .find(|o| o.path.starts_with('/') && !o.mappings.is_empty())
            .expect("a file-backed object");
        assert!(obj.mapped_path().is_ok(), "{}", obj.path);
        // The same object, as maps read before it moved: a range nothing maps now.
        obj.mappings[0].start = 0x1000;
        obj.mappings[0].end = 0x2000;
        let e = obj.mapped_path().unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Busy, "{}", e.message);
        assert_eq!(e.cause, crate::error::Cause::Churn, "{}", e.message);
        assert!(e.message.contains("retry"), "{}", e.message);
    }
}
