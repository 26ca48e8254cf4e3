//! A parameters page behind a userfaultfd: the kernel's copy of the module
//! parameters faults on it and blocks until a thread here resolves the fault,
//! which it does once a given file exists. A test thereby holds a module
//! syscall inside the kernel for as long as it needs (across a tracer's start
//! or stop, say). Since Linux 6.19 an enabled syscall trace event copies the
//! call's string arguments at syscall entry and would take the fault first,
//! holding the call before the syscall runs; the VM guest's init turns that
//! copy off (`syscall_user_buf_size`).
use std::{
    io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

// include/uapi/linux/userfaultfd.h
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const PAGE: usize = 4096;
/// How long the fault is held at most when the release file never appears.
const MAX_HOLD: Duration = Duration::from_secs(60);

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` for a page fault: the event, then `pagefault.flags`
/// and `pagefault.address`.
#[repr(C)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    rest: u64,
}

fn ioctl<T>(fd: i32, request: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
    // SAFETY: `arg` is the repr(C) struct this request takes, alive for the call.
    if unsafe { libc::ioctl(fd, request, arg as *mut T) } != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(())
}

/// A page whose first read faults and waits until `release` exists; it then
/// reads as zeros (an empty parameter string). Needs root (kernel-mode faults).
pub(crate) fn held_page(release: PathBuf) -> io::Result<*const libc::c_char> {
    // SAFETY: plain syscall; the fd it returns is owned by the resolver thread.
    let uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
    if uffd < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("userfaultfd: {err}")));
    }
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_API, &mut api, "UFFDIO_API")?;
    // SAFETY: a new private anonymous page, never unmapped (it lives until exit).
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut register = UffdioRegister {
        start: page as u64,
        len: PAGE as u64,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_REGISTER, &mut register, "UFFDIO_REGISTER")?;
    let address = page as u64;
    thread::spawn(move || resolve_when_released(uffd, address, &release));
    Ok(page as *const libc::c_char)
}

/// Waits for the fault, reports it on stderr (tests wait for that line), then
/// waits for `release` and fills the page.
fn resolve_when_released(uffd: i32, page: u64, release: &Path) {
    let mut msg = UffdMsg {
        event: 0,
        reserved: [0; 7],
        flags: 0,
        address: 0,
        rest: 0,
    };
    let size = std::mem::size_of::<UffdMsg>();
    // SAFETY: reads at most `size` bytes into `msg`.
    let read = unsafe { libc::read(uffd, &mut msg as *mut UffdMsg as *mut libc::c_void, size) };
    if read != size as isize || msg.event != UFFD_EVENT_PAGEFAULT {
        eprintln!(
            "mtcall: userfaultfd gave no page fault ({read} bytes, event {:#x})",
            msg.event
        );
        return;
    }
    eprintln!(
        "mtcall: params page fault held until {} exists",
        release.display()
    );
    let start = Instant::now();
    while !release.exists() && start.elapsed() < MAX_HOLD {
        thread::sleep(Duration::from_millis(20));
    }
    let zeros = [0u8; PAGE];
    let mut copy = UffdioCopy {
        dst: page,
        src: zeros.as_ptr() as u64,
        len: PAGE as u64,
        mode: 0,
        copy: 0,
    };
    match ioctl(uffd, UFFDIO_COPY, &mut copy, "UFFDIO_COPY") {
        Ok(()) => eprintln!("mtcall: params page fault released"),
        Err(err) => eprintln!("mtcall: {err}"),
    }
}
