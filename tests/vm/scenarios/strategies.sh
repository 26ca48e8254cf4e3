# needs: modules
# The default strategies in the start record, then one run per forced strategy
# (flag and environment variable), one with a strategy forced per syscall,
# each seeing one load and one unload. The default run logs its start-up's
# steps, so that its loads of the object can be counted.
DUMMY=$(modpath dummy)
load_unload() {
    act "$1_load" /sbin/insmod "$DUMMY"
    act "$1_unload" /sbin/rmmod dummy
}
export MODTRACE_LOG=modtrace::kernel=debug
watch_start default
unset MODTRACE_LOG
load_unload default
watch_stop
for s in fentry kprobe syscall-tracepoints raw-syscalls; do
    watch_start "$s" --strategy "$s"
    load_unload "$s"
    watch_stop
done
watch_start per-syscall --strategy "finit_module=kprobe,delete_module=raw-syscalls"
load_unload per-syscall
watch_stop
export MODTRACE_STRATEGY=syscall-tracepoints
watch_start env
load_unload env
watch_stop
unset MODTRACE_STRATEGY
