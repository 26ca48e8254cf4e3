# needs: modules
# An unprivileged SCTP socket makes the kernel run modprobe by itself.
act sctp_aliases aliases_of sctp
watch_start main
act socket /usr/bin/mtcall --uid 1000 --gid 1000 socket-sctp
watch_stop
