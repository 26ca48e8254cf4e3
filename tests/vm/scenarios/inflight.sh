# needs: modules
# Calls the kernel holds (a userfaultfd page under their parameters) across
# modtrace's stop and start: nothing in flight is lost silently or invented.
F=/lib/modtrace-fixtures
held() { grep -q "fault held" "$act_dir/stderr"; }

# In flight when modtrace stops: reported at shutdown with "exited": false.
watch_start stopped_during_call
act_begin held_at_stop /usr/bin/mtcall finit-module --file $F/dummy.ko --params-ptr held:/tmp/release-1 --flags 0
wait_for 200 held
watch_stop
touch /tmp/release-1
act_end
act rmmod_held_at_stop /sbin/rmmod dummy

# Entered before modtrace started and returns while it runs: the exit has no
# entry to join. The raw tracepoints see that exit and count the loss; fentry
# cannot see the return of a call that entered before it was attached.
act_begin held_at_start /usr/bin/mtcall finit-module --file $F/dummy.ko --params-ptr held:/tmp/release-2 --flags 0
wait_for 200 held
watch_start started_during_call --strategy raw-syscalls
touch /tmp/release-2
act_end
act rmmod_held_at_start /sbin/rmmod dummy
sleep 0.5
watch_stop
