#!/usr/bin/env bash
# N local CPU processes joined by jax.distributed (gloo collectives), one device each —
# the multi-host code path on one machine. (Several simulated devices per process
# deadlock in cross-process steps on CPU; see the stack notes.)
#
#   N=2 launch/local_multiprocess.sh train --config configs/daclip_vit_b32.py:runlocal,data=imgs \
#       --workdir /tmp/mp_run
#
# Every process gets the same command plus --config.distributed.* ; host 0 logs.
set -euo pipefail
N=${N:-2}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LIMIT=${LIMIT:-3600}          # seconds; JAX's preemption notifier swallows SIGTERM, so timeout -k
PY=${PYTHON:-python}
ENTRY="import sys; from daclip_jax.cli import main; sys.exit(main(sys.argv[1:]))"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=1 \
  timeout -k 5 "$LIMIT" "$PY" -c "$ENTRY" "$@" \
    --config.distributed.coordinator_address="127.0.0.1:$PORT" \
    --config.distributed.num_processes="$N" \
    --config.distributed.process_id="$i" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
