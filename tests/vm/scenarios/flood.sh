# needs: modules
# Flooders at full speed (uid 1000 with one name, uid 1000 with a new name each
# call, root with a new name each call) while root loads and unloads a real
# module 50 times: every load and unload must be reported in full, and every
# flooder call reported or counted. The flooders run as "flooder", which the
# ground truth leaves out (millions of calls would overrun the trace); mtcall's
# own counts are theirs.
cp /usr/bin/mtcall /tmp/flooder
for e in sys_enter_delete_module sys_exit_delete_module; do
    echo "comm != \"flooder\"" > $T/events/syscalls/$e/filter ||
        echo "filter on $e" >> $R/trace_enable_failed
done
cycles() {
    for i in $(seq 50); do
        /sbin/modprobe dummy && /sbin/rmmod dummy || return 1
    done
}
watch_start main
act_begin same_name /tmp/flooder --uid 1000 flood --procs 2 --calls 100000000 --until /tmp/stop
same_name=$act_pid
same_dir=$act_dir
act_begin new_names /tmp/flooder --uid 1000 flood --procs 2 --calls 100000000 --distinct --until /tmp/stop
new_names=$act_pid
new_dir=$act_dir
act_begin root_new_names /tmp/flooder flood --procs 1 --calls 100000000 --distinct --until /tmp/stop
root_new_names=$act_pid
root_dir=$act_dir
sleep 1
act cycles cycles
# Each flooder must still have been flooding when the cycles ended.
act flooding sh -c "kill -0 $same_name && kill -0 $new_names && kill -0 $root_new_names"
touch /tmp/stop
act_pid=$root_new_names
act_dir=$root_dir
act_end
act_pid=$new_names
act_dir=$new_dir
act_end
act_pid=$same_name
act_dir=$same_dir
act_end
sleep 1
watch_stop
