//! Kernel values as the output shows them: flag bits with their names, errno
//! numbers as names, taint letters, captured strings that say what was not
//! captured. Nothing here invents data.
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::Text;

/// Flag bits with their names, as the kernel's uapi headers define them.
type FlagTable = &'static [(u32, &'static str)];

/// `include/uapi/linux/module.h`
pub const FINIT_FLAGS: FlagTable = &[
    (1, "MODULE_INIT_IGNORE_MODVERSIONS"),
    (2, "MODULE_INIT_IGNORE_VERMAGIC"),
    (4, "MODULE_INIT_COMPRESSED_FILE"),
];

/// delete_module honours these two open(2) flags.
pub const DELETE_FLAGS: FlagTable = &[
    (libc::O_NONBLOCK as u32, "O_NONBLOCK"),
    (libc::O_TRUNC as u32, "O_TRUNC"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub raw: u32,
    pub names: Vec<Text>,
    /// Bits no name is known for, kept so that nothing is hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<u32>,
}

pub fn decode_flags(raw: u32, table: FlagTable) -> Flags {
    let names = table
        .iter()
        .filter(|(bit, _)| raw & bit != 0)
        .map(|&(_, name)| Text::Borrowed(name))
        .collect();
    let known = table.iter().fold(0, |acc, (bit, _)| acc | bit);
    let unknown = raw & !known;
    Flags {
        raw,
        names,
        unknown: (unknown != 0).then_some(unknown),
    }
}

/// The symbolic name of an errno value, e.g. 2 → "ENOENT". The names of
/// the first 256 values (Linux's own end at 133) are made once: a flood of
/// failing calls names the same errno in every record.
pub fn errno_name(errno: i32) -> Text {
    const NAMED_ONCE: i32 = 256;
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    let names = NAMES.get_or_init(|| (0..NAMED_ONCE).map(name_of_errno).collect());
    match usize::try_from(errno).ok().and_then(|i| names.get(i)) {
        Some(name) => Text::Borrowed(name.as_str()),
        None => Text::Owned(name_of_errno(errno)),
    }
}

fn name_of_errno(errno: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    if name == "UnknownErrno" {
        format!("E{errno}")
    } else {
        name
    }
}

/// How many taint bits have a letter (the bits above are reported unnamed).
pub const TAINT_FLAG_COUNT: usize = 19;

/// The kernel's taint flags (`include/linux/panic.h`), bit → letter, name.
const TAINT_FLAGS: [(char, &str); TAINT_FLAG_COUNT] = [
    ('P', "proprietary_module"),
    ('F', "forced_module"),
    ('S', "cpu_out_of_spec"),
    ('R', "forced_rmmod"),
    ('M', "machine_check"),
    ('B', "bad_page"),
    ('U', "user"),
    ('D', "die"),
    ('A', "overridden_acpi_table"),
    ('W', "warn"),
    ('C', "staging"),
    ('I', "firmware_workaround"),
    ('O', "out_of_tree_module"),
    ('E', "unsigned_module"),
    ('L', "soft_lockup"),
    ('K', "livepatch"),
    ('X', "auxiliary"),
    ('T', "randstruct"),
    ('N', "test"),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint {
    pub raw: u64,
    /// As /proc/modules and `dmesg` show them, e.g. "OE".
    pub letters: String,
    pub names: Vec<Text>,
}

/// A taint as a record has it, or as people write one in an event for
/// `policy test`: its letters, `"OE"` or `["O", "E"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TaintForm {
    Record {
        raw: u64,
        letters: String,
        names: Vec<Text>,
    },
    Letters(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Taint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match TaintForm::deserialize(deserializer)? {
            TaintForm::Record {
                raw,
                letters,
                names,
            } => Taint {
                raw,
                letters,
                names,
            },
            TaintForm::Letters(letters) => taint_of_letters(letters),
            TaintForm::List(letters) => taint_of_letters(letters.concat()),
        })
    }
}

/// The taint whose letters are `letters`; a letter the table lacks adds
/// no bit but stays among the letters.
fn taint_of_letters(letters: String) -> Taint {
    let raw = letters
        .chars()
        .filter_map(|c| TAINT_FLAGS.iter().position(|(letter, _)| *letter == c))
        .fold(0, |raw, bit| raw | 1 << bit);
    Taint {
        names: taint(raw).names,
        raw,
        letters,
    }
}

pub fn taint(raw: u64) -> Taint {
    let set = || {
        TAINT_FLAGS
            .iter()
            .enumerate()
            .filter(|(bit, _)| raw & (1 << bit) != 0)
    };
    Taint {
        raw,
        letters: set().map(|(_, (letter, _))| *letter).collect(),
        names: set().map(|(_, (_, name))| Text::Borrowed(name)).collect(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    pub ret: i64,
    pub errno: Option<Text>,
    pub ok: bool,
}

/// Syscalls return -errno in the kernel; 4095 is the kernel's MAX_ERRNO.
pub fn call_result(ret: i64) -> CallResult {
    if (-4095..0).contains(&ret) {
        CallResult {
            ret,
            errno: Some(errno_name((-ret) as i32)),
            ok: false,
        }
    } else {
        CallResult {
            ret,
            errno: None,
            ok: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    pub value: Option<String>,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Text>,
}

/// Bytes as text: valid UTF-8 as is, every other byte as `\xNN`, so that a
/// crafted parameter string can neither break the JSON nor hide bytes.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_finit_flags_and_keeps_unknown_bits() {
        assert_eq!(decode_flags(0, FINIT_FLAGS).names, Vec::<&str>::new());
        let f = decode_flags(4 | 1, FINIT_FLAGS);
        assert_eq!(
            f.names,
            [
                "MODULE_INIT_IGNORE_MODVERSIONS",
                "MODULE_INIT_COMPRESSED_FILE"
            ]
        );
        assert_eq!(f.unknown, None);
        let f = decode_flags(2 | 0x40, FINIT_FLAGS);
        assert_eq!(f.names, ["MODULE_INIT_IGNORE_VERMAGIC"]);
        assert_eq!(f.unknown, Some(0x40));
        assert_eq!(serde_json::to_value(&f).unwrap()["unknown"], 0x40);
    }

    #[test]
    fn names_taint_flags_as_the_kernel_prints_them() {
        let t = taint((1 << 12) | (1 << 13));
        assert_eq!(
            (t.letters.as_str(), t.names.clone()),
            (
                "OE",
                vec![
                    Text::from("out_of_tree_module"),
                    Text::from("unsigned_module")
                ]
            )
        );
        assert_eq!(taint(1).letters, "P");
        assert_eq!(
            taint(0),
            Taint {
                raw: 0,
                letters: String::new(),
                names: vec![]
            }
        );
        // Bits past the table stay visible in `raw`.
        assert_eq!(taint(1 << 40).letters, "");
        assert_eq!(taint(1 << 40).raw, 1 << 40);
    }

    #[test]
    fn decodes_delete_flags() {
        assert_eq!(decode_flags(2048, DELETE_FLAGS).names, ["O_NONBLOCK"]);
        assert_eq!(
            decode_flags(2048 | 512, DELETE_FLAGS).names,
            ["O_NONBLOCK", "O_TRUNC"]
        );
        assert_eq!(decode_flags(1, DELETE_FLAGS).unknown, Some(1));
    }

    #[test]
    fn names_errnos_and_results() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(38), "ENOSYS");
        assert_eq!(errno_name(17), "EEXIST");
        assert_eq!(errno_name(16), "EBUSY");
        assert_eq!(errno_name(11), "EAGAIN");
        assert_eq!(errno_name(4000), "E4000");
        assert_eq!(errno_name(200), "E200");
        assert_eq!(errno_name(-1), "E-1");
        assert_eq!(
            call_result(-38),
            CallResult {
                ret: -38,
                errno: Some("ENOSYS".into()),
                ok: false
            }
        );
        assert_eq!(
            call_result(0),
            CallResult {
                ret: 0,
                errno: None,
                ok: true
            }
        );
    }
}
