//! Reads of kernel memory at offsets from the running kernel's BTF, shared by
//! the tracing object and the enforcement object.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use modtrace_common::OFFSET_NONE;

/// Reads a `T` at `base + offset` from kernel memory; `None` when the offset is
/// unknown on this kernel, the base is NULL or the read faults.
#[inline(always)]
pub(crate) fn read_at<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() || offset == OFFSET_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }.ok()
}

#[inline(always)]
pub(crate) fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    read_at::<u64>(base, offset)
        .map(|p| p as *const u8)
        .filter(|p| !p.is_null())
}
