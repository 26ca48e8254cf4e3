//! Kernel field offsets read from the running kernel's BTF.
//!
//! The eBPF programs are plain Rust without CO-RE relocations, so every kernel
//! struct field they read is addressed through an offset that userspace looks up
//! here at start and hands to the programs in `ProbeConfig::offsets`. Offsets
//! compiled in from generated bindings would be right for one kernel and silently
//! wrong on the next; reading them from `/sys/kernel/btf/vmlinux` keeps them right
//! for whatever kernel is running.

use std::path::{Path, PathBuf};

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

/// The kernel's BTF, read once and indexed, not parsed: the few types the
/// programs need are looked up by name in one pass over the type section
/// and decoded where they lie. A full parse of the several-megabyte vmlinux
/// BTF (every type and string into maps) took about 160 ms of a 450 ms
/// start-up on a loaded 2-core host; this takes a few.
pub struct KernelBtf {
    bytes: Vec<u8>,
    big_endian: bool,
    /// The type section, as a range of `bytes`.
    types: std::ops::Range<usize>,
    /// The string section, as a range of `bytes`.
    strings: std::ops::Range<usize>,
    /// Where each type begins in the type section, by type id; id 0 is
    /// `void`, which the section does not hold.
    starts: Vec<u32>,
    path: PathBuf,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("path", &self.path)
            .field("types", &self.starts.len().saturating_sub(1))
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

/// BTF kinds (include/uapi/linux/btf.h) this reader tells apart.
mod kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const FWD: u32 = 7;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC: u32 = 12;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const FLOAT: u32 = 16;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

/// Size of `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER_LEN: usize = 12;
/// Size of `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;

/// The three words that begin every type.
#[derive(Debug, Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    info: u32,
    /// The size of a struct, union, int...; the type referred to by a
    /// typedef, modifier, pointer or function.
    size_or_type: u32,
}

impl TypeHeader {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kflag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// One member of a struct or union.
#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Width in bits when the member is a bitfield, 0 otherwise.
    bitfield_bits: u32,
}

/// A struct or union definition: where its members lie.
#[derive(Debug, Clone, Copy)]
struct StructDef {
    /// Offset of its header in the type section.
    at: usize,
    size: u32,
    members: usize,
    kflag: bool,
}

/// Bytes that follow a type's header, by kind; None for a kind this
/// reader does not know, whose length it cannot tell.
fn trailing_len(header: TypeHeader) -> Option<usize> {
    let vlen = header.vlen();
    Some(match header.kind() {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(bytes, path).map_err(|reason| BtfError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Checks the header, then walks the type section once, noting where
    /// each type begins and that it lies within the section, is of a known
    /// kind and has its name within the string section.
    fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self, String> {
        let layout = check_header(&bytes)?;
        let mut btf = Self {
            big_endian: layout.big_endian,
            types: layout.types,
            strings: layout.strings,
            starts: vec![0],
            bytes,
            path: path.to_path_buf(),
        };
        let section_len = btf.types.len();
        let mut at = 0usize;
        while at < section_len {
            let header = btf
                .header_at(at)
                .ok_or_else(|| format!("type {} is cut short at byte {at}", btf.starts.len()))?;
            let trailing = trailing_len(header).ok_or_else(|| {
                format!(
                    "type {} is of unknown kind {}",
                    btf.starts.len(),
                    header.kind()
                )
            })?;
            if header.name_off as usize >= btf.strings.len() && header.name_off != 0 {
                return Err(format!(
                    "type {} names string offset {}, past the string section",
                    btf.starts.len(),
                    header.name_off
                ));
            }
            let next = at + TYPE_HEADER_LEN + trailing;
            if next > section_len {
                return Err(format!(
                    "type {} ends at byte {next}, past the {section_len}-byte type section",
                    btf.starts.len()
                ));
            }
            // The header check bounds the section to the file, so below 4 GiB.
            btf.starts
                .push(u32::try_from(at).map_err(|e| e.to_string())?);
            at = next;
        }
        Ok(btf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn word(&self, absolute: usize) -> Option<u32> {
        let raw: [u8; 4] = self.bytes.get(absolute..absolute + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    }

    /// The header of the type at `at` in the type section.
    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let base = self.types.start + at;
        if at + TYPE_HEADER_LEN > self.types.len() {
            return None;
        }
        Some(TypeHeader {
            name_off: self.word(base)?,
            info: self.word(base + 4)?,
            size_or_type: self.word(base + 8)?,
        })
    }

    /// The type with id `id`, and where it lies; None for `void` (id 0).
    fn type_by_id(&self, id: u32) -> Result<Option<(usize, TypeHeader)>, String> {
        if id == 0 {
            return Ok(None);
        }
        let at = *self
            .starts
            .get(id as usize)
            .ok_or_else(|| format!("dangling type reference: no type {id}"))?
            as usize;
        let header = self
            .header_at(at)
            .ok_or_else(|| format!("type {id} lies outside the type section"))?;
        Ok(Some((at, header)))
    }

    /// The string at offset `off` of the string section, without its NUL.
    fn name(&self, off: u32) -> Result<&[u8], String> {
        let rest = self
            .bytes
            .get(self.strings.start + off as usize..self.strings.end)
            .ok_or_else(|| format!("no string at offset {off}"))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("the string at offset {off} has no end"))?;
        Ok(&rest[..len])
    }

    /// The ids of the types named by each of `names`, among the types of
    /// `kinds`, in one pass over the type section.
    fn ids_named(&self, names: &[&str], kinds: &[u32]) -> Vec<Vec<u32>> {
        let mut found = vec![Vec::new(); names.len()];
        for (id, &at) in (0u32..).zip(&self.starts).skip(1) {
            let Some(header) = self.header_at(at as usize) else {
                continue;
            };
            if header.name_off == 0 || !kinds.contains(&header.kind()) {
                continue;
            }
            let Ok(name) = self.name(header.name_off) else {
                continue;
            };
            for (wanted, ids) in names.iter().zip(found.iter_mut()) {
                if name == wanted.as_bytes() {
                    ids.push(id);
                }
            }
        }
        found
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.ids_named(&[name], &[kind::FUNC])
            .first()
            .is_some_and(|ids| !ids.is_empty())
    }

    pub fn offsets(&self) -> Result<ResolvedOffsets, BtfError> {
        // Every struct the specs name, looked up in one pass.
        let mut names: Vec<&'static str> = FIELDS
            .iter()
            .map(|f| f.strukt)
            .chain(SIZES.iter().map(|s| s.strukt))
            .collect();
        names.sort_unstable();
        names.dedup();
        let ids = self.ids_named(&names, STRUCT_NAMED_KINDS);
        let ids_of = |strukt: &str| -> &[u32] {
            names
                .binary_search(&strukt)
                .map_or(&[], |i| ids[i].as_slice())
        };
        let mut offsets = KernelOffsets::NONE;
        let mut missing = Vec::new();
        for spec in FIELDS {
            match self.field_offset_among(ids_of(spec.strukt), spec.strukt, spec.field)? {
                Some(off) => *(spec.slot)(&mut offsets) = off,
                None => missing.push(spec.label),
            }
        }
        for spec in SIZES {
            *(spec.slot)(&mut offsets) =
                self.struct_size_among(ids_of(spec.strukt), spec.strukt)?;
        }
        Ok(ResolvedOffsets { offsets, missing })
    }

    /// `sizeof(struct strukt)`; an error if the struct is absent or its
    /// definitions disagree.
    pub fn struct_size(&self, strukt: &'static str) -> Result<u32, BtfError> {
        let ids = self.ids_named(&[strukt], STRUCT_NAMED_KINDS);
        self.struct_size_among(&ids[0], strukt)
    }

    fn struct_size_among(&self, ids: &[u32], strukt: &'static str) -> Result<u32, BtfError> {
        let defs = self
            .struct_defs(ids)
            .map_err(|reason| BtfError::Malformed {
                path: self.path.clone(),
                strukt,
                field: "(size)",
                reason,
            })?;
        let mut sizes: Vec<u32> = defs.iter().map(|d| d.size).collect();
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
        let ids = self.ids_named(&[strukt], STRUCT_NAMED_KINDS);
        self.field_offset_among(&ids[0], strukt, field)
    }

    /// As [`Self::field_offset`], among the types `ids` that bear the name.
    fn field_offset_among(
        &self,
        ids: &[u32],
        strukt: &'static str,
        field: &'static str,
    ) -> Result<Option<u32>, BtfError> {
        let malformed = |reason: String| BtfError::Malformed {
            path: self.path.clone(),
            strukt,
            field,
            reason,
        };
        let defs = self.struct_defs(ids).map_err(malformed)?;
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

    /// Every complete struct/union definition among the types `ids`,
    /// reached directly or through typedefs and modifiers. Forward
    /// declarations are skipped: they carry no members.
    fn struct_defs(&self, ids: &[u32]) -> Result<Vec<StructDef>, String> {
        let mut defs = Vec::new();
        for &id in ids {
            if let Some(def) = self.strip(id)? {
                if def.size > 0 || def.members > 0 {
                    defs.push(def);
                }
            }
        }
        Ok(defs)
    }

    /// Follows typedefs and const/volatile/restrict/type-tag from type `id`
    /// to the type beneath: the definition if it is a struct or union.
    fn strip(&self, mut id: u32) -> Result<Option<StructDef>, String> {
        for _ in 0..MAX_DEPTH {
            let Some((at, header)) = self.type_by_id(id)? else {
                return Ok(None);
            };
            match header.kind() {
                kind::TYPEDEF | kind::TYPE_TAG | kind::CONST | kind::VOLATILE | kind::RESTRICT => {
                    id = header.size_or_type;
                }
                kind::STRUCT | kind::UNION => {
                    return Ok(Some(StructDef {
                        at,
                        size: header.size_or_type,
                        members: header.vlen(),
                        kflag: header.kflag(),
                    }))
                }
                _ => return Ok(None),
            }
        }
        Err(format!(
            "typedef/modifier chain longer than {MAX_DEPTH} links"
        ))
    }

    /// Member `index` of `def`.
    fn member(&self, def: &StructDef, index: usize) -> Result<Member, String> {
        let base = self.types.start + def.at + TYPE_HEADER_LEN + index * MEMBER_LEN;
        let word = |n: usize| {
            self.word(base + 4 * n)
                .ok_or_else(|| format!("member {index} lies outside the type section"))
        };
        let (name_off, type_id, offset) = (word(0)?, word(1)?, word(2)?);
        // With kflag set, the offset word holds the bitfield's width too.
        let (bit_offset, bitfield_bits) = if def.kflag {
            (offset & 0x00ff_ffff, offset >> 24)
        } else {
            (offset, 0)
        };
        Ok(Member {
            name_off,
            type_id,
            bit_offset,
            bitfield_bits,
        })
    }

    /// Looks `field` up among the members of `def`, descending into anonymous
    /// struct/union members (whose own members belong to the enclosing struct's
    /// namespace in C) and adding their offsets.
    fn find_member(
        &self,
        def: &StructDef,
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
        for index in 0..def.members {
            let member = self.member(def, index)?;
            let name = self
                .name(member.name_off)
                .map_err(|e| format!("member name unreadable: {e}"))?;
            let bit_offset = base_bits + u64::from(member.bit_offset);
            if name == field.as_bytes() {
                return Ok(Some(MemberHit {
                    bit_offset,
                    bitfield: Some(member.bitfield_bits).filter(|&bits| bits != 0),
                }));
            }
            if name.is_empty() {
                anonymous.push((member, bit_offset));
            }
        }
        for (member, bit_offset) in anonymous {
            if let Some(inner) = self.strip(member.type_id)? {
                if let Some(hit) = self.find_member(&inner, field, bit_offset, depth + 1)? {
                    return Ok(Some(hit));
                }
            }
        }
        Ok(None)
    }
}

/// The kinds whose name can be a struct's: the struct or union itself, and
/// the typedefs and modifiers that lead to one.
const STRUCT_NAMED_KINDS: &[u32] = &[
    kind::STRUCT,
    kind::UNION,
    kind::TYPEDEF,
    kind::TYPE_TAG,
    kind::CONST,
    kind::VOLATILE,
    kind::RESTRICT,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberHit {
    bit_offset: u64,
    /// Width in bits when the member is a bitfield.
    bitfield: Option<u32>,
}

/// Where a BTF file's sections lie, from its header.
struct Layout {
    big_endian: bool,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
}

/// Checks the BTF header and that its sections lie inside the file.
fn check_header(bytes: &[u8]) -> Result<Layout, String> {
    if bytes.len() < BTF_HEADER_LEN {
        return Err(format!(
            "{} bytes long, shorter than the {BTF_HEADER_LEN}-byte BTF header",
            bytes.len()
        ));
    }
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    let (big_endian, read_u32): (bool, fn([u8; 4]) -> u32) = match magic {
        0xeb9f => (false, u32::from_le_bytes),
        0x9feb => (true, u32::from_be_bytes),
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
    let mut ranges = Vec::with_capacity(2);
    for (what, off, len) in [("type", type_off, type_len), ("string", str_off, str_len)] {
        let start = u64::from(hdr_len) + u64::from(off);
        let end = start + u64::from(len);
        if end > file_len {
            return Err(format!(
                "{what} section ends at byte {end}, past the end of the {file_len}-byte file"
            ));
        }
        // Both within the file, which is in memory: they fit a usize.
        ranges.push(start as usize..end as usize);
    }
    if type_off % 4 != 0 || type_len % 4 != 0 {
        return Err(format!(
            "type section (offset {type_off}, length {type_len}) is not 4-byte aligned"
        ));
    }
    let strings = ranges.pop().unwrap_or_default();
    let types = ranges.pop().unwrap_or_default();
    // The first string is the empty one that unnamed types point at.
    if bytes.get(strings.start) != Some(&0) {
        return Err("the string section does not begin with the empty string".into());
    }
    Ok(Layout {
        big_endian,
        types,
        strings,
    })
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

    /// The reader's own checks, each on an otherwise valid file: a type of a
    /// kind it does not know (whose length it cannot tell), a type cut short
    /// by the section's end, a name past the string section, a member of a
    /// dangling type.
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
        let name_past_strings = synthetic(&[], |b, _| {
            b.word(1 << 30);
            b.word(KIND_INT << 24);
            b.word(4);
            b.word(32);
        });
        for (tag, bytes, expect) in [
            ("unknown-kind", unknown_kind, "unknown kind 25"),
            ("cut-short", cut_short, "past the"),
            (
                "name-past-strings",
                name_past_strings,
                "past the string section",
            ),
        ] {
            let p = write_tmp(tag, &bytes);
            let err = kernel_offsets(&p).expect_err(tag);
            assert!(matches!(err, BtfError::Parse { .. }), "{tag}: {err:?}");
            assert!(err.to_string().contains(expect), "{tag}: {err}");
            std::fs::remove_file(p).unwrap();
        }
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
        assert!(err.to_string().contains("no type 999"), "{err}");
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
