"""IR-SDE restoration training (official ``universal-image-restoration/config/daclip-sde``):
a frozen DA-CLIP turns the degraded image's CLIP view into (content, degradation)
embeddings, the ConditionalUNet predicts the noise of a random state x_t of the
mean-reverting SDE (mu = LQ), and the loss is the official maximum-likelihood L1
between the predicted and the optimal x_{t-1}.

`model.parameterization = "x0"` trains the net to output the clean image's residual instead
(see sde.py: it starts from "change nothing" and converges in far fewer steps), with the loss
`train.x0_weighting`: "ml" (the same maximum-likelihood loss, x0_hat in place of x0) or
"uniform" (plain L1 on x0_hat); `train.t_max_prob` draws that fraction of the training
states at t = T, where the one-step mode evaluates (0: t uniform, the official draw).

Validation samples with the compiled sampler at fewer steps (``eval.sample_steps``,
the official ``sample_T`` mechanism) and reports PSNR / SSIM per degradation type
(scikit-image on host) plus an LQ | output | GT grid. LPIPS is not computed: it needs
pretrained AlexNet/VGG weights that are not available offline here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from daclip_jax import parallel
from daclip_jax.eval import metrics as M
from daclip_jax.train.core import Task, jit_init


class Restorer(nnx.Module):
    """The trained UNet next to the frozen DA-CLIP that conditions it."""

    def __init__(self, unet, daclip):
        self.unet = unet
        self.daclip = daclip

    def contexts(self, lq_clip):
        """(image_context, text_context) = DA-CLIP (content, degradation), unnormalised, as
        the official ``encode_image(img4clip, control=True)``; no gradient flows back."""
        image_context, degra_context = self.daclip.encode_image(lq_clip, control=True)
        return (jax.lax.stop_gradient(image_context.astype(jnp.float32)),
                jax.lax.stop_gradient(degra_context.astype(jnp.float32)))


def _is_unet_param(path, value) -> bool:
    return isinstance(value, nnx.Param) and path[0] == "unet"


def make_sde(sc):
    from daclip_jax.sde import IRSDE
    return IRSDE(max_sigma=sc.max_sigma, T=sc.T, schedule=sc.schedule, eps=sc.eps)


@functools.partial(jax.jit, static_argnums=0)
def _contexts(graphdef, state, lq_clip):
    return nnx.merge(graphdef, state).contexts(lq_clip)


class RestorationTask(Task):
    name = "restoration"
    trainable = staticmethod(_is_unet_param)
    batch_keys = ("lq", "gt", "lq_clip")

    def __init__(self, config):
        super().__init__(config)
        self.sde = make_sde(config.sde)

    def build_model(self, rngs):
        """``model.unet``: a UNet preset ('universal-ir', 'wild-ir', 'tiny'); ``model.init``:
        optional UNet weights to start from (official .pth or our dir);
        ``model.daclip``: the frozen DA-CLIP (official .pt, our dir, ...); empty = a random
        DA-CLIP of ``model.daclip_name`` (smoke tests only)."""
        from daclip_jax.models.unet import ConditionalUNet, UNetConfig
        mc = self.config.model
        ucfg = UNetConfig.named(mc.unet, dtype=mc.get("dtype", "float32"),
                                remat=bool(mc.get("remat", False)),
                                parameterization=mc.get("parameterization", "noise"),
                                **dict(mc.get("unet_overrides") or {}))
        if mc.get("init"):
            from daclip_jax.convert.unet import load_unet
            unet = load_unet(mc.init)
        else:
            seed = int(self.config.get("seed", 0))
            unet = jit_init(lambda: ConditionalUNet(ucfg, rngs=nnx.Rngs(seed)))
        if mc.get("daclip"):
            from daclip_jax.convert.daclip import load_daclip
            daclip = load_daclip(mc.daclip, dtype=mc.get("daclip_dtype", "float32"))
        else:
            from daclip_jax.models.daclip import DaCLIP
            from daclip_jax.train.daclip_task import clip_config
            import ml_collections
            dc = ml_collections.ConfigDict(dict(name=mc.daclip_name,
                                                dtype=mc.get("daclip_dtype", "float32")))
            ccfg = clip_config(dc)
            seed = int(self.config.get("seed", 0)) + 1
            daclip = jit_init(lambda: DaCLIP(ccfg, rngs=nnx.Rngs(seed)))
        return Restorer(unet, daclip)

    def loss(self, model, batch, rng):
        lq, gt = batch["lq"], batch["gt"]
        image_context, degra_context = model.contexts(batch["lq_clip"])
        t = None
        p_T = float(self.config.train.get("t_max_prob", 0.0))
        if p_T > 0:   # more samples at t = T, where the one-step mode of x0 nets evaluates
            k_t, k_T, rng = jax.random.split(rng, 3)
            t = jax.random.randint(k_t, (gt.shape[0],), 1, self.sde.T + 1, dtype=jnp.int32)
            t = jnp.where(jax.random.uniform(k_T, t.shape) < p_T, self.sde.T, t)
        t, xt = self.sde.generate_random_states(gt, lq, rng, t=t)
        xt = parallel.constrain_batch(xt)
        out = model.unet(xt, lq, t.astype(jnp.float32), text_context=degra_context,
                         image_context=image_context)
        tc = self.config.train
        loss_type = tc.get("loss_type", "l1")
        if model.unet.cfg.parameterization == "x0":
            loss = self.sde.x0_loss(lq + out, xt, gt, lq, t, loss_type=loss_type,
                                    weighting=tc.get("x0_weighting", "ml"))
        else:
            loss = self.sde.loss(out, xt, gt, lq, t, loss_type=loss_type)
        return loss, {}

    def evaluate(self, model, batches, mesh):
        from daclip_jax.sampling import sample
        ec = self.config.eval
        graphdef, state = nnx.split(model)
        means = M.PerTypeMean()
        grid = None
        key = jax.random.key(int(self.config.get("seed", 0)))
        for i, b in enumerate(batches):
            image_context, degra_context = _contexts(graphdef, state, b["lq_clip"])
            out = sample(model.unet, self.sde, b["lq"], degra_context, image_context,
                         jax.random.fold_in(key, i), steps=int(ec.get("sample_steps", 20)),
                         sampler=ec.get("sampler", "posterior"),
                         clip_x0=bool(ec.get("clip_x0", False)))
            out, gt, lq, kinds = parallel.fetch((out, b["gt"], b["lq"], b["degradation_index"]))
            out = np.clip(out, 0, 1)
            for o, g, k in zip(out, gt, kinds):
                for name, value in M.image_scores(g, o).items():   # the official test metrics
                    means.add(name, value, int(k))
            if grid is None:
                n = min(4, len(out))
                rows = [np.concatenate([lq[j], out[j], gt[j]], axis=1) for j in range(n)]
                grid = np.clip(np.concatenate(rows, axis=0), 0, 1)
        return means.result(), ({"lq_output_gt": grid} if grid is not None else {})

    def export(self, model, path):
        from daclip_jax.convert.unet import save_unet
        from daclip_jax.sde import save_sde_settings
        save_unet(model.unet, path)
        if jax.process_index() == 0:   # `restore` reads it: the SDE these weights expect
            save_sde_settings(self.sde, path, model.unet.cfg.parameterization)
