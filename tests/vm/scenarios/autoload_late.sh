# needs: modules
# Autoloads while modtrace is stopped: two unprivileged sockets make the kernel
# request sctp and af_key, each socket call waits for its modprobe, and both
# modprobes have exited long before modtrace reads a record. Two requests are
# outstanding when the loads are read, and /proc no longer has the loaders, so
# only what the kernel captured can link each load to its request.
act sctp_aliases aliases_of sctp
act af_key_aliases aliases_of af_key
watch_start main
watch_pause
act sctp /usr/bin/mtcall --uid 1000 --gid 1000 socket-sctp
act key /usr/bin/mtcall --uid 1000 --gid 1000 socket-key
sleep 1
# Every process's comm just before modtrace runs again: no modprobe among them.
act comms_at_resume sh -c 'cat /proc/[0-9]*/comm'
watch_resume
watch_stop
