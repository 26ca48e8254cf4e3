# needs: modules
# A load from a process in a docker-style cgroup with its own mount and pid
# namespaces, as a container runtime would start it.
F=/lib/modtrace-fixtures
ID=4c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0
SCOPE=/system.slice/docker-$ID.scope
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /sys/fs/cgroup$SCOPE
echo $ID > /tmp/container_id
mkdir -p /etc/modtrace
printf '[policy]\nversion = 1\n\n[[rule]]\nid = "load-in-container"\nseverity = "high"\nwhen = { load = true, container = "4c0ffee0*" }\n' \
    > /etc/modtrace/policy.toml
chmod 600 /etc/modtrace/policy.toml
watch_start main --policy /etc/modtrace/policy.toml
# modtrace is stopped while the container runs: the loader is gone before its
# record is read, so its cgroup must come from the id the kernel captured.
kill -STOP $watch_pid
act container sh -c "echo \$\$ > /sys/fs/cgroup$SCOPE/cgroup.procs && exec unshare -m -p -f /usr/bin/mtcall finit-module --file $F/dummy.ko --params '' --flags 0"
kill -CONT $watch_pid
act rmmod /sbin/rmmod dummy
watch_stop
act container_id cat /tmp/container_id
