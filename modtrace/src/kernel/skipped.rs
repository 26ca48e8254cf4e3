//! Runs of modtrace's programs that the kernel skipped. A trampoline
//! (fentry/fexit) or tracepoint program does not run on a CPU where a run of
//! the same program is already in progress; the kernel counts each such
//! skip as a `recursion_misses` of the program (since 5.12). Programs run
//! with only migration disabled, so on a preemptible kernel (PREEMPT_RT,
//! `preempt=full`, lazy preemption) a task preempted inside a program makes
//! the next task on that CPU skip it. Those counts are what tells a call
//! whose exit was never seen from one that is still running.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd, AsRawFd},
};

use aya::Ebpf;

/// The skipped runs of every loaded program of `ebpf` that has any, by
/// program name; None when this kernel does not count them.
pub fn skipped_runs(ebpf: &Ebpf) -> Option<BTreeMap<String, u64>> {
    let mut counted = false;
    let mut skipped = BTreeMap::new();
    for (name, program) in ebpf.programs() {
        let Ok(fd) = program.fd() else {
            continue;
        };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let Some(misses) = fs::read_to_string(path)
            .ok()
            .and_then(|text| recursion_misses(&text))
        else {
            continue;
        };
        counted = true;
        if misses > 0 {
            skipped.insert(name.to_owned(), misses);
        }
    }
    counted.then_some(skipped)
}

/// The skipped runs of the programs that see a syscall's return: each left
/// a call pending that will see no exit.
pub fn exits_skipped(ebpf: &Ebpf) -> u64 {
    skipped_runs(ebpf).map_or(0, |skipped| {
        skipped
            .iter()
            .filter(|(program, _)| sees_returns(program))
            .map(|(_, runs)| runs)
            .sum()
    })
}

/// The exit programs of every strategy (modtrace-ebpf/src/main.rs).
fn sees_returns(program: &str) -> bool {
    program.starts_with("fexit_") || program.starts_with("tp_exit_") || program == "raw_sys_exit"
}

/// The `recursion_misses` line of a program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        line.strip_prefix("recursion_misses:")
            .and_then(|value| value.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_count_of_skipped_runs_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\n\
                      run_cnt:\t0\nrecursion_misses:\t47\nverified_insns:\t812\n";
        assert_eq!(recursion_misses(fdinfo), Some(47));
        // 5.10 has no such line: unknown, not zero.
        assert_eq!(recursion_misses("prog_type:\t26\nrun_cnt:\t0\n"), None);
    }

    #[test]
    fn the_exit_programs_of_every_strategy_see_returns() {
        for exit in [
            "fexit_finit_module",
            "tp_exit_delete_module",
            "raw_sys_exit",
        ] {
            assert!(sees_returns(exit), "{exit}");
        }
        for other in [
            "fentry_finit_module",
            "kprobe_init_module",
            "raw_sys_enter",
            "module_load",
        ] {
            assert!(!sees_returns(other), "{other}");
        }
    }
}
