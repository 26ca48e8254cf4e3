# The kernel benches of `cargo xtask bench`, one after another in one boot.
. "${BENCH_DIR:-/scenarios/bench}/syscalls.sh"
. "${BENCH_DIR:-/scenarios/bench}/collector.sh"
