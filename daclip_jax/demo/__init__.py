"""The embedded demo: DA-CLIP and the IR-SDE restorer trained end to end on real photos
that ship with scikit-image, in minutes on a CPU, with no download.

    daclip-jax demo --workdir runs/demo                      # the default (measured in the README)
    daclip-jax demo --workdir /tmp/demo --config :smoke      # a ~1 minute smoke run (the test)
    daclip-jax demo --workdir runs/demo --config.clip.init=open_clip_ViT-B-32.bin   # no stage 1

What it does, in `<workdir>`:
- `data/{train,heldout}/*.png` + `data/captions.json`: the photos (short side scaled to
  `data.short_side`), split BY PHOTO (the held-out ones are named in the config), and a
  caption naming each photo's subject, read through the pipeline's caption-file provider.
  All ten degradation types are synthesised on the fly by the data pipeline.
- `clip/`: stage 1, a small CLIP trained from scratch on the clean patches + captions (no
  pretrained CLIP exists offline). Skipped when `clip.init` names pretrained weights.
- `daclip/`: stage 2, the CLIP frozen and the DA-CLIP controller trained (DaClipLoss).
- `restoration/`: stage 3, a small ConditionalUNet trained with IR-SDE, conditioned on the
  frozen DA-CLIP.
  Each stage dir is a trainer run: orbax `checkpoints/`, TensorBoard `tb/`, `metrics.jsonl`
  and the exported `model/`. Re-running the command resumes an interrupted stage from its
  latest checkpoint and skips finished ones.
- `export/`: PyTorch weights — `daclip.pt` (official DA-CLIP state-dict layout),
  `unet.pth` (official ConditionalUNet layout) and `hf_clip/` (transformers CLIPModel dir).
- `report/report.md` + PNGs: loss curves, zero-shot degradation confusion matrix and
  accuracy per type, PSNR/SSIM of degraded vs restored per type, and a degraded | restored
  | clean grid for every type (see daclip_jax.demo.evaluate).

Sizes: the default CLIP is a 64 px ViT with 8 px patches; the UNet has nf 16. They were
chosen so the whole run fits in 15 minutes on 2 CPU cores (README has the measured
time); `--config.<stage>.steps=...` etc. trade time for quality.
"""

from daclip_jax.demo.config import HELDOUT, PHOTOS, get_config
from daclip_jax.demo.data import load_photo, prepare_data
from daclip_jax.demo.main import run
from daclip_jax.demo.stages import train_stages

__all__ = ["HELDOUT", "PHOTOS", "get_config", "load_photo", "prepare_data", "run", "train_stages"]
