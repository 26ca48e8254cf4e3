# needs: modules
# Enforcement outlives the collector. A watch --enforce is killed with SIGKILL:
# its pinned programs keep denying. A loop of denied loads runs while a second
# watch --enforce, with another policy, adopts the pins and switches its
# policy in: every load of the loop is denied. The denials made while no
# collector ran are reported by the next one. After SIGTERM enforcement stays;
# `enforce status` shows it; `enforce release` ends it and the next capture
# logs the release; --release-on-exit ends it with the watch.
if ! grep -qw bpf /sys/kernel/security/lsm; then
    # Nothing can be enforced, so nothing can outlive the collector:
    # --enforce refuses to start, naming the missing bpf in the LSM list.
    act lsm_list cat /sys/kernel/security/lsm
    watch_start inactive --enforce
    exit 0
fi
F=/lib/modtrace-fixtures
UDF=$(modpath udf)
mkdir -p /etc/modtrace
cat > /etc/modtrace/persist.toml << 'POLICY'
[policy]
version = 1
include_default = true

[[rule]]
id = "deny-dummy"
description = "load of the dummy module"
severity = "high"
action = "deny"
when = { load = true, module = "dummy" }
POLICY
chmod 600 /etc/modtrace/persist.toml

# loop_loads FILE: loads FILE with mtcall until /tmp/loop.stop exists, each call
# its own process; prints "PID REPORT" for each (mtcall's JSON report), for the
# host to find its call in the kernel's trace.
loop_loads() {
    while [ ! -e /tmp/loop.stop ]; do
        /usr/bin/mtcall finit-module --file "$1" --params "" --flags 0 > /tmp/loop.out 2>&1 &
        p=$!
        wait $p
        echo "$p $(cat /tmp/loop.out)"
        sleep 0.05
    done
}

watch_start first --enforce
act modprobe_first /sbin/modprobe udf
act dummy_allowed /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act rmmod_dummy /sbin/rmmod dummy
# Past the collector's next report (every 0.2 s) of the denial above.
sleep 1
watch_kill

act modprobe_orphan /sbin/modprobe udf
act status_orphan "$MODTRACE" enforce status --format json
act_begin loop loop_loads "$UDF"
sleep 1
watch_start second --enforce --policy /etc/modtrace/persist.toml
sleep 1
touch /tmp/loop.stop
act_end
act dummy_denied /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
sleep 1
watch_stop

act modprobe_after_term /sbin/modprobe udf
act status_after_term "$MODTRACE" enforce status --format json
act status_text "$MODTRACE" enforce status --format text
act release "$MODTRACE" enforce release
act status_released "$MODTRACE" enforce status --format json
act modprobe_released /sbin/modprobe udf
act rmmod_released /sbin/rmmod udf

watch_start third
watch_stop

watch_start fourth --enforce --release-on-exit
act modprobe_fourth /sbin/modprobe udf
watch_stop
act status_fourth "$MODTRACE" enforce status --format json
act modprobe_after_fourth /sbin/modprobe udf
act rmmod_after_fourth /sbin/rmmod udf

# Lock after boot: only the modules loaded at the lock may load; `enforce
# allow` lets one more load until its time runs out, in the kernel.
watch_start lock --enforce --release-on-exit
act modprobe_loop /sbin/modprobe loop
act lock "$MODTRACE" enforce lock
act rmmod_loop_locked /sbin/rmmod loop
act modprobe_loop_locked /sbin/modprobe loop
act lock_denied /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act allow "$MODTRACE" enforce allow dummy --for 10s
act status_allowed "$MODTRACE" enforce status --format json
act lock_allowed /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act rmmod_lock_allowed /sbin/rmmod dummy
sleep 11
act lock_expired /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act status_expired "$MODTRACE" enforce status --format json
# The collector looks for logged commands every second.
sleep 1.5
watch_stop
