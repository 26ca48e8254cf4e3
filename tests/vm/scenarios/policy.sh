# needs: modules
# The default policy alerts with no configuration: a CIS module, a modprobe.d
# directive bypassed by insmod, a memfd load, an unsigned module, an unexpected
# loader. Then SIGHUP: a broken policy is refused and the old one stays.
F=/lib/modtrace-fixtures
mkdir -p /etc/modprobe.d /etc/modtrace
printf 'blacklist dummy\ninstall dummy /bin/false\nblacklist loop\n' > /etc/modprobe.d/modtrace-test.conf
# Loaded before modtrace starts, as the initramfs would.
act modprobe_loop_before /sbin/modprobe loop

watch_start default
act modprobe_cis /sbin/modprobe udf
act insmod_blacklisted /sbin/insmod $F/dummy.ko
act rmmod_blacklisted /sbin/rmmod dummy
act memfd /usr/bin/mtcall finit-module --memfd $F/dummy.ko --params "" --flags 0
act rmmod_memfd /sbin/rmmod dummy
act insmod_unsigned /sbin/insmod $F/dummy-unsigned.ko
act rmmod_unsigned /sbin/rmmod dummy
act mtcall_file /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act rmmod_mtcall_file /sbin/rmmod dummy
watch_stop

# policy_file ID: a one-rule policy alerting on dummy, under rule id ID.
policy_file() {
    printf '[policy]\nversion = 1\n\n[[rule]]\nid = "%s"\nseverity = "high"\nwhen = { load = true, module = "dummy" }\n' "$1" \
        > /etc/modtrace/policy.toml
}
# reload N: SIGHUP, then wait for the Nth policy_reload record.
reload() {
    kill -HUP $watch_pid
    wait_for 100 sh -c "[ \$(grep -c '\"policy_reload\"' $R/watch/reload/out.ndjson) -ge $1 ]"
}
policy_file first-policy
chmod 600 /etc/modtrace/policy.toml
watch_start reload --policy /etc/modtrace/policy.toml
act reload_load1 /sbin/insmod $F/dummy.ko
act reload_unload1 /sbin/rmmod dummy
echo 'this is [not a policy' > /etc/modtrace/policy.toml
reload 1
act reload_load2 /sbin/insmod $F/dummy.ko
act reload_unload2 /sbin/rmmod dummy
policy_file second-policy
reload 2
act reload_load3 /sbin/insmod $F/dummy.ko
act reload_unload3 /sbin/rmmod dummy
watch_stop
