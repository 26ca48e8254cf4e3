# needs: modules
# modprobe loads sctp and its dependencies, one load syscall per module, in order.
act show_depends /sbin/modprobe --show-depends sctp
watch_start main
act modprobe /sbin/modprobe sctp
watch_stop
