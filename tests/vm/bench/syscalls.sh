# Cost of an unrelated syscall: a tight loop of getppid, timed by `mtcall
# getppid-loop`, under each configuration in turn. Every round runs every
# configuration once, starting one further along the list each round, so that
# drifts of the machine fall on all of them alike. Each run times LOOPS loops
# and keeps the fastest: time taken from the guest by a busy host (a TCG guest's
# clock runs on while QEMU is descheduled) only ever adds, so the minimum is
# the least disturbed figure.
#
# Run by /init as the scenario bench/syscalls (after lib.sh), and by `cargo xtask
# bench` on the host. Settings come from the environment, else from the kernel
# command line (modtrace.bench_rounds=5 ...), else the defaults below.
# One line per run in $R/bench/syscalls.tsv, tab-separated:
#   round  config  ns_per_call (fastest loop, or -)  probe (seen, unseen or -)
#   note  every loop's ns_per_call, comma-separated
setting() {
    eval "v=\${$1:-}"
    [ -n "$v" ] || v=$(sed -n "s/.*modtrace\.$2=\([^ ]*\).*/\1/p" /proc/cmdline)
    echo "${v:-$3}"
}
ROUNDS=$(setting BENCH_ROUNDS bench_rounds 3)
CALLS=$(setting BENCH_CALLS bench_calls 200000)
LOOPS=$(setting BENCH_LOOPS bench_loops 10)
CONFIGS=$(setting BENCH_CONFIGS bench_configs bare,fentry,kprobe,syscall-tracepoints,raw-syscalls,enforce,auditd | tr , ' ')
BENCH_DIR=${BENCH_DIR:-/scenarios/bench}
AUDIT_LOG=${AUDIT_LOG:-/var/log/audit/audit.log}
AUDIT_RULES_D=${AUDIT_RULES_D:-/etc/audit/rules.d}
AUDIT_LOG_TMPFS=${AUDIT_LOG_TMPFS:-yes}
# A module name no kernel has: the probe call after each loop fails with ENOENT
# (ENOSYS without module support) and shows that the tracer was really there.
PROBE=modtrace_bench_probe
out=$R/bench
mkdir -p "$out"

audit_pid=
audit_ready() { auditctl -s 2> /dev/null | grep -q "^pid $audit_pid\$"; }

# Debian's auditd with Debian's default rules and the guide's module rules, in one
# file as augenrules would write it.
audit_up() {
    if [ -n "$AUDIT_UNAVAILABLE" ]; then
        note=$AUDIT_UNAVAILABLE
        return 1
    fi
    if ! command -v auditd > /dev/null; then
        note="auditd is not installed"
        return 1
    fi
    mkdir -p "$(dirname "$AUDIT_LOG")"
    # auditd suspends logging when its disk looks full, and the initramfs's
    # rootfs reports no free space.
    if [ "$AUDIT_LOG_TMPFS" = yes ] && ! mountpoint -q "$(dirname "$AUDIT_LOG")"; then
        mount -t tmpfs auditlog "$(dirname "$AUDIT_LOG")"
    fi
    # -D also drops the task,never rule audit_down leaves behind.
    auditctl -D > /dev/null
    # shellcheck disable=SC2086 # AUDITD_ARGS is a list of words.
    auditd -n $AUDITD_ARGS 2>> "$out/auditd.stderr" &
    audit_pid=$!
    wait_for 600 audit_ready
    if ! audit_ready; then
        note="auditd did not register with the kernel in 60 s"
        audit_down
        return 1
    fi
    cat "$AUDIT_RULES_D/audit.rules" "$BENCH_DIR/modules.rules" > /tmp/bench-audit.rules
    if ! auditctl -R /tmp/bench-audit.rules >> "$out/auditctl.log" 2>&1; then
        note="auditctl -R failed: $(tail -n1 "$out/auditctl.log")"
        audit_down
        return 1
    fi
    auditctl -e 1 > /dev/null
    audit_seen_before=$(audit_probe_count)
}

# Once audit was ever enabled, every process forked later takes the audit slow path
# of each syscall, even with no rules and auditd gone, unless a task,never rule
# exempts it: so the other configurations measure a truly bare kernel after this.
audit_down() {
    auditctl -D > /dev/null
    auditctl -a task,never > /dev/null
    auditctl -e 0 > /dev/null
    if [ -n "$audit_pid" ]; then
        kill -TERM "$audit_pid"
        wait "$audit_pid"
    fi
    audit_pid=
}

# Records of the module rules in the log (the probe's delete_module among them).
audit_probe_count() {
    c=$(grep -c 'key="modules"' "$AUDIT_LOG" 2> /dev/null)
    echo "${c:-0}"
}
audit_probe_seen() { [ "$(audit_probe_count)" -gt "$audit_seen_before" ]; }

# modtrace_up WATCH-OPTION...: modtrace watch started with them.
modtrace_up() {
    watch_start "$label" "$@"
    status=$(cat "$R/watch/$label/status")
    [ "$status" = started ] && return 0
    note="$status: $(tail -n1 "$R/watch/$label/stderr" | tr '\t' ' ' | cut -c1-200)"
    return 1
}

# run_config ROUND CONFIG: one timed loop under CONFIG, then the probe call.
run_config() {
    label=$1-$2
    note=
    probe=-
    ns=-
    loops=
    up=0
    case $2 in
    bare) ;;
    auditd) audit_up || up=1 ;;
    fentry | kprobe | syscall-tracepoints | raw-syscalls) modtrace_up --strategy "$2" || up=1 ;;
    # The default strategy with the default policy's deny rules enforced
    # through the BPF LSM: what enforcement adds to a syscall it never sees.
    enforce) modtrace_up --enforce || up=1 ;;
    *)
        note="unknown configuration"
        up=1
        ;;
    esac
    if [ $up = 0 ]; then
        timed=$(mtcall --repeat "$LOOPS" getppid-loop --calls "$CALLS")
        values=$(echo "$timed" | sed -n 's/.*"ns_per_call":\([0-9.e+-]*\).*/\1/p')
        loops=$(echo $values | tr ' ' ,)
        ns=$(echo "$values" | awk 'NR == 1 || $1 < m { m = $1 } END { if (NR) print m }')
        [ -n "$ns" ] || { ns=-; note="mtcall: $timed"; }
        [ $2 = bare ] || mtcall delete-module $PROBE > /dev/null
        case $2 in
        bare) ;;
        auditd)
            # auditd writes the record a moment after the call.
            wait_for 50 audit_probe_seen
            probe=$(audit_probe_seen && echo seen || echo unseen)
            audit_down
            ;;
        *)
            watch_stop
            probe=$(grep -q "\"$PROBE\"" "$R/watch/$label/out.ndjson" && echo seen || echo unseen)
            ;;
        esac
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$ns" "$probe" "$note" "$loops" >> "$out/syscalls.tsv"
}

echo "rounds=$ROUNDS loops=$LOOPS calls=$CALLS configs=$CONFIGS" > "$out/syscalls.settings"
# The state audit_down leaves, from the first round on (see there).
if command -v auditctl > /dev/null && [ -z "$AUDIT_UNAVAILABLE" ]; then
    audit_down
fi
# Own names for the loop's counters: lib.sh's functions use i and reset the
# positional parameters.
n_configs=$(echo $CONFIGS | wc -w)
bench_round=1
while [ $bench_round -le "$ROUNDS" ]; do
    bench_i=0
    while [ $bench_i -lt "$n_configs" ]; do
        # The configuration at (round - 1 + i) mod n.
        bench_k=$(((bench_round - 1 + bench_i) % n_configs + 1))
        run_config $bench_round "$(echo $CONFIGS | cut -d' ' -f$bench_k)"
        bench_i=$((bench_i + 1))
    done
    bench_round=$((bench_round + 1))
done
