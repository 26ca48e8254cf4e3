//! Ring-buffer bytes to typed kernel records. Records are checked for length,
//! kind and ABI version before any field is read.
use std::mem::size_of;

use modtrace_common::{
    EventHeader, KernelEvent, LoadEntryEvent, ABI_VERSION, KIND_DELETE_MODULE, KIND_FINIT_MODULE,
    KIND_INIT_MODULE, KIND_LOAD_ENTRY, KIND_MODULE_REQUEST,
};

/// What the ring buffer carries: records, and notices that a load began.
pub enum Decoded {
    Record(KernelEvent),
    LoadEntry(Box<LoadEntryEvent>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("record has ABI version {found}, this modtrace reads version {expected}: the eBPF object and the collector come from different builds")]
    Version { found: u16, expected: u16 },
    #[error("record has unknown kind {0}")]
    UnknownKind(u16),
    #[error("{kind} record is {len} bytes, expected {expected}")]
    Size {
        kind: &'static str,
        len: usize,
        expected: usize,
    },
}

/// Copies a `T` out of `bytes`, which must be exactly its size.
fn read_exact<T: Copy>(kind: &'static str, bytes: &[u8]) -> Result<Box<T>, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::Size {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the length is checked above; `T` is one of the ABI's plain-data
    // records, for which every bit pattern is valid; the read is unaligned.
    Ok(Box::new(unsafe {
        std::ptr::read_unaligned(bytes.as_ptr().cast::<T>())
    }))
}

pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::ShortHeader {
            len: bytes.len(),
            need,
        });
    }
    let kind = u16::from_ne_bytes([bytes[0], bytes[1]]);
    let version = u16::from_ne_bytes([bytes[2], bytes[3]]);
    if version != ABI_VERSION {
        return Err(DecodeError::Version {
            found: version,
            expected: ABI_VERSION,
        });
    }
    // The ring buffer rounds records up to 8 bytes; the header's own size is
    // the record's.
    let size = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let record = bytes.get(..size).unwrap_or(bytes);
    let event = match kind {
        KIND_INIT_MODULE => KernelEvent::InitModule(read_exact("init_module", record)?),
        KIND_FINIT_MODULE => KernelEvent::FinitModule(read_exact("finit_module", record)?),
        KIND_DELETE_MODULE => KernelEvent::DeleteModule(read_exact("delete_module", record)?),
        KIND_MODULE_REQUEST => KernelEvent::ModuleRequest(read_exact("request", record)?),
        KIND_LOAD_ENTRY => return Ok(Decoded::LoadEntry(read_exact("load_entry", record)?)),
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Decoded::Record(event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use modtrace_common::{BoundedStr, DeleteModuleEvent, TaskInfo, MODULE_NAME_CAP};

    fn as_bytes<T>(value: &T) -> &[u8] {
        // SAFETY: test-only view of a plain-data record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn delete_event() -> DeleteModuleEvent {
        DeleteModuleEvent {
            header: EventHeader {
                kind: KIND_DELETE_MODULE,
                abi_version: ABI_VERSION,
                size: size_of::<DeleteModuleEvent>() as u32,
                enter_ns: 10,
                exit_ns: 20,
                ret: -2,
                digest: 0x5eed,
            },
            task: TaskInfo {
                pid: 7,
                tid: 8,
                ppid: 1,
                uid: 1000,
                gid: 1000,
                euid: 1000,
                auid: 4,
                session: 5,
                cgroup_id: 99,
                missing: 0,
                ancestor_count: 1,
                comm: *b"rmmod\0\0\0\0\0\0\0\0\0\0\0",
                parent_comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
                mnt_ns: 4026531841,
                pid_ns: 4026531836,
                start_ns: 1_000_000,
                ancestors: [modtrace_common::Ancestor {
                    pid: 1,
                    uid: 0,
                    comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
                    start_ns: 0,
                }; modtrace_common::MAX_ANCESTORS],
            },
            flags: 2048,
            freed: 1,
            name_addr: 0x7fff_0000,
            name: BoundedStr {
                len: 5,
                state: 0,
                bytes: {
                    let mut b = [0u8; MODULE_NAME_CAP];
                    b[..5].copy_from_slice(b"dummy");
                    b
                },
            },
        }
    }

    #[test]
    fn round_trips_a_delete_record_with_ring_buffer_padding() {
        let event = delete_event();
        let mut bytes = as_bytes(&event).to_vec();
        bytes.resize(bytes.len().next_multiple_of(8) + 8, 0xAA);
        let Decoded::Record(KernelEvent::DeleteModule(decoded)) = decode(&bytes).unwrap() else {
            panic!("kind")
        };
        assert_eq!(as_bytes(&*decoded), as_bytes(&event));
    }

    #[test]
    fn rejects_short_unknown_and_foreign_records() {
        assert_eq!(
            decode(&[0; 4]).err(),
            Some(DecodeError::ShortHeader { len: 4, need: 40 })
        );
        let mut event = delete_event();
        event.header.abi_version = ABI_VERSION + 1;
        assert!(matches!(
            decode(as_bytes(&event)),
            Err(DecodeError::Version { .. })
        ));
        let mut event = delete_event();
        event.header.kind = 77;
        assert_eq!(
            decode(as_bytes(&event)).err(),
            Some(DecodeError::UnknownKind(77))
        );
        let event = delete_event();
        let truncated = &as_bytes(&event)[..100];
        assert!(matches!(
            decode(truncated),
            Err(DecodeError::Size {
                kind: "delete_module",
                len: 100,
                ..
            })
        ));
    }
}
