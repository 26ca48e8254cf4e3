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
    use modtrace_common::{
        Ancestor, BoundedStr, DeleteModuleEvent, FinitModuleEvent, InitModuleEvent, Invocation,
        LoadedModule, ModuleRequestEvent, TaskInfo, ARGV_CAP, COMM_LEN, FILE_BAD_FD,
        FILE_INTERNAL_MOUNT, FILE_RESOLVED, FILE_UNLINKED, KERNEL_MODULE_NAME_LEN, MAX_ANCESTORS,
        MISSING_AUID, MISSING_EUID, MISSING_MNT_NS, MISSING_PARENT, MISSING_PID_NS,
        MISSING_SESSION, MODULE_NAME_CAP, NAME_MAX, PARAMS_CAP, PARENT_KERNEL_THREAD,
        PARENT_UNKNOWN, PATH_BUF, PATH_CAP, STR_ABSENT, STR_NULL, STR_OK, STR_TRUNCATED,
        STR_UNREADABLE,
    };

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

    // Round trips of every record kind the kernel side writes, built as its
    // programs leave them (modtrace-ebpf/src/calls.rs, capture.rs): a per-CPU
    // scratch slot is reused from call to call, so what a capture did not
    // write this time still holds an earlier call's bytes (`STALE`). The
    // decoder must hand every byte over unchanged; `len`, `state`, `missing`,
    // `ancestor_count` and `seen` say which of them userspace may read.

    /// What a reused scratch slot holds where this call wrote nothing.
    const STALE: u8 = 0x5A;
    const STALE_U32: u32 = u32::from_ne_bytes([STALE; 4]);
    const STALE_U64: u64 = u64::from_ne_bytes([STALE; 8]);

    /// What the ring buffer hands userspace for a record of `T`: its bytes,
    /// then the ring's rounding to 8 bytes and what follows in the ring (here
    /// 0xAA), which the header's `size` leaves out.
    fn ring_bytes<T>(record: &T) -> Vec<u8> {
        let mut bytes = as_bytes(record).to_vec();
        bytes.resize(bytes.len().next_multiple_of(8) + 8, 0xAA);
        bytes
    }

    fn decode_record(bytes: &[u8]) -> KernelEvent {
        match decode(bytes) {
            Ok(Decoded::Record(event)) => event,
            Ok(Decoded::LoadEntry(_)) => panic!("a load-entry notice, not a record"),
            Err(e) => panic!("{e}"),
        }
    }

    /// `header()` in calls.rs, completed at exit (`complete`).
    fn header(kind: u16, size: usize, exit_ns: u64, ret: i64, digest: u64) -> EventHeader {
        EventHeader {
            kind,
            abi_version: ABI_VERSION,
            size: size as u32,
            enter_ns: 1_000_000_000,
            exit_ns,
            ret,
            digest,
        }
    }

    fn assert_header(
        got: &EventHeader,
        kind: u16,
        size: usize,
        exit_ns: u64,
        ret: i64,
        digest: u64,
    ) {
        assert_eq!(got.kind, kind);
        assert_eq!(got.abi_version, ABI_VERSION);
        assert_eq!(got.size as usize, size);
        assert_eq!(got.enter_ns, 1_000_000_000);
        assert_eq!(got.exit_ns, exit_ns);
        assert_eq!(got.ret, ret);
        assert_eq!(got.digest, digest);
    }

    fn comm(name: &[u8]) -> [u8; COMM_LEN] {
        let mut comm = [0; COMM_LEN];
        comm[..name.len()].copy_from_slice(name);
        comm
    }

    const STALE_ANCESTOR: Ancestor = Ancestor {
        pid: STALE_U32,
        uid: STALE_U32,
        comm: [STALE; COMM_LEN],
        start_ns: STALE_U64,
    };

    /// `fill_task` with the kernel's BTF: every field read, the chain of
    /// ancestors ended by pid 1 after three, the other slots left as an
    /// earlier caller's.
    fn task_with_btf() -> TaskInfo {
        let mut ancestors = [STALE_ANCESTOR; MAX_ANCESTORS];
        ancestors[0] = Ancestor {
            pid: 900,
            uid: 1000,
            comm: comm(b"bash"),
            start_ns: 30_000,
        };
        ancestors[1] = Ancestor {
            pid: 800,
            uid: 0,
            comm: comm(b"sshd-session"),
            start_ns: 20_000,
        };
        ancestors[2] = Ancestor {
            pid: 1,
            uid: 0,
            comm: comm(b"systemd"),
            start_ns: 10_000,
        };
        TaskInfo {
            pid: 4242,
            tid: 4243,
            ppid: 900,
            uid: 0,
            gid: 5,
            euid: 6,
            auid: 1000,
            session: 17,
            cgroup_id: 0x1234_5678_9abc,
            missing: 0,
            ancestor_count: 3,
            comm: comm(b"modprobe-thread"),
            parent_comm: comm(b"bash"),
            mnt_ns: 4_026_531_841,
            pid_ns: 4_026_531_836,
            start_ns: 123_456_789,
            ancestors,
        }
    }

    fn assert_task_with_btf(got: &TaskInfo) {
        assert_eq!(got.pid, 4242);
        assert_eq!(got.tid, 4243);
        assert_eq!(got.ppid, 900);
        assert_eq!(got.uid, 0);
        assert_eq!(got.gid, 5);
        assert_eq!(got.euid, 6);
        assert_eq!(got.auid, 1000);
        assert_eq!(got.session, 17);
        assert_eq!(got.cgroup_id, 0x1234_5678_9abc);
        assert_eq!(got.missing, 0);
        assert_eq!(got.ancestor_count, 3);
        // The longest comm: 15 bytes and the kernel's NUL.
        assert_eq!(&got.comm, b"modprobe-thread\0");
        assert_eq!(&got.parent_comm, b"bash\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(got.mnt_ns, 4_026_531_841);
        assert_eq!(got.pid_ns, 4_026_531_836);
        assert_eq!(got.start_ns, 123_456_789);
        let chain: Vec<_> = got
            .ancestors
            .iter()
            .map(|a| (a.pid, a.uid, a.comm, a.start_ns))
            .collect();
        assert_eq!(
            chain[..3],
            [
                (900, 1000, comm(b"bash"), 30_000),
                (800, 0, comm(b"sshd-session"), 20_000),
                (1, 0, comm(b"systemd"), 10_000),
            ]
        );
        for stale in &chain[3..] {
            assert_eq!(*stale, (STALE_U32, STALE_U32, [STALE; COMM_LEN], STALE_U64));
        }
    }

    /// `fill_task` without BTF: only what helpers give (pid, tid, uid, gid,
    /// cgroup, comm); every other field missing, zero or as an earlier
    /// caller left it.
    fn task_without_btf() -> TaskInfo {
        TaskInfo {
            pid: 77,
            tid: 78,
            ppid: STALE_U32,
            uid: 1000,
            gid: 1001,
            euid: STALE_U32,
            auid: STALE_U32,
            session: STALE_U32,
            cgroup_id: 42,
            missing: MISSING_EUID
                | MISSING_AUID
                | MISSING_SESSION
                | MISSING_PARENT
                | MISSING_MNT_NS
                | MISSING_PID_NS,
            ancestor_count: 0,
            comm: comm(b"insmod"),
            parent_comm: [STALE; COMM_LEN],
            mnt_ns: 0,
            pid_ns: 0,
            start_ns: 0,
            ancestors: [STALE_ANCESTOR; MAX_ANCESTORS],
        }
    }

    fn assert_task_without_btf(got: &TaskInfo) {
        assert_eq!(got.pid, 77);
        assert_eq!(got.tid, 78);
        assert_eq!(got.ppid, STALE_U32);
        assert_eq!(got.uid, 1000);
        assert_eq!(got.gid, 1001);
        assert_eq!(got.euid, STALE_U32);
        assert_eq!(got.auid, STALE_U32);
        assert_eq!(got.session, STALE_U32);
        assert_eq!(got.cgroup_id, 42);
        assert_eq!(got.missing, 0b11_1111);
        assert_eq!(got.ancestor_count, 0);
        assert_eq!(got.comm, comm(b"insmod"));
        assert_eq!(got.parent_comm, [STALE; COMM_LEN]);
        assert_eq!((got.mnt_ns, got.pid_ns, got.start_ns), (0, 0, 0));
        for stale in &got.ancestors {
            assert_eq!(
                (stale.pid, stale.uid, stale.comm, stale.start_ns),
                (STALE_U32, STALE_U32, [STALE; COMM_LEN], STALE_U64)
            );
        }
    }

    /// `bounded_str` of a readable string that fits: the helper's copy and
    /// its NUL, the rest of the slot stale.
    fn copied<const N: usize>(text: &[u8]) -> BoundedStr<N> {
        let mut bytes = [STALE; N];
        bytes[..text.len()].copy_from_slice(text);
        bytes[text.len()] = 0;
        BoundedStr {
            len: text.len() as u32,
            state: STR_OK,
            bytes,
        }
    }

    /// `bounded_str` of a string longer than the slot: the helper filled it,
    /// its NUL last, and a byte followed in the source.
    fn cut_short<const N: usize>(fill: u8) -> BoundedStr<N> {
        let mut bytes = [fill; N];
        bytes[N - 1] = 0;
        BoundedStr {
            len: N as u32 - 1,
            state: STR_TRUNCATED,
            bytes,
        }
    }

    /// `bounded_str` of a pointer that faulted (the helper clears the
    /// destination) or was NULL (nothing read).
    fn not_read<const N: usize>(state: u32) -> BoundedStr<N> {
        BoundedStr {
            len: 0,
            state,
            bytes: [if state == STR_UNREADABLE { 0 } else { STALE }; N],
        }
    }

    /// `fill_invocation` for the kernel's own modprobe: its parent is a
    /// kernel thread, its whole command line was read (`read_argv` copies
    /// exactly the area, no NUL of its own after it).
    fn kernel_modprobe() -> Invocation {
        let argv = b"/sbin/modprobe\0-q\0--\0net-pf-10\0";
        let mut bytes = [STALE; ARGV_CAP];
        bytes[..argv.len()].copy_from_slice(argv);
        Invocation {
            parent: PARENT_KERNEL_THREAD,
            _reserved: 0,
            argv: BoundedStr {
                len: argv.len() as u32,
                state: STR_OK,
                bytes,
            },
        }
    }

    /// `fill_invocation` without BTF: nothing could be read.
    fn not_captured() -> Invocation {
        Invocation {
            parent: PARENT_UNKNOWN,
            _reserved: 0,
            argv: not_read(STR_ABSENT),
        }
    }

    fn assert_invocation(got: &Invocation, sent: &Invocation) {
        assert_eq!((got.parent, got._reserved), (sent.parent, 0));
        let text = &sent.argv.bytes[..sent.argv.len as usize];
        assert_str(&got.argv, &sent.argv, sent.argv.len, sent.argv.state, text);
    }

    /// A path as `walk_path` writes it: components leaf first, each ended by
    /// the helper's NUL, which `len` counts.
    fn leaf_first(components: &[&[u8]], state: u32) -> BoundedStr<PATH_BUF> {
        let mut bytes = [STALE; PATH_BUF];
        let mut len = 0;
        for component in components {
            bytes[len..len + component.len()].copy_from_slice(component);
            bytes[len + component.len()] = 0;
            len += component.len() + 1;
        }
        BoundedStr {
            len: len as u32,
            state,
            bytes,
        }
    }

    /// Every field of a decoded string: its length, state and text, and the
    /// whole slot byte for byte as sent.
    fn assert_str<const N: usize>(
        got: &BoundedStr<N>,
        sent: &BoundedStr<N>,
        len: u32,
        state: u32,
        text: &[u8],
    ) {
        assert_eq!((got.len, got.state), (len, state));
        assert_eq!(&got.bytes[..text.len()], text);
        assert!(got.bytes[..] == sent.bytes[..], "the slot's bytes changed");
    }

    fn loaded(name: &[u8], taints: u64) -> LoadedModule {
        // struct module::name is the kernel's NUL-padded copy.
        let mut field = [0; KERNEL_MODULE_NAME_LEN];
        field[..name.len()].copy_from_slice(name);
        LoadedModule {
            seen: 1,
            freed: 0,
            taints,
            name: field,
        }
    }

    /// A module_load that did not fire (a failed load): entry clears `seen`
    /// and `taints`, the name stays an earlier load's.
    fn not_loaded() -> LoadedModule {
        let mut name = [0; KERNEL_MODULE_NAME_LEN];
        name[..6].copy_from_slice(b"oldmod");
        LoadedModule {
            seen: 0,
            freed: 0,
            taints: 0,
            name,
        }
    }

    const INIT_SIZE: usize = size_of::<InitModuleEvent>();
    const FINIT_SIZE: usize = size_of::<FinitModuleEvent>();
    const DELETE_SIZE: usize = size_of::<DeleteModuleEvent>();
    const REQUEST_SIZE: usize = size_of::<ModuleRequestEvent>();
    const ENTRY_SIZE: usize = size_of::<LoadEntryEvent>();
    /// Taint flags O (out-of-tree, 12) and E (unsigned, 13).
    const TAINTS_OE: u64 = (1 << 12) | (1 << 13);

    fn init_load() -> InitModuleEvent {
        InitModuleEvent {
            header: header(KIND_INIT_MODULE, INIT_SIZE, 1_000_500_000, 0, 0x1111),
            task: task_with_btf(),
            image_addr: 0x7f00_0000_1000,
            image_len: 123_456,
            params_addr: 0x5555_0000_2000,
            module: loaded(b"dummy", TAINTS_OE),
            params: copied(b"numdummies=2 debug=1"),
            invocation: kernel_modprobe(),
        }
    }

    #[test]
    fn round_trips_an_init_module_load_with_the_module_it_registered() {
        let sent = init_load();
        let event = decode_record(&ring_bytes(&sent));
        assert_eq!(event.kind(), "init_module");
        assert_eq!(event.task().pid, 4242);
        let KernelEvent::InitModule(got) = event else {
            panic!("kind")
        };
        assert_header(
            &got.header,
            KIND_INIT_MODULE,
            INIT_SIZE,
            1_000_500_000,
            0,
            0x1111,
        );
        assert_task_with_btf(&got.task);
        assert_eq!(got.image_addr, 0x7f00_0000_1000);
        assert_eq!(got.image_len, 123_456);
        assert_eq!(got.params_addr, 0x5555_0000_2000);
        assert_eq!((got.module.seen, got.module.freed), (1, 0));
        assert_eq!(got.module.taints, TAINTS_OE);
        assert_eq!(&got.module.name[..6], b"dummy\0");
        assert_eq!(got.module.name[5..], [0; KERNEL_MODULE_NAME_LEN - 5]);
        let text = b"numdummies=2 debug=1";
        assert_str(&got.params, &sent.params, 20, STR_OK, text);
        assert_eq!(got.params.bytes[20], 0);
        assert_invocation(&got.invocation, &sent.invocation);
        assert_eq!(as_bytes(&*got), as_bytes(&sent));
    }

    #[test]
    fn round_trips_init_module_params_in_every_capture_state() {
        // Failing calls (ENOSYS, as on a kernel without module support) by a
        // caller seen without BTF: module_load did not fire.
        let cases: [(BoundedStr<PARAMS_CAP>, u32, u32, &[u8]); 5] = [
            (copied(b""), 0, STR_OK, b"\0"),
            (copied(b"x=1"), 3, STR_OK, b"x=1\0"),
            (
                cut_short(b'p'),
                PARAMS_CAP as u32 - 1,
                STR_TRUNCATED,
                &[b'p'; 64],
            ),
            (not_read(STR_UNREADABLE), 0, STR_UNREADABLE, &[0; 64]),
            (not_read(STR_NULL), 0, STR_NULL, &[STALE; 64]),
        ];
        for (params, len, state, text) in cases {
            let sent = InitModuleEvent {
                header: header(KIND_INIT_MODULE, INIT_SIZE, 1_000_000_900, -38, 0x2222),
                task: task_without_btf(),
                image_addr: 0,
                image_len: 64,
                params_addr: if state == STR_NULL { 0 } else { 0x1000 },
                module: not_loaded(),
                params,
                invocation: not_captured(),
            };
            let KernelEvent::InitModule(got) = decode_record(&ring_bytes(&sent)) else {
                panic!("kind")
            };
            assert_header(
                &got.header,
                KIND_INIT_MODULE,
                INIT_SIZE,
                1_000_000_900,
                -38,
                0x2222,
            );
            assert_task_without_btf(&got.task);
            assert_eq!((got.image_addr, got.image_len), (0, 64));
            assert_eq!(got.params_addr, if state == STR_NULL { 0 } else { 0x1000 });
            assert_eq!((got.module.seen, got.module.freed), (0, 0));
            assert_eq!(got.module.taints, 0);
            assert_eq!(&got.module.name[..6], b"oldmod");
            assert_eq!(got.module.name[6..], [0; KERNEL_MODULE_NAME_LEN - 6]);
            assert_str(&got.params, &sent.params, len, state, text);
            if state == STR_TRUNCATED {
                assert_eq!(got.params.bytes[PARAMS_CAP - 2..], [b'p', 0]);
            }
            assert_invocation(&got.invocation, &sent.invocation);
        }
    }

    #[test]
    fn round_trips_a_finit_module_load_of_a_file_with_its_leaf_first_path() {
        let components: [&[u8]; 7] = [
            b"dummy.ko",
            b"net",
            b"drivers",
            b"kernel",
            b"6.1.0-57-amd64",
            b"modules",
            b"lib",
        ];
        let sent = FinitModuleEvent {
            header: header(KIND_FINIT_MODULE, FINIT_SIZE, 1_000_700_000, 0, 0x3333),
            task: task_with_btf(),
            fd: 3,
            flags: 1 | 4,
            ino: 0xabc_def0,
            file_flags: FILE_RESOLVED,
            _reserved: 0,
            params_addr: 0x5555_0000_3000,
            module: loaded(b"dummy", 0),
            params: copied(b""),
            path: leaf_first(&components, STR_OK),
            invocation: kernel_modprobe(),
        };
        let event = decode_record(&ring_bytes(&sent));
        assert_eq!(event.kind(), "finit_module");
        assert_eq!(event.header().ret, 0);
        let KernelEvent::FinitModule(got) = event else {
            panic!("kind")
        };
        assert_header(
            &got.header,
            KIND_FINIT_MODULE,
            FINIT_SIZE,
            1_000_700_000,
            0,
            0x3333,
        );
        assert_task_with_btf(&got.task);
        assert_eq!((got.fd, got.flags), (3, 1 | 4));
        assert_eq!(got.ino, 0xabc_def0);
        assert_eq!((got.file_flags, got._reserved), (FILE_RESOLVED, 0));
        assert_eq!(got.params_addr, 0x5555_0000_3000);
        assert_eq!((got.module.seen, got.module.freed), (1, 0));
        assert_eq!(got.module.taints, 0);
        assert_eq!(&got.module.name[..5], b"dummy");
        assert_eq!(got.module.name[5..], [0; KERNEL_MODULE_NAME_LEN - 5]);
        assert_str(&got.params, &sent.params, 0, STR_OK, b"\0");
        let path = b"dummy.ko\x00net\x00drivers\x00kernel\x006.1.0-57-amd64\x00modules\x00lib\x00";
        assert_str(&got.path, &sent.path, path.len() as u32, STR_OK, path);
        assert_eq!(got.path.bytes[path.len()], STALE);
        assert_invocation(&got.invocation, &sent.invocation);
        assert_eq!(as_bytes(&*got), as_bytes(&sent));
    }

    #[test]
    fn round_trips_finit_module_memfds_bad_fds_and_paths_cut_short() {
        // `append_component` stops at PATH_CAP - NAME_MAX: 15 components of
        // NAME_MAX - 1 bytes and their NULs.
        let long = [b'd'; NAME_MAX - 1];
        let deep = [&long[..]; (PATH_CAP - NAME_MAX) / NAME_MAX];
        /// A file as `resolve_fd` leaves it, and the path it wrote.
        struct Case {
            fd: i32,
            file_flags: u32,
            path: BoundedStr<PATH_BUF>,
            len: u32,
            state: u32,
            text: &'static [u8],
        }
        let cases = [
            Case {
                fd: 4,
                file_flags: FILE_RESOLVED | FILE_UNLINKED | FILE_INTERNAL_MOUNT,
                path: leaf_first(&[b"memfd:mod"], STR_OK),
                len: 10,
                state: STR_OK,
                text: b"memfd:mod\0",
            },
            Case {
                fd: -1,
                file_flags: FILE_BAD_FD,
                path: not_read(STR_ABSENT),
                len: 0,
                state: STR_ABSENT,
                text: &[STALE; 16],
            },
            Case {
                fd: 5,
                file_flags: FILE_RESOLVED,
                path: leaf_first(&deep, STR_TRUNCATED),
                len: (PATH_CAP - NAME_MAX) as u32,
                state: STR_TRUNCATED,
                text: &[b'd'; 255],
            },
            // A component that could not be read ends the walk: what came
            // before it stays.
            Case {
                fd: 6,
                file_flags: FILE_RESOLVED | FILE_UNLINKED,
                path: leaf_first(&[b"gone.ko"], STR_UNREADABLE),
                len: 8,
                state: STR_UNREADABLE,
                text: b"gone.ko\0",
            },
        ];
        for Case {
            fd,
            file_flags,
            path,
            len,
            state,
            text,
        } in cases
        {
            let ino = if fd < 0 { 0 } else { 1000 + fd as u64 };
            let sent = FinitModuleEvent {
                header: header(KIND_FINIT_MODULE, FINIT_SIZE, 1_000_000_800, -38, 0x4444),
                task: task_with_btf(),
                fd,
                flags: 2,
                ino,
                file_flags,
                _reserved: 0,
                params_addr: 0x2000,
                module: not_loaded(),
                params: cut_short(b'q'),
                path,
                invocation: not_captured(),
            };
            let KernelEvent::FinitModule(got) = decode_record(&ring_bytes(&sent)) else {
                panic!("kind")
            };
            assert_header(
                &got.header,
                KIND_FINIT_MODULE,
                FINIT_SIZE,
                1_000_000_800,
                -38,
                0x4444,
            );
            assert_task_with_btf(&got.task);
            assert_eq!((got.fd, got.flags, got.ino), (fd, 2, ino));
            assert_eq!((got.file_flags, got._reserved), (file_flags, 0));
            assert_eq!(got.params_addr, 0x2000);
            assert_eq!((got.module.seen, got.module.freed), (0, 0));
            assert_eq!(got.module.taints, 0);
            assert_eq!(&got.module.name[..6], b"oldmod");
            assert_eq!(got.module.name[6..], [0; KERNEL_MODULE_NAME_LEN - 6]);
            let params_len = PARAMS_CAP as u32 - 1;
            assert_str(
                &got.params,
                &sent.params,
                params_len,
                STR_TRUNCATED,
                &[b'q'; 64],
            );
            assert_str(&got.path, &sent.path, len, state, text);
        }
    }

    #[test]
    fn round_trips_delete_module_names_in_every_capture_state() {
        let cases: [(u32, BoundedStr<MODULE_NAME_CAP>, u32, u32, &[u8]); 4] = [
            (1, copied(b"dummy"), 5, STR_OK, b"dummy\0"),
            (
                0,
                cut_short(b'n'),
                MODULE_NAME_CAP as u32 - 1,
                STR_TRUNCATED,
                &[b'n'; MODULE_NAME_CAP - 1],
            ),
            (
                0,
                not_read(STR_UNREADABLE),
                0,
                STR_UNREADABLE,
                &[0; MODULE_NAME_CAP],
            ),
            (
                0,
                not_read(STR_NULL),
                0,
                STR_NULL,
                &[STALE; MODULE_NAME_CAP],
            ),
        ];
        for (freed, name, len, state, text) in cases {
            let ret = if freed == 1 { 0 } else { -2 };
            let sent = DeleteModuleEvent {
                header: header(KIND_DELETE_MODULE, DELETE_SIZE, 1_000_000_300, ret, 0x5555),
                task: task_without_btf(),
                flags: 2048 | 512,
                freed,
                name_addr: 0x7ffd_0000_0010,
                name,
            };
            let event = decode_record(&ring_bytes(&sent));
            assert_eq!(event.kind(), "delete_module");
            let KernelEvent::DeleteModule(got) = event else {
                panic!("kind")
            };
            assert_header(
                &got.header,
                KIND_DELETE_MODULE,
                DELETE_SIZE,
                1_000_000_300,
                ret,
                0x5555,
            );
            assert_task_without_btf(&got.task);
            assert_eq!((got.flags, got.freed), (2048 | 512, freed));
            assert_eq!(got.name_addr, 0x7ffd_0000_0010);
            assert_str(&got.name, &sent.name, len, state, text);
        }
    }

    #[test]
    fn round_trips_a_module_request_in_every_name_state() {
        // `on_module_request`: no exit to wait for, so exit_ns = enter_ns and
        // ret 0; the name is the kernel's own string.
        let cases: [(u32, BoundedStr<MODULE_NAME_CAP>, u32, u32, &[u8]); 3] = [
            (1, copied(b"net-pf-38"), 9, STR_OK, b"net-pf-38\0"),
            (
                0,
                cut_short(b'r'),
                MODULE_NAME_CAP as u32 - 1,
                STR_TRUNCATED,
                &[b'r'; MODULE_NAME_CAP - 1],
            ),
            (
                1,
                not_read(STR_UNREADABLE),
                0,
                STR_UNREADABLE,
                &[0; MODULE_NAME_CAP],
            ),
        ];
        for (wait, name, len, state, text) in cases {
            let sent = ModuleRequestEvent {
                header: header(KIND_MODULE_REQUEST, REQUEST_SIZE, 1_000_000_000, 0, 0x6666),
                task: task_with_btf(),
                wait,
                _reserved: 0,
                name,
            };
            let event = decode_record(&ring_bytes(&sent));
            assert_eq!(event.kind(), "request");
            assert_eq!(event.task().tid, 4243);
            let KernelEvent::ModuleRequest(got) = event else {
                panic!("kind")
            };
            let size = REQUEST_SIZE;
            assert_header(
                &got.header,
                KIND_MODULE_REQUEST,
                size,
                1_000_000_000,
                0,
                0x6666,
            );
            assert_task_with_btf(&got.task);
            assert_eq!((got.wait, got._reserved), (wait, 0));
            assert_str(&got.name, &sent.name, len, state, text);
        }
    }

    #[test]
    fn round_trips_load_entry_notices_of_both_load_syscalls() {
        // `notify_load_entry`: the call's entry time, no exit, ret or digest;
        // init_module passes fd -1, finit_module no image.
        let cases = [
            (KIND_INIT_MODULE, -1, 0x7f00_0000_1000, 123_456),
            (KIND_FINIT_MODULE, 3, 0, 0),
        ];
        for (syscall, fd, image_addr, image_len) in cases {
            let sent = LoadEntryEvent {
                header: header(KIND_LOAD_ENTRY, ENTRY_SIZE, 0, 0, 0),
                pid: 4242,
                tid: 4243,
                syscall: u32::from(syscall),
                fd,
                image_addr,
                image_len,
            };
            let Decoded::LoadEntry(got) = decode(&ring_bytes(&sent)).unwrap() else {
                panic!("not a load-entry notice")
            };
            assert_header(&got.header, KIND_LOAD_ENTRY, ENTRY_SIZE, 0, 0, 0);
            assert_eq!((got.pid, got.tid), (4242, 4243));
            assert_eq!(got.syscall, u32::from(syscall));
            assert_eq!(got.fd, fd);
            assert_eq!((got.image_addr, got.image_len), (image_addr, image_len));
        }
    }

    /// One record of each kind, exactly as the kernel sends it, and the name
    /// errors give it.
    fn one_of_each_kind() -> [(&'static str, Vec<u8>); 5] {
        let entry = LoadEntryEvent {
            header: header(KIND_LOAD_ENTRY, ENTRY_SIZE, 0, 0, 0),
            pid: 1,
            tid: 1,
            syscall: u32::from(KIND_FINIT_MODULE),
            fd: 3,
            image_addr: 0,
            image_len: 0,
        };
        let request = ModuleRequestEvent {
            header: header(KIND_MODULE_REQUEST, REQUEST_SIZE, 1_000_000_000, 0, 1),
            task: task_with_btf(),
            wait: 1,
            _reserved: 0,
            name: copied(b"net-pf-38"),
        };
        let finit = FinitModuleEvent {
            header: header(KIND_FINIT_MODULE, FINIT_SIZE, 1, 0, 1),
            task: task_with_btf(),
            fd: -1,
            flags: 0,
            ino: 0,
            file_flags: FILE_BAD_FD,
            _reserved: 0,
            params_addr: 0,
            module: not_loaded(),
            params: not_read(STR_NULL),
            path: not_read(STR_ABSENT),
            invocation: not_captured(),
        };
        [
            ("init_module", as_bytes(&init_load()).to_vec()),
            ("delete_module", as_bytes(&delete_event()).to_vec()),
            ("request", as_bytes(&request).to_vec()),
            ("load_entry", as_bytes(&entry).to_vec()),
            ("finit_module", as_bytes(&finit).to_vec()),
        ]
    }

    #[test]
    fn every_length_short_of_a_record_is_an_error_naming_its_kind() {
        for (kind, record) in one_of_each_kind() {
            let size = record.len();
            for len in 0..size {
                let error = decode(&record[..len]).err();
                if len < size_of::<EventHeader>() {
                    assert_eq!(error, Some(DecodeError::ShortHeader { len, need: 40 }));
                    continue;
                }
                let expected = DecodeError::Size {
                    kind,
                    len,
                    expected: size,
                };
                assert_eq!(error, Some(expected), "{kind} cut to {len} bytes");
            }
            let error = decode(&record[..size - 1]).err().unwrap();
            assert_eq!(
                error.to_string(),
                format!("{kind} record is {} bytes, expected {size}", size - 1)
            );
        }
        assert_eq!(
            DecodeError::ShortHeader { len: 0, need: 40 }.to_string(),
            "record of 0 bytes is shorter than the 40-byte header"
        );
    }

    #[test]
    fn a_header_whose_size_is_not_its_kinds_is_an_error() {
        for (kind, record) in one_of_each_kind() {
            let size = record.len();
            let mut padded = record.clone();
            padded.resize(size + 64, 0xAA);
            // A size short of the kind's: only that much is the record.
            let mut short = padded.clone();
            short[4..8].copy_from_slice(&40u32.to_ne_bytes());
            assert_eq!(
                decode(&short).err(),
                Some(DecodeError::Size {
                    kind,
                    len: 40,
                    expected: size,
                })
            );
            // A size past the buffer's end: the buffer is all there is.
            let mut long = padded;
            long[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
            assert_eq!(
                decode(&long).err(),
                Some(DecodeError::Size {
                    kind,
                    len: size + 64,
                    expected: size,
                })
            );
        }
    }
}
