# The collector itself, with the default attach strategy: start-up time (from
# the exec of `modtrace watch` to its start record arriving on a pipe),
# latency from a delete_module call's return to its line arriving (calls made
# one at a time, at idle and while two uid-1000 processes flood failing calls),
# RSS idle, after a flood of failing delete_module calls and at its peak; real
# loads and unloads while four flooders run at full speed (where the kernel
# has modules); and how fast the collector drains failing calls reported in
# full (`--aggregate off`), queued while it was stopped. `mtcall stamp` stamps each line of modtrace's stdout
# with CLOCK_BOOTTIME as it reads it; `mtcall delete-module` reports its call's
# exit on the same clock.
# Sourced after syscalls.sh (settings as there). Out: $R/bench/collector/.
STARTS=$(setting BENCH_STARTS bench_starts 5)
LATENCY_CALLS=$(setting BENCH_LATENCY_CALLS bench_latency_calls 200)
FLOOD_CALLS=$(setting BENCH_FLOOD_CALLS bench_flood_calls 1000000)
LOAD_CYCLES=$(setting BENCH_LOAD_CYCLES bench_load_cycles 50)
DRAIN_CALLS=$(setting BENCH_DRAIN_CALLS bench_drain_calls 20000)
DRAIN_RING=$(setting BENCH_DRAIN_RING bench_drain_ring 33554432)
FLOOD_STOP=/tmp/modtrace_bench_flood_stop
c=$R/bench/collector
mkdir -p "$c"

started() { grep -q 'kind\\": *\\"start' "$d/stamped.ndjson" 2> /dev/null; }

# stamped_start DIR [WATCH OPTION...]: modtrace watch under mtcall stamp; sets
# modtrace_pid.
stamped_start() {
    d=$1
    shift
    mkdir -p "$d"
    mtcall stamp -- "$MODTRACE" watch --format json "$@" > "$d/stamped.ndjson" 2> "$d/stderr" &
    stamp_pid=$!
    wait_for 600 started
    modtrace_pid=$(sed -n '1s/.*"child":\([0-9]*\).*/\1/p' "$d/stamped.ndjson")
    started || echo "no start record in 60 s" > "$d/failed"
}

stamped_stop() {
    kill -TERM "$modtrace_pid"
    wait "$stamp_pid"
}

# rss FILE: the collector's RSS lines of /proc/PID/status into FILE, and its
# /proc/PID/smaps into FILE.smaps: the bench takes the ring buffers' pages (its
# only BPF map mappings) out of the smaps total, both from one page-table walk,
# since VmRSS does not count those pages on every kernel (5.10).
rss() {
    grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):' "/proc/$modtrace_pid/status" > "$1"
    cat "/proc/$modtrace_pid/smaps" > "$1.smaps"
}

lines() { wc -l < "$d/stamped.ndjson"; }

# probe_calls FILE: LATENCY_CALLS failing delete_module calls, 20 ms apart, each
# by a process of its own (so none is aggregated), their exits into FILE.
probe_calls() {
    bench_i=0
    while [ $bench_i -lt "$LATENCY_CALLS" ]; do
        mtcall delete-module modtrace_bench_latency >> "$1"
        sleep 0.02
        bench_i=$((bench_i + 1))
    done
    # The last line arrives well within this, even under TCG.
    sleep 2
}

# flood_begin PROCS FILE: PROCS uid-1000 processes making failing
# delete_module calls at full speed until flood_end; mtcall's counts into FILE.
flood_begin() {
    rm -f "$FLOOD_STOP"
    mtcall --uid 1000 flood --procs "$1" --calls 1000000000000 --until "$FLOOD_STOP" > "$2" &
    flood_pid=$!
    sleep 1
}

flood_end() {
    touch "$FLOOD_STOP"
    wait "$flood_pid"
    rm -f "$FLOOD_STOP"
}

# lines_between FROM TO: lines FROM+1..TO of this run's stamped output.
lines_between() { sed -n "$(($1 + 1)),$2p" "$d/stamped.ndjson"; }

# Waits until modtrace has written nothing for 2 s (it has drained the flood),
# at most 300 s.
drained() {
    before=$(lines)
    sleep 2
    [ "$(lines)" = "$before" ]
}

bench_i=1
while [ $bench_i -le "$STARTS" ]; do
    stamped_start "$c/start-$bench_i"
    stamped_stop
    bench_i=$((bench_i + 1))
done

stamped_start "$c/run"
rss "$d/rss_idle"
probe_calls "$d/calls.ndjson"
idle_lines=$(lines)
flood_begin 2 "$d/latency_flood.json"
probe_calls "$d/calls_flooded.ndjson"
flood_end
sleep 2
flooded_lines=$(lines)
if [ -e /proc/modules ]; then
    echo "$LOAD_CYCLES" > "$d/load_cycles"
    flood_begin 4 "$d/loads_flood.json"
    bench_i=1
    while [ $bench_i -le "$LOAD_CYCLES" ]; do
        modprobe dummy && rmmod dummy || echo "cycle $bench_i failed" >> "$d/cycles_failed"
        bench_i=$((bench_i + 1))
    done
    flood_end
    sleep 2
else
    echo "the kernel loads no modules" > "$d/loads_unavailable"
fi
loads_lines=$(lines)
mtcall flood --procs 2 --calls $((FLOOD_CALLS / 2)) > "$d/flood.json"
rss "$d/rss_flooded"
wait_for 150 drained
rss "$d/rss_drained"
stamped_stop
# The measured parts with their stamps, and the stop record's totals; the
# flood's own records are not needed and would crowd the serial port.
head -n "$idle_lines" "$d/stamped.ndjson" > "$d/idle.ndjson"
lines_between "$idle_lines" "$flooded_lines" > "$d/flooded.ndjson"
lines_between "$flooded_lines" "$loads_lines" | grep -E 'comm\\":\\"(modprobe|rmmod)' > "$d/loads.ndjson"
tail -n 2 "$d/stamped.ndjson" > "$d/end.ndjson"
rm "$d/stamped.ndjson"

# Drain rate: failing calls queued in the ring while the collector is stopped,
# then read in full (no aggregation) once it runs again, its NDJSON to a file.
# The figure is per second of the collector's own CPU time (every thread's,
# from schedstat), which other work on the machine does not inflate.
cpu_ns() { cat /proc/"$modtrace_pid"/task/*/schedstat | awk '{ sum += $1 } END { printf "%.0f\n", sum }'; }
d=$c/drain
mkdir -p "$d"
"$MODTRACE" watch --format json --aggregate off --ring-buffer-size "$DRAIN_RING" > "$d/out.ndjson" 2> "$d/stderr" &
modtrace_pid=$!
stamp_pid=$modtrace_pid
wait_for 600 grep -q '"kind":"start"' "$d/out.ndjson"
kill -STOP "$modtrace_pid"
mtcall flood --procs 2 --calls $((DRAIN_CALLS / 2)) > "$d/flood.json"
cpu_ns > "$d/cpu_ns_before"
kill -CONT "$modtrace_pid"
drained_all() { [ "$(grep -c '"kind":"delete_module"' "$d/out.ndjson")" -ge "$DRAIN_CALLS" ]; }
wait_for 3000 drained_all
cpu_ns > "$d/cpu_ns_after"
grep -c '"kind":"delete_module"' "$d/out.ndjson" > "$d/drain_records"
stamped_stop
grep '"kind":"stop"' "$d/out.ndjson" > "$d/stop.ndjson"
rm "$d/out.ndjson"
