# needs: modules
# Failed loads and unloads with the errno the kernel really returns.
DUMMY=$(modpath dummy)
# A module sctp uses: libcrc32c up to 6.x, udp_tunnel on 7.x.
act sctp_depends /sbin/modinfo -F depends sctp
IN_USE=$(cut -d, -f1 "$act_dir/stdout")
watch_start main
act load_first /sbin/insmod "$DUMMY"
act load_twice /sbin/insmod "$DUMMY"
act unload_first /sbin/rmmod dummy
act unknown_param /sbin/insmod "$DUMMY" bogus_param=1
act unload_unknown_param /sbin/rmmod dummy
act bad_value /sbin/insmod "$DUMMY" numdummies=abc
act missing_dependency /sbin/insmod "$(modpath sctp)"
act load_sctp /sbin/modprobe sctp
act rmmod_in_use /sbin/rmmod "$IN_USE"
act delete_in_use /usr/bin/mtcall delete-module "$IN_USE" --flags 2048
act delete_absent /usr/bin/mtcall delete-module nosuchmodule --flags 2048
act rmmod_absent /sbin/rmmod nosuchmodule
watch_stop
