# needs: modules
# Enforcement through the BPF LSM. With the default policy enforced, the CIS
# deny rule stops modprobe, insmod by path and an unprivileged autoload (at
# the request), and other modules still load. A fileless deny rule stops
# init_module from memory and finit_module of a memfd. The same calls in audit
# mode (no --enforce) succeed, their records saying would_deny. Where the BPF
# LSM is inactive, --enforce refuses to start.
if ! grep -qw bpf /sys/kernel/security/lsm; then
    # The BPF LSM is not active (Debian 11's 5.10 as shipped): --enforce
    # refuses to start and names the fix; plain watch is unaffected.
    act lsm_list cat /sys/kernel/security/lsm
    watch_start inactive --enforce
    watch_start plain_inactive
    watch_stop
    exit 0
fi
F=/lib/modtrace-fixtures
UDF=$(modpath udf)
mkdir -p /etc/modtrace
cat > /etc/modtrace/fileless.toml << 'POLICY'
[policy]
version = 1
include_default = true

[[rule]]
id = "deny-fileless"
description = "load of a module without a file on disk"
severity = "critical"
action = "deny"
when = { any = [{ syscall = "init_module" }, { syscall = "finit_module", memfd = true }] }
POLICY
chmod 600 /etc/modtrace/fileless.toml

watch_start cis --enforce --release-on-exit
act modprobe_cis /sbin/modprobe udf
act insmod_cis /sbin/insmod "$UDF"
act autoload_cis /usr/bin/mtcall --uid 1000 --gid 1000 socket-sctp
act modprobe_allowed /sbin/modprobe loop
act rmmod_allowed /sbin/rmmod loop
watch_stop

watch_start fileless --enforce --release-on-exit --policy /etc/modtrace/fileless.toml
act memfd_denied /usr/bin/mtcall finit-module --memfd $F/dummy.ko --params "" --flags 0
act image_denied /usr/bin/mtcall init-module --image $F/dummy.ko --params ""
act file_allowed /usr/bin/mtcall finit-module --file $F/dummy.ko --params "" --flags 0
act rmmod_file_allowed /sbin/rmmod dummy
watch_stop

watch_start audit --policy /etc/modtrace/fileless.toml
act modprobe_audit /sbin/modprobe udf
act rmmod_audit /sbin/modprobe -r udf
act memfd_audit /usr/bin/mtcall finit-module --memfd $F/dummy.ko --params "" --flags 0
act rmmod_memfd_audit /sbin/rmmod dummy
act image_audit /usr/bin/mtcall init-module --image $F/dummy.ko --params ""
act rmmod_image_audit /sbin/rmmod dummy
watch_stop

# Without securityfs the kernel's LSM list cannot be read: --enforce refuses
# to start, plain watch is unaffected.
umount /sys/kernel/security
watch_start unlisted --enforce
watch_start plain_unlisted
watch_stop
