# needs: modules
# Parameters reach the kernel verbatim (a quoted value with a space included);
# rmmod and modprobe -r unload.
watch_start main
act insmod /sbin/insmod "$(modpath dummy)" numdummies=2 'note="hello world"'
act net_devices ls /sys/class/net
act rmmod /sbin/rmmod dummy
act modprobe_loop /sbin/modprobe loop max_loop=3
act loop_max_loop cat /sys/module/loop/parameters/max_loop
act modprobe_r /sbin/modprobe -r loop
watch_stop
