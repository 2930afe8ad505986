#!/usr/bin/env bash
# The service against local batched inference, in one run on this machine: how much of the best
# in-process throughput `toptag serve` delivers to many one-jet clients (the paper's CPU jobs asking
# a coprocessor service), over gRPC with the tensors in the messages and through system shared memory.
#   1. toptag perf --local: the checkpoint at batch 1, 8, 16, 32 and 64 on --threads threads; the best
#      is the bar.
#   2. toptag serve with its defaults on this machine, and toptag perf --server with --clients
#      concurrent one-jet clients (--shared-memory system: again with shared memory). Client and
#      server share the machine's CPUs, as they would on one worker node.
# The checkpoint is ResNet-50 at 40x40x1, untrained (one step at a learning rate of 1e-12 on 8
# generated jets): the figures, not the scores, are the point. --format ms-fp8 quantizes it (weights
# and activations), as the study serves its fine-tuned model.
#
#   bash bench/served_throughput.sh [--toptag build/toptag] [--threads 2] [--clients 16] [--duration 10s]
#                                   [--format ms-fp8] [--serve-args "--instances 2 --threads 1"]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOPTAG=$HERE/../build/toptag
THREADS=2
CLIENTS=16
DURATION=10s
SERVE_ARGS=""
FORMAT=""
while [ $# -gt 0 ]; do
  case $1 in
    --toptag) TOPTAG=$2 ;;
    --threads) THREADS=$2 ;;
    --clients) CLIENTS=$2 ;;
    --duration) DURATION=$2 ;;
    --serve-args) SERVE_ARGS=$2 ;;
    --format) FORMAT=$2 ;;
    *) sed -n '14,15p' "$0" >&2 && exit 2 ;;
  esac
  shift 2
done
TOPTAG=$(realpath "$TOPTAG")
WORK=$(mktemp -d)
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
export TOPTAG_PLAIN_PROGRESS=1

section() { printf '\n== %s\n' "$*"; }

section "machine ($(date -u '+%F %T UTC'))"
lscpu | grep -E '^(Model name|CPU\(s\))'
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"

"$TOPTAG" generate -o jets.h5 --jets 8 --seed 1 >/dev/null 2>&1
"$TOPTAG" train --train jets.h5 --val jets.h5 -o run --epochs 1 --batch-size 4 --lr 1e-12 --threads "$THREADS" \
  >/dev/null 2>&1
CHECKPOINT=run/last.h5
if [ -n "$FORMAT" ]; then
  "$TOPTAG" quantize -c run/last.h5 -f "$FORMAT" --activations -o quantized.h5 >/dev/null  # errors stay visible
  CHECKPOINT=quantized.h5
fi

section "local: toptag perf --local, $THREADS threads"
"$TOPTAG" perf --local -c "$CHECKPOINT" --batch 1,8,16,32,64 --threads "$THREADS" --duration "$DURATION" \
  --csv local.csv 2>&1 | grep -E "^engine|^local"

section "served: toptag serve $SERVE_ARGS; toptag perf --server, $CLIENTS one-jet clients"
# shellcheck disable=SC2086
"$TOPTAG" serve -c "$CHECKPOINT" --host 127.0.0.1 --grpc-port 0 --http-port 0 --metrics-port 0 --port-file ports.json \
  $SERVE_ARGS >serve.log 2>&1 &
serve_pid=$!
for _ in $(seq 100); do [ -s ports.json ] && break; sleep 0.1; done
[ -s ports.json ] || { cat serve.log; exit 1; }
grep -E "instances|batching" serve.log | head -3
grpc=$(python3 -c 'import json; print(json.load(open("ports.json"))["grpc"])')
# CPU seconds (user + system) of the server process so far, from /proc.
server_cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$serve_pid/stat"; }
server_before=$(server_cpu)
# The clients' CPU seconds: the perf process's own, from getrusage once it has ended.
python3 -c '
import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime:.2f}\n")' clients_cpu.txt \
  "$TOPTAG" perf --server "grpc://127.0.0.1:$grpc" --concurrency "$CLIENTS" --shared-memory system \
  --duration "$DURATION" --csv served.csv >perf.log 2>&1 || { cat perf.log serve.log; exit 1; }
grep -E "^(server|shm)" perf.log
kill -0 "$serve_pid" 2>/dev/null || { echo "the server has ended:"; cat serve.log; exit 1; }
server_after=$(server_cpu)
metrics=$(python3 -c 'import json; print(json.load(open("ports.json"))["metrics"])')
best=$(awk -F, 'NR > 1 && $5 > b { b = $5 } END { print b }' local.csv)
python3 - "$metrics" "$server_before" "$server_after" "$(cat clients_cpu.txt)" "$best" "$THREADS" <<'PY'
import sys, urllib.request
metrics, server_before, server_after, clients, best, threads = sys.argv[1:]
text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode()
value = lambda name: sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + "{"))
images, requests = value("nv_inference_count"), value("nv_inference_request_success")
print(f"server: mean batch {images / max(value('nv_inference_exec_count'), 1):.1f} images "
      f"over the run (inferences / executions)")
# Where a request's time goes inside the server (Triton's counters, summed over requests): a client's
# mean latency above less this is the transport, the gRPC threads and the client itself.
if requests > 0:
    per = lambda name: value(name) / requests / 1e3
    print(f"server: a request's mean {per('nv_inference_request_duration_us'):.2f} ms inside the server: queue "
          f"{per('nv_inference_queue_duration_us'):.2f} ms, its batch's compute "
          f"{per('nv_inference_compute_infer_duration_us'):.2f} ms, input and output "
          f"{per('nv_inference_compute_input_duration_us') + per('nv_inference_compute_output_duration_us'):.2f} ms")
    # Where a 2-core machine's CPU goes: the service's and the clients' CPU time a request, against
    # the best local point's (its threads busy for 1 / rate seconds an image).
    server_ms = 1e3 * (float(server_after) - float(server_before)) / requests
    clients_ms = 1e3 * float(clients) / requests
    local_ms = 1e3 * int(threads) / float(best)
    print(f"CPU a request: server {server_ms:.3f} ms (its waiting threads spin, so this bounds it from above), "
          f"clients {clients_ms:.3f} ms; the best local point: {local_ms:.3f} ms an image "
          f"({threads} threads x 1 / {float(best):.0f} images/s)")
PY

section "served / best local (throughput, images/s)"
for mode in server shm; do
  awk -F, -v m="$mode" -v b="$best" 'NR > 1 && $1 == m {
    printf "%-7s %3d clients: %8.1f images/s, best local %8.1f: %.2f\n", m, $2, $5, b, $5 / b }' served.csv
done
