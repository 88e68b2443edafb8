//! How rlivepatch writes numbers, bytes and lists in messages and JSON: the crate's
//! base, used by every layer.

/// Bytes as lowercase hex, no separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An address as JSON shows every address: a `"0x..."` string, as in the text.
pub fn ser_hex<S: serde::Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hx(*v))
}

/// An address as [`ser_hex`] writes it, or as a number (records written before).
pub fn de_hex<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Addr {
        Num(u64),
        Text(String),
    }
    match <Addr as serde::Deserialize>::deserialize(d)? {
        Addr::Num(n) => Ok(n),
        Addr::Text(t) => u64::from_str_radix(t.trim_start_matches("0x"), 16)
            .map_err(|_| serde::de::Error::custom(format!("bad address {t}"))),
    }
}

/// Names for a message, or "none".
pub fn names_or_none<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .map(|n| n.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1 thread`, `2 threads`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An address as text: `0x...`.
pub fn hx(v: u64) -> String {
    format!("{v:#x}")
}

/// Bytes as a hex string in JSON.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    /// Write bytes as hex.
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(b))
    }
    /// Read bytes from hex.
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

/// Edit distance between `a` and `b`: insertions, deletions, substitutions, and two
/// neighbours swapped (the commonest typo) each count one.
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let mut v = (d[(i - 1) * w + j - 1] + usize::from(a[i - 1] != b[j - 1]))
                    .min(d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[(i - 2) * w + j - 2] + 1);
                }
                v
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// Up to three of `candidates` nearest to `name`, close enough to be a typo of it.
pub fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let limit = (name.chars().count() / 4).clamp(1, 3);
    let mut found: Vec<(usize, &str)> = candidates
        .filter(|c| c.len().abs_diff(name.len()) <= limit && *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    // The closest only: a typo is one or two keys away, not three.
    let best = found.first().map(|f| f.0).unwrap_or(0);
    found
        .into_iter()
        .take_while(|f| f.0 == best)
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_names() {
        assert_eq!(distance("ngx_http_tme", "ngx_http_time"), 1);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("stpe", "step"), 1);
        let names = ["ngx_http_time", "ngx_http_init", "main", "ngx_time_update"];
        assert_eq!(
            nearest("ngx_http_tmie", names.iter().copied()),
            ["ngx_http_time"]
        );
        assert!(nearest("zzz", names.iter().copied()).is_empty());
    }
}
