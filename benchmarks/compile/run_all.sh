#!/usr/bin/env bash
# The README's "Will it fit?" table: every official recipe compiled for TPU slices with
# `daclip-jax compile --json`. Real-size compiles take minutes each on a small machine; run in
# the background. Writes benchmarks/compile/<name>.json and .txt; table.py prints the table.
set -u
cd "$(dirname "$0")/../.."
OUT=benchmarks/compile
BF16="--config.model.dtype=bfloat16"
run() {  # name, then daclip-jax compile arguments
  local name=$1; shift
  [ -s "$OUT/$name.json" ] && { echo "skip $name"; return; }
  echo "$(date +%T) start $name"
  daclip-jax compile "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2> "$OUT/$name.err"
  echo "$(date +%T) done $name rc=$?"
}
IR=configs/universal_ir.py
run universal_ir_bf16_v5e-8      --config $IR --topology v5e-8 $BF16 --config.model.daclip_dtype=bfloat16
run daclip_b32_bf16_v5e-8        --config configs/daclip_vit_b32.py --topology v5e-8 $BF16
run universal_ir_bf16_v5p-8      --config $IR --topology v5p-8 $BF16 --config.model.daclip_dtype=bfloat16
run universal_ir_f32_v5e-8       --config $IR --topology v5e-8
run universal_ir_bf16_remat_v5e-8 --config $IR --topology v5e-8 $BF16 --config.model.daclip_dtype=bfloat16 --config.model.remat=True
run daclip_b32_bf16_v5p-8        --config configs/daclip_vit_b32.py --topology v5p-8 $BF16
run wild_ir_bf16_v5e-8           --config configs/wild_ir.py --topology v5e-8 $BF16 --config.model.daclip_dtype=bfloat16
run wild_ir_bf16_v5p-8           --config configs/wild_ir.py --topology v5p-8 $BF16 --config.model.daclip_dtype=bfloat16
run daclip_b32_bf16_v5e-64       --config configs/daclip_vit_b32.py --topology v5e-64 $BF16
# the DA-CLIP recipe with its parameters and moments sharded (fsdp) instead of replicated,
# over two v5e-8 slices (multi-slice: the slices split the data axis), and with remat
run daclip_b32_bf16_fsdp8_v5e-8  --config configs/daclip_vit_b32.py --topology v5e-8 $BF16 --config.mesh.data=1 --config.mesh.fsdp=8
run daclip_b32_bf16_v5e-8x2      --config configs/daclip_vit_b32.py --topology v5e-8 --num-slices 2 $BF16
run daclip_b32_bf16_remat_v5e-8    --config configs/daclip_vit_b32.py --topology v5e-8 $BF16 --config.model.remat=True
# a GPU host (needs the gpu-aot extra: jax's CUDA plugin)
if python -c "import jax_plugins.xla_cuda12" 2>/dev/null; then
  run universal_ir_bf16_h100-8   --config $IR --topology h100-8 $BF16 --config.model.daclip_dtype=bfloat16
fi
