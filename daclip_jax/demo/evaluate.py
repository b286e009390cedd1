"""The demo's evaluation, export and report (see daclip_jax.demo for the run itself).

Held-out set: `eval.crops_per_photo` patches (the centre one first, the rest at seeded
random positions) of every held-out photo, each degraded with EVERY one of the ten types
by the same synthesis the training pipeline uses (its own seeds: none of these samples was
seen in training, and the photos never were). On it:
- degradation classification: the DA-CLIP zero-shot rule of `classify` (softmax(100·cos)
  of the controller's degradation embedding against the ten words) -> accuracy per type
  and a confusion matrix;
- restoration: the compiled IR-SDE sampler at each step count of `eval.sample_steps` (the
  first is the report's restorer: its numbers are the summary's top-level fields and the
  picture; 1 = the x0 net's one-step mode) on the degraded patches of the first
  `eval.restore_crops_per_photo` positions, conditioned on the frozen DA-CLIP -> PSNR/SSIM of
  the degraded input and of the restored output against the clean patch, per type.
"""

from __future__ import annotations

import json
import os

import numpy as np

from daclip_jax.labels import DEGRADATIONS


# ----------------------------------------------------------------------------- held-out set

def heldout_set(cfg, paths: dict) -> dict:
    """Every (patch, type) pair of the held-out photos: lq, gt, kind index, photo name."""
    from daclip_jax.data import degradations as D
    from daclip_jax.data.pipeline import record_rng
    from daclip_jax.imageio import read_image

    size = int(cfg.data.patch_size)
    seed = int(cfg.seed) + 10_000     # disjoint from the training pipeline's (seed, epoch) keys
    lq, gt, kind, photo = [], [], [], []
    for p, name in enumerate(paths["heldout_names"]):
        img = read_image(os.path.join(paths["heldout"], f"{name}.png"))
        h, w = img.shape[:2]
        rng = record_rng(seed, -1 % 2**31, p)
        tops = [(h - size) // 2] + [int(rng.integers(0, h - size + 1)) for _ in range(cfg.eval.crops_per_photo - 1)]
        lefts = [(w - size) // 2] + [int(rng.integers(0, w - size + 1)) for _ in range(cfg.eval.crops_per_photo - 1)]
        for j, (top, left) in enumerate(zip(tops, lefts)):
            clean = np.ascontiguousarray(img[top:top + size, left:left + size])
            for k, kind_name in enumerate(DEGRADATIONS):
                degraded, _ = D.degrade(clean, [kind_name], record_rng(seed, k, p * 1000 + j))
                lq.append(np.asarray(degraded, np.float32))
                gt.append(clean)
                kind.append(k)
                photo.append((name, j))
    return dict(lq=np.stack(lq), gt=np.stack(gt), kind=np.asarray(kind, np.int32), photo=photo)


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _padded(x: np.ndarray, size: int) -> np.ndarray:
    """A short last batch padded (repeating its last row) so one compiled shape serves all."""
    return x if len(x) == size else np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)])


def classify_heldout(daclip, data: dict, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted type index per sample by the `classify` rule: (DA-CLIP, the frozen CLIP alone
    without the controller), from the same CLIP views."""
    from tqdm import tqdm

    from daclip_jax.classify import classify_degradation
    from daclip_jax.preprocess import clip_view

    size = daclip.cfg.image_size
    preds = {True: [], False: []}
    for s in tqdm(_batches(len(data["lq"]), batch_size), desc="classify held-out", unit="batch"):
        views = _padded(np.stack([clip_view(x, size=size) for x in data["lq"][s]]), batch_size)
        for control, out in preds.items():
            probs = classify_degradation(daclip, views, control=control)
            out.append(np.argmax(probs[:s.stop - s.start], axis=-1))
    return np.concatenate(preds[True]), np.concatenate(preds[False])


def restore_heldout(daclip, unet, sde, data: dict, cfg, steps: int) -> np.ndarray:
    """IR-SDE restoration of every held-out sample with the compiled sampler in `steps` steps."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from daclip_jax.preprocess import clip_view
    from daclip_jax.sampling import sample

    size = daclip.cfg.image_size
    contexts = jax.jit(lambda m, x: m.encode_image(x, control=True))
    key = jax.random.key(int(cfg.seed))
    out = []
    for i, s in enumerate(tqdm(_batches(len(data["lq"]), int(cfg.eval.batch_size)),
                               desc=f"restore held-out ({steps} steps)", unit="batch")):
        n = s.stop - s.start
        lq = _padded(data["lq"][s], int(cfg.eval.batch_size))
        views = jnp.asarray(np.stack([clip_view(x, size=size) for x in lq]))
        image_context, degra_context = contexts(daclip, views)
        restored = sample(unet, sde, jnp.asarray(lq), degra_context, image_context,
                          jax.random.fold_in(key, i), steps=int(steps),
                          sampler=cfg.eval.sampler, clip_x0=bool(cfg.eval.clip_x0))
        out.append(np.clip(np.asarray(restored, np.float32)[:n], 0, 1))
    return np.concatenate(out)


def subset(data: dict, keep: np.ndarray) -> dict:
    return dict(lq=data["lq"][keep], gt=data["gt"][keep], kind=data["kind"][keep],
                photo=[p for p, k in zip(data["photo"], keep) if k])


def restoration_scores(rdata: dict, restored: np.ndarray) -> tuple[dict, dict, dict]:
    """PSNR/SSIM of the degraded input and of `restored` against the clean patch:
    (per type, overall, per-sample values)."""
    from daclip_jax.eval import metrics as M

    values = {m: np.zeros(len(rdata["kind"])) for m in ("psnr_in", "psnr_out", "ssim_in", "ssim_out")}
    for i, (lq, gt, out) in enumerate(zip(rdata["lq"], rdata["gt"], restored)):
        values["psnr_in"][i], values["psnr_out"][i] = M.psnr(gt, lq), M.psnr(gt, out)
        values["ssim_in"][i], values["ssim_out"][i] = M.ssim(gt, lq), M.ssim(gt, out)
    per = {}
    for k, name in enumerate(DEGRADATIONS):
        sel = rdata["kind"] == k
        per[name] = {m: float(v[sel].mean()) for m, v in values.items()}
        per[name]["psnr_gain"] = per[name]["psnr_out"] - per[name]["psnr_in"]
    overall = {m: float(v.mean()) for m, v in values.items()}
    overall["psnr_gain"] = overall["psnr_out"] - overall["psnr_in"]
    return per, overall, values


def scores(data: dict, preds: np.ndarray, rdata: dict, restored: dict,
           clip_preds: np.ndarray | None = None) -> dict:
    """Classification on `data` (DA-CLIP; `clip_preds`: the frozen CLIP alone), restoration
    metrics on `rdata` (a subset restored) for each `{steps: restored}`: the first is the
    report's restorer (top-level fields); every one is also under `by_steps`."""
    from daclip_jax.eval import metrics as M

    cm = M.confusion_matrix(data["kind"], preds, len(DEGRADATIONS))
    acc = M.zero_shot_accuracy(cm)
    clip_acc = ({} if clip_preds is None else
                M.zero_shot_accuracy(M.confusion_matrix(data["kind"], clip_preds, len(DEGRADATIONS))))
    by_steps = {str(k): restoration_scores(rdata, out) for k, out in restored.items()}
    per, overall, values = next(iter(by_steps.values()))
    for name in DEGRADATIONS:
        per[name].update(accuracy=acc.get(f"accuracy/{name}", float("nan")),
                         clip_accuracy=clip_acc.get(f"accuracy/{name}", float("nan")))
    overall["accuracy"] = acc.get("accuracy", float("nan"))
    overall["clip_accuracy"] = clip_acc.get("accuracy", float("nan"))
    return dict(per_type=per, overall=overall, confusion=cm.tolist(),
                samples=int(len(data["kind"])), restored_samples=int(len(rdata["kind"])),
                values={m: v.tolist() for m, v in values.items()},
                by_steps={k: dict(per_type=p, overall=o) for k, (p, o, _) in by_steps.items()})


# ----------------------------------------------------------------------------- export

def export_torch(daclip, unet, export_dir: str, sde=None) -> dict:
    """PyTorch weights: official DA-CLIP .pt, official UNet .pth, HF CLIP dir (+ `sde.json`,
    the SDE settings the UNet was trained with, which `restore` reads next to unet.pth)."""
    from daclip_jax.convert.daclip import export_daclip_pt
    from daclip_jax.convert.hf_clip import export_hf_clip
    from daclip_jax.convert.unet import export_unet_pth

    os.makedirs(export_dir, exist_ok=True)
    out = dict(daclip=os.path.join(export_dir, "daclip.pt"),
               unet=os.path.join(export_dir, "unet.pth"),
               hf_clip=os.path.join(export_dir, "hf_clip"))
    export_daclip_pt(daclip, out["daclip"])
    settings = None if sde is None else dict(sde.to_dict(), parameterization=unet.cfg.parameterization)
    export_unet_pth(unet, out["unet"], settings)
    export_hf_clip(daclip.clip, out["hf_clip"])
    if sde is not None:
        from daclip_jax.sde import save_sde_settings
        out["sde"] = save_sde_settings(sde, export_dir, unet.cfg.parameterization)
    return out


# ----------------------------------------------------------------------------- report

def loss_curves(workdir: str) -> dict:
    """stage -> [(step, train/loss)] from each trainer run's metrics.jsonl."""
    curves = {}
    for stage, title in (("clip", "stage 1: CLIP (contrastive)"),
                         ("daclip", "stage 2: DA-CLIP controller"),
                         ("restoration", "stage 3: IR-SDE UNet (L1)")):
        path = os.path.join(workdir, stage, "metrics.jsonl")
        if not os.path.isfile(path):
            continue
        points = {}
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "train/loss" in row:
                    points[int(row["step"])] = float(row["train/loss"])  # a resumed run rewrites
        curves[title] = sorted(points.items())
    return curves


def before_after_grid(data: dict, restored: np.ndarray, photos, path: str, cell: int = 128) -> str:
    """One row per type: degraded | restored | clean of the centre patch of each photo in `photos`."""
    from daclip_jax.data.preview import labelled_grid

    from daclip_jax.eval import metrics as M

    index = {(data["photo"][i], int(data["kind"][i])): i for i in range(len(data["kind"]))}
    photos = [p for p in photos if (p, 0) in {ph for ph, _ in index}] or [data["photo"][0][0]]
    rows = []
    for k, name in enumerate(DEGRADATIONS):
        cells, notes = [], []
        for p in photos:
            i = index[((p, 0), k)]
            cells += [data["lq"][i], restored[i], data["gt"][i]]
            notes.append(f"{p}: {M.psnr(data['gt'][i], data['lq'][i]):.1f}->"
                         f"{M.psnr(data['gt'][i], restored[i]):.1f} dB")
        rows.append((name + "\n" + "\n".join(notes), cells))
    header = [f"{p} {c}" for p in photos for c in ("degraded", "restored", "clean")]
    labelled_grid(rows, size=cell, header=header).save(path, format="PNG")
    return path


def write_report(cfg, workdir: str, summary: dict, data: dict, rdata: dict, restored: np.ndarray,
                 unet_note: str = "") -> str:
    from daclip_jax.demo import report as R

    rdir = os.path.join(workdir, "report")
    os.makedirs(rdir, exist_ok=True)
    R.plot_loss_curves(loss_curves(workdir), os.path.join(rdir, "loss_curves.png"))
    R.plot_confusion(np.asarray(summary["confusion"]), DEGRADATIONS, os.path.join(rdir, "confusion.png"))
    before_after_grid(rdata, restored, list(cfg.eval.grid_photos), os.path.join(rdir, "before_after.png"))
    per, ov = summary["per_type"], summary["overall"]
    acc_rows = [(n, int(np.sum(data["kind"] == k)), per[n]["clip_accuracy"], per[n]["accuracy"])
                for k, n in enumerate(DEGRADATIONS)]
    acc_rows.append(("**all**", summary["samples"], ov["clip_accuracy"], ov["accuracy"]))
    runs = summary["by_steps"]          # {steps: scores}, the report's restorer first

    def img_row(label, pick):
        row = [label, pick(next(iter(runs.values())))["psnr_in"]]
        row += [pick(r)[m] for r in runs.values() for m in ("psnr_out", "psnr_gain")]
        row += [pick(next(iter(runs.values())))["ssim_in"]] + [pick(r)["ssim_out"] for r in runs.values()]
        return row

    img_rows = [img_row(n, lambda r, n=n: r["per_type"][n]) for n in DEGRADATIONS]
    img_rows.append(img_row("**all**", lambda r: r["overall"]))
    img_header = (["type", "PSNR in"] + [h for k in runs for h in (f"PSNR out ({k} step{'s' * (k != '1')})", "gain (dB)")]
                  + ["SSIM in"] + [f"SSIM out ({k})" for k in runs])
    times = summary.get("stage_seconds", {})
    setup = (f"Held-out photos (never trained on): {', '.join(summary['heldout'])}; "
             f"{cfg.eval.crops_per_photo} patch(es) of {cfg.data.patch_size} px per photo, each "
             f"degraded with every type ({summary['samples']} samples, all classified; the first "
             f"{cfg.eval.restore_crops_per_photo} patch(es) per photo restored: "
             f"{summary['restored_samples']} samples). Trained on: "
             f"{', '.join(summary['train'])}.\n\n"
             f"Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + ".")
    sections = [
        ("Setup", setup),
        ("Training losses", "![loss curves](loss_curves.png)"),
        ("Degradation classification (DA-CLIP zero-shot, held-out)",
         "DA-CLIP: the controller's degradation embedding; CLIP alone: the frozen CLIP's image "
         "embedding against the same ten words (what the controller adds).\n\n"
         + R.markdown_table(["type", "samples", "CLIP alone", "DA-CLIP"], acc_rows)
         + "\n\n![confusion (DA-CLIP)](confusion.png)"),
        ("Restoration (IR-SDE, " + " and ".join(f"{k} {cfg.eval.sampler} step{'s' * (k != '1')}" for k in runs)
         + (", x0 estimates clipped to [0, 1]" if cfg.eval.get("clip_x0") else "") + ", held-out)",
         f"The UNet is {unet_note}. The picture shows the first column's restorer.\n\n"
         + R.markdown_table(img_header, img_rows)),
        ("Before / after (degraded | restored | clean)", "![before/after](before_after.png)"),
        ("Exported weights", "\n".join(f"- `{k}`: `{os.path.relpath(v, rdir)}`"
                                       for k, v in summary.get("exports", {}).items()) or "none"),
    ]
    return R.write_markdown(os.path.join(rdir, "report.md"), "daclip-jax demo report", sections)


def evaluate_and_report(cfg, workdir: str, paths: dict, times: dict) -> dict:
    from daclip_jax.convert.daclip import load_daclip
    from daclip_jax.convert.unet import load_unet
    from daclip_jax.train.restoration_task import make_sde

    print("== evaluation on the held-out photos", flush=True)
    daclip = load_daclip(os.path.join(workdir, "daclip", "model"))
    ema = os.path.join(workdir, "restoration", "model_ema")
    unet = load_unet(ema if os.path.isdir(ema) else os.path.join(workdir, "restoration", "model"))
    sde = make_sde(cfg.restoration.sde)
    data = heldout_set(cfg, paths)
    preds, clip_preds = classify_heldout(daclip, data, int(cfg.eval.batch_size))
    # restoration (the expensive part) on the first `restore_crops_per_photo` patches of each photo
    keep = np.asarray([j < int(cfg.eval.restore_crops_per_photo) for _, j in data["photo"]])
    rdata = subset(data, keep)
    restored = {int(k): restore_heldout(daclip, unet, sde, rdata, cfg, int(k))
                for k in _as_tuple(cfg.eval.sample_steps)}
    summary = scores(data, preds, rdata, restored, clip_preds)
    summary.update(heldout=list(paths["heldout_names"]), train=list(paths["train_names"]),
                   stage_seconds={k: _stage_seconds(workdir, k, v) for k, v in times.items()})
    if cfg.export:
        print("== export to PyTorch", flush=True)
        summary["exports"] = export_torch(daclip, unet, os.path.join(workdir, "export"), sde)
    p = unet.cfg.parameterization
    note = (f"{p}-parameterised (nf {unet.cfg.nf}, ch_mult {list(unet.cfg.ch_mult)}; "
            + ("it outputs the residual x0_hat - LQ, see sde.py" if p == "x0" else "the official noise predictor")
            + f"), trained {cfg.restoration.steps} steps")
    summary["unet"] = dict(parameterization=p, nf=unet.cfg.nf, ch_mult=list(unet.cfg.ch_mult),
                           steps=int(cfg.restoration.steps))
    path = write_report(cfg, workdir, summary, data, rdata, next(iter(restored.values())), note)
    ov = summary["overall"]
    print(f"held-out: accuracy {ov['accuracy']:.3f} (CLIP alone {ov['clip_accuracy']:.3f}), "
          f"PSNR {ov['psnr_in']:.2f} -> {ov['psnr_out']:.2f} dB ({ov['psnr_gain']:+.2f}), "
          f"SSIM {ov['ssim_in']:.3f} -> {ov['ssim_out']:.3f}; report {path}",
          flush=True)
    return summary


def _as_tuple(steps) -> tuple:
    return tuple(steps) if isinstance(steps, (tuple, list)) else (steps,)


def _stage_seconds(workdir: str, stage: str, measured: float) -> float:
    """Time of a stage: this invocation's, or the one recorded when it finished earlier."""
    if measured:
        return float(measured)
    try:
        with open(os.path.join(workdir, stage, "done.json")) as f:
            return float(json.load(f)["seconds"])
    except (OSError, KeyError, ValueError):
        return 0.0
