"""The Gradio page of `daclip-jax serve`: upload (or pick an example), see what DA-CLIP finds
wrong with the photo, restore it, compare before / after, download the PNG.

All the work is `handler.Restorer`'s; this module only lays out the page and turns the
handler's results and `BadRequest`s into component updates. Both model events share one
concurrency slot ("model"), so a process restores one image at a time and Gradio's queue
shows every other visitor its position.
"""

from __future__ import annotations

import contextvars
import html
import logging

import gradio as gr

from daclip_jax.web.handler import BadRequest, Restorer, Settings, one_line

log = logging.getLogger(__name__)

TILE_CHOICES = ("auto", "256", "384", "512", "768", "1024")

CSS = """
#probs .verdict { font-size: 1.15rem; margin: 0 0 .6rem 0; }
#probs .row { display: grid; grid-template-columns: 9.5rem 1fr 4.5rem; align-items: center;
              gap: .5rem; margin: .15rem 0; font-size: .9rem; }
#probs .bar { background: var(--neutral-100); border-radius: 3px; height: .8rem; overflow: hidden; }
#probs .bar span { display: block; height: 100%; background: var(--color-accent); }
#probs .row.top .word { font-weight: 600; }
#probs .value { text-align: right; font-variant-numeric: tabular-nums; }
#status p { margin: 0; }
#status .error { color: var(--error-text-color, #b91c1c); font-weight: 600; }
"""


def probabilities_html(probs: dict[str, float]) -> str:
    """The ten probabilities as a sorted bar chart, the top one named in words.

    Plain HTML rather than gr.Label: Label rounds to whole percents, this shows two decimals
    (the ten values add up to 100% within 0.05%)."""
    if not probs:
        return ""
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    top, p_top = ranked[0]
    rows = [f'<p class="verdict">Looks <b>{html.escape(top)}</b> ({100 * p_top:.1f}%)</p>']
    for i, (word, p) in enumerate(ranked):
        rows.append(
            f'<div class="row{" top" if i == 0 else ""}" data-word="{html.escape(word)}">'
            f'<span class="word">{html.escape(word)}</span>'
            f'<span class="bar"><span style="width:{100 * p:.2f}%"></span></span>'
            f'<span class="value">{100 * p:.2f}%</span></div>')
    return "\n".join(rows)


def _status(text: str, error: bool = False) -> str:
    text = html.escape(text)
    return f'<p class="error">⚠ {text}</p>' if error else f"<p>{text}</p>"


def _no_download():
    return gr.DownloadButton(label="Download restored PNG", value=None, interactive=False,
                             elem_id="download")


def _failed(message):
    """The outputs after a refused or failed request: no stale result, the message."""
    return None, "", _status(message, error=True), _no_download()


def build_app(restorer: Restorer, examples=(), *, default_steps: int = 100) -> gr.Blocks:
    T = restorer.sde.T
    default_steps = max(1, min(default_steps, T))

    def inspect(path):
        if not path:
            return None, "", "", _no_download()
        try:
            r = restorer.inspect(path)
        except BadRequest as e:
            return _failed(str(e))
        except Exception as e:   # never a traceback on the page; the console gets it
            log.exception("inspect failed")
            return _failed(f"internal error: {type(e).__name__}: {one_line(e)}")
        w, h = r.size
        return ((r.input_png, None), probabilities_html(r.probs),
                _status(f"{r.name}: {w}x{h} pixels. Press Restore."), _no_download())

    def restore(path, steps, sampler, seed, tile, clip_x0, progress=gr.Progress()):
        settings = Settings(steps=steps, sampler=sampler, seed=seed,
                            tile=None if tile in (None, "auto") else tile, clip_x0=clip_x0)
        # the sampler reports steps from JAX's callback thread, which lacks this event's
        # context (Gradio finds the event through context variables): run it in a copy
        ctx = contextvars.copy_context()

        def on_step(done, total):
            ctx.run(progress, (done, total), desc="sampling", unit="steps")

        try:
            r = restorer.restore(path, settings, on_step=on_step)
        except BadRequest as e:
            return _failed(str(e))
        except Exception as e:
            log.exception("restore failed")
            return _failed(f"internal error: {type(e).__name__}: {one_line(e)}")
        w, h = r.size
        s = r.settings
        return ((r.input_png, r.restored_png), probabilities_html(r.probs),
                _status(f"{r.name}: {w}x{h} pixels restored in {r.seconds:.1f} s "
                        f"({s.steps} steps, {s.sampler} sampler, seed {s.seed})."),
                gr.DownloadButton(label=f"Download restored PNG ({w}x{h})", value=r.restored_png,
                                  interactive=True, elem_id="download"))

    with gr.Blocks(title="daclip-jax: image restoration", analytics_enabled=False,
                   delete_cache=(600, 3600)) as app:
        gr.Markdown(
            "## daclip-jax: universal image restoration\n"
            "Upload a photo: DA-CLIP names what is wrong with it, the IR-SDE UNet restores it. "
            f"<small>Models: {html.escape(restorer.description)}. Images up to "
            f"{restorer.max_pixels / 1e6:.1f} Mpx; large ones are restored in tiles.</small>")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                upload = gr.File(label="Photo (PNG, JPEG, TIFF, WebP, ... any size up to the cap)",
                                 type="filepath", file_count="single", elem_id="upload", height=120)
                gallery = gr.Gallery(value=list(examples), label="Examples: click one (scikit-image "
                                     "photos, degraded)", columns=4, height=130,
                                     allow_preview=False, elem_id="examples",
                                     visible=bool(examples), buttons=[])
                with gr.Group():
                    steps = gr.Slider(1, T, value=default_steps, step=1, label="Sampling steps",
                                      info=f"T = {T}; fewer steps use the official sample_T scaling",
                                      elem_id="steps")
                    sampler = gr.Radio(["posterior", "sde", "ode"], value="posterior",
                                       label="Sampler", elem_id="sampler")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed",
                                         elem_id="seed")
                        tile = gr.Dropdown(list(TILE_CHOICES), value="auto", label="Tile size (px)",
                                           info="auto: whole image up to 1 Mpx, 512 above",
                                           elem_id="tile")
                    clip_x0 = gr.Checkbox(value=False, label="Clip x0 estimates to [0, 1] "
                                          "(posterior; steadies briefly trained nets)",
                                          elem_id="clip_x0")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
                status = gr.HTML(elem_id="status")
            with gr.Column(scale=3, min_width=360):
                slider = gr.ImageSlider(label="Before / after (drag the handle)", type="filepath",
                                        format="png", interactive=False, elem_id="result",
                                        max_height=560)
                download = _no_download()
                probs = gr.HTML(elem_id="probs")

        outputs = [slider, probs, status, download]
        # progress (and the queue position) on the result only, not on every output
        upload.change(inspect, upload, outputs, concurrency_id="model", show_progress_on=slider)
        button.click(restore, [upload, steps, sampler, seed, tile, clip_x0], outputs,
                     concurrency_id="model", show_progress_on=slider)

        def pick(evt: gr.SelectData):
            return examples[evt.index]

        gallery.select(pick, None, upload)
    app.queue(default_concurrency_limit=1)
    return app
