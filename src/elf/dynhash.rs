//! Looking up a name among an ELF file's dynamic symbols through its hash table
//! (`.gnu.hash`, or the System V `.hash` of files linked with `--hash-style=sysv`), the
//! way the dynamic loader does: a handful of lookups without reading every symbol.
//!
//! Reading all the dynamic symbols of the C library (3,000 names, each copied, then
//! sorted for lookups) cost a single apply about half a millisecond, mostly to answer "does
//! this object export that name?" and "where is `dlopen`?". The table answers each in a
//! few reads of the mapped file.
//!
//! `.gnu.hash` (the GNU extension most toolchains emit by default): a header of four
//! words (bucket count, index of the first hashed symbol, bloom filter words, bloom
//! shift), the bloom filter (64-bit words on ELFCLASS64), the buckets (the first symbol
//! index of each hash's chain), then one hash value per hashed symbol, in symbol order,
//! with the lowest bit set on the last of a chain. `.hash`: the bucket and chain counts,
//! the buckets (a symbol index each), then a chain (the next symbol index, 0 at the end)
//! per symbol.

use goblin::elf::Elf;

/// Size of an `Elf64_Sym`.
const SYM_SIZE: usize = 24;

/// Where a file's hash table, dynamic symbols and their names lie (file offsets).
#[derive(Debug, Clone, Copy)]
pub struct DynHash {
    table: usize,
    /// `.gnu.hash` rather than `.hash`.
    gnu: bool,
    symbols: usize,
    names: usize,
    names_len: usize,
}

/// One dynamic symbol, as the table found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynSym {
    /// Its index in `.dynsym` (and `.gnu.version`).
    pub index: usize,
    /// `st_value`.
    pub value: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_info`: binding in the high four bits, type in the low four.
    pub info: u8,
    /// `st_shndx`: 0 when the symbol is undefined here.
    pub shndx: u16,
}

impl DynSym {
    /// Defined in this file (not a reference to another object's).
    pub fn defined(&self) -> bool {
        self.shndx != 0
    }

    /// Global or weak, as opposed to local.
    pub fn global(&self) -> bool {
        self.info >> 4 != goblin::elf::sym::STB_LOCAL
    }
}

impl DynHash {
    /// The table of a parsed 64-bit file, when it has one (`.gnu.hash` first).
    pub fn of(elf: &Elf) -> Option<DynHash> {
        let info = &elf.dynamic.as_ref()?.info;
        if !elf.is_64 || info.symtab == 0 || info.strtab == 0 {
            return None;
        }
        let (table, gnu) = match (info.gnu_hash, info.hash) {
            (Some(t), _) => (t, true),
            (None, Some(t)) => (t, false),
            (None, None) => return None,
        };
        Some(DynHash {
            table: usize::try_from(table).ok()?,
            gnu,
            symbols: info.symtab,
            names: info.strtab,
            names_len: info.strsz,
        })
    }

    /// Every dynamic symbol named `name` (several when it has versions), in table order;
    /// `None` when the table is malformed: the caller then reads the symbols instead.
    pub fn find(&self, bytes: &[u8], name: &str) -> Option<Vec<DynSym>> {
        if self.gnu {
            self.find_gnu(bytes, name)
        } else {
            self.find_sysv(bytes, name)
        }
    }

    fn find_sysv(&self, bytes: &[u8], name: &str) -> Option<Vec<DynSym>> {
        let word = |at: usize| word(bytes, at);
        let nbuckets = word(self.table)? as usize;
        let nchains = word(self.table + 4)? as usize;
        if nbuckets == 0 {
            return None;
        }
        let buckets = self.table + 8;
        let chains = buckets.checked_add(nbuckets.checked_mul(4)?)?;
        let mut index = word(buckets + 4 * (sysv_hash(name) as usize % nbuckets))? as usize;
        let mut found = Vec::new();
        // A chain longer than the symbols is a loop in a malformed table.
        for _ in 0..nchains {
            if index == 0 {
                return Some(found);
            }
            if index >= nchains {
                return None;
            }
            if self.name_at(bytes, index)? == name.as_bytes() {
                found.push(self.symbol(bytes, index)?);
            }
            index = word(chains.checked_add(index * 4)?)? as usize;
        }
        None
    }

    fn find_gnu(&self, bytes: &[u8], name: &str) -> Option<Vec<DynSym>> {
        let word = |at: usize| word(bytes, at);
        let nbuckets = word(self.table)? as usize;
        let first = word(self.table + 4)? as usize;
        let bloom_words = word(self.table + 8)? as usize;
        let shift = word(self.table + 12)?;
        if nbuckets == 0 || bloom_words == 0 {
            return None;
        }
        let hash = hash(name);
        let bloom = self.table + 16;
        let at = bloom.checked_add((hash as usize / 64 % bloom_words) * 8)?;
        let mask = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
        let bits = (1u64 << (hash % 64)) | (1u64 << ((hash >> shift) % 64));
        if mask & bits != bits {
            return Some(Vec::new());
        }
        let buckets = bloom.checked_add(bloom_words.checked_mul(8)?)?;
        let chains = buckets.checked_add(nbuckets.checked_mul(4)?)?;
        let mut index = word(buckets + 4 * (hash as usize % nbuckets))? as usize;
        let mut found = Vec::new();
        if index < first {
            return Some(found);
        }
        loop {
            let h = word(chains.checked_add((index - first).checked_mul(4)?)?)?;
            if h | 1 == hash | 1 && self.name_at(bytes, index)? == name.as_bytes() {
                found.push(self.symbol(bytes, index)?);
            }
            if h & 1 == 1 {
                return Some(found);
            }
            index += 1;
        }
    }

    fn symbol(&self, bytes: &[u8], index: usize) -> Option<DynSym> {
        let at = self.symbols.checked_add(index.checked_mul(SYM_SIZE)?)?;
        let s = bytes.get(at..at.checked_add(SYM_SIZE)?)?;
        Some(DynSym {
            index,
            info: s[4],
            shndx: u16::from_le_bytes([s[6], s[7]]),
            value: u64::from_le_bytes(s[8..16].try_into().ok()?),
            size: u64::from_le_bytes(s[16..24].try_into().ok()?),
        })
    }

    fn name_at<'a>(&self, bytes: &'a [u8], index: usize) -> Option<&'a [u8]> {
        let at = self.symbols.checked_add(index.checked_mul(SYM_SIZE)?)?;
        let off = word(bytes, at)? as usize;
        let names = bytes.get(self.names..self.names.checked_add(self.names_len)?)?;
        let tail = names.get(off..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        Some(&tail[..end])
    }
}

/// The little-endian 32-bit word at `at`, if the file has it.
fn word(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The System V table's hash of a name.
fn sysv_hash(name: &str) -> u32 {
    name.bytes().fold(0u32, |h, c| {
        let h = (h << 4).wrapping_add(c as u32);
        let g = h & 0xf000_0000;
        (h ^ (g >> 24)) & !g
    })
}

/// The GNU table's hash of a name (the djb2 hash: h * 33 + c from 5381).
fn hash(name: &str) -> u32 {
    name.bytes()
        .fold(5381u32, |h, c| h.wrapping_mul(33).wrapping_add(c as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every defined dynamic symbol of `bytes` is found through its table, at its index,
    /// with its value; a name no symbol has is not.
    fn finds_every_symbol(bytes: &[u8], gnu: bool) {
        let elf = Elf::parse(bytes).unwrap();
        let table = DynHash::of(&elf).expect("a hash table");
        assert_eq!(table.gnu, gnu);
        // Every defined dynamic symbol is found, at its index, with its value.
        let mut checked = 0;
        for (i, s) in elf.dynsyms.iter().enumerate() {
            if s.st_shndx == 0 || s.st_name == 0 {
                continue;
            }
            let name = elf.dynstrtab.get_at(s.st_name).unwrap();
            let found = table.find(bytes, name).unwrap();
            assert!(
                found.iter().any(|f| f.index == i && f.value == s.st_value),
                "{name} at index {i}: {found:?}"
            );
            checked += 1;
        }
        assert!(checked > 0);
        assert_eq!(table.find(bytes, "rlivepatch_no_such_symbol"), Some(vec![]));
    }

    #[test]
    fn finds_what_the_gnu_table_has_and_nothing_else() {
        let bytes = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        finds_every_symbol(&bytes, true);
        // Both versions of a versioned name.
        let elf = Elf::parse(&bytes).unwrap();
        let table = DynHash::of(&elf).unwrap();
        assert!(table.find(&bytes, "memcpy").unwrap().len() >= 2);
    }

    #[test]
    fn finds_what_the_sysv_table_has() {
        let dir = std::env::temp_dir().join(format!("rlp-dynhash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("l.c");
        std::fs::write(&src, "int one(void){return 1;}\nint two(void){return 2;}\nstatic int hidden(void){return 3;}\nint three(void){return hidden();}\n").unwrap();
        let lib = dir.join("libl.so");
        let st = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,--hash-style=sysv", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = std::fs::read(&lib).unwrap();
        finds_every_symbol(&bytes, false);
        let elf = Elf::parse(&bytes).unwrap();
        let table = DynHash::of(&elf).unwrap();
        assert_eq!(table.find(&bytes, "two").unwrap().len(), 1);
        assert_eq!(table.find(&bytes, "hidden"), Some(vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_hashes_are_the_loaders() {
        // The System V ABI's function, by hand for short names.
        assert_eq!(sysv_hash(""), 0);
        assert_eq!(sysv_hash("a"), 0x61);
        assert_eq!(sysv_hash("ab"), 0x61 * 16 + 0x62);
        // Values from the GNU hash specification's examples.
        assert_eq!(hash(""), 0x0000_1505);
        assert_eq!(hash("printf"), 0x156b_2bb8);
        assert_eq!(hash("exit"), 0x7c96_7e3f);
        assert_eq!(hash("syscall"), 0xbac2_12a0);
    }
}
