"""`data preview`: a clean|degraded grid, one row per degradation type, written as a PNG."""

import numpy as np
from PIL import Image

from daclip_jax.cli import main
from daclip_jax.data.preview import LABEL_WIDTH, PAD, preview_grid, skimage_photos
from daclip_jax.labels import DEGRADATIONS


def test_preview_cli_writes_a_valid_png_with_every_type(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--out", str(out), "--count", "2", "--size", "48"]) == 0
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG"
        rows = len(DEGRADATIONS) + 2  # ten types, a mixture and a wild row
        assert im.size == (LABEL_WIDTH + 4 * (48 + PAD) + PAD, rows * (48 + PAD) + PAD)
        a = np.asarray(im.convert("RGB"))
    # every row has a clean cell and a different degraded cell; labels are drawn (dark pixels)
    for r in range(rows):
        y = PAD + r * (48 + PAD)
        clean = a[y:y + 48, LABEL_WIDTH + PAD:LABEL_WIDTH + PAD + 48]
        lq = a[y:y + 48, LABEL_WIDTH + 2 * PAD + 48:LABEL_WIDTH + 2 * PAD + 96]
        assert not np.array_equal(clean, lq)
        assert (a[y:y + 48, :LABEL_WIDTH] < 100).any()


def test_preview_from_a_folder_and_reproducible(tmp_path):
    imgs = skimage_photos(("chelsea",))
    g1 = np.asarray(preview_grid(imgs, kinds=("noisy", "hazy"), size=32, seed=3, wild=False))
    g2 = np.asarray(preview_grid(imgs, kinds=("noisy", "hazy"), size=32, seed=3, wild=False))
    np.testing.assert_array_equal(g1, g2)
    (tmp_path / "src").mkdir()
    Image.fromarray((imgs[0] * 255).astype(np.uint8)).save(tmp_path / "src" / "cat.png")
    out = tmp_path / "g.png"
    assert main(["data", "preview", "--out", str(out), "--source", str(tmp_path / "src"),
                 "--kinds", "noisy,rainy", "--no-wild", "--size", "32"]) == 0
    assert Image.open(out).size[1] == 3 * (32 + PAD) + PAD
    assert main(["data", "preview", "--out", str(out), "--kinds", "blurry"]) == 2
