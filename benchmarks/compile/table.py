"""The README's "Will it fit?" table from the `daclip-jax compile --json` files in this folder
(run_all.sh writes them).

    python benchmarks/compile/table.py [DIR]
"""

from __future__ import annotations

import glob
import json
import os
import sys

GiB = 1024 ** 3


def row(name: str, d: dict) -> str:
    if "memory" not in d:   # XLA ran out of memory while compiling
        return f"| {name} | {d.get('topology', '')} | — | — | does not fit: {d.get('error', '')} | | | | |"
    mesh = "/".join(str(d["mesh"].get(a, 1)) for a in ("data", "fsdp", "tensor"))
    opts = [d["dtype"]] + (["remat"] if d.get("remat") else []) + (
        [f"accum {d['accum_steps']}"] if d.get("accum_steps", 1) > 1 else [])
    hbm = d.get("hbm_bytes") or 0
    verdict = "fits" if d.get("fits") else f"over by {(d['total_bytes'] - hbm) / GiB:.1f} GiB"
    coll = d["collectives"]
    moved = sum(c["bytes"] for c in coll.values()) / GiB
    kinds = ", ".join(f"{k} {c['count']}" for k, c in coll.items() if c["count"])
    roof = "—" if d.get("roofline_s") is None else f"{1e3 * d['roofline_s']:.0f}"
    at40 = "—" if d.get("step_s_at_40pct_mfu") is None else f"{1e3 * d['step_s_at_40pct_mfu']:.0f}"
    return (f"| {name} | {d['topology']} ({d['n_devices']} chips) | {mesh} | {d['global_batch']}, "
            f"{', '.join(opts)} | {d['total_bytes'] / GiB:.2f} of {hbm / GiB:.0f} GiB: {verdict} "
            f"| {d['flops'] / 1e12:.2f} | {roof} / {at40} | {moved:.2f} GiB ({kinds}) "
            f"| {d['compile_s'] / 60:.1f} min |")


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    print("| recipe | target | mesh data/fsdp/tensor | global batch, options | memory per chip "
          "| TFLOP per chip per step | roofline / 40 % MFU ms per step | collectives per step "
          "| compile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            print(row(os.path.basename(path)[:-5], json.load(f)))


if __name__ == "__main__":
    main()
