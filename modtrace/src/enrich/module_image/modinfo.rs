//! The `.modinfo` section: NUL-separated `key=value` strings written by
//! `MODULE_INFO()` and modpost, as `modinfo(8)` lists them.

use crate::record::{fields::escape_bytes, image::Modinfo};

/// Most entries kept from one `.modinfo`: the largest in-tree modules have a
/// few thousand aliases; a crafted section of `a\0a\0…` must not turn into
/// millions of map entries.
const MAX_ENTRIES: usize = 65536;

/// Parse a `.modinfo` section found at `offset`; the warning says where
/// entries were dropped, if any were.
pub(super) fn parse(section: &[u8], offset: u64) -> (Modinfo, Option<String>) {
    let mut info = Modinfo::default();
    let mut entries = 0usize;
    let mut position = 0usize;
    let mut depends_seen = false;
    for entry in section.split(|&b| b == 0) {
        let entry_offset = position;
        position += entry.len() + 1;
        // Alignment padding between entries is NULs.
        if entry.is_empty() {
            continue;
        }
        if entries == MAX_ENTRIES {
            let warning = format!(
                ".modinfo (offset {offset:#x}) has more than {MAX_ENTRIES} entries: \
                 those from section offset {entry_offset:#x} on are ignored"
            );
            return (info, Some(warning));
        }
        entries += 1;
        // An entry without '=' is a key with an empty value, as kmod has it.
        let (key, value) = match entry.iter().position(|&b| b == b'=') {
            Some(eq) => (&entry[..eq], &entry[eq + 1..]),
            None => (entry, &[][..]),
        };
        if key == b"depends" && !depends_seen {
            depends_seen = true;
            info.depends = split_depends(&escape_bytes(value));
        } else {
            info.add(key, value);
        }
    }
    (info, None)
}

impl Modinfo {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        let text = escape_bytes(value);
        // The kernel's get_modinfo() takes the first of a repeated key; later
        // ones go to `other` so nothing the file says is lost.
        let single = match key {
            b"name" => Some(&mut self.name),
            b"license" => Some(&mut self.license),
            b"description" => Some(&mut self.description),
            b"version" => Some(&mut self.version),
            b"srcversion" => Some(&mut self.srcversion),
            b"vermagic" => Some(&mut self.vermagic),
            _ => None,
        };
        match (key, single) {
            (_, Some(slot @ None)) => *slot = Some(text),
            (b"author", _) => self.author.push(text),
            (b"intree", _) if !self.intree => self.intree = true,
            (b"retpoline", _) if !self.retpoline => self.retpoline = true,
            _ => self.other.entry(escape_bytes(key)).or_default().push(text),
        }
    }
}

/// `depends=a,b` as a list; `depends=` (no dependency) as an empty one.
fn split_depends(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}
