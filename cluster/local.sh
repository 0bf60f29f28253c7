#!/usr/bin/env bash
# Local multi-process Dask cluster for rsembed_dask campaigns: one `dask scheduler`,
# one embed worker per GPU (`--resources GPU=1`, pinned with CUDA_VISIBLE_DEVICES=i;
# where CUDA_VISIBLE_DEVICES is set, e.g. "2,5", one per listed GPU, pinned to it;
# on a machine without GPUs, CPU embed workers declaring the same resource) and
# fetch-only workers (no resource). Everything it starts is recorded in a run
# directory (PIDs, logs, the scheduler address) so `local.sh stop` can stop it.
#
#   cluster/local.sh start [options]     start, wait for every worker, print the `rsembed-dask run` call
#   cluster/local.sh stop [--run-dir D]  stop what `start` recorded in D (SIGTERM, then SIGKILL after 20 s)
#   cluster/local.sh status [--run-dir D]
#
# Options of `start` (environment variable in brackets):
#   --run-dir DIR          run directory (RSEMBED_RUN_DIR, default ./rsembed-cluster)
#   --embed-workers N      embed workers (RSEMBED_EMBED_WORKERS, default: one per GPU from
#                          `nvidia-smi -L` or CUDA_VISIBLE_DEVICES, or 1 CPU embed worker without GPUs)
#   --cpu                  CPU embed workers even where GPUs exist (RSEMBED_CPU=1)
#   --fetch-workers M      fetch-only workers (RSEMBED_FETCH_WORKERS, default 1)
#   --fetch-threads T      threads per fetch worker (RSEMBED_FETCH_THREADS, default 4)
#   --host H               interface to listen on (RSEMBED_HOST, default 127.0.0.1)
#   --port P               scheduler port, 0 = any free one (RSEMBED_PORT, default 8786)
#   --dashboard-port P     scheduler dashboard port (RSEMBED_DASHBOARD_PORT, default 8787)
#   --no-dashboard         no dashboard
#   --memory-limit L       per worker, as `dask worker --memory-limit` (RSEMBED_MEMORY_LIMIT, default auto)
#   --no-nanny             plain worker processes, no nanny (RSEMBED_NO_NANNY=1)
#   --timeout S            seconds to wait for the scheduler and workers (RSEMBED_START_TIMEOUT, default 120)
# The `dask` command is $DASK_BIN, else `dask` on PATH, else the repository's .venv/bin/dask.
set -euo pipefail

# Worker settings kept equal to rsembed_dask/cluster/local.py (local_cluster, WORKER_MALLOC_ENV).
EMBED_THREADS=2
MALLOC_TRIM=1073741824   # 2**30
MALLOC_MMAP=33554432     # 2**25
MALLOC_ARENAS=2

die() { echo "local.sh: $*" >&2; exit 2; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

find_dask() {
    if [[ -n "${DASK_BIN:-}" ]]; then echo "$DASK_BIN"; return; fi
    if command -v dask >/dev/null 2>&1; then command -v dask; return; fi
    local repo
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [[ -x "$repo/.venv/bin/dask" ]]; then echo "$repo/.venv/bin/dask"; return; fi
    die "no 'dask' command: activate the environment with rsembed_dask installed, or set DASK_BIN"
}

count_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

# The GPUs embed workers may use, one per line (as rsembed_dask.cluster.local.visible_gpus):
# every GPU nvidia-smi lists, or, when CUDA_VISIBLE_DEVICES is set (a scheduler's allocation
# such as "2,5"), its entries up to the first invalid one (CUDA ignores it and those after).
gpu_list() {
    local n d
    n="$(count_gpus)"
    (( n > 0 )) || return 0
    if [[ -z "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        seq 0 $((n - 1))
        return 0
    fi
    local IFS=,
    for d in $CUDA_VISIBLE_DEVICES; do
        d="${d// /}"
        if [[ "$d" =~ ^[0-9]+$ ]] && (( 10#$d < n )); then echo $((10#$d))
        elif [[ "$d" =~ ^(GPU|MIG)- ]]; then echo "$d"
        else break; fi
    done
}

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }

# A recorded PID counts as ours only while it runs (not a zombie) and its command line is a
# dask process, or, between fork and exec, it is still this shell's own child (whose command
# line is this script's): checking the command line alone raced with a just-started scheduler.
alive() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] && stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"                      # drop "pid (comm) ": comm may hold spaces
    [[ "${stat%% *}" != Z ]] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'dask' && return 0
    stat="${stat#* }"
    [[ "${stat%% *}" == "$$" ]]
}

cmd_stop() {
    local run_dir="$1" pids=() pid f
    [[ -d "$run_dir/pids" ]] || { echo "local.sh: nothing recorded in $run_dir"; return 0; }
    # Workers first, the scheduler last, so workers do not try to reconnect.
    for f in "$run_dir"/pids/*.pid; do
        [[ -e "$f" ]] || continue
        [[ "$(basename "$f")" == scheduler.pid ]] && continue
        pids+=("$(cat "$f")")
    done
    [[ -e "$run_dir/pids/scheduler.pid" ]] && pids+=("$(cat "$run_dir/pids/scheduler.pid")")
    for pid in "${pids[@]}"; do
        # Each process leads its own process group (setsid): the group holds the nanny's worker too.
        if alive "$pid"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; fi
    done
    local deadline=$((SECONDS + 20)) left
    while :; do
        left=0
        for pid in "${pids[@]}"; do alive "$pid" && left=$((left + 1)); done
        (( left == 0 )) && break
        if (( SECONDS >= deadline )); then
            echo "local.sh: $left process(es) ignored SIGTERM for 20 s; sending SIGKILL" >&2
            for pid in "${pids[@]}"; do
                if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
            done
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$run_dir"/pids/*.pid "$run_dir/scheduler_address"
    echo "local.sh: stopped ${#pids[@]} process(es); logs kept in $run_dir/logs"
}

cmd_status() {
    local run_dir="$1" f pid n=0
    [[ -d "$run_dir/pids" ]] || { echo "no cluster recorded in $run_dir"; return 1; }
    for f in "$run_dir"/pids/*.pid; do
        [[ -e "$f" ]] || continue
        pid="$(cat "$f")"
        if alive "$pid"; then echo "$(basename "$f" .pid) pid $pid running"; n=$((n + 1));
        else echo "$(basename "$f" .pid) pid $pid gone"; fi
    done
    [[ -e "$run_dir/scheduler_address" ]] && echo "scheduler $(cat "$run_dir/scheduler_address")"
    (( n > 0 ))
}

# start_proc NAME LOG CMD...: start CMD in its own session (process group), record its PID.
start_proc() {
    local name="$1" log="$2"; shift 2
    setsid "$@" > "$log" 2>&1 < /dev/null &
    echo $! > "$RUN_DIR/pids/$name.pid"
}

cmd_start() {
    local embed="${RSEMBED_EMBED_WORKERS:-}" fetch="${RSEMBED_FETCH_WORKERS:-1}"
    local fetch_threads="${RSEMBED_FETCH_THREADS:-4}" host="${RSEMBED_HOST:-127.0.0.1}"
    local port="${RSEMBED_PORT:-8786}" dash_port="${RSEMBED_DASHBOARD_PORT:-8787}" dashboard=1
    local memory="${RSEMBED_MEMORY_LIMIT:-auto}" nanny=1 cpu="${RSEMBED_CPU:-0}"
    local timeout="${RSEMBED_START_TIMEOUT:-120}"
    [[ "${RSEMBED_NO_NANNY:-0}" == 1 ]] && nanny=0
    while (( $# )); do
        case "$1" in
            --run-dir) RUN_DIR="$2"; shift 2 ;;
            --embed-workers|--gpus) embed="$2"; shift 2 ;;
            --cpu) cpu=1; shift ;;
            --fetch-workers) fetch="$2"; shift 2 ;;
            --fetch-threads) fetch_threads="$2"; shift 2 ;;
            --host) host="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --dashboard-port) dash_port="$2"; shift 2 ;;
            --no-dashboard) dashboard=0; shift ;;
            --memory-limit) memory="$2"; shift 2 ;;
            --no-nanny) nanny=0; shift ;;
            --timeout) timeout="$2"; shift 2 ;;
            -h|--help) usage; return 0 ;;
            *) die "unknown option '$1' (see: local.sh --help)" ;;
        esac
    done
    local gpu_ids=()
    [[ "$cpu" == 1 ]] || mapfile -t gpu_ids < <(gpu_list)
    local gpus=${#gpu_ids[@]}
    [[ -z "$embed" ]] && embed=$(( gpus > 0 ? gpus : 1 ))
    is_int "$embed" && (( embed >= 1 )) || die "--embed-workers=$embed: expected an integer >= 1"
    is_int "$fetch" || die "--fetch-workers=$fetch: expected an integer >= 0"
    is_int "$fetch_threads" && (( fetch_threads >= 1 )) || die "--fetch-threads=$fetch_threads: expected an integer >= 1"
    is_int "$port" || die "--port=$port: expected a port number (0 = any free port)"
    is_int "$timeout" || die "--timeout=$timeout: expected seconds"
    if (( gpus > 0 && embed > gpus )); then
        die "--embed-workers=$embed: only $gpus GPU(s) found${CUDA_VISIBLE_DEVICES+ (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)} (one embed worker per GPU); use --cpu for CPU workers"
    fi
    if [[ -d "$RUN_DIR/pids" ]] && cmd_status "$RUN_DIR" >/dev/null 2>&1; then
        die "a cluster recorded in $RUN_DIR is still running: 'local.sh stop --run-dir $RUN_DIR' first"
    fi
    local dask; dask="$(find_dask)"
    local py; py="$(dirname "$dask")/python"; [[ -x "$py" ]] || py=python3
    mkdir -p "$RUN_DIR/pids" "$RUN_DIR/logs" "$RUN_DIR/worker-space"
    RUN_DIR="$(cd "$RUN_DIR" && pwd)"
    rm -f "$RUN_DIR/scheduler.json" "$RUN_DIR/scheduler_address"

    local sched_args=(scheduler --host "$host" --port "$port" --scheduler-file "$RUN_DIR/scheduler.json")
    if (( dashboard )); then sched_args+=(--dashboard-address "$host:$dash_port"); else sched_args+=(--no-dashboard); fi
    start_proc scheduler "$RUN_DIR/logs/scheduler.log" "$dask" "${sched_args[@]}"
    local deadline=$((SECONDS + timeout))
    until [[ -s "$RUN_DIR/scheduler.json" ]]; do
        if ! alive "$(cat "$RUN_DIR/pids/scheduler.pid")"; then
            tail -n 20 "$RUN_DIR/logs/scheduler.log" >&2
            cmd_stop "$RUN_DIR" >/dev/null; die "the scheduler exited (log: $RUN_DIR/logs/scheduler.log)"
        fi
        (( SECONDS < deadline )) || { cmd_stop "$RUN_DIR" >/dev/null; die "no scheduler after ${timeout}s"; }
        sleep 0.2
    done

    # Worker environment. With the nanny, MALLOC_* must go through its pre-spawn environment:
    # the nanny overwrites the variables it inherits with distributed's defaults
    # (MALLOC_TRIM_THRESHOLD_=65536), and per-key DASK_..._MALLOC_TRIM_THRESHOLD_ variables do
    # not work (dask lower-cases such keys). One dict-valued variable keeps the case.
    local common=(--scheduler-file "$RUN_DIR/scheduler.json" --host "$host" --memory-limit "$memory"
                  --local-directory "$RUN_DIR/worker-space" --no-dashboard)
    local wenv=()
    if (( nanny )); then
        common+=(--nanny)
        wenv+=("DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={'MALLOC_TRIM_THRESHOLD_': $MALLOC_TRIM, 'MALLOC_MMAP_THRESHOLD_': $MALLOC_MMAP, 'MALLOC_ARENA_MAX': $MALLOC_ARENAS}")
    else
        common+=(--no-nanny)
        wenv+=("MALLOC_TRIM_THRESHOLD_=$MALLOC_TRIM" "MALLOC_MMAP_THRESHOLD_=$MALLOC_MMAP" "MALLOC_ARENA_MAX=$MALLOC_ARENAS")
    fi
    local i pin
    for ((i = 0; i < embed; i++)); do
        # The i-th usable GPU only for embed worker i; CPU workers see no GPU at all.
        if (( gpus > 0 )); then pin="${gpu_ids[$i]}"; else pin=""; fi
        start_proc "embed-$i" "$RUN_DIR/logs/embed-$i.log" env "${wenv[@]}" "CUDA_VISIBLE_DEVICES=$pin" \
            "$dask" worker "${common[@]}" --name "embed-$i" --nthreads "$EMBED_THREADS" --resources GPU=1
    done
    for ((i = 0; i < fetch; i++)); do
        start_proc "fetch-$i" "$RUN_DIR/logs/fetch-$i.log" env "${wenv[@]}" "CUDA_VISIBLE_DEVICES=" \
            "$dask" worker "${common[@]}" --name "fetch-$i" --nthreads "$fetch_threads"
    done

    local left=$((deadline - SECONDS)); (( left > 1 )) || left=1
    if ! "$py" - "$RUN_DIR/scheduler.json" "$((embed + fetch))" "$left" <<'EOF'
import sys
from distributed import Client

with Client(scheduler_file=sys.argv[1], timeout=float(sys.argv[3])) as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=float(sys.argv[3]))
EOF
    then
        tail -n 5 "$RUN_DIR"/logs/*.log >&2 || true
        cmd_stop "$RUN_DIR" >/dev/null
        die "workers did not all join within ${timeout}s (logs in $RUN_DIR/logs)"
    fi
    local addr
    addr="$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' "$RUN_DIR/scheduler.json")"
    echo "$addr" > "$RUN_DIR/scheduler_address"
    local kind="CPU"; (( gpus > 0 )) && kind="GPU"
    echo "local.sh: scheduler $addr, $embed $kind embed worker(s) (GPU=1), $fetch fetch worker(s); run dir $RUN_DIR"
    (( dashboard )) && echo "dashboard: http://$host:$dash_port/status"
    echo "submit with:"
    echo "  rsembed-dask run SAMPLES.gpkg --out CUBE.zarr --start YYYY-MM-DD --end YYYY-MM-DD --scheduler $addr"
    echo "stop with:"
    echo "  $0 stop --run-dir $RUN_DIR"
}

RUN_DIR="${RSEMBED_RUN_DIR:-./rsembed-cluster}"
action="${1:-}"
[[ -n "$action" ]] && shift
case "$action" in
    start) cmd_start "$@" ;;
    stop|status)
        while (( $# )); do
            case "$1" in
                --run-dir) RUN_DIR="$2"; shift 2 ;;
                *) die "unknown option '$1' for $action" ;;
            esac
        done
        "cmd_$action" "$RUN_DIR" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
