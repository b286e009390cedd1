"""The whole demo: data, the three stages, evaluation, export and report."""

from __future__ import annotations

import json
import os
import time

from daclip_jax.demo.stages import train_stages


def run(cfg, workdir: str) -> dict:
    """The whole demo; returns the evaluation summary (also in report/summary.json)."""
    from daclip_jax.demo import evaluate as demo_eval

    workdir = os.path.abspath(workdir)
    t_start = time.perf_counter()
    paths, times = train_stages(cfg, workdir)
    summary = demo_eval.evaluate_and_report(cfg, workdir, paths, times)
    summary["wall_s"] = time.perf_counter() - t_start
    with open(os.path.join(workdir, "report", "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"== done in {summary['wall_s'] / 60:.1f} min: {workdir}/report/report.md", flush=True)
    return summary
