//! The module image of a load: taken while the caller still holds it, then
//! identified (hashed, decompressed, parsed) off the ring-buffer loop.
use std::path::PathBuf;

use modtrace_common::KernelEvent;

use super::{
    module_image,
    process::ProcRoot,
    snapshot::{Snapshot, Taken},
};
use crate::record::{image::ImageReport, FileArg};

/// The module image a load passed, out of the caller's reach or named: what
/// must be taken before the caller moves on is taken, the rest (hashing,
/// decompressing, parsing, up to hundreds of MiB) is left to
/// [`TakenImage::analyze`], which can run off the ring-buffer loop.
pub struct TakenImage {
    source: &'static str,
    during_call: bool,
    image: Image,
}

enum Image {
    Bytes(Result<Vec<u8>, String>),
    /// A file to read: the fd held since the call, or its path.
    File(Result<PathBuf, String>, Option<std::fs::File>),
}

/// Takes the image a load passed to the kernel: what was taken during the
/// call when there is one, else what can be read now (the caller's memory,
/// if it is still the same process). None for a call that passed none.
pub fn take_image(
    proc: &ProcRoot,
    event: &KernelEvent,
    file: Option<&FileArg>,
    snapshot: Option<Snapshot>,
) -> Option<TakenImage> {
    let limits = module_image::Limits::default();
    let (source, during_call, image) = match (event, snapshot, file) {
        (KernelEvent::FinitModule(_), _, Some(file)) if file.error.is_some() => return None,
        (
            _,
            Some(Snapshot {
                taken: Taken::Memory(bytes),
                during_call,
            }),
            _,
        ) => ("caller-memory", during_call, Image::Bytes(bytes)),
        (
            _,
            Some(Snapshot {
                taken: Taken::Fd(Ok(handle)),
                during_call,
            }),
            _,
        ) => {
            let own_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
            ("fd", during_call, Image::File(Ok(own_fd.into()), Some(handle)))
        }
        (KernelEvent::InitModule(e), _, _) => (
            "caller-memory",
            false,
            Image::Bytes(read_after_call(
                proc,
                event,
                e.image_addr,
                e.image_len,
                &limits,
            )),
        ),
        (KernelEvent::FinitModule(_), _, Some(file)) => match &file.path {
            Some(path) if !file.unlinked && !file.memfd && !file.truncated => {
                ("path", false, Image::File(Ok(path.into()), None))
            }
            _ => (
                "fd",
                false,
                Image::File(
                    Err("the fd could not be opened during the call, and the file has no path to read"
                        .into()),
                    None,
                ),
            ),
        },
        _ => return None,
    };
    Some(TakenImage {
        source,
        during_call,
        image,
    })
}

impl TakenImage {
    /// An image copied from a caller's memory, for tests of what handles it.
    #[cfg(test)]
    pub fn of_bytes(bytes: Vec<u8>) -> Self {
        Self {
            source: "caller-memory",
            during_call: true,
            image: Image::Bytes(Ok(bytes)),
        }
    }

    /// Identifies the image, or says why it cannot be known.
    pub fn analyze(self) -> ImageReport {
        let limits = module_image::Limits::default();
        let result = match self.image {
            Image::Bytes(bytes) => {
                bytes.and_then(|b| module_image::analyze(&b, &limits).map_err(|e| e.to_string()))
            }
            // The held fd, if any, stays open until the analysis is done.
            Image::File(path, _held) => path
                .and_then(|p| module_image::analyze_file(&p, &limits).map_err(|e| e.to_string())),
        };
        let (analysis, error) = match result {
            Ok(analysis) => (Some(analysis), None),
            Err(error) => (None, Some(error)),
        };
        ImageReport {
            source: self.source.into(),
            during_call: self.during_call,
            analysis,
            error,
        }
    }
}

/// The caller's buffer read after the call, if the caller is still the
/// process that made it.
fn read_after_call(
    proc: &ProcRoot,
    event: &KernelEvent,
    addr: u64,
    len: u64,
    limits: &module_image::Limits,
) -> Result<Vec<u8>, String> {
    let pid = event.task().pid;
    if !proc.started_by(pid, event.header().enter_ns) {
        return Err(format!(
            "the caller (pid {pid}) exited before its image could be read"
        ));
    }
    read_caller_memory(pid, addr, len, limits)
        .map_err(|e| format!("{e} (read after the call: the caller may have freed it)"))
}

/// Copies `len` bytes at `addr` out of process `pid`.
pub fn read_caller_memory(
    pid: u32,
    addr: u64,
    len: u64,
    limits: &module_image::Limits,
) -> Result<Vec<u8>, String> {
    if len > limits.max_file {
        return Err(format!(
            "image of {len} bytes exceeds the {} byte limit",
            limits.max_file
        ));
    }
    let mut image = vec![0u8; len as usize];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: addr as usize,
        len: len as usize,
    }];
    let read = nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid as i32),
        &mut [std::io::IoSliceMut::new(&mut image)],
        &remote,
    )
    .map_err(|e| format!("reading {len} bytes at {addr:#x} in pid {pid}: {e}"))?;
    if read as u64 != len {
        return Err(format!(
            "read {read} of {len} bytes at {addr:#x} in pid {pid}"
        ));
    }
    Ok(image)
}
