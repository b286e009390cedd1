"""`daclip-jax serve` in a real headless Chromium (Playwright + Debian's chromium): a user
uploads a photo, restores it, reads the probabilities, downloads the PNG; then uploads a
truncated file, sees the error, and restores another photo. The server runs in a subprocess
on tiny random checkpoints written here (a daclip-jax model dir and an official-format .pth).

DACLIP_JAX_SCREENSHOT=path saves the page with its result there (the README's picture).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from daclip_jax.labels import DEGRADATIONS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STEPS, SEED = 3, 7

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium "
                       "(.ci/run installs it)"),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory, golden_state_dict):
    from skimage import data

    from daclip_jax.convert.daclip import daclip_from_state_dict, save_daclip
    from daclip_jax.convert.unet import export_unet_pth
    from daclip_jax.models.unet import UNetConfig, init_unet

    d = tmp_path_factory.mktemp("web")
    sd = golden_state_dict("daclip_tiny")
    save_daclip(daclip_from_state_dict(sd), d / "daclip")
    export_unet_pth(init_unet(UNetConfig.named("tiny", nf=8, context_dim=32), seed=1),
                    d / "universal-ir.pth")
    # real photos, one size (one sampler compile): a JPEG as a camera writes it, and a PNG
    Image.fromarray(data.chelsea()).resize((96, 64), Image.BICUBIC).save(d / "cat.jpg", quality=85)
    Image.fromarray(data.coffee()).resize((96, 64), Image.BICUBIC).save(d / "coffee.png")
    png = (d / "coffee.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    return d


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    """`daclip-jax serve` in a subprocess started in an empty folder; (url, cwd, log path)."""
    cwd = tmp_path_factory.mktemp("cwd")
    port = _free_port()
    log = open(files / "serve.log", "w")
    script = os.path.join(os.path.dirname(sys.executable), "daclip-jax")   # the console script
    cli = [script] if os.path.exists(script) else \
        [sys.executable, "-c", "import sys; from daclip_jax.cli import main; sys.exit(main())"]
    proc = subprocess.Popen(
        cli + ["serve", "--daclip", str(files / "daclip"),
         "--unet", str(files / "universal-ir.pth"), "--port", str(port), "--steps", "10"],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve exited ({proc.returncode}):\n{(files / 'serve.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"serve did not answer:\n{(files / 'serve.log').read_text()}")
        time.sleep(0.5)
    yield url, cwd, files / "serve.log"
    proc.send_signal(signal.SIGTERM)   # stops like Ctrl+C
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    workdir = (files / "serve.log").read_text().splitlines()[0].split("temporary files in ")[1]
    assert proc.returncode == 0 and not os.path.exists(workdir)   # its temp dir is gone


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.requests = []
        page.on("request", lambda r: page.requests.append(r.url))
        page.set_default_timeout(120_000)
        page.goto(server[0])
        page.wait_for_selector("#restore")
        yield page
        browser.close()


def _upload(page, path):
    clear = page.query_selector("#upload button[aria-label='Clear']")
    if clear is not None:   # a file is there: remove it as a user would (its x button)
        clear.click()
    page.set_input_files("#upload input[type=file]", str(path))


def _restore(page, photo):
    """Upload, wait for DA-CLIP's verdict, press Restore, wait for the result."""
    _upload(page, photo)
    page.wait_for_selector(f"#status:has-text('{photo.name}: ')")
    page.wait_for_selector("#probs .row")
    page.click("#restore")
    page.wait_for_selector(f"#status:has-text('{photo.name}: 96x64 pixels restored in')")


def _shown_probs(page):
    rows = page.query_selector_all("#probs .row")
    return {r.get_attribute("data-word"): float(r.query_selector(".value").inner_text().rstrip("%")) / 100
            for r in rows}


def _shown_sizes(page):
    return page.eval_on_selector_all(
        "#result img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])")


def test_restore_in_the_browser(page, server, files, tmp_path):
    from daclip_jax.imageio import read_image, to_uint8
    from daclip_jax.restore import load_models, restore_image

    # the user's controls: fewer steps than the page's default, another seed
    page.fill("#steps input[type=number]", str(STEPS))
    page.press("#steps input[type=number]", "Enter")
    page.fill("#seed input", str(SEED))
    page.press("#seed input", "Tab")
    _restore(page, files / "cat.jpg")

    probs = _shown_probs(page)
    assert sorted(probs) == sorted(DEGRADATIONS)
    assert abs(sum(probs.values()) - 1) <= 1e-3
    verdict = page.inner_text("#probs .verdict")
    assert verdict.startswith(f"Looks {max(probs, key=probs.get)}")
    status = page.inner_text("#status")
    assert f"({STEPS} steps, posterior sampler, seed {SEED})" in status

    sizes = _shown_sizes(page)
    assert len(sizes) == 2 and any("cat_restored.png" in s for s, _, _ in sizes)
    assert all((w, h) == (96, 64) for _, w, h in sizes), sizes

    with page.expect_download() as d:
        page.click("#download")
    got = np.asarray(Image.open(d.value.path()))
    assert d.value.suggested_filename == "cat_restored.png"
    daclip, unet, sde = load_models(str(files / "daclip"), str(files / "universal-ir.pth"))
    want = restore_image(daclip, unet, read_image(files / "cat.jpg"), sde, steps=STEPS, seed=SEED,
                         progress=False)
    assert got.shape == (64, 96, 3)
    np.testing.assert_array_equal(got, to_uint8(want))

    shot = os.environ.get("DACLIP_JAX_SCREENSHOT") or str(tmp_path / "page.png")
    page.screenshot(path=shot, full_page=True)
    assert Image.open(shot).size[0] == 1280


def test_truncated_upload_then_a_good_one(page, files):
    _upload(page, files / "truncated.png")
    page.wait_for_selector("#status .error")
    msg = page.inner_text("#status")
    assert re.search(r"truncated\.png: corrupt or truncated image", msg), msg
    assert "Traceback" not in page.content()
    page.click("#restore")                      # pressing Restore anyway: the same message
    page.wait_for_selector("#status .error:has-text('corrupt or truncated')")
    assert _shown_sizes(page) == [] and _shown_probs(page) == {}

    _restore(page, files / "coffee.png")        # the page still works
    assert abs(sum(_shown_probs(page).values()) - 1) <= 1e-3
    assert all((w, h) == (96, 64) for _, w, h in _shown_sizes(page))


def test_one_restoration_at_a_time_and_the_queue_position_is_shown(page, server, files):
    """A second visitor who presses Restore while the first one's is running waits in the
    queue and is told their position; both then get their result."""
    other = page.context.browser.new_page()
    other.set_default_timeout(120_000)
    other.goto(server[0])
    other.wait_for_selector("#restore")
    _upload(other, files / "cat.jpg")
    other.wait_for_selector("#probs .row")
    # the first visitor (coffee.png is still uploaded there) asks for many steps: a new
    # compile plus sampling keep the model busy for a while
    page.fill("#steps input[type=number]", "60")
    page.press("#steps input[type=number]", "Enter")
    page.evaluate("""() => {   // everything the result box shows while it works
        window.seen = [];
        const box = document.querySelector('#result');
        new MutationObserver(() => window.seen.push(box.innerText))
            .observe(box, {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#restore")
    page.wait_for_function("() => /processing|steps/.test(document.querySelector('#result').innerText)")
    other.click("#restore")
    other.wait_for_selector("#result:has-text('queue: 1/1')")
    page.wait_for_selector("#status:has-text('coffee.png: 96x64 pixels restored in')")
    other.wait_for_selector("#status:has-text('cat.jpg: 96x64 pixels restored in')")
    assert "(60 steps" in page.inner_text("#status")
    # progress while sampling: steps done / total
    seen = page.evaluate("window.seen")
    done = sorted({int(m) for t in seen for m in re.findall(r"(\d+)/60 steps", t)})
    assert done and done[-1] >= 30, seen[-5:]
    other.close()


def test_nothing_leaves_the_machine_or_the_temp_dir(page, server):
    url, cwd, log = server
    assert page.requests and all(u.startswith(url) or u.startswith("blob:") or
                                 u.startswith("data:") for u in page.requests), \
        [u for u in page.requests if not u.startswith(url)]
    assert os.listdir(cwd) == []                # nothing written where the server was started
    first = log.read_text().splitlines()[0]
    assert "127.0.0.1" in first and "temporary files in" in first
