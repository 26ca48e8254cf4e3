//! mtcall: makes raw kernel module syscalls for modtrace's tests and prints, for
//! every call, one JSON line with exactly what it passed and what came back, so a
//! test can match each call against the tracer's record of it.
//!
//! Exit status: 0 when every requested call was made (whatever it returned),
//! 1 when mtcall could not set a call up (unreadable file, failed privilege drop),
//! 2 on a usage error.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

mod held;

const USAGE: &str = "\
usage: mtcall [--uid N] [--gid N] [--repeat K] [--linger-ms MS] <op> [op options]

ops:
  init-module (--image FILE | --image-len N) [--params S | --params-file F | --params-ptr bad|untouched|held:FILE]
      init_module(buf, len, params): the image is FILE's bytes, or N zero bytes
  finit-module (--file FILE | --memfd FILE | --fd N) [--params S | --params-file F | --params-ptr bad|untouched|held:FILE] [--flags N]
      finit_module(fd, params, flags): FILE opened read-only, a memfd named
      \"mtcall\" holding FILE's bytes, or the raw fd number N (e.g. -1)
  delete-module NAME [--flags N]
      delete_module(NAME, flags); O_NONBLOCK=2048, O_TRUNC=512
  socket-sctp
      socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP), which makes the kernel
      request the sctp module
  socket-key
      socket(AF_KEY, SOCK_RAW, PF_KEY_V2), which makes the kernel request
      the af_key module (net-pf-15), whatever the caller may then open
  flood --procs P --calls N [--name NAME] [--distinct] [--until FILE]
      P child processes each make N delete_module(NAME, O_NONBLOCK) calls;
      with --distinct each call's name is NAME followed by the call's number
      (so no two calls of a child pass the same name); with --until a child
      stops early once FILE exists (checked every 1,024 calls); prints one
      summary line
  getppid-loop --calls N
      N raw getppid() syscalls in a tight loop, timed with CLOCK_MONOTONIC:
      the cost of a syscall a tracer of module calls should leave alone
      (for `cargo xtask bench`); prints one line with ns_per_call
  stamp -- CMD [ARGS...]
      runs CMD with its stdout on a pipe; prints one line with the
      CLOCK_BOOTTIME of the spawn, then one per line of CMD's stdout with
      the CLOCK_BOOTTIME and CLOCK_REALTIME it was read at (start-up and
      latency benches)

--uid/--gid drop privileges (setgroups, setgid, then setuid) before the op.
--repeat K (before or after the op) makes the call K times (default 1).
--linger-ms MS keeps the process alive MS milliseconds after its calls.
held-deletes --threads N --release FILE: N threads each call delete_module with
the name on a held page, so that N calls are in the kernel at once until FILE
exists; prints one summary line of their errnos.
--params-ptr held:FILE holds the call in the kernel (a userfaultfd page under
the parameters) until FILE exists; stderr says when the fault is held.
Numbers may be decimal or 0x-prefixed hex.
Each call prints one JSON object on stdout.";

/// What went wrong, and whose fault: a usage error (exit 2) or a failure to set
/// the call up (exit 1).
enum Failure {
    Usage(String),
    Setup(String),
}

type Res<T> = Result<T, Failure>;

fn usage<T>(msg: impl Into<String>) -> Res<T> {
    Err(Failure::Usage(msg.into()))
}

fn setup_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure::Setup(format!("{what}: {e}"))
}

enum Params {
    None,
    Str(CString),
    /// A pointer to a page that was unmapped, so the kernel's copy faults.
    BadPtr,
    /// An empty string on a mapped page this process never touched: not
    /// resident until the kernel's own copy faults it in.
    Untouched,
    /// An empty string on a page whose fault is held until the file exists:
    /// the syscall stays in the kernel until then (see `held`).
    Held(PathBuf),
}

enum Image {
    File(PathBuf),
    Zeros(usize),
}

enum FdSource {
    File(PathBuf),
    Memfd(PathBuf),
    Raw(RawFd),
}

enum Op {
    Init {
        image: Image,
        params: Params,
    },
    Finit {
        source: FdSource,
        params: Params,
        flags: u32,
    },
    Delete {
        name: CString,
        flags: u32,
    },
    Socket {
        op: &'static str,
        domain: i32,
        kind: i32,
        protocol: i32,
    },
    Flood {
        procs: u32,
        calls: u64,
        name: CString,
        distinct: bool,
        until: Option<CString>,
    },
    HeldDeletes {
        threads: u32,
        release: PathBuf,
    },
    GetppidLoop {
        calls: u64,
    },
    Stamp {
        command: Vec<String>,
    },
}

struct Cli {
    uid: Option<u32>,
    gid: Option<u32>,
    repeat: u32,
    /// Stay alive this long after the calls, so a tracer can still read
    /// /proc/PID (exe, cmdline) for them.
    linger_ms: u64,
    op: Op,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match parse(args).and_then(|cli| run(&cli)) {
        Ok(()) => 0,
        Err(Failure::Usage(msg)) => {
            eprintln!("mtcall: {msg}\n\n{USAGE}");
            2
        }
        Err(Failure::Setup(msg)) => {
            eprintln!("mtcall: {msg}");
            1
        }
    };
    std::process::exit(code);
}

fn parse_num<T: TryFrom<i128>>(opt: &str, s: &str) -> Res<T> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let parsed = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => i128::from_str_radix(hex, 16),
        None => digits.parse::<i128>(),
    };
    let value = match parsed {
        Ok(v) if neg => -v,
        Ok(v) => v,
        Err(_) => return usage(format!("{opt}: `{s}` is not a number")),
    };
    T::try_from(value).or_else(|_| usage(format!("{opt}: {s} is out of range")))
}

fn cstring(what: &str, bytes: Vec<u8>) -> Res<CString> {
    CString::new(bytes).or_else(|_| usage(format!("{what} contains a NUL byte")))
}

/// Pops the value of option `opt`, or fails naming the option.
fn value(opt: &str, args: &mut std::vec::IntoIter<String>) -> Res<String> {
    match args.next() {
        Some(v) => Ok(v),
        None => usage(format!("{opt} needs a value")),
    }
}

fn parse(args: Vec<String>) -> Res<Cli> {
    let mut args = args.into_iter();
    let mut uid = None;
    let mut gid = None;
    let mut repeat = None;
    let mut linger_ms = 0;
    let op_name = loop {
        let Some(arg) = args.next() else {
            return usage("no op given");
        };
        match arg.as_str() {
            "--uid" => uid = Some(parse_num("--uid", &value("--uid", &mut args)?)?),
            "--gid" => gid = Some(parse_num("--gid", &value("--gid", &mut args)?)?),
            "--repeat" => repeat = Some(parse_num("--repeat", &value("--repeat", &mut args)?)?),
            "--linger-ms" => {
                linger_ms = parse_num("--linger-ms", &value("--linger-ms", &mut args)?)?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => return usage(format!("unknown option {s}")),
            _ => break arg,
        }
    };
    if op_name == "stamp" {
        // Everything after `--` is the command, its options included.
        let command: Vec<String> = args.skip_while(|a| a != "--").skip(1).collect();
        if command.is_empty() {
            return usage("stamp needs -- CMD [ARGS...]");
        }
        return Ok(Cli {
            uid,
            gid,
            repeat: 1,
            linger_ms,
            op: Op::Stamp { command },
        });
    }

    // Options shared by the ops that take them; each op checks which it allows.
    let mut positional = Vec::new();
    let mut image = None;
    let mut image_len = None;
    let mut params = Params::None;
    let mut params_set = false;
    let mut source = None;
    let mut flags = 0u32;
    let mut procs = None;
    let mut calls = None;
    let mut name = None;
    let mut distinct = false;
    let mut until = None;
    let mut threads = None;
    let mut release = None;
    let mut seen = Vec::new();
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') {
            positional.push(arg);
            continue;
        }
        if seen.contains(&arg) {
            return usage(format!("{arg} given twice"));
        }
        seen.push(arg.clone());
        let mut set_params = |p: Params| -> Res<()> {
            if params_set {
                return usage("give only one of --params, --params-file, --params-ptr");
            }
            params_set = true;
            params = p;
            Ok(())
        };
        let mut set_source = |s: FdSource| -> Res<()> {
            if source.is_some() {
                return usage("give only one of --file, --memfd, --fd");
            }
            source = Some(s);
            Ok(())
        };
        match arg.as_str() {
            "--repeat" => repeat = Some(parse_num("--repeat", &value(&arg, &mut args)?)?),
            "--image" => image = Some(PathBuf::from(value(&arg, &mut args)?)),
            "--image-len" => image_len = Some(parse_num("--image-len", &value(&arg, &mut args)?)?),
            "--params" => set_params(Params::Str(cstring(
                "--params",
                value(&arg, &mut args)?.into_bytes(),
            )?))?,
            "--params-file" => {
                let path = value(&arg, &mut args)?;
                let bytes = std::fs::read(&path)
                    .map_err(setup_err(format!("reading --params-file {path}")))?;
                set_params(Params::Str(cstring(
                    &format!("--params-file {path}"),
                    bytes,
                )?))?;
            }
            "--params-ptr" => match value(&arg, &mut args)?.as_str() {
                "bad" => set_params(Params::BadPtr)?,
                "untouched" => set_params(Params::Untouched)?,
                other => match other.strip_prefix("held:") {
                    Some(release) if !release.is_empty() => {
                        set_params(Params::Held(release.into()))?;
                    }
                    _ => {
                        return usage(format!(
                            "--params-ptr takes `bad`, `untouched` or `held:FILE`, not `{other}`"
                        ))
                    }
                },
            },
            "--file" => set_source(FdSource::File(value(&arg, &mut args)?.into()))?,
            "--memfd" => set_source(FdSource::Memfd(value(&arg, &mut args)?.into()))?,
            "--fd" => set_source(FdSource::Raw(parse_num("--fd", &value(&arg, &mut args)?)?))?,
            "--flags" => flags = parse_num("--flags", &value(&arg, &mut args)?)?,
            "--procs" => procs = Some(parse_num("--procs", &value(&arg, &mut args)?)?),
            "--calls" => calls = Some(parse_num("--calls", &value(&arg, &mut args)?)?),
            "--name" => name = Some(cstring("--name", value(&arg, &mut args)?.into_bytes())?),
            "--distinct" => distinct = true,
            "--until" => until = Some(cstring("--until", value(&arg, &mut args)?.into_bytes())?),
            "--threads" => threads = Some(parse_num("--threads", &value(&arg, &mut args)?)?),
            "--release" => release = Some(PathBuf::from(value(&arg, &mut args)?)),
            other => return usage(format!("unknown option {other}")),
        }
    }

    let allowed: &[&str] = match op_name.as_str() {
        "init-module" => &[
            "--repeat",
            "--image",
            "--image-len",
            "--params",
            "--params-file",
            "--params-ptr",
        ],
        "finit-module" => &[
            "--repeat",
            "--file",
            "--memfd",
            "--fd",
            "--params",
            "--params-file",
            "--params-ptr",
            "--flags",
        ],
        "delete-module" => &["--repeat", "--flags"],
        "socket-sctp" | "socket-key" => &["--repeat"],
        "flood" => &[
            "--repeat",
            "--procs",
            "--calls",
            "--name",
            "--distinct",
            "--until",
        ],
        "held-deletes" => &["--threads", "--release"],
        "getppid-loop" => &["--calls"],
        other => return usage(format!("unknown op `{other}`")),
    };
    if let Some(bad) = seen.iter().find(|s| !allowed.contains(&s.as_str())) {
        return usage(format!("{op_name} does not take {bad}"));
    }
    let want_positional = usize::from(op_name == "delete-module");
    if positional.len() != want_positional {
        return usage(match want_positional {
            0 => format!(
                "{op_name} takes no argument, got `{}`",
                positional.join(" ")
            ),
            _ => format!("{op_name} takes exactly one NAME, got {}", positional.len()),
        });
    }

    let op = match op_name.as_str() {
        "init-module" => Op::Init {
            image: match (image, image_len) {
                (Some(path), None) => Image::File(path),
                (None, Some(len)) => Image::Zeros(len),
                _ => return usage("init-module needs exactly one of --image, --image-len"),
            },
            params,
        },
        "finit-module" => Op::Finit {
            source: match source {
                Some(s) => s,
                None => return usage("finit-module needs one of --file, --memfd, --fd"),
            },
            params,
            flags,
        },
        "delete-module" => Op::Delete {
            name: cstring("module name", positional.remove(0).into_bytes())?,
            flags,
        },
        "socket-sctp" => Op::Socket {
            op: "socket_sctp",
            domain: libc::AF_INET,
            kind: libc::SOCK_STREAM,
            protocol: libc::IPPROTO_SCTP,
        },
        "socket-key" => Op::Socket {
            op: "socket_key",
            domain: libc::AF_KEY,
            kind: libc::SOCK_RAW,
            protocol: PF_KEY_V2,
        },
        "flood" => Op::Flood {
            procs: procs.map_or_else(|| usage("flood needs --procs"), Ok)?,
            calls: calls.map_or_else(|| usage("flood needs --calls"), Ok)?,
            name: name.unwrap_or_else(|| c"mtcall_flood_nonexistent".to_owned()),
            distinct,
            until,
        },
        "held-deletes" => Op::HeldDeletes {
            threads: threads.map_or_else(|| usage("held-deletes needs --threads"), Ok)?,
            release: release.map_or_else(|| usage("held-deletes needs --release"), Ok)?,
        },
        "getppid-loop" => Op::GetppidLoop {
            calls: match calls {
                Some(0) | None => return usage("getppid-loop needs --calls N, N at least 1"),
                Some(n) => n,
            },
        },
        _ => unreachable!("op names were checked above"),
    };
    let repeat = repeat.unwrap_or(1);
    if repeat == 0 {
        return usage("--repeat must be at least 1");
    }
    Ok(Cli {
        uid,
        gid,
        repeat,
        linger_ms,
        op,
    })
}

fn drop_privileges(uid: Option<u32>, gid: Option<u32>) -> Res<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    // Root's supplementary groups (group 0 among them) would survive setgid and
    // setuid; clear them so the op really runs unprivileged. Only root may.
    // SAFETY: plain syscalls with no pointers to Rust data (setgroups gets NULL, 0).
    unsafe {
        if libc::geteuid() == 0 && libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(Failure::Setup(format!(
                "setgroups([]) failed: {}",
                io::Error::last_os_error()
            )));
        }
        if let Some(gid) = gid {
            if libc::setgid(gid) != 0 {
                return Err(Failure::Setup(format!(
                    "setgid({gid}) failed: {}",
                    io::Error::last_os_error()
                )));
            }
        }
        if let Some(uid) = uid {
            if libc::setuid(uid) != 0 {
                return Err(Failure::Setup(format!(
                    "setuid({uid}) failed: {}",
                    io::Error::last_os_error()
                )));
            }
        }
    }
    Ok(())
}

fn run(cli: &Cli) -> Res<()> {
    drop_privileges(cli.uid, cli.gid)?;
    for call in 0..cli.repeat {
        let mut out = match &cli.op {
            Op::Init { image, params } => init_module(image, params)?,
            Op::Finit {
                source,
                params,
                flags,
            } => finit_module(source, params, *flags)?,
            Op::Delete { name, flags } => delete_module(name, *flags),
            Op::Socket {
                op,
                domain,
                kind,
                protocol,
            } => socket(op, *domain, *kind, *protocol),
            Op::Flood {
                procs,
                calls,
                name,
                distinct,
                until,
            } => flood(*procs, *calls, name, *distinct, until.as_deref())?,
            Op::HeldDeletes { threads, release } => held_deletes(*threads, release)?,
            Op::GetppidLoop { calls } => getppid_loop(*calls),
            Op::Stamp { command } => stamp(command)?,
        };
        out.insert("call".into(), json!(call));
        emit(out)?;
    }
    std::thread::sleep(std::time::Duration::from_millis(cli.linger_ms));
    Ok(())
}

fn emit(mut fields: Map<String, Value>) -> Res<()> {
    let mut line = identity();
    line.append(&mut fields);
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", Value::Object(line))
        .and_then(|()| stdout.flush())
        .map_err(setup_err("writing to stdout"))
}

/// Who made the call, as the kernel sees the calling thread.
fn identity() -> Map<String, Value> {
    let mut comm = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes plus NUL into the buffer; the
    // other calls take no arguments and cannot fail.
    let (pid, tid, ppid, uid, gid, euid, egid) = unsafe {
        libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr());
        (
            libc::getpid(),
            libc::gettid(),
            libc::getppid(),
            libc::getuid(),
            libc::getgid(),
            libc::geteuid(),
            libc::getegid(),
        )
    };
    let comm = CStr::from_bytes_until_nul(&comm)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert("pid".into(), json!(pid));
    m.insert("tid".into(), json!(tid));
    m.insert("ppid".into(), json!(ppid));
    m.insert("uid".into(), json!(uid));
    m.insert("gid".into(), json!(gid));
    m.insert("euid".into(), json!(euid));
    m.insert("egid".into(), json!(egid));
    m.insert("comm".into(), json!(comm));
    m.insert("mnt_ns".into(), json!(namespace_inode("mnt")));
    m.insert("pid_ns".into(), json!(namespace_inode("pid")));
    m
}

/// The inode number in `/proc/self/ns/KIND` (`mnt:[4026531841]`), if readable.
fn namespace_inode(kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok()?;
    link.to_str()?
        .strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// CLOCK_BOOTTIME in ns, the clock the tracer stamps records with, so a test can
/// check a record's time lies within the call's window.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs one raw syscall and records its timing, return value and errno.
fn outcome(m: &mut Map<String, Value>, call: impl FnOnce() -> libc::c_long) {
    let enter = boottime_ns();
    // errno is only meaningful when the call fails, so read it right away.
    let ret = call();
    let err = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let exit = boottime_ns();
    m.insert("enter_ns".into(), json!(enter));
    m.insert("exit_ns".into(), json!(exit));
    m.insert("ret".into(), json!(ret));
    if ret < 0 {
        m.insert("errno".into(), json!(errno_name(err)));
        m.insert("errno_num".into(), json!(err));
    } else {
        m.insert("errno".into(), Value::Null);
        m.insert("errno_num".into(), Value::Null);
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN", // == EWOULDBLOCK on Linux
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOPKG => "ENOPKG",
        libc::ENODATA => "ENODATA",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP", // == ENOTSUP on Linux
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EKEYREJECTED => "EKEYREJECTED",
        _ => return format!("E#{e}"),
    };
    name.to_owned()
}

/// The params pointer handed to the kernel (borrowed from `params`, which
/// outlives the call), recording what was passed in `m`.
fn params_arg(params: &Params, m: &mut Map<String, Value>) -> Res<*const libc::c_char> {
    Ok(match params {
        Params::None | Params::Str(_) => {
            let s = match params {
                Params::Str(s) => s.as_c_str(),
                _ => c"",
            };
            m.insert("params_len".into(), json!(s.to_bytes().len()));
            m.insert("params".into(), json!(s.to_string_lossy()));
            s.as_ptr()
        }
        Params::BadPtr => {
            let p = unmapped_page()?;
            m.insert("params_len".into(), Value::Null);
            m.insert("params_ptr".into(), json!(format!("bad:{:#x}", p as usize)));
            p
        }
        Params::Held(release) => {
            let p = held::held_page(release.clone())
                .map_err(|e| Failure::Setup(format!("--params-ptr held: {e}")))?;
            m.insert("params_len".into(), json!(0));
            m.insert("params".into(), json!(""));
            m.insert(
                "params_ptr".into(),
                json!(format!("held:{}", release.display())),
            );
            p
        }
        Params::Untouched => {
            let p = fresh_page("untouched")?;
            m.insert("params_len".into(), json!(0));
            m.insert("params".into(), json!(""));
            m.insert(
                "params_ptr".into(),
                json!(format!("untouched:{:#x}", p as usize)),
            );
            p
        }
    })
}

/// A new anonymous read-only page, never touched here: it reads as zeros (an
/// empty string) once something faults it in.
fn fresh_page(what: &str) -> Res<*const libc::c_char> {
    // SAFETY: a new private anonymous mapping, never unmapped (it lives until
    // exit) and never dereferenced here.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Failure::Setup(format!(
            "mmap for --params-ptr {what}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(p as *const libc::c_char)
}

/// An address that is certainly not mapped: a page that was mapped and then
/// released, so reading it from the kernel faults (EFAULT) rather than reading
/// some unrelated memory.
fn unmapped_page() -> Res<*const libc::c_char> {
    // SAFETY: anonymous private mapping of one page, unmapped right away; the
    // address is only ever passed to the kernel, never dereferenced here.
    unsafe {
        let len = 4096;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Failure::Setup(format!(
                "mmap for --params-ptr bad: {}",
                io::Error::last_os_error()
            )));
        }
        if libc::munmap(p, len) != 0 {
            return Err(Failure::Setup(format!(
                "munmap for --params-ptr bad: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(p as *const libc::c_char)
    }
}

fn init_module(image: &Image, params: &Params) -> Res<Map<String, Value>> {
    let mut m = Map::new();
    m.insert("op".into(), json!("init_module"));
    let buf = match image {
        Image::File(path) => {
            m.insert("image".into(), json!(path));
            std::fs::read(path).map_err(setup_err(format!("reading --image {}", path.display())))?
        }
        Image::Zeros(len) => {
            m.insert("image".into(), Value::Null);
            vec![0u8; *len]
        }
    };
    m.insert("image_len".into(), json!(buf.len()));
    m.insert("image_addr".into(), json!(buf.as_ptr() as usize));
    let p = params_arg(params, &mut m)?;
    // SAFETY: buf and the params string outlive the call; a bad params pointer
    // is only read by the kernel, which faults cleanly.
    outcome(&mut m, || unsafe {
        libc::syscall(libc::SYS_init_module, buf.as_ptr(), buf.len(), p)
    });
    // Kept until exit (the process is short-lived), so that a tracer reading
    // the image after a call that returned at once still finds it intact.
    std::mem::forget(buf);
    Ok(m)
}

fn open_source(source: &FdSource, m: &mut Map<String, Value>) -> Res<(RawFd, Option<OwnedFd>)> {
    match source {
        FdSource::Raw(fd) => {
            m.insert("fd_source".into(), json!("raw"));
            Ok((*fd, None))
        }
        FdSource::File(path) => {
            m.insert("fd_source".into(), json!("file"));
            m.insert("file".into(), json!(path));
            let f = File::open(path)
                .map_err(setup_err(format!("opening --file {}", path.display())))?;
            Ok((f.as_raw_fd(), Some(f.into())))
        }
        FdSource::Memfd(path) => {
            m.insert("fd_source".into(), json!("memfd"));
            m.insert("file".into(), json!(path));
            m.insert("memfd_name".into(), json!("mtcall"));
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(setup_err(format!("reading --memfd {}", path.display())))?;
            // SAFETY: memfd_create with a valid C string; the fd is owned below.
            let fd = unsafe { libc::memfd_create(c"mtcall".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(Failure::Setup(format!(
                    "memfd_create: {}",
                    io::Error::last_os_error()
                )));
            }
            // SAFETY: fd was just created and is owned by nobody else.
            let mut f = unsafe { File::from_raw_fd(fd) };
            f.write_all(&bytes)
                .map_err(setup_err("copying into the memfd"))?;
            Ok((fd, Some(f.into())))
        }
    }
}

fn finit_module(source: &FdSource, params: &Params, flags: u32) -> Res<Map<String, Value>> {
    let mut m = Map::new();
    m.insert("op".into(), json!("finit_module"));
    // `owned` keeps the file open across the call.
    let (fd, owned) = open_source(source, &mut m)?;
    m.insert("fd".into(), json!(fd));
    // What the fd really names, as the kernel shows it (e.g. "/memfd:mtcall
    // (deleted)"), for comparison with the path the tracer reconstructs.
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    m.insert("fd_link".into(), json!(link));
    m.insert("flags".into(), json!(flags));
    let p = params_arg(params, &mut m)?;
    // SAFETY: the params string outlives the call; fd may be any number, which
    // the kernel validates.
    outcome(&mut m, || unsafe {
        libc::syscall(libc::SYS_finit_module, fd, p, flags as libc::c_int)
    });
    // Open until exit, like init_module's buffer: a tracer that opens the fd
    // after a call that returned at once still finds the file.
    std::mem::forget(owned);
    Ok(m)
}

fn delete_module(name: &CStr, flags: u32) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("op".into(), json!("delete_module"));
    m.insert("name".into(), json!(name.to_string_lossy()));
    m.insert("flags".into(), json!(flags));
    // SAFETY: name is a valid C string that outlives the call.
    outcome(&mut m, || unsafe {
        libc::syscall(libc::SYS_delete_module, name.as_ptr(), flags)
    });
    m
}

/// include/uapi/linux/pfkeyv2.h: the one PF_KEY protocol version.
const PF_KEY_V2: i32 = 2;

/// `socket(domain, kind, protocol)`, reported as `op`; the kernel requests
/// the module of a protocol that is not loaded.
fn socket(op: &str, domain: i32, kind: i32, protocol: i32) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("op".into(), json!(op));
    m.insert("domain".into(), json!(domain));
    m.insert("type".into(), json!(kind));
    m.insert("protocol".into(), json!(protocol));
    // SAFETY: plain socket call; a returned fd is closed right after.
    outcome(&mut m, || unsafe {
        let fd = libc::socket(domain, kind, protocol);
        if fd >= 0 {
            libc::close(fd);
        }
        libc::c_long::from(fd)
    });
    m
}

/// `threads` threads each call delete_module(name, O_NONBLOCK) with the name on
/// one held page (see `held`): all of them stay inside the kernel until
/// `release` exists, then fail with ENOENT (the name reads as empty).
fn held_deletes(threads: u32, release: &Path) -> Res<Map<String, Value>> {
    let page = held::held_page(release.to_path_buf())
        .map_err(|e| Failure::Setup(format!("held-deletes: {e}")))? as usize;
    let mut handles = Vec::new();
    for _ in 0..threads {
        let handle = std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || {
                // SAFETY: `page` is a mapped page that lives until exit.
                let ret = unsafe {
                    libc::syscall(
                        libc::SYS_delete_module,
                        page as *const libc::c_char,
                        libc::O_NONBLOCK,
                    )
                };
                (ret, io::Error::last_os_error().raw_os_error().unwrap_or(0))
            })
            .map_err(setup_err("spawning a held-deletes thread"))?;
        handles.push(handle);
    }
    eprintln!("mtcall: {threads} threads started");
    let mut errnos: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for handle in handles {
        let (ret, errno) = handle
            .join()
            .map_err(|_| Failure::Setup("a held-deletes thread panicked".into()))?;
        let key = if ret >= 0 {
            "ok".to_owned()
        } else {
            errno_name(errno)
        };
        *errnos.entry(key).or_default() += 1;
    }
    let mut m = Map::new();
    m.insert("op".into(), json!("held-deletes"));
    m.insert("threads".into(), json!(threads));
    m.insert("results".into(), json!(errnos));
    Ok(m)
}

/// `prefix` followed by `n` in hex and a NUL, in `buf`: built without
/// allocating, as a forked child must.
fn numbered_name<'a>(buf: &'a mut [u8; 64], prefix: &[u8], n: u64) -> &'a CStr {
    let len = prefix.len().min(buf.len() - 18);
    buf[..len].copy_from_slice(&prefix[..len]);
    let mut end = len;
    for shift in (0..16).rev() {
        buf[end] = b"0123456789abcdef"[((n >> (shift * 4)) & 0xf) as usize];
        end += 1;
    }
    buf[end] = 0;
    CStr::from_bytes_until_nul(&buf[..=end]).expect("NUL written above")
}

fn flood(
    procs: u32,
    calls: u64,
    name: &CStr,
    distinct: bool,
    until: Option<&CStr>,
) -> Res<Map<String, Value>> {
    // Flush before forking so that children do not inherit buffered output.
    io::stdout().flush().map_err(setup_err("flushing stdout"))?;
    // From the first fork to the last child reaped: the flood's rate.
    let start = monotonic_ns();
    let mut children = Vec::new();
    for _ in 0..procs {
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
            return Err(Failure::Setup(format!(
                "pipe: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: the child only makes syscalls and _exit()s; it never returns
        // into Rust code that could touch state shared with the parent.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Failure::Setup(format!(
                "fork: {}",
                io::Error::last_os_error()
            )));
        }
        if pid == 0 {
            // Child: make the calls, report (calls made, calls failed with
            // ENOSYS/ENOENT/EPERM/other) through the pipe.
            let mut counts = [0u64; 5];
            let mut buf = [0u8; 64];
            for call in 0..calls {
                // SAFETY: access(2) on a valid C string.
                let told_to_stop =
                    || unsafe { libc::access(until.unwrap_or(c"").as_ptr(), libc::F_OK) } == 0;
                if until.is_some() && call % 1024 == 0 && told_to_stop() {
                    break;
                }
                let this = if distinct {
                    numbered_name(&mut buf, name.to_bytes(), call)
                } else {
                    name
                };
                // SAFETY: the name is a valid C string.
                let ret = unsafe {
                    libc::syscall(libc::SYS_delete_module, this.as_ptr(), libc::O_NONBLOCK)
                };
                let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                counts[0] += 1;
                counts[match (ret, e) {
                    (r, _) if r >= 0 => 4,
                    (_, libc::ENOSYS) => 1,
                    (_, libc::ENOENT) => 2,
                    (_, libc::EPERM) => 3,
                    _ => 4,
                }] += 1;
            }
            let mut bytes = [0u8; 40];
            for (chunk, c) in bytes.chunks_mut(8).zip(counts) {
                chunk.copy_from_slice(&c.to_ne_bytes());
            }
            // SAFETY: writes from a local buffer, then leaves without unwinding
            // or running the parent's atexit handlers.
            unsafe {
                libc::write(pipe[1], bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
        }
        // SAFETY: the parent owns its copies of both pipe ends. Closing the write
        // end now lets read_to_end see EOF when the child exits, and keeps later
        // children from inheriting it.
        let read_end = unsafe {
            drop(OwnedFd::from_raw_fd(pipe[1]));
            File::from_raw_fd(pipe[0])
        };
        children.push((pid, read_end));
    }
    let mut report = Vec::new();
    let mut total = 0u64;
    let mut all_ok = true;
    for (pid, mut read_end) in children {
        let mut bytes = Vec::new();
        read_end
            .read_to_end(&mut bytes)
            .map_err(setup_err(format!("reading child {pid}'s counts")))?;
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let counts: Option<Vec<u64>> = (bytes.len() == 40).then(|| {
            bytes
                .chunks(8)
                .map(|c| u64::from_ne_bytes(c.try_into().expect("8-byte chunk")))
                .collect()
        });
        all_ok &= exited_ok && counts.is_some();
        let calls_made = counts.as_ref().map_or(0, |c| c[0]);
        total += calls_made;
        report.push(json!({
            "pid": pid,
            "exit_status": if libc::WIFEXITED(status) { json!(libc::WEXITSTATUS(status)) } else { Value::Null },
            "calls": counts.as_ref().map(|c| c[0]),
            "errno_counts": counts.as_ref().map(|c| json!({
                "ENOSYS": c[1], "ENOENT": c[2], "EPERM": c[3], "other": c[4],
            })),
        }));
    }
    let mut m = Map::new();
    m.insert("op".into(), json!("flood"));
    m.insert("name".into(), json!(name.to_string_lossy()));
    m.insert("distinct".into(), json!(distinct));
    m.insert("flags".into(), json!(libc::O_NONBLOCK));
    m.insert("procs".into(), json!(procs));
    m.insert("calls_per_proc".into(), json!(calls));
    m.insert("children".into(), Value::Array(report));
    m.insert("total_calls".into(), json!(total));
    m.insert("elapsed_ns".into(), json!(monotonic_ns() - start));
    m.insert("all_children_ok".into(), json!(all_ok));
    Ok(m)
}

fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns: the clock of a record's `ts`.
fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `calls` raw getppid syscalls, timed as a whole. The two clock reads are vDSO
/// calls, not syscalls, so a tracer of syscalls sees only the loop.
fn getppid_loop(calls: u64) -> Map<String, Value> {
    let start = monotonic_ns();
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let elapsed = monotonic_ns() - start;
    let mut m = Map::new();
    m.insert("op".into(), json!("getppid-loop"));
    m.insert("calls".into(), json!(calls));
    m.insert("elapsed_ns".into(), json!(elapsed));
    m.insert("ns_per_call".into(), json!(elapsed as f64 / calls as f64));
    m
}

/// Runs the command with its stdout on a pipe and stamps each line as it arrives:
/// prints the spawn's line, then one `stamp-line` object per line of the command;
/// returns the command's exit status as the closing line.
fn stamp(command: &[String]) -> Res<Map<String, Value>> {
    use std::io::BufRead as _;
    let spawn_ns = boottime_ns();
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(setup_err(format!("spawning {}", command[0])))?;
    let mut spawned = Map::new();
    spawned.insert("op".into(), json!("stamp-spawn"));
    spawned.insert("spawn_ns".into(), json!(spawn_ns));
    spawned.insert("child".into(), json!(child.id()));
    spawned.insert("command".into(), json!(command));
    emit(spawned)?;
    let lines = io::BufReader::new(child.stdout.take().expect("stdout is piped"));
    for line in lines.lines() {
        let line = line.map_err(setup_err("reading the command's stdout"))?;
        let ns = boottime_ns();
        let realtime_ns = realtime_ns();
        // Without the caller's identity of `emit`: these lines are the command's.
        let mut stdout = io::stdout().lock();
        let stamped =
            json!({"op": "stamp-line", "ns": ns, "realtime_ns": realtime_ns, "line": line});
        writeln!(stdout, "{stamped}")
            .and_then(|()| stdout.flush())
            .map_err(setup_err("writing to stdout"))?;
    }
    let exit = child.wait().map_err(setup_err("waiting for the command"))?;
    let mut m = Map::new();
    m.insert("op".into(), json!("stamp-exit"));
    m.insert("exit_code".into(), json!(exit.code()));
    Ok(m)
}
