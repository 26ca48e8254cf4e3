//! Settings the loader writes before the programs are loaded.
use modtrace_common::ProbeConfig;

/// Rewritten by the loader at load time (it lives in `.rodata`), so every read
/// goes through `read_volatile`: otherwise the compiler would fold in the
/// default value.
#[unsafe(no_mangle)]
pub(crate) static MODTRACE_CONFIG: ProbeConfig = ProbeConfig::DEFAULT;

/// Reads one field of the configuration, e.g. `config!(offsets.task_cred)`.
/// One field at a time, so that no program copies the whole configuration onto
/// its 512-byte stack.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: the pointer is to a field of a live static.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                $crate::config::MODTRACE_CONFIG.$($field).+
            ))
        }
    };
}
