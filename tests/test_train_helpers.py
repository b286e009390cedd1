"""A tiny task for exercising the shared training loop without the real models, and a
command-line entry used by the subprocess tests (multi-device, multi-process, kill -9).

    python tests/test_train_helpers.py OUT_DIR '{json overrides}'
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def tiny_config(**over):
    import ml_collections as mlc
    c = mlc.ConfigDict()
    c.task = "toy"
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding = dict(fsdp_min_size=0)
    c.train = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, schedule="cosine", end_lr=0.0,
                   weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-6, grad_clip_norm=0.0,
                   accum_steps=1, log_every=1)
    c.ema = dict(decay=0.0, every=10, after=100, inv_gamma=1.0, power=2 / 3)
    c.ckpt = dict(every=2, keep=10, keep_best=1, best_metric="mse_neg", best_mode="max",
                  async_save=True)
    c.eval = dict(every=0, batches=1, batch_size=8)
    c.nan_at_batch = -1      # fixture only: poison this training batch with a NaN
    c.hang_from_batch = -1   # fixture only: training batches from this index on never arrive
    c.export = False
    from daclip_jax.train.configlib import apply_overrides
    return apply_overrides(c, over.items())


def toy_task_class():
    import grain
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from daclip_jax import parallel
    from daclip_jax.train.core import Task

    class Toy(nnx.Module):
        def __init__(self, rngs):
            self.encoder = nnx.Linear(16, 32, rngs=rngs)     # frozen
            self.head = nnx.Linear(32, 16, rngs=rngs)        # trained
            self.out = nnx.Linear(16, 8, rngs=rngs)          # trained

        def __call__(self, x):
            h = parallel.constrain_batch(jnp.tanh(self.encoder(x)))
            return self.out(jax.nn.gelu(self.head(h)))

    class _Example(grain.transforms.Map):
        def __init__(self, offset, nan_index, hang=()):
            self.offset, self.nan_index, self.hang = offset, nan_index, frozenset(hang)

        def map(self, i):
            if int(i) in self.hang:
                import time
                time.sleep(3600)
            r = np.random.default_rng(int(i) + self.offset)
            x = r.normal(size=16).astype(np.float32)
            if int(i) == self.nan_index:
                x[0] = np.nan
            return {"x": x, "y": np.tanh(x[:8] * 2).astype(np.float32), "index": np.int32(i)}

    class ToyTask(Task):
        name = "toy"
        trainable = nnx.Any(nnx.PathContains("head"), nnx.PathContains("out"))
        batch_keys = ("x", "y")

        def build_model(self, rngs):
            return Toy(rngs)

        def loss(self, model, batch, rng):
            pred = model(batch["x"])
            mse = jnp.mean((pred - batch["y"]) ** 2)
            return mse, {"mse": mse}

        def evaluate(self, model, batches, mesh):
            errs = [float(jnp.mean((model(b["x"]) - b["y"]) ** 2)) for b in batches]
            return {"mse": np.mean(errs), "mse_neg": -np.mean(errs)}, {}

        def dataset(self, split, *, seed, process_index, process_count):
            bs = self.global_batch_size(split) // process_count
            offset = 0 if split == "train" else 10 ** 7
            nan_at = int(self.config.get("nan_at_batch", -1))
            # examples of global batch b are b*B .. (b+1)*B-1; process p takes its slice
            nan_index = -1
            ds = grain.MapDataset.range(10 ** 6)
            if split == "train":
                ds = ds.shuffle(seed=seed)
            ds = ds[process_index::process_count]
            if nan_at >= 0:
                nan_index = int(ds[nan_at * bs])
            hang_at = int(self.config.get("hang_from_batch", -1)) if split == "train" else -1
            # the examples of the next few batches (prefetch never reaches further)
            hang = [int(ds[j]) for j in range(hang_at * bs, (hang_at + 8) * bs)] if hang_at >= 0 else ()
            return ds.map(_Example(offset, nan_index, hang)) \
                .batch(bs, drop_remainder=True).to_iter_dataset()

    return ToyTask


CONFIGS = {"daclip": "configs/daclip_vit_b32.py", "clip": "configs/clip_scratch.py",
           "restoration": "configs/universal_ir.py"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def task_config(task, data_dir, caption_path, **over):
    """The runlocal config of a real task, shrunk to a 3-step run without eval/export."""
    sys.path.insert(0, ROOT)
    from daclip_jax.train.configlib import apply_overrides, load_config
    if task == "toy":
        cfg = tiny_config()
    else:
        cfg = load_config(f"{os.path.join(ROOT, CONFIGS[task])}:runlocal,data={data_dir}")
        cfg.data.caption.kind = "file"
        cfg.data.caption.path = caption_path
        cfg.data.holdout_fraction = 0.0
    cfg.train.steps = 3
    cfg.train.batch_size = 8
    cfg.train.warmup_steps = 1
    cfg.train.log_every = 1
    cfg.ckpt.every = 3
    cfg.eval.every = 0
    cfg.export = False
    cfg.sharding.fsdp_min_size = 0
    if task == "restoration":  # every block type, a tenth of the tiny preset's compile time
        cfg.model.unet_overrides = {"nf": 32, "ch_mult": (1, 2)}
    return apply_overrides(cfg, over.items())


def _make_task(task, cfg):
    if task == "toy":
        return toy_task_class()(cfg)
    from daclip_jax.train.core import get_task
    return get_task(cfg.task)(cfg)


def losses_by_step(workdir):
    """step -> loss, the last record of each step winning (a resumed run repeats steps)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/loss" in rec:
                out[rec["step"]] = rec["train/loss"]
    return out


def _losses(workdir):
    out = losses_by_step(workdir)
    return [out[k] for k in sorted(out)]


def compare_meshes(task, root, data_dir="", caption_path=""):
    """3 steps on one device vs. on all 8 with mesh (data=2, fsdp=2, tensor=2), then restore
    the 8-device checkpoint into a (data=8) mesh. Prints a JSON report."""
    import jax
    from daclip_jax import parallel
    from daclip_jax.train.core import Trainer
    report = {}
    params = {}
    for name, mesh, devices in (("one", dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
                                ("eight", dict(data=2, fsdp=2, tensor=2), None)):
        cfg = task_config(task, data_dir, caption_path)
        cfg.mesh = mesh
        work = os.path.join(root, name)
        t = Trainer(cfg, work, _make_task(task, cfg), devices=devices)
        state = t.train()
        specs = [s.spec for s in jax.tree.leaves(t.shardings.params)]
        mu_specs = [str(x.sharding.spec) for x in jax.tree.leaves(state.opt_state) if x.ndim >= 2]
        report[name] = dict(
            losses=_losses(work), devices=len(t.mesh.devices.flat),
            tensor_sharded=sum("tensor" in str(sp) for sp in specs),
            fsdp_sharded=sum("fsdp" in str(sp) for sp in specs),
            moments_sharded=sum("fsdp" in s or "tensor" in s for s in mu_specs))
        params[name] = parallel.fetch(state.params)
        t.close()
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params["one"], params["eight"])
    report["max_param_diff"] = max(jax.tree.leaves(diffs))
    over = [np.abs(a - b) > 1e-5 for a, b in zip(jax.tree.leaves(params["one"]),
                                                  jax.tree.leaves(params["eight"]))]
    report["frac_param_diff_over_1e-5"] = float(sum(o.sum() for o in over) / sum(o.size for o in over))
    report["max_param"] = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(params["one"]))
    # the (2,2,2) checkpoint into a data=8 mesh
    cfg = task_config(task, data_dir, caption_path)
    cfg.mesh = dict(data=8, fsdp=1, tensor=1)
    t = Trainer(cfg, os.path.join(root, "eight"), _make_task(task, cfg), resume="skip")
    step = t.load()
    moved = parallel.fetch(t.state.params)
    report["restored_step"] = step
    report["restore_max_diff"] = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), moved, params["eight"])))
    t.close()
    print("REPORT " + json.dumps(report))


def main(argv):
    if argv[1] == "--compare":
        import jax
        jax.config.update("jax_platforms", "cpu")
        compare_meshes(*argv[2:])
        return
    out_dir, overrides = argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
    resume = overrides.pop("resume", "latest")
    dist = overrides.pop("distributed", None)
    import jax
    jax.config.update("jax_platforms", "cpu")
    from daclip_jax import parallel
    if dist:
        parallel.initialize_distributed(**dist)
    from daclip_jax.train.core import Trainer
    cfg = tiny_config(**overrides)
    trainer = Trainer(cfg, out_dir, toy_task_class()(cfg), resume=resume)
    try:
        state = trainer.train()
    finally:
        trainer.close()
    rep = parallel.replicated(trainer.mesh)
    params = jax.device_get(jax.jit(lambda p: p, out_shardings=rep)(state.params))
    if jax.process_index() == 0 or dist:
        flat = {parallel.path_str(p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(os.path.join(out_dir, f"params_{jax.process_index()}.npz"), **flat)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv)


_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "coins", "horse",
            "brick", "grass", "gravel", "cell", "hubble_deep_field", "immunohistochemistry",
            "retina", "colorwheel")


def make_image_folder(path, n: int = 16, size: int = 48) -> tuple[str, str]:
    """`n` small PNGs cut from scikit-image's bundled photos + a captions.json
    ({file name: caption}); returns (folder, caption file)."""
    from PIL import Image
    from skimage import data as skdata
    os.makedirs(path, exist_ok=True)
    captions = {}
    for i in range(n):
        name = _SKIMAGE[i % len(_SKIMAGE)]
        img = np.asarray(getattr(skdata, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (np.clip(img / max(img.max(), 1), 0, 1) * 255).astype(np.uint8)
        h, w = img.shape[:2]
        # a different crop per copy so repeated photos are different images
        j = i // len(_SKIMAGE)
        crop = img[j * h // 8: h - (3 - j % 4) * h // 16, j * w // 8: w - (3 - j % 4) * w // 16]
        Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC).save(
            os.path.join(path, f"{i:03d}_{name}.png"))
        captions[f"{i:03d}_{name}.png"] = f"a photo of {name.replace('_', ' ')} number {i}"
    cap = os.path.join(os.path.dirname(os.path.abspath(path)), "captions.json")
    with open(cap, "w") as f:
        json.dump(captions, f)
    return path, cap
