//! modtrace's kernel side: one pair of programs per attach strategy, each a thin
//! adapter that extracts (syscall, arguments) at entry and the return value at
//! exit and hands them to `calls`, which owns the records and their delivery.
#![no_std]
#![no_main]
// `atomic_xadd`: see `aggregate::add`.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add the BPF target has"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each program its context by value"
)]

#[macro_use]
mod config;
mod aggregate;
mod calls;
mod capture;
mod execs;
mod kread;

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, raw_tracepoint, tracepoint},
    programs::{
        FEntryContext, FExitContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
    EbpfContext,
};
use modtrace_common::Syscall;

/// Arguments of a `__x64_sys_*` function or a raw `sys_enter`: both give the
/// caller's saved registers.
#[inline(always)]
fn args_from_regs(regs: *const u8) -> [u64; 3] {
    [
        capture::read_at::<u64>(regs, config!(offsets.pt_regs_di)).unwrap_or(0),
        capture::read_at::<u64>(regs, config!(offsets.pt_regs_si)).unwrap_or(0),
        capture::read_at::<u64>(regs, config!(offsets.pt_regs_dx)).unwrap_or(0),
    ]
}

macro_rules! fentry_pair {
    ($enter:ident, $exit:ident, $func:literal, $call:expr) => {
        #[fentry(function = $func)]
        pub(crate) fn $enter(ctx: FEntryContext) -> i32 {
            let regs: *const u8 = ctx.arg(0);
            calls::on_enter($call, args_from_regs(regs));
            0
        }

        #[fexit(function = $func)]
        pub(crate) fn $exit(ctx: FExitContext) -> i32 {
            // The traced function takes one argument (the registers), so its
            // return value is the second slot of the context.
            let ret: i64 = ctx.arg(1);
            calls::on_exit($call, ret);
            0
        }
    };
}

fentry_pair!(
    fentry_init_module,
    fexit_init_module,
    "__x64_sys_init_module",
    Syscall::InitModule
);
fentry_pair!(
    fentry_finit_module,
    fexit_finit_module,
    "__x64_sys_finit_module",
    Syscall::FinitModule
);
fentry_pair!(
    fentry_delete_module,
    fexit_delete_module,
    "__x64_sys_delete_module",
    Syscall::DeleteModule
);

/// The `kprobe` strategy's entry, for kernels whose BTF declares the
/// wrapper's `pt_regs` only forward (5.10), where the verifier refuses an
/// fentry program that reads its argument. The probe's context is the
/// wrapper's own registers at entry; the first argument register holds the
/// caller's saved registers, as fentry's first argument does. Its return is
/// seen by the same fexit program as the `fentry` strategy's, which reads only
/// the return value and loads on 5.10.
macro_rules! kprobe_entry {
    ($enter:ident, $call:expr) => {
        #[kprobe]
        pub(crate) fn $enter(ctx: ProbeContext) -> u32 {
            let wrapper_regs = ctx.as_ptr() as *const u8;
            let regs = capture::read_ptr(wrapper_regs, config!(offsets.pt_regs_di))
                .unwrap_or(core::ptr::null());
            calls::on_enter($call, args_from_regs(regs));
            0
        }
    };
}

kprobe_entry!(kprobe_init_module, Syscall::InitModule);
kprobe_entry!(kprobe_finit_module, Syscall::FinitModule);
kprobe_entry!(kprobe_delete_module, Syscall::DeleteModule);

macro_rules! tracepoint_pair {
    ($enter:ident, $exit:ident, $call:expr) => {
        #[tracepoint]
        pub(crate) fn $enter(ctx: TracePointContext) -> u32 {
            let base = config!(tp_enter_args) as usize;
            // SAFETY: offsets come from the tracepoint's format file; a failed
            // read yields 0, which the capture code treats as a NULL argument.
            let arg = |n: usize| unsafe { ctx.read_at::<u64>(base + 8 * n) }.unwrap_or(0);
            calls::on_enter($call, [arg(0), arg(1), arg(2)]);
            0
        }

        #[tracepoint]
        pub(crate) fn $exit(ctx: TracePointContext) -> u32 {
            // SAFETY: as above. The kernel's own record is always readable; if
            // it were not, the call stays pending and is later reported as one
            // whose exit was not observed, rather than with an invented ret.
            let offset = config!(tp_exit_ret) as usize;
            if let Ok(ret) = unsafe { ctx.read_at::<i64>(offset) } {
                calls::on_exit($call, ret);
            }
            0
        }
    };
}

tracepoint_pair!(
    tp_enter_init_module,
    tp_exit_init_module,
    Syscall::InitModule
);
tracepoint_pair!(
    tp_enter_finit_module,
    tp_exit_finit_module,
    Syscall::FinitModule
);
tracepoint_pair!(
    tp_enter_delete_module,
    tp_exit_delete_module,
    Syscall::DeleteModule
);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub(crate) fn raw_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    if let Some(call) = calls::raw_syscall_of_nr(id) {
        let regs: *const u8 = ctx.arg(0);
        calls::on_enter(call, args_from_regs(regs));
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub(crate) fn raw_sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let id = capture::read_at::<i64>(regs, config!(offsets.pt_regs_orig_ax)).unwrap_or(-1);
    if let Some(call) = calls::raw_syscall_of_nr(id) {
        let ret: i64 = ctx.arg(1);
        calls::on_exit(call, ret);
    }
    0
}

#[raw_tracepoint(tracepoint = "module_load")]
pub(crate) fn module_load(ctx: RawTracePointContext) -> i32 {
    calls::on_module_load(ctx.arg::<*const u8>(0));
    0
}

#[raw_tracepoint(tracepoint = "module_free")]
pub(crate) fn module_free(_ctx: RawTracePointContext) -> i32 {
    calls::on_module_free();
    0
}

#[raw_tracepoint(tracepoint = "module_request")]
pub(crate) fn module_request(ctx: RawTracePointContext) -> i32 {
    let name: u64 = ctx.arg(0);
    let wait: u64 = ctx.arg(1);
    calls::on_module_request(name, wait != 0);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub(crate) fn process_exec(ctx: RawTracePointContext) -> i32 {
    execs::on_exec(ctx.arg::<*const u8>(2));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: nothing in these programs can panic; the verifier would reject a
    // program whose panic path were reachable and looped.
    unsafe { core::hint::unreachable_unchecked() }
}
