# needs: modules
# Which module, from which file, with which hash: insmod of an uncompressed, an
# xz-compressed and an unsigned variant of dummy (made by the image builder),
# then loaders whose parents are gone.
F=/lib/modtrace-fixtures
act init_comm cat /proc/1/comm
act sha_plain sha256sum $F/dummy.ko
act sha_xz sha256sum $F/dummy.ko.xz
act sha_unsigned sha256sum $F/dummy-unsigned.ko
act tainted_before cat /proc/sys/kernel/tainted
# kmod's own reading of the files, to hold modtrace's parser against.
act modinfo_plain /sbin/modinfo $F/dummy.ko
act modinfo_unsigned /sbin/modinfo $F/dummy-unsigned.ko
act size_plain wc -c $F/dummy.ko
act size_xz wc -c $F/dummy.ko.xz
act size_unsigned wc -c $F/dummy-unsigned.ko
watch_start main
act insmod_plain /sbin/insmod $F/dummy.ko
act rmmod_plain /sbin/rmmod dummy
act insmod_xz /sbin/insmod $F/dummy.ko.xz
act rmmod_xz /sbin/rmmod dummy
act insmod_unsigned /sbin/insmod $F/dummy-unsigned.ko
act tainted_after cat /proc/sys/kernel/tainted
act rmmod_unsigned /sbin/rmmod dummy
# A short-lived shell runs insmod and exits right after it.
act short_parent sh -c "/sbin/insmod $F/dummy.ko; exit 0"
act rmmod_short_parent /sbin/rmmod dummy
# The same while modtrace is stopped: insmod and its shell are gone before
# their record is read, so their exe can only come from the kernel.
kill -STOP $watch_pid
act gone_parent sh -c "/sbin/insmod $F/dummy.ko; true"
kill -CONT $watch_pid
act rmmod_gone_parent /sbin/rmmod dummy
# The parent exits before the load: the loader is re-parented to init.
act orphan_parent sh -c "sh -c 'echo \$\$ > /tmp/orphan.pid; sleep 1; exec /sbin/insmod $F/dummy.ko' & exit 0"
wait_for 50 test -s /tmp/orphan.pid
act orphan_pid cat /tmp/orphan.pid
wait_for 100 exited "$(cat /tmp/orphan.pid)"
act rmmod_orphan /sbin/rmmod dummy
watch_stop
