"""The ten degradation words DA-CLIP is trained on, in the official order."""

DEGRADATIONS = (
    "motion-blurry",
    "hazy",
    "jpeg-compressed",
    "low-light",
    "noisy",
    "raindrop",
    "rainy",
    "shadowed",
    "snowy",
    "uncompleted",
)
