//! Kernel field offsets read from the running kernel's BTF.
//!
//! The eBPF programs are plain Rust without CO-RE relocations, so every kernel
//! struct field they read is addressed through an offset that userspace looks up
//! here at start and hands to the programs in `ProbeConfig::offsets`. Offsets
//! compiled in from generated bindings would be right for one kernel and silently
//! wrong on the next; reading them from `/sys/kernel/btf/vmlinux` keeps them right
//! for whatever kernel is running.

use std::{
    cell::RefCell,
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use btf_rs::{Backend, Btf, BtfType, Type};
use modtrace_common::{KernelOffsets, OFFSET_NONE};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Bound on the nesting of anonymous structs/unions and on typedef/modifier
/// chains. Real kernels nest a handful of levels; the bound only protects against
/// a malformed file whose types refer to each other in a cycle.
const MAX_DEPTH: usize = 32;

/// Size of the fixed BTF header (`struct btf_header` in include/uapi/linux/btf.h).
const BTF_HEADER_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid BTF file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: struct {name} not found (needed for field offsets)")]
    StructNotFound { path: PathBuf, name: &'static str },
    #[error("{path}: {strukt}.{field} is a bitfield ({bits} bits at bit {bit_offset}); its byte offset cannot be read")]
    Bitfield {
        path: PathBuf,
        strukt: &'static str,
        field: &'static str,
        bit_offset: u64,
        bits: u32,
    },
    #[error("{path}: {strukt}.{field} starts at bit {bit_offset}, which is not byte-aligned")]
    Unaligned {
        path: PathBuf,
        strukt: &'static str,
        field: &'static str,
        bit_offset: u64,
    },
    #[error("{path}: {strukt}.{field} has different offsets in the {count} definitions of struct {strukt}: {offsets:?}")]
    Ambiguous {
        path: PathBuf,
        strukt: &'static str,
        field: &'static str,
        count: usize,
        offsets: Vec<u32>,
    },
    #[error("{path}: malformed type information for {strukt}.{field}: {reason}")]
    Malformed {
        path: PathBuf,
        strukt: &'static str,
        field: &'static str,
        reason: String,
    },
}

/// Offsets resolved from one BTF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedOffsets {
    pub offsets: KernelOffsets,
    /// Fields this kernel lacks, as `struct.field` (for example
    /// `task_struct.loginuid` without CONFIG_AUDIT). Their offset is `OFFSET_NONE`.
    pub missing: Vec<&'static str>,
}

/// One field the programs read: the struct, the member name, the `struct.field`
/// label used in `missing`, and where its offset goes.
pub struct FieldSpec {
    pub strukt: &'static str,
    pub field: &'static str,
    pub label: &'static str,
    pub slot: fn(&mut KernelOffsets) -> &mut u32,
}

macro_rules! fields {
    ($($strukt:ident . $field:ident => $slot:ident),* $(,)?) => {
        &[$(FieldSpec {
            strukt: stringify!($strukt),
            field: stringify!($field),
            label: concat!(stringify!($strukt), ".", stringify!($field)),
            slot: |o: &mut KernelOffsets| &mut o.$slot,
        }),*]
    };
}

/// Every field of `KernelOffsets`, in declaration order.
pub const FIELDS: &[FieldSpec] = fields![
    task_struct.real_parent => task_real_parent,
    task_struct.tgid => task_tgid,
    task_struct.comm => task_comm,
    task_struct.cred => task_cred,
    task_struct.loginuid => task_loginuid,
    task_struct.sessionid => task_sessionid,
    task_struct.files => task_files,
    cred.euid => cred_euid,
    cred.uid => cred_uid,
    files_struct.fdt => files_fdt,
    fdtable.max_fds => fdtable_max_fds,
    fdtable.fd => fdtable_fd,
    file.f_path => file_f_path,
    file.f_inode => file_f_inode,
    path.mnt => path_mnt,
    path.dentry => path_dentry,
    dentry.d_parent => dentry_d_parent,
    dentry.d_name => dentry_d_name,
    qstr.len => qstr_len,
    qstr.name => qstr_name,
    inode.i_ino => inode_i_ino,
    inode.i_nlink => inode_i_nlink,
    mount.mnt => mount_mnt,
    mount.mnt_parent => mount_mnt_parent,
    mount.mnt_mountpoint => mount_mnt_mountpoint,
    vfsmount.mnt_root => vfsmount_mnt_root,
    pt_regs.di => pt_regs_di,
    pt_regs.si => pt_regs_si,
    pt_regs.dx => pt_regs_dx,
    pt_regs.orig_ax => pt_regs_orig_ax,
    module.name => module_name,
    module.taints => module_taints,
    task_struct.nsproxy => task_nsproxy,
    task_struct.thread_pid => task_thread_pid,
    nsproxy.mnt_ns => nsproxy_mnt_ns,
    mnt_namespace.ns => mnt_namespace_ns,
    pid_namespace.ns => pid_namespace_ns,
    ns_common.inum => ns_common_inum,
    pid.level => pid_level,
    pid.numbers => pid_numbers,
    upid.ns => upid_ns,
    task_struct.start_boottime => task_start_boottime,
    linux_binprm.file => linux_binprm_file,
    cred.cap_effective => cred_cap_effective,
    cred.user_ns => cred_user_ns,
    user_namespace.level => user_namespace_level,
    task_struct.mm => task_mm,
    mm_struct.arg_start => mm_arg_start,
    mm_struct.arg_end => mm_arg_end,
];

/// A struct whose size the programs need, as the stride of an array they index.
pub struct SizeSpec {
    pub strukt: &'static str,
    pub slot: fn(&mut KernelOffsets) -> &mut u32,
}

/// Every size slot of `KernelOffsets`: with `FIELDS`, all of its slots.
pub const SIZES: &[SizeSpec] = &[SizeSpec {
    strukt: "upid",
    slot: |o: &mut KernelOffsets| &mut o.upid_size,
}];

/// The kernel's BTF, mapped and indexed by btf-rs but not parsed: the
/// several-megabyte vmlinux BTF holds some 100,000 types, of which the programs
/// need about twenty structs and three functions. btf-rs's default backend
/// parses every type and string into maps (about 160 ms and 38 MiB at its
/// height on this project's 2-core host); its mmap backend notes where each type
/// lies and decodes a type only when it is looked up, at the cost of a pass over
/// the type section per name looked up, which `ids` makes once per name.
pub struct KernelBtf {
    btf: Btf,
    path: PathBuf,
    /// Type ids by name, for the names looked up so far.
    ids: RefCell<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reads `btf_path` and resolves every field of `KernelOffsets`.
pub fn kernel_offsets(btf_path: &Path) -> Result<ResolvedOffsets, BtfError> {
    KernelBtf::open(btf_path)?.offsets()
}

/// Whether `name` is a function (BTF FUNC) in this BTF, e.g.
/// `__x64_sys_finit_module`, which decides whether fentry can attach to it.
pub fn has_function(btf: &KernelBtf, name: &str) -> bool {
    btf.has_function(name)
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |reason: String| BtfError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        // btf-rs adds header offsets without overflow checks and seeks wherever
        // they point, so a garbage or truncated file is rejected here first
        // instead of reaching arithmetic that could panic.
        check_header(&bytes).map_err(parse_err)?;
        let btf = map_copy(&bytes).map_err(|e| parse_err(format!("{e:#}")))?;
        Ok(Self {
            btf,
            path: path.to_path_buf(),
            ids: RefCell::default(),
        })
    }

    /// Finds the types of all `names` in one pass over the type section, where
    /// looking each up alone would take a pass per name.
    fn look_up_together<'a>(&self, names: impl Iterator<Item = &'a str>) -> Result<(), BtfError> {
        let mut wanted: Vec<&str> = names.collect();
        wanted.sort_unstable();
        wanted.dedup();
        let alternatives: Vec<String> = wanted.iter().map(|n| regex::escape(n)).collect();
        let pattern = format!("^(?:{})$", alternatives.join("|"));
        let parse_err = |reason: String| BtfError::Parse {
            path: self.path.clone(),
            reason,
        };
        let any = regex::Regex::new(&pattern).map_err(|e| parse_err(e.to_string()))?;
        let found = self
            .btf
            .resolve_ids_by_regex(&any)
            .map_err(|e| parse_err(format!("looking up {} types: {e:#}", wanted.len())))?;
        let mut ids = self.ids.borrow_mut();
        for name in &wanted {
            ids.entry((*name).to_owned()).or_default();
        }
        for id in found {
            let ty = self
                .btf
                .resolve_type_by_id(id)
                .map_err(|e| parse_err(format!("type {id}: {e:#}")))?;
            let name = ty
                .as_btf_type()
                .and_then(|t| self.btf.resolve_name(t).ok())
                .unwrap_or_default();
            if let Some(of_name) = ids.get_mut(&name) {
                of_name.push(id);
            }
        }
        Ok(())
    }

    /// Every type named `name`; the type section is searched once per name.
    fn types_named(&self, name: &str) -> Result<Vec<Type>, String> {
        let known = self.ids.borrow().get(name).cloned();
        let ids = match known {
            Some(ids) => ids,
            None => {
                let found = self
                    .btf
                    .resolve_ids_by_name(name)
                    .map_err(|e| format!("looking up {name}: {e:#}"))?;
                self.ids.borrow_mut().insert(name.to_owned(), found.clone());
                found
            }
        };
        ids.into_iter()
            .map(|id| {
                self.btf
                    .resolve_type_by_id(id)
                    .map_err(|e| format!("type {id} ({name}): {e:#}"))
            })
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.types_named(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    pub fn offsets(&self) -> Result<ResolvedOffsets, BtfError> {
        let structs = FIELDS.iter().map(|f| f.strukt);
        self.look_up_together(structs.chain(SIZES.iter().map(|s| s.strukt)))?;
        let mut offsets = KernelOffsets::NONE;
        let mut missing = Vec::new();
        for spec in FIELDS {
            match self.field_offset(spec.strukt, spec.field)? {
                Some(off) => *(spec.slot)(&mut offsets) = off,
                None => missing.push(spec.label),
            }
        }
        for spec in SIZES {
            *(spec.slot)(&mut offsets) = self.struct_size(spec.strukt)?;
        }
        Ok(ResolvedOffsets { offsets, missing })
    }

    /// The value of constant `constant` of `enum enum_name`, `None` when the
    /// enum (of that name, in any definition) lacks it, e.g.
    /// READING_MODULE_COMPRESSED before the kernel had it.
    pub fn enum_value(&self, enum_name: &str, constant: &str) -> Result<Option<u32>, BtfError> {
        let parse_err = |reason: String| BtfError::Parse {
            path: self.path.clone(),
            reason,
        };
        let mut values: Vec<u32> = Vec::new();
        for ty in self.types_named(enum_name).map_err(parse_err)? {
            let Type::Enum(def) = ty else { continue };
            for member in &def.members {
                let name = self
                    .btf
                    .resolve_name(member)
                    .map_err(|e| parse_err(format!("a constant of enum {enum_name}: {e:#}")))?;
                if name == constant {
                    values.push(member.val());
                }
            }
        }
        values.dedup();
        match values.as_slice() {
            [] => Ok(None),
            [value] => Ok(Some(*value)),
            many => Err(parse_err(format!(
                "enum {enum_name}: definitions disagree on {constant}: {many:?}"
            ))),
        }
    }

    /// `sizeof(struct strukt)`; an error if the struct is absent or its
    /// definitions disagree.
    pub fn struct_size(&self, strukt: &'static str) -> Result<u32, BtfError> {
        let defs = self
            .struct_defs(strukt)
            .map_err(|reason| BtfError::Malformed {
                path: self.path.clone(),
                strukt,
                field: "(size)",
                reason,
            })?;
        let mut sizes: Vec<u32> = defs
            .iter()
            .map(|d| u32::try_from(d.size()).unwrap_or(OFFSET_NONE))
            .collect();
        sizes.dedup();
        match sizes.as_slice() {
            [] => Err(BtfError::StructNotFound {
                path: self.path.clone(),
                name: strukt,
            }),
            [size] if *size != OFFSET_NONE => Ok(*size),
            many => Err(BtfError::Malformed {
                path: self.path.clone(),
                strukt,
                field: "(size)",
                reason: format!("definitions disagree on its size or it is out of range: {many:?}"),
            }),
        }
    }

    /// Byte offset of `strukt.field`, `None` if the struct exists but has no such
    /// member, and an error if the struct itself is absent.
    pub fn field_offset(
        &self,
        strukt: &'static str,
        field: &'static str,
    ) -> Result<Option<u32>, BtfError> {
        let malformed = |reason: String| BtfError::Malformed {
            path: self.path.clone(),
            strukt,
            field,
            reason,
        };
        let defs = self.struct_defs(strukt).map_err(malformed)?;
        if defs.is_empty() {
            return Err(BtfError::StructNotFound {
                path: self.path.clone(),
                name: strukt,
            });
        }
        let mut found: Vec<Option<u64>> = Vec::with_capacity(defs.len());
        for def in &defs {
            let hit = self.find_member(def, field, 0, 0).map_err(malformed)?;
            let bits = match hit {
                None => None,
                Some(MemberHit {
                    bit_offset,
                    bitfield: Some(bits),
                }) => {
                    return Err(BtfError::Bitfield {
                        path: self.path.clone(),
                        strukt,
                        field,
                        bit_offset,
                        bits,
                    })
                }
                Some(MemberHit { bit_offset, .. }) => Some(bit_offset),
            };
            found.push(bits);
        }
        found.dedup();
        let bit_offset = match found.as_slice() {
            [one] => *one,
            many => {
                return Err(BtfError::Ambiguous {
                    path: self.path.clone(),
                    strukt,
                    field,
                    count: defs.len(),
                    offsets: many
                        .iter()
                        .map(|b| b.map_or(OFFSET_NONE, |b| (b / 8) as u32))
                        .collect(),
                })
            }
        };
        let Some(bit_offset) = bit_offset else {
            return Ok(None);
        };
        if bit_offset % 8 != 0 {
            return Err(BtfError::Unaligned {
                path: self.path.clone(),
                strukt,
                field,
                bit_offset,
            });
        }
        match u32::try_from(bit_offset / 8) {
            // OFFSET_NONE is the "absent" marker, so it can never be a real offset.
            Ok(off) if off != OFFSET_NONE => Ok(Some(off)),
            _ => Err(malformed(format!(
                "offset of {bit_offset} bits is out of range"
            ))),
        }
    }

    /// Every complete struct/union definition named `name`, reached directly or
    /// through typedefs and modifiers. Forward declarations are skipped: they
    /// carry no members.
    fn struct_defs(&self, name: &str) -> Result<Vec<btf_rs::Struct>, String> {
        let mut defs = Vec::new();
        for ty in self.types_named(name)? {
            match self.strip(ty)? {
                Type::Struct(s) | Type::Union(s) if s.size() > 0 || !s.members.is_empty() => {
                    defs.push(s);
                }
                _ => {}
            }
        }
        Ok(defs)
    }

    /// Follows typedefs and const/volatile/restrict/type-tag to the type beneath.
    fn strip(&self, mut ty: Type) -> Result<Type, String> {
        for _ in 0..MAX_DEPTH {
            match ty {
                Type::Typedef(ref t) => ty = self.chained(t)?,
                Type::TypeTag(ref t) => ty = self.chained(t)?,
                Type::Const(ref v) | Type::Volatile(ref v) | Type::Restrict(ref v) => {
                    ty = self.chained(v)?;
                }
                other => return Ok(other),
            }
        }
        Err(format!(
            "typedef/modifier chain longer than {MAX_DEPTH} links"
        ))
    }

    fn chained<T: BtfType + ?Sized>(&self, t: &T) -> Result<Type, String> {
        self.btf
            .resolve_chained_type(t)
            .map_err(|e| format!("dangling type reference: {e:#}"))
    }

    /// Looks `field` up among the members of `def`, descending into anonymous
    /// struct/union members (whose own members belong to the enclosing struct's
    /// namespace in C) and adding their offsets.
    fn find_member(
        &self,
        def: &btf_rs::Struct,
        field: &str,
        base_bits: u64,
        depth: usize,
    ) -> Result<Option<MemberHit>, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "anonymous members nested deeper than {MAX_DEPTH} levels"
            ));
        }
        // Named members first, so that a direct hit never depends on the order of
        // anonymous members around it.
        let mut anonymous = Vec::new();
        for member in &def.members {
            let name = self
                .btf
                .resolve_name(member)
                .map_err(|e| format!("member name unreadable: {e:#}"))?;
            let bit_offset = base_bits + u64::from(member.bit_offset());
            if name == field {
                return Ok(Some(MemberHit {
                    bit_offset,
                    bitfield: member.bitfield_size().filter(|&bits| bits != 0),
                }));
            }
            if name.is_empty() {
                anonymous.push((member, bit_offset));
            }
        }
        for (member, bit_offset) in anonymous {
            let ty = self.strip(self.chained(member)?)?;
            if let Type::Struct(inner) | Type::Union(inner) = ty {
                if let Some(hit) = self.find_member(&inner, field, bit_offset, depth + 1)? {
                    return Ok(Some(hit));
                }
            }
        }
        Ok(None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberHit {
    bit_offset: u64,
    /// Width in bits when the member is a bitfield.
    bitfield: Option<u32>,
}

/// btf-rs maps the file it is given; sysfs lets the kernel's BTF be mapped
/// only since Linux 6.16, so the bytes already read are handed over in a memfd.
fn map_copy(bytes: &[u8]) -> std::io::Result<Btf> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"modtrace-btf", MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // The mapping btf-rs makes outlives the descriptor closed with `file`.
    Btf::from_file_with_backend(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)),
        Backend::Mmap,
    )
    .map_err(std::io::Error::other)
}

/// Checks the BTF header and that its sections lie inside the file.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < BTF_HEADER_LEN {
        return Err(format!(
            "{} bytes long, shorter than the {BTF_HEADER_LEN}-byte BTF header",
            bytes.len()
        ));
    }
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    let read_u32: fn([u8; 4]) -> u32 = match magic {
        0xeb9f => u32::from_le_bytes,
        0x9feb => u32::from_be_bytes,
        other => return Err(format!("bad magic {other:#06x}, expected 0xeb9f")),
    };
    if bytes[2] != 1 {
        return Err(format!("unsupported BTF version {}", bytes[2]));
    }
    let word = |at: usize| read_u32([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (hdr_len, type_off, type_len, str_off, str_len) =
        (word(4), word(8), word(12), word(16), word(20));
    if (hdr_len as usize) < BTF_HEADER_LEN {
        return Err(format!("header length {hdr_len} is below {BTF_HEADER_LEN}"));
    }
    let file_len = bytes.len() as u64;
    for (what, off, len) in [("type", type_off, type_len), ("string", str_off, str_len)] {
        let end = u64::from(hdr_len) + u64::from(off) + u64::from(len);
        if end > file_len {
            return Err(format!(
                "{what} section ends at byte {end}, past the end of the {file_len}-byte file"
            ));
        }
    }
    if type_off % 4 != 0 || type_len % 4 != 0 {
        return Err(format!(
            "type section (offset {type_off}, length {type_len}) is not 4-byte aligned"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::process::Command;

    /// Member offsets of one struct as printed by pahole, which reads the BTF
    /// with its own parser (libbpf/dwarves), independent of btf-rs and of the
    /// lookup code above. Only members reachable by name from the struct itself
    /// are kept: those at top level and inside anonymous structs/unions, not
    /// those inside named nested types.
    fn pahole_members(strukt: &str) -> Option<HashMap<String, u64>> {
        let out = Command::new("pahole")
            .args(["-C", strukt, VMLINUX_BTF])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run pahole ({e}); install the Debian package `dwarves`")
            });
        assert!(
            out.status.success(),
            "pahole -C {strukt} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("pahole output is UTF-8");
        if text.trim().is_empty() {
            return None; // pahole prints nothing for an unknown struct
        }
        // One frame per open brace; a closing `};` (anonymous) hands its members
        // to the enclosing frame, a closing `} name;` drops them.
        let mut stack: Vec<HashMap<String, u64>> = Vec::new();
        let mut result = None;
        for line in text.lines() {
            let code = match line.find("/*") {
                Some(i) => &line[..i],
                None => line,
            }
            .trim();
            if code.ends_with('{') {
                stack.push(HashMap::new());
                continue;
            }
            if let Some(rest) = code.strip_prefix('}') {
                let frame = stack.pop().expect("pahole braces balance");
                match stack.last_mut() {
                    None => result = Some(frame),
                    // `};` or `} __attribute__((...));` closes an anonymous member.
                    Some(parent)
                        if rest.trim() == ";" || rest.trim().starts_with("__attribute__") =>
                    {
                        parent.extend(frame);
                    }
                    Some(_) => {}
                }
                continue;
            }
            // Unnamed padding bitfields (`unsigned int :0;`) carry no offset.
            let (Some(decl), Some(comment_at)) = (code.strip_suffix(';'), line.find("/*")) else {
                continue;
            };
            // `type name[16]` or `type name:3`: the name is the last identifier
            // before any array or bitfield suffix.
            let decl = decl.split([':', '[']).next().unwrap_or(decl).trim_end();
            let name: String = decl
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let comment = &line[comment_at + 2..];
            let off_field = comment.split_whitespace().next().expect("offset present");
            // Bitfields print as `byte:bit`; keep only whole-byte ones.
            let off: u64 = match off_field.split_once(':') {
                Some((byte, bit)) if bit.trim().is_empty() || bit == "0" => byte.parse().unwrap(),
                Some(_) => continue,
                None => off_field.parse().expect("numeric offset"),
            };
            stack
                .last_mut()
                .expect("member inside a struct")
                .insert(name, off);
        }
        result
    }

    #[test]
    fn every_offset_matches_pahole() {
        let resolved = kernel_offsets(Path::new(VMLINUX_BTF)).expect("vmlinux BTF resolves");
        let mut cache: HashMap<&str, HashMap<String, u64>> = HashMap::new();
        let mut checked = 0;
        for spec in FIELDS {
            let members = cache.entry(spec.strukt).or_insert_with(|| {
                pahole_members(spec.strukt)
                    .unwrap_or_else(|| panic!("pahole does not know struct {}", spec.strukt))
            });
            let mut offsets = resolved.offsets;
            let ours = *(spec.slot)(&mut offsets);
            match members.get(spec.field) {
                Some(&theirs) => {
                    assert_eq!(
                        u64::from(ours),
                        theirs,
                        "{}: btf.rs says {ours}, pahole says {theirs}",
                        spec.label
                    );
                    assert!(!resolved.missing.contains(&spec.label), "{}", spec.label);
                }
                None => {
                    assert_eq!(ours, OFFSET_NONE, "{} absent per pahole", spec.label);
                    assert!(resolved.missing.contains(&spec.label), "{}", spec.label);
                }
            }
            checked += 1;
        }
        assert_eq!(checked, FIELDS.len());
        // The core fields exist on every kernel modtrace supports; only the
        // CONFIG_AUDIT ones may be missing.
        for m in &resolved.missing {
            assert!(
                ["task_struct.loginuid", "task_struct.sessionid"].contains(m),
                "unexpectedly missing: {m}"
            );
        }
    }

    #[test]
    fn every_size_matches_pahole() {
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        for spec in SIZES {
            let out = Command::new("pahole")
                .args(["-C", spec.strukt, VMLINUX_BTF])
                .output()
                .expect("pahole runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let theirs: u32 = text
                .split("/* size: ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no size for {} in pahole's {text:?}", spec.strukt));
            assert_eq!(
                btf.struct_size(spec.strukt).unwrap(),
                theirs,
                "{}",
                spec.strukt
            );
        }
    }

    /// FIELDS must cover every slot of KernelOffsets exactly once, or a field
    /// would silently stay OFFSET_NONE (or two specs would fight over one slot).
    #[test]
    fn fields_cover_every_slot_once() {
        let mut o = KernelOffsets::NONE;
        for (i, spec) in FIELDS.iter().enumerate() {
            let slot = (spec.slot)(&mut o);
            assert_eq!(*slot, OFFSET_NONE, "{} shares a slot", spec.label);
            *slot = i as u32;
        }
        for (i, spec) in SIZES.iter().enumerate() {
            let slot = (spec.slot)(&mut o);
            assert_eq!(*slot, OFFSET_NONE, "sizeof({}) shares a slot", spec.strukt);
            *slot = (FIELDS.len() + i) as u32;
        }
        const SLOTS: usize = std::mem::size_of::<KernelOffsets>() / 4;
        assert_eq!(FIELDS.len() + SIZES.len(), SLOTS);
        // SAFETY: KernelOffsets is repr(C) with only u32 fields, no padding.
        let words: [u32; SLOTS] = unsafe { std::mem::transmute(o) };
        let mut seen: Vec<u32> = words.to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..SLOTS as u32).collect::<Vec<_>>());
        for spec in FIELDS {
            assert_eq!(spec.label, format!("{}.{}", spec.strukt, spec.field));
        }
    }

    #[test]
    fn known_functions() {
        let btf = KernelBtf::open(Path::new(VMLINUX_BTF)).unwrap();
        assert!(has_function(&btf, "__x64_sys_finit_module"));
        assert!(has_function(&btf, "__x64_sys_delete_module"));
        // A struct name is not a function.
        assert!(!has_function(&btf, "task_struct"));
        assert!(!has_function(&btf, "modtrace_no_such_function"));
    }

    /// A tiny BTF writer for files the real kernel cannot provide: a missing
    /// field, a missing struct, bitfields, typedef-only structs.
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_CONST: u32 = 10;
    const KIND_FUNC: u32 = 12;
    const KIND_FUNC_PROTO: u32 = 13;

    impl BtfBuilder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        fn head(&mut self, name: &str, kind: u32, kflag: u32, vlen: u32, size_type: u32) -> u32 {
            let n = self.str(name);
            self.word(n);
            self.word(kflag << 31 | kind << 24 | vlen);
            self.word(size_type);
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, 0, bytes);
            self.word(bytes * 8);
            id
        }
        /// Members are (name, type id, bit offset, bitfield width).
        fn record(&mut self, kind: u32, name: &str, size: u32, m: &[(&str, u32, u32, u32)]) -> u32 {
            let kflag = u32::from(m.iter().any(|x| x.3 != 0));
            let id = self.head(name, kind, kflag, m.len() as u32, size);
            for &(mname, ty, bits, width) in m {
                let n = self.str(mname);
                self.word(n);
                self.word(ty);
                self.word(if kflag == 1 { width << 24 | bits } else { bits });
            }
            id
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let t = self.types.len() as u32;
            for w in [24, 0, t, t, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn write_tmp(tag: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "modtrace-btf-test-{}-{tag}.btf",
            std::process::id()
        ));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A file holding every struct of FIELDS with made-up offsets, minus the
    /// ones `skip` names, so each test changes one thing.
    fn synthetic(skip: &[&str], extra: impl FnOnce(&mut BtfBuilder, u32)) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4);
        let mut by_struct: Vec<(&str, Vec<&str>)> = Vec::new();
        for spec in FIELDS {
            if skip.contains(&spec.label) || skip.contains(&spec.strukt) {
                continue;
            }
            match by_struct.iter_mut().find(|(s, _)| *s == spec.strukt) {
                Some((_, f)) => f.push(spec.field),
                None => by_struct.push((spec.strukt, vec![spec.field])),
            }
        }
        for (s, fields) in &by_struct {
            // Field i at byte 8*i + 8, so every offset is distinct and nonzero.
            let members: Vec<_> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| (*f, u32_t, (i as u32 + 1) * 64, 0))
                .collect();
            b.record(KIND_STRUCT, s, 8 * (fields.len() as u32 + 1), &members);
        }
        extra(&mut b, u32_t);
        b.finish()
    }

    #[test]
    fn synthetic_file_resolves_as_written() {
        let p = write_tmp("full", &synthetic(&[], |_, _| {}));
        let r = kernel_offsets(&p).unwrap();
        assert!(r.missing.is_empty(), "{:?}", r.missing);
        assert_eq!(r.offsets.task_real_parent, 8);
        assert_eq!(r.offsets.task_files, 7 * 8);
        assert_eq!(r.offsets.pt_regs_orig_ax, 4 * 8);
        assert_eq!(r.offsets.qstr_name, 2 * 8);
        // upid has one member (`ns`), so the builder made it 16 bytes.
        assert_eq!(r.offsets.upid_size, 16);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_fields_are_reported_not_fatal() {
        let p = write_tmp(
            "noaudit",
            &synthetic(
                &["task_struct.loginuid", "task_struct.sessionid"],
                |_, _| {},
            ),
        );
        let r = kernel_offsets(&p).unwrap();
        assert_eq!(r.missing, ["task_struct.loginuid", "task_struct.sessionid"]);
        assert_eq!(r.offsets.task_loginuid, OFFSET_NONE);
        assert_eq!(r.offsets.task_sessionid, OFFSET_NONE);
        // The fields after them keep their own offsets (files is now 5th).
        assert_eq!(r.offsets.task_files, 5 * 8);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_struct_is_an_error_naming_it() {
        let p = write_tmp("notask", &synthetic(&["task_struct"], |_, _| {}));
        let err = kernel_offsets(&p).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::StructNotFound {
                    name: "task_struct",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("task_struct") && msg.contains(&*p.to_string_lossy()),
            "{msg}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn anonymous_members_typedefs_and_modifiers() {
        // qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name }
        // reached only through `typedef const struct qstr_impl qstr`, all at a
        // nonzero base so a forgotten offset addition shows.
        let p = write_tmp(
            "anon",
            &synthetic(&["qstr"], |b, u32_t| {
                let inner = b.record(
                    KIND_STRUCT,
                    "",
                    8,
                    &[("hash", u32_t, 0, 0), ("len", u32_t, 32, 0)],
                );
                let inner_const = b.head("", KIND_CONST, 0, 0, inner);
                let un = b.record(
                    KIND_UNION,
                    "",
                    8,
                    &[("", inner_const, 0, 0), ("hash_len", u32_t, 0, 0)],
                );
                let s = b.record(
                    KIND_STRUCT,
                    "qstr_impl",
                    32,
                    &[
                        ("pad", u32_t, 0, 0),
                        ("", un, 64, 0),
                        ("name", u32_t, 192, 0),
                    ],
                );
                let c = b.head("", KIND_CONST, 0, 0, s);
                b.head("qstr", KIND_TYPEDEF, 0, 0, c);
            }),
        );
        let r = kernel_offsets(&p).unwrap();
        assert_eq!(r.offsets.qstr_len, 8 + 4);
        assert_eq!(r.offsets.qstr_name, 24);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bitfield_and_unaligned_fields_are_errors() {
        let bitfield = write_tmp(
            "bitfield",
            &synthetic(&["cred"], |b, u32_t| {
                b.record(KIND_STRUCT, "cred", 8, &[("euid", u32_t, 3, 5)]);
            }),
        );
        let err = kernel_offsets(&bitfield).unwrap_err();
        assert!(
            matches!(
                err,
                BtfError::Bitfield {
                    field: "euid",
                    bits: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("cred.euid"), "{err}");

        let unaligned = write_tmp(
            "unaligned",
            &synthetic(&["cred"], |b, u32_t| {
                b.record(KIND_STRUCT, "cred", 8, &[("euid", u32_t, 12, 0)]);
            }),
        );
        let err = kernel_offsets(&unaligned).unwrap_err();
        assert!(
            matches!(err, BtfError::Unaligned { bit_offset: 12, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("cred.euid"), "{err}");
        std::fs::remove_file(bitfield).unwrap();
        std::fs::remove_file(unaligned).unwrap();
    }

    #[test]
    fn functions_in_synthetic_file() {
        let p = write_tmp(
            "func",
            &synthetic(&[], |b, _| {
                let proto = b.head("", KIND_FUNC_PROTO, 0, 0, 0);
                b.head("__x64_sys_finit_module", KIND_FUNC, 0, 1, proto);
            }),
        );
        let btf = KernelBtf::open(&p).unwrap();
        assert!(has_function(&btf, "__x64_sys_finit_module"));
        assert!(!has_function(&btf, "__x64_sys_init_module"));
        assert!(!has_function(&btf, "cred"));
        std::fs::remove_file(p).unwrap();
    }

    /// Malformed types inside a well-formed header: an unknown kind, a struct
    /// cut short by the section's end, a name past the string section, a
    /// member of a dangling type. Each is an error, never a panic.
    #[test]
    fn malformed_types_are_errors_not_panics() {
        let unknown_kind = synthetic(&[], |b, _| {
            b.head("x", 25, 0, 0, 0);
        });
        let mut cut_short = synthetic(&[], |b, u32_t| {
            b.record(KIND_STRUCT, "tail", 8, &[("a", u32_t, 0, 0)]);
        });
        // Claim a second member the section does not hold: vlen 1 -> 2.
        let type_len = u32::from_le_bytes(cut_short[12..16].try_into().unwrap()) as usize;
        let info_at = 24 + type_len - 12 - 8;
        cut_short[info_at] = 2;
        for (tag, bytes) in [("unknown-kind", unknown_kind), ("cut-short", cut_short)] {
            let p = write_tmp(tag, &bytes);
            let err = kernel_offsets(&p).expect_err(tag);
            assert!(matches!(err, BtfError::Parse { .. }), "{tag}: {err:?}");
            assert!(
                err.to_string().contains(&*p.to_string_lossy()),
                "{tag}: {err}"
            );
            std::fs::remove_file(p).unwrap();
        }
        // A type whose name lies past the string section is nameless to a
        // lookup, so the struct it claims to be is reported missing.
        let name_past_strings = write_tmp(
            "name-past-strings",
            &synthetic(&["qstr"], |b, _| {
                b.word(1 << 30);
                b.word(KIND_STRUCT << 24);
                b.word(16);
            }),
        );
        let err = kernel_offsets(&name_past_strings).unwrap_err();
        assert!(
            matches!(err, BtfError::StructNotFound { name: "qstr", .. }),
            "{err:?}"
        );
        std::fs::remove_file(name_past_strings).unwrap();
        // A struct whose anonymous member names no type: an error naming
        // the field, when the lookup has to descend into it.
        let dangling = write_tmp(
            "dangling",
            &synthetic(&["qstr"], |b, u32_t| {
                b.record(
                    KIND_STRUCT,
                    "qstr",
                    16,
                    &[("", 999, 0, 0), ("name", u32_t, 64, 0)],
                );
            }),
        );
        let err = kernel_offsets(&dangling).unwrap_err();
        assert!(
            matches!(err, BtfError::Malformed { field: "len", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("dangling type reference"), "{err}");
        std::fs::remove_file(dangling).unwrap();
    }

    #[test]
    fn unreadable_or_garbage_files_give_clear_errors() {
        let missing = Path::new("/nonexistent/modtrace/vmlinux");
        let err = kernel_offsets(missing).unwrap_err();
        assert!(matches!(err, BtfError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/modtrace/vmlinux"),
            "{err}"
        );

        let dir = kernel_offsets(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(dir, BtfError::Read { .. }), "{dir:?}");

        let real = std::fs::read(VMLINUX_BTF).unwrap();
        let mut huge_offsets = real[..64].to_vec();
        huge_offsets[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut bad_version = real[..4096].to_vec();
        bad_version[2] = 7;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("text", b"this is not BTF at all, just some text".to_vec()),
            (
                "elf",
                b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
            ),
            ("header-only", real[..24].to_vec()),
            ("truncated", real[..real.len() / 2].to_vec()),
            ("huge-offsets", huge_offsets),
            ("bad-version", bad_version),
            // Valid header, type section of random-looking words.
            ("garbage-types", {
                let mut v = real[..24].to_vec();
                v[8..24].copy_from_slice(&[0, 0, 0, 0, 64, 0, 0, 0, 64, 0, 0, 0, 1, 0, 0, 0]);
                v.extend((0..64u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8));
                v.push(0);
                v
            }),
        ];
        for (tag, bytes) in cases {
            let p = write_tmp(tag, &bytes);
            let err = kernel_offsets(&p).expect_err(tag);
            assert!(matches!(err, BtfError::Parse { .. }), "{tag}: {err:?}");
            assert!(
                err.to_string().contains(&*p.to_string_lossy()),
                "{tag}: {err}"
            );
            std::fs::remove_file(p).unwrap();
        }
    }
}
