# needs: modules
# 4 processes x 50 rounds of load/unload at once, then a flood of failing
# delete_module calls: every syscall the kernel saw must be one event.
DUMMY=$(modpath dummy)
race() {
    for p in 1 2 3 4; do
        (for r in $(seq 50); do
            /sbin/insmod "$DUMMY"
            /sbin/rmmod dummy
        done) > /dev/null 2>&1 &
    done
    wait
}
watch_start main
act race race
act cleanup /sbin/rmmod dummy
act flood /usr/bin/mtcall flood --procs 4 --calls 50
watch_stop
