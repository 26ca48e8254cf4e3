# The collector itself, with the default attach strategy: start-up time (from
# the exec of `modtrace watch` to its start record arriving on a pipe),
# latency from a delete_module call's return to its line arriving (calls made
# one at a time, at idle), and RSS idle, after a flood of failing delete_module
# calls and at its peak. `mtcall stamp` stamps each line of modtrace's stdout
# with CLOCK_BOOTTIME as it reads it; `mtcall delete-module` reports its call's
# exit on the same clock.
# Sourced after syscalls.sh (settings as there). Out: $R/bench/collector/.
STARTS=$(setting BENCH_STARTS bench_starts 5)
LATENCY_CALLS=$(setting BENCH_LATENCY_CALLS bench_latency_calls 200)
FLOOD_CALLS=$(setting BENCH_FLOOD_CALLS bench_flood_calls 1000000)
c=$R/bench/collector
mkdir -p "$c"

started() { grep -q 'kind\\": *\\"start' "$d/stamped.ndjson" 2> /dev/null; }

# stamped_start DIR: modtrace watch under mtcall stamp; sets modtrace_pid.
stamped_start() {
    d=$1
    mkdir -p "$d"
    mtcall stamp -- "$MODTRACE" watch --format json > "$d/stamped.ndjson" 2> "$d/stderr" &
    stamp_pid=$!
    wait_for 600 started
    modtrace_pid=$(sed -n '1s/.*"child":\([0-9]*\).*/\1/p' "$d/stamped.ndjson")
    started || echo "no start record in 60 s" > "$d/failed"
}

stamped_stop() {
    kill -TERM "$modtrace_pid"
    wait "$stamp_pid"
}

rss() { grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):' "/proc/$modtrace_pid/status" > "$1"; }

lines() { wc -l < "$d/stamped.ndjson"; }

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
bench_i=0
while [ $bench_i -lt "$LATENCY_CALLS" ]; do
    mtcall delete-module modtrace_bench_latency >> "$d/calls.ndjson"
    sleep 0.02
    bench_i=$((bench_i + 1))
done
# The last line arrives well within this, even under TCG.
sleep 2
idle_lines=$(lines)
mtcall flood --procs 2 --calls $((FLOOD_CALLS / 2)) > "$d/flood.json"
rss "$d/rss_flooded"
wait_for 150 drained
rss "$d/rss_drained"
stamped_stop
# The idle part with its stamps, and the stop record's totals; the flood's
# own records are not needed and would crowd the serial port.
head -n "$idle_lines" "$d/stamped.ndjson" > "$d/idle.ndjson"
tail -n 2 "$d/stamped.ndjson" > "$d/end.ndjson"
rm "$d/stamped.ndjson"
