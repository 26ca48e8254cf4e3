# Helpers sourced by every scenario (run by /init from /tmp with results in $R) and by
# the benches, which `cargo xtask bench` also runs on the host with R, T and MODTRACE set.
R=${R:-/results}
T=${T:-/sys/kernel/tracing}
MODTRACE=${MODTRACE:-/usr/bin/modtrace}
KVER=$(uname -r)
act_seq=0
watch_pid=
watch_label=

# act LABEL CMD...: runs CMD in the background of this shell (so its pid and ppid are
# known for matching modtrace's process fields) and records argv, pid, ppid, stdout,
# stderr and the exit code under $R/actions/NNN-LABEL.
act() {
    act_begin "$@"
    act_end
}

# act_begin LABEL CMD...: as act, without waiting: the scenario does something
# while CMD runs (its directory is $act_dir), then calls act_end.
act_begin() {
    label=$1
    shift
    act_seq=$((act_seq + 1))
    act_dir=$R/actions/$(printf %03d $act_seq)-$label
    mkdir -p "$act_dir"
    printf '%s\n' "$@" > "$act_dir/argv"
    echo $$ > "$act_dir/ppid"
    # CMD inherits this shell's namespaces.
    { readlink /proc/$$/ns/mnt; readlink /proc/$$/ns/pid; } > "$act_dir/namespaces"
    "$@" > "$act_dir/stdout" 2> "$act_dir/stderr" &
    act_pid=$!
    echo $act_pid > "$act_dir/pid"
}

# act_end: waits for the command act_begin started and records its exit code.
act_end() {
    wait $act_pid
    echo $? > "$act_dir/rc"
}

# wait_for TENTHS CMD...: polls CMD every 0.1 s until it succeeds, at most TENTHS times.
wait_for() {
    tries=$1
    shift
    while ! "$@" && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
}

# exited PID: the process is gone or a zombie (its parent may not reap it yet).
exited() {
    [ ! -e "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2> /dev/null)" = Z ]
}

# aliases_of MODULE: the aliases depmod indexed for MODULE (modules.alias), one a
# line; read from the index, not the module file, which trixie's modinfo cannot
# decompress without a liblzma the guest does not have.
aliases_of() { sed -n "s/^alias \(.*\) $1\$/\1/p" /lib/modules/$KVER/modules.alias; }

# Path of a module file as kmod resolves it (.ko or .ko.xz).
modpath() { /sbin/modinfo -n "$1"; }

# Writes the uncompressed image of module $1 to $2 (kernels ship .ko or .ko.xz).
plain_module() {
    case "$(modpath "$1")" in
    *.xz) xzcat "$(modpath "$1")" > "$2" ;;
    *) cp "$(modpath "$1")" "$2" ;;
    esac
}

# watch_start LABEL [modtrace args]: starts `modtrace watch` and waits for its start
# record. Writes the status ("started", "missing", or why it failed) for the host.
watch_start() {
    watch_label=$1
    shift
    w=$R/watch/$watch_label
    mkdir -p "$w"
    printf '%s\n' "$@" > "$w/argv"
    watch_pid=
    if [ ! -x "$MODTRACE" ]; then
        echo "missing: $MODTRACE is not in the image (target/release/modtrace was not built)" > "$w/status"
        return 0
    fi
    echo "watch-spawn $watch_label" > $T/trace_marker
    read -r spawned _ < /proc/uptime
    "$MODTRACE" watch --format json "$@" > "$w/out.ndjson" 2> "$w/stderr" &
    watch_pid=$!
    i=0
    while ! head -n1 "$w/out.ndjson" | grep -q '"kind": *"start"'; do
        if ! kill -0 $watch_pid 2> /dev/null; then
            wait $watch_pid
            echo "failed: modtrace exited with status $? before its start record" > "$w/status"
            watch_pid=
            return 0
        fi
        i=$((i + 1))
        if [ $i -ge 1200 ]; then
            kill -9 $watch_pid
            echo "failed: no start record after 60 s" > "$w/status"
            watch_pid=
            return 0
        fi
        sleep 0.05
    done
    read -r seen _ < /proc/uptime
    echo "$spawned $seen" > "$w/startup"
    echo started > "$w/status"
    echo "watch-begin $watch_label" > $T/trace_marker
}

# watch_pause, watch_resume: SIGSTOP and SIGCONT the watch, marked in the trace so
# that the host knows which calls it read late.
watch_pause() {
    kill -STOP $watch_pid
    echo "watch-pause $watch_label" > $T/trace_marker
}

watch_resume() {
    echo "watch-resume $watch_label" > $T/trace_marker
    kill -CONT $watch_pid
}

# watch_stop: SIGTERM, wait, record the exit status, then replay the capture.
watch_stop() { watch_end TERM; }

# watch_kill: as watch_stop with SIGKILL, as a crash or an attacker would.
watch_kill() { watch_end KILL; }

# watch_end SIGNAL: ends the watch with SIGNAL, as watch_stop says.
watch_end() {
    w=$R/watch/$watch_label
    echo "watch-end $watch_label" > $T/trace_marker
    [ -n "$watch_pid" ] || return 0
    kill -"$1" $watch_pid
    wait $watch_pid
    echo $? > "$w/exit_code"
    watch_pid=
    replay_capture
}

# replay_capture: re-judges the capture in $w with `modtrace replay` and the
# policy the watch was started with, so that the host can check that replay
# judges every record as the live watch did.
replay_capture() {
    set --
    policy_follows=
    while IFS= read -r arg; do
        if [ -n "$policy_follows" ]; then
            set -- --policy "$arg"
            policy_follows=
        fi
        case $arg in
        --policy) policy_follows=1 ;;
        --policy=*) set -- "$arg" ;;
        esac
    done < "$w/argv"
    "$MODTRACE" replay --format json "$@" "$w/out.ndjson" \
        > "$w/replayed.ndjson" 2> "$w/replay.stderr"
    echo $? > "$w/replay_exit_code"
}
