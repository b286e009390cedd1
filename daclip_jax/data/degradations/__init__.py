"""On-the-fly synthesis of DA-CLIP's ten degradation types and their mixtures.

Each type is a pure function ``(clean, rng, severity, **overrides) -> (out, params)`` on float32
HxWx3 RGB in [0, 1]; ``params`` holds every sampled parameter plus ``params["maps"]`` (arrays:
transmission, alpha, matte, kernel, mask...). ``overrides`` replace sampled parameters after
sampling, so a test can pin one knob without changing how the RNG is consumed.
``degrade`` applies one or several types in physical formation order and quantises to 8 bit once.
Recipes, ranges and severity mappings: shared/design/degradations.md; each module's docstring
lists where and why it departs from them. Helpers inside a type module are imported by path
(``from daclip_jax.data.degradations.raindrop import render``): the package attribute of the
same name is the type function.
"""

import numpy as np

from daclip_jax.labels import DEGRADATIONS

from ._common import quantize
from .haze import hazy
from .inpainting import uncompleted
from .jpeg import jpeg_compressed
from .low_light import low_light
from .motion_blur import motion_blurry
from .noise import noisy
from .rain import rainy
from .raindrop import raindrop
from .shadow import shadowed
from .snow import snowy

__all__ = ["DEGRADATIONS", "APPLY_ORDER", "FUNCTIONS", "degrade", "sample_kinds", "ordered",
           "label_text", "multi_hot", "KIND_PROBS", "MIXTURE_SEVERITY_SCALE",
           "shadowed", "hazy", "rainy", "snowy", "raindrop", "motion_blurry", "low_light", "noisy",
           "jpeg_compressed", "uncompleted"]

# Physical formation order: scene/atmosphere first, then the lens, then the sensor, then the codec;
# holes last so they stay pure white.
APPLY_ORDER = (
    "shadowed", "hazy", "rainy", "snowy", "raindrop", "motion-blurry",
    "low-light", "noisy", "jpeg-compressed", "uncompleted",
)
assert sorted(APPLY_ORDER) == sorted(DEGRADATIONS)

# Keyed by label word, in application order.
FUNCTIONS = {
    "shadowed": shadowed,
    "hazy": hazy,
    "rainy": rainy,
    "snowy": snowy,
    "raindrop": raindrop,
    "motion-blurry": motion_blurry,
    "low-light": low_light,
    "noisy": noisy,
    "jpeg-compressed": jpeg_compressed,
    "uncompleted": uncompleted,
}
assert tuple(FUNCTIONS) == APPLY_ORDER

KIND_PROBS = (0.5, 0.35, 0.15)          # k = 1, 2, 3 types per sample
MIXTURE_SEVERITY_SCALE = 0.7            # keep mixtures recognisable
RAIN_AND_SNOW_KEEP = 0.2                # rainy + snowy together only rarely


def _as_list(kinds):
    return [kinds] if isinstance(kinds, str) else list(kinds)


def ordered(kinds):
    """Deduplicated kinds in application (physical) order; raises on unknown words."""
    kinds = _as_list(kinds)
    unknown = [k for k in kinds if k not in APPLY_ORDER]
    if unknown:
        raise ValueError(f"unknown degradation(s) {unknown}; expected words from {DEGRADATIONS}")
    return [k for k in APPLY_ORDER if k in kinds]


def label_text(kinds):
    """Text label: the bare word, or the words in application order joined by ", "."""
    return ", ".join(ordered(kinds))


def multi_hot(kinds):
    v = np.zeros(len(DEGRADATIONS), np.float32)
    for k in ordered(kinds):
        v[DEGRADATIONS.index(k)] = 1.0
    return v


def sample_kinds(rng):
    """k in {1, 2, 3} with P = (.5, .35, .15), types uniform without replacement.

    rainy and snowy together are kept only with probability RAIN_AND_SNOW_KEEP (else redrawn).
    """
    k = int(rng.choice(3, p=KIND_PROBS)) + 1
    while True:
        idx = rng.choice(len(DEGRADATIONS), size=k, replace=False)
        kinds = [DEGRADATIONS[i] for i in idx]
        if not ("rainy" in kinds and "snowy" in kinds) or rng.uniform() < RAIN_AND_SNOW_KEEP:
            return ordered(kinds)


def degrade(image, kinds, rng, severity=None, options=None):
    """Degrade a clean float32 HxWx3 RGB image in [0, 1].

    kinds: one label word or a list (applied in APPLY_ORDER whatever order is given).
    rng: numpy.random.Generator, the only source of randomness.
    severity: in [0, 1], used as given; None samples U(0, 1), times 0.7 for mixtures.
    options: {kind: keyword arguments of its type function}, e.g.
      {"uncompleted": {"mask_source": "procedural"}}; kinds not being applied are ignored.
    Returns (degraded float32 in k/255, meta) with meta = {"kinds", "severity", "label",
    "params": {kind: scalar params}, "maps": {kind: arrays}} and, for "uncompleted",
    "mask" (HxW float32 hole weight, 1 = hole; fractional on hole borders when an official
    mask is resized) and params["uncompleted"]["mask_source"] ("official" | "procedural").
    """
    kinds = ordered(kinds)
    if not kinds:
        raise ValueError("degrade needs at least one degradation kind")
    options = dict(options or {})
    ordered(list(options))                      # raises on unknown words
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if severity is None:
        severity = float(rng.uniform())
        if len(kinds) >= 2:
            severity *= MIXTURE_SEVERITY_SCALE
    severity = float(np.clip(severity, 0.0, 1.0))
    x = np.clip(image, 0.0, 1.0)
    params, maps = {}, {}
    for kind in kinds:
        x, p = FUNCTIONS[kind](x, rng, severity, **options.get(kind, {}))
        maps[kind] = p.pop("maps", {})
        params[kind] = p
    meta = {"kinds": kinds, "severity": severity, "label": label_text(kinds),
            "params": params, "maps": maps}
    if "uncompleted" in maps:
        meta["mask"] = maps["uncompleted"]["mask"]
    return quantize(x), meta
