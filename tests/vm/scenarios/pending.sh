# needs: modules
# More module syscalls in the kernel at once than modtrace's pending map holds
# (4,096): each one is reported or counted lost exactly once.
N=4200
in_delete_module() {
    [ "$(grep -l '^176 ' /proc/$act_pid/task/*/syscall 2> /dev/null | wc -l)" -ge $N ]
}
watch_start main --aggregate off
act_begin overflow /usr/bin/mtcall held-deletes --threads $N --release /tmp/release
wait_for 1200 in_delete_module
grep -l '^176 ' /proc/$act_pid/task/*/syscall 2> /dev/null | wc -l > /tmp/in_kernel
touch /tmp/release
act_end
sleep 1
watch_stop
act in_kernel cat /tmp/in_kernel
