# needs: modules
# Failed loads and unloads with the errno the kernel really returns.
DUMMY=$(modpath dummy)
watch_start main
act load_first /sbin/insmod "$DUMMY"
act load_twice /sbin/insmod "$DUMMY"
act unload_first /sbin/rmmod dummy
act unknown_param /sbin/insmod "$DUMMY" bogus_param=1
act unload_unknown_param /sbin/rmmod dummy
act bad_value /sbin/insmod "$DUMMY" numdummies=abc
act missing_dependency /sbin/insmod "$(modpath sctp)"
act load_sctp /sbin/modprobe sctp
act rmmod_in_use /sbin/rmmod libcrc32c
act delete_in_use /usr/bin/mtcall delete-module libcrc32c --flags 2048
act delete_absent /usr/bin/mtcall delete-module nosuchmodule --flags 2048
act rmmod_absent /sbin/rmmod nosuchmodule
watch_stop
