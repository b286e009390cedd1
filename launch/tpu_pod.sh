#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM pod slice.
# jax.distributed.initialize() auto-detects the pod (DACLIP_JAX_DISTRIBUTED=1 asks for it).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh train \
#       --config configs/daclip_vit_b32.py --workdir gs://my-bucket/runs/daclip_b32 \
#       --config.model.dtype=bfloat16 --config.mesh.fsdp=4
#
# Expects the repo checked out and installed (pip install -e .) at $REPO on every worker,
# e.g. once with: launch/tpu_pod.sh --setup. Preemption: SIGTERM from the TPU runtime
# makes the trainer save a checkpoint at the next step; rerunning resumes (--resume latest).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO=${REPO:-\~/daclip-jax}
if [[ "${1:-}" == "--setup" ]]; then
  CMD="cd $REPO && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"
else
  ARGS=$(printf '%q ' "$@")
  CMD="cd $REPO && DACLIP_JAX_DISTRIBUTED=1 .venv/bin/daclip-jax $ARGS 2>&1 | tee -a ~/daclip_jax_\$(hostname).log"
fi
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG --worker=all \
  --command "$CMD"
