"""The demo's photos and knobs (`get_config`); see daclip_jax.demo for the run."""

from __future__ import annotations

import ml_collections

# (scikit-image loader, file name, caption). All load offline from the installed wheel.
PHOTOS = (
    ("astronaut", "astronaut", "a photo of an astronaut in a space suit with a flag"),
    ("chelsea", "chelsea", "a photo of a ginger tabby cat"),
    ("coffee", "coffee", "a photo of a cup of coffee on a saucer"),
    ("rocket", "rocket", "a photo of a rocket on a launch pad"),
    ("hubble_deep_field", "hubble", "a photo of galaxies in deep space"),
    ("immunohistochemistry", "ihc", "a microscope photo of stained tissue"),
    ("retina", "retina", "a photo of the retina of a human eye"),
    ("colorwheel", "colorwheel", "a colour wheel with a rainbow of hues"),
    ("stereo_motorcycle:0", "motorcycle_left", "a photo of a red motorcycle in a garage"),
    ("stereo_motorcycle:1", "motorcycle_right", "a photo of a motorcycle parked in a workshop"),
    ("camera", "camera", "a photo of a man with a camera on a tripod"),
    ("moon", "moon", "a photo of the surface of the moon"),
    ("coins", "coins", "a photo of old coins on a table"),
    ("clock", "clock", "a photo of a wall clock"),
    ("brick", "brick", "a photo of a brick wall"),
    ("grass", "grass", "a photo of a field of grass"),
    ("gravel", "gravel", "a photo of gravel stones"),
    ("cell", "cell", "a microscope photo of a cell"),
    ("text", "text", "a photo of printed text on a page"),
    ("page", "page", "a scanned page of a book"),
)
# held out of all training: two colour and two grayscale photos of unrelated subjects
HELDOUT = ("coffee", "rocket", "camera", "coins")


def _demo_clip_arch() -> dict:
    """A small ViT CLIP for 64 px views (8 px patches = 8x8 tokens + class token).

    Heads are 64 wide, open_clip's convention, so the exported daclip.pt is read back (by our
    importer and by open_clip's defaults) with the right head counts from its shapes alone."""
    return dict(embed_dim=64, image_size=64, patch_size=8, vision_width=128, vision_layers=4,
                vision_head_width=64, context_length=77, vocab_size=49408, text_width=64,
                text_heads=1, text_layers=3, quick_gelu=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The demo's knobs; arg "smoke" shrinks everything to a ~1 minute run."""
    from daclip_jax.train.configlib import parse_arg

    arg = parse_arg(arg, smoke=False)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        photos=tuple(p[1] for p in PHOTOS),   # which of PHOTOS to use (file names)
        heldout=HELDOUT,                      # those kept out of training (evaluation only)
        short_side=160,                       # photos are rescaled so the short side is this
        train_scales=(1.0, 1.5, 2.0),         # training photos at these x short_side: 3x the
                                              # content for 64 px patches (held-out: 1.0 only)
        patch_size=64,                        # training patch = CLIP view side (no resize)
        read_threads=2, prefetch=8))
    c.clip = ml_collections.ConfigDict(dict(
        init="",                              # pretrained CLIP/DA-CLIP (open_clip, HF, .pt): skip stage 1
        arch=_demo_clip_arch(),
        steps=300, batch_size=32, lr=1e-3, warmup_steps=30, weight_decay=0.1, adam_eps=1e-6))
    c.daclip = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=32, lr=2e-3, warmup_steps=50, weight_decay=0.05, adam_eps=1e-6))
    c.restoration = ml_collections.ConfigDict(dict(
        unet=ml_collections.ConfigDict(dict(nf=16, ch_mult=(1, 2, 4), parameterization="x0")),
        x0_weighting="uniform",               # the x0 net's loss over t (sde.IRSDE.x0_loss): plain
                                              # L1 on x0_hat measured better than "ml" (README)
        t_max_prob=0.7,                       # fraction of training states at t = T, where the
                                              # one-step mode (the report's restorer) calls the net
                                              # (measured against 0 / 0.5 / 0.8 / 0.9: README)
        steps=1000, batch_size=4, lr=1e-3,
        warmup_steps=50,                      # Adam's first steps would throw the zero head about
        adam_eps=1e-8,                        # torch's default, as the official IR-SDE: the
                                              # matching loss's gradients are ~1e-6 per weight
        ema_decay=0.99,                       # the EMA weights (model_ema) are evaluated and exported
        # max_sigma 10 (released: 50): the x0 net's states carry 5x less noise to suppress,
        # and the one-step mode's input (mu) sits closer to the large-t training states
        sde=ml_collections.ConfigDict(dict(max_sigma=10.0, T=100, schedule="cosine", eps=0.005))))
    c.eval = ml_collections.ConfigDict(dict(
        crops_per_photo=8,                    # patches per held-out photo, each with every type
        restore_crops_per_photo=2,            # of those, restored (the sampler is the costly part)
        sample_steps=(1, 20),                 # sampling steps, each reported; the first is the
                                              # report's restorer (1 = the x0 net's one-step mode)
        sampler="posterior", batch_size=40,
        clip_x0=True,                         # x0 estimates clipped to [0, 1] (daclip_jax.sampling)
        grid_photos=("coffee", "camera")))    # held-out photos shown in the before/after grid
    c.log_every = 25
    c.export = True
    if arg.smoke:
        c.data.photos = ("astronaut", "chelsea", "brick", "coffee", "camera")
        c.data.heldout = ("coffee", "camera")
        c.data.short_side = 64
        c.data.train_scales = (1.0,)
        c.data.patch_size = 32
        c.data.read_threads = 1
        c.clip.arch = dict(_demo_clip_arch(), image_size=32, vision_width=64, vision_layers=2,
                           text_layers=1, embed_dim=32)
        c.clip.steps, c.clip.batch_size, c.clip.warmup_steps = 4, 8, 1
        c.daclip.steps, c.daclip.batch_size, c.daclip.warmup_steps = 20, 8, 1
        c.restoration.steps, c.restoration.batch_size = 4, 4
        c.eval.crops_per_photo = 1
        c.eval.restore_crops_per_photo = 1
        c.eval.sample_steps = (1, 2)
        c.eval.batch_size = 20
        c.log_every = 2
    return c
