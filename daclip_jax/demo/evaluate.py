"""The demo's evaluation, export and report (see daclip_jax.demo for the run itself).

Held-out set: `eval.crops_per_photo` patches (the centre one first, the rest at seeded
random positions) of every held-out photo, each degraded with EVERY one of the ten types
by the same synthesis the training pipeline uses (its own seeds: none of these samples was
seen in training, and the photos never were). On it:
- degradation classification: the DA-CLIP zero-shot rule of `classify` (softmax(100·cos)
  of the controller's degradation embedding against the ten words) -> accuracy per type
  and a confusion matrix;
- restoration: the compiled IR-SDE sampler (`eval.sample_steps` posterior steps) on the
  degraded patches of the first `eval.restore_crops_per_photo` positions, conditioned on the frozen DA-CLIP -> PSNR/SSIM of the degraded input and
  of the restored output against the clean patch, per type.
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


def restore_heldout(daclip, unet, sde, data: dict, cfg) -> np.ndarray:
    """IR-SDE restoration of every held-out sample with the compiled sampler."""
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
                               desc=f"restore held-out ({cfg.eval.sample_steps} steps)", unit="batch")):
        n = s.stop - s.start
        lq = _padded(data["lq"][s], int(cfg.eval.batch_size))
        views = jnp.asarray(np.stack([clip_view(x, size=size) for x in lq]))
        image_context, degra_context = contexts(daclip, views)
        restored = sample(unet, sde, jnp.asarray(lq), degra_context, image_context,
                          jax.random.fold_in(key, i), steps=int(cfg.eval.sample_steps),
                          sampler=cfg.eval.sampler, clip_x0=bool(cfg.eval.clip_x0))
        out.append(np.clip(np.asarray(restored, np.float32)[:n], 0, 1))
    return np.concatenate(out)


def subset(data: dict, keep: np.ndarray) -> dict:
    return dict(lq=data["lq"][keep], gt=data["gt"][keep], kind=data["kind"][keep],
                photo=[p for p, k in zip(data["photo"], keep) if k])


def scores(data: dict, preds: np.ndarray, rdata: dict, restored: np.ndarray,
           clip_preds: np.ndarray | None = None) -> dict:
    """Classification on `data` (DA-CLIP; `clip_preds`: the frozen CLIP alone), restoration
    metrics on `rdata` (a subset restored)."""
    from daclip_jax.eval import metrics as M

    cm = M.confusion_matrix(data["kind"], preds, len(DEGRADATIONS))
    acc = M.zero_shot_accuracy(cm)
    clip_acc = ({} if clip_preds is None else
                M.zero_shot_accuracy(M.confusion_matrix(data["kind"], clip_preds, len(DEGRADATIONS))))
    per = {name: dict(accuracy=acc.get(f"accuracy/{name}", float("nan")),
                      clip_accuracy=clip_acc.get(f"accuracy/{name}", float("nan")))
           for name in DEGRADATIONS}
    values = {m: np.zeros(len(rdata["kind"])) for m in ("psnr_in", "psnr_out", "ssim_in", "ssim_out")}
    for i, (lq, gt, out) in enumerate(zip(rdata["lq"], rdata["gt"], restored)):
        values["psnr_in"][i], values["psnr_out"][i] = M.psnr(gt, lq), M.psnr(gt, out)
        values["ssim_in"][i], values["ssim_out"][i] = M.ssim(gt, lq), M.ssim(gt, out)
    for k, name in enumerate(DEGRADATIONS):
        sel = rdata["kind"] == k
        for m, v in values.items():
            per[name][m] = float(v[sel].mean())
        per[name]["psnr_gain"] = per[name]["psnr_out"] - per[name]["psnr_in"]
    overall = {m: float(v.mean()) for m, v in values.items()}
    overall["psnr_gain"] = overall["psnr_out"] - overall["psnr_in"]
    overall["accuracy"] = acc.get("accuracy", float("nan"))
    overall["clip_accuracy"] = clip_acc.get("accuracy", float("nan"))
    return dict(per_type=per, overall=overall, confusion=cm.tolist(),
                samples=int(len(data["kind"])), restored_samples=int(len(rdata["kind"])),
                values={m: v.tolist() for m, v in values.items()})


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


def write_report(cfg, workdir: str, summary: dict, data: dict, rdata: dict, restored: np.ndarray) -> str:
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
    img_rows = [(n, per[n]["psnr_in"], per[n]["psnr_out"], per[n]["psnr_gain"], per[n]["ssim_in"],
                 per[n]["ssim_out"]) for n in DEGRADATIONS]
    img_rows.append(("**all**", ov["psnr_in"], ov["psnr_out"], ov["psnr_gain"], ov["ssim_in"], ov["ssim_out"]))
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
        ("Restoration (IR-SDE, " + f"{cfg.eval.sample_steps} {cfg.eval.sampler} steps"
         + (", x0 estimates clipped to [0, 1]" if cfg.eval.get("clip_x0") else "") + ", held-out)",
         R.markdown_table(["type", "PSNR in", "PSNR out", "gain (dB)", "SSIM in", "SSIM out"], img_rows)),
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
    restored = restore_heldout(daclip, unet, sde, rdata, cfg)
    summary = scores(data, preds, rdata, restored, clip_preds)
    summary.update(heldout=list(paths["heldout_names"]), train=list(paths["train_names"]),
                   stage_seconds={k: _stage_seconds(workdir, k, v) for k, v in times.items()})
    if cfg.export:
        print("== export to PyTorch", flush=True)
        summary["exports"] = export_torch(daclip, unet, os.path.join(workdir, "export"), sde)
    path = write_report(cfg, workdir, summary, data, rdata, restored)
    ov = summary["overall"]
    print(f"held-out: accuracy {ov['accuracy']:.3f} (CLIP alone {ov['clip_accuracy']:.3f}), "
          f"PSNR {ov['psnr_in']:.2f} -> {ov['psnr_out']:.2f} dB ({ov['psnr_gain']:+.2f}), "
          f"SSIM {ov['ssim_in']:.3f} -> {ov['ssim_out']:.3f}; report {path}",
          flush=True)
    return summary


def _stage_seconds(workdir: str, stage: str, measured: float) -> float:
    """Time of a stage: this invocation's, or the one recorded when it finished earlier."""
    if measured:
        return float(measured)
    try:
        with open(os.path.join(workdir, stage, "done.json")) as f:
            return float(json.load(f)["seconds"])
    except (OSError, KeyError, ValueError):
        return 0.0
