"""Results of `daclip-jax evaluate`: per-image records -> per-type / overall summary, the
markdown table, and the JSON file that `--resume` continues from.

Averages are plain means over images, as the official test.py averages its per-image lists;
"all" is the mean over every image of the set (not the mean of the per-type means).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from daclip_jax.eval import metrics as M
from daclip_jax.labels import DEGRADATIONS

IMAGE_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "lpips")
FORMAT = 1


def _mean(values):
    return float(np.mean(values)) if values else float("nan")


def _group_summary(records, metrics) -> dict:
    out = {"images": len(records)}
    for m in metrics:
        out[m] = _mean([r[m] for r in records])
    labelled = [r for r in records if r.get("label", -1) >= 0 and "predicted" in r]
    if labelled:
        out["accuracy"] = _mean([float(r["predicted"] == r["degradation"]) for r in labelled])
    return out


def summarize(records: list[dict], has_lpips: bool) -> dict:
    """{'per_type': {folder: {...}}, 'all': {...}, 'accuracy', 'confusion'} from the records."""
    metrics = [m for m in IMAGE_METRICS if m != "lpips" or has_lpips]
    types = sorted({r["degradation"] for r in records})
    per_type = {t: _group_summary([r for r in records if r["degradation"] == t], metrics)
                for t in types}
    summary = {"per_type": per_type, "all": _group_summary(records, metrics)}
    labelled = [r for r in records if r.get("label", -1) >= 0 and "predicted" in r]
    if labelled:
        cm = M.confusion_matrix(np.array([r["label"] for r in labelled]),
                                np.array([DEGRADATIONS.index(r["predicted"]) for r in labelled]),
                                len(DEGRADATIONS))
        summary["accuracy"] = float(np.trace(cm) / cm.sum())
        summary["confusion"] = {"labels": list(DEGRADATIONS), "rows": "true degradation",
                                "columns": "DA-CLIP's prediction", "matrix": cm.tolist()}
    return summary


def _fmt(v, digits):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    """The per-type + overall table, the confusion matrix and the run's settings."""
    s, settings = result["summary"], result["settings"]
    has_lpips = settings.get("lpips") is not None
    cols = ["PSNR", "SSIM", "PSNR-Y", "SSIM-Y"] + (["LPIPS"] if has_lpips else []) + ["DA-CLIP acc."]
    keys = ["psnr", "ssim", "psnr_y", "ssim_y"] + (["lpips"] if has_lpips else [])
    digits = {"psnr": 2, "psnr_y": 2, "ssim": 4, "ssim_y": 4, "lpips": 4}
    lines = ["| degradation | images | " + " | ".join(cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]

    def row(name, g):
        vals = [_fmt(g.get(k), digits[k]) for k in keys] + [_fmt(g.get("accuracy"), 3)]
        lines.append(f"| {name} | {g['images']} | " + " | ".join(vals) + " |")

    for name, g in s["per_type"].items():
        row(name or "(unnamed)", g)
    row("**all**", s["all"])
    notes = [f"Protocol: official test.py metrics on uint8 images, {settings['crop_border']} px "
             "border cropped, SSIM with an 11x11 Gaussian window (sigma 1.5), Y = BT.601 luma."]
    if not has_lpips:
        notes.append("LPIPS: not computed (needs torchvision's ImageNet AlexNet weights: pass "
                     "--lpips PATH to a local AlexNet state dict).")
    if settings.get("identity"):
        notes.append("Restorer: none (--identity): the LQ images themselves are scored.")
    else:
        notes.append(f"Sampler: {settings['sampler']}, {settings['steps']} steps, seed "
                     f"{settings['seed']}" + (", x0 clipped" if settings.get("clip_x0") else "")
                     + f"; {settings.get('parameterization', 'noise')}-predicting UNet; "
                     f"SDE {settings['sde']}.")
    t = result.get("timing", {})
    if t.get("seconds"):
        notes.append(f"Speed: {t['images'] / t['seconds']:.3f} images/s over {t['images']} images "
                     f"({t['devices']} device(s), compilation included).")
    out = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    cm = s.get("confusion")
    if cm:
        out += f"\n\nDA-CLIP degradation accuracy: {s['accuracy']:.3f}. Confusion (rows: true, " \
               "columns: predicted; types never true or predicted left out):\n\n"
        m = np.array(cm["matrix"])
        keep = [i for i in range(len(DEGRADATIONS)) if m[i].sum() or m[:, i].sum()]
        out += "| true \\ predicted | " + " | ".join(DEGRADATIONS[i] for i in keep) + " |\n"
        out += "|---|" + "---:|" * len(keep) + "\n"
        for i in keep:
            if m[i].sum():
                out += f"| {DEGRADATIONS[i]} | " + " | ".join(str(m[i, j]) for j in keep) + " |\n"
    return out


def new_result(settings: dict) -> dict:
    return {"format": FORMAT, "settings": settings, "complete": False, "images": [],
            "timing": {"seconds": 0.0, "images": 0, "devices": 0}, "summary": {}}


def load_result(path: str) -> dict:
    with open(path) as f:
        result = json.load(f)
    if result.get("format") != FORMAT or "settings" not in result:
        raise ValueError(f"{path}: not a daclip-jax evaluate results file")
    return result


def save_result(result: dict, path: str) -> None:
    """Atomic write: a kill mid-write leaves the previous file, never half of one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
