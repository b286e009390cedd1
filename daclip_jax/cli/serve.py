"""`daclip-jax serve --daclip CKPT --unet CKPT`: restore images in the browser (a Gradio page)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile


def register(subparsers) -> None:
    from daclip_jax.cli.restore import add_model_args

    p = subparsers.add_parser(
        "serve", help="restore images in the browser (Gradio web app; pip install 'daclip-jax[web]')",
        description="Serve a web page where an uploaded photo is classified by DA-CLIP (its ten "
                    "degradation probabilities) and restored by the IR-SDE UNet, as `daclip-jax "
                    "restore` does. The models are loaded once; one restoration runs at a time "
                    "(others wait in a queue); files live in a temporary directory removed at exit.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes "
                        "the page to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--steps", type=int, default=100, help="the page's initial sampling steps")
    p.add_argument("--max-megapixels", type=float, default=4.2,
                   help="largest image accepted, in millions of pixels (default 4.2: about 2048x2048)")
    p.add_argument("--max-upload-mb", type=float, default=64,
                   help="largest upload accepted, in MB")
    p.add_argument("--no-examples", dest="examples", action="store_false",
                   help="no example photos on the page")
    p.set_defaults(func=run)


_ENV = ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "TMPDIR")


def run(args) -> int:
    workdir = tempfile.mkdtemp(prefix="daclip-jax-serve-")
    saved = {k: os.environ.get(k) for k in _ENV}, tempfile.tempdir, signal.getsignal(signal.SIGTERM)
    try:
        return _serve(args, workdir)
    finally:   # as it was (a caller in the same process keeps working), then the files go
        for k, v in saved[0].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = saved[1]
        signal.signal(signal.SIGTERM, saved[2])
        shutil.rmtree(workdir, ignore_errors=True)


def _serve(args, workdir) -> int:
    # everything the process writes goes under workdir: Gradio's upload cache and any
    # library's temporary files; no telemetry or update checks (the page works offline)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(workdir, "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["TMPDIR"] = tempfile.tempdir = os.path.join(workdir, "tmp")
    os.makedirs(tempfile.tempdir)
    try:
        import gradio as gr
    except ImportError:
        print("error: the web app needs gradio: pip install 'daclip-jax[web]'", file=sys.stderr)
        return 2
    from daclip_jax.web.examples import write_examples
    from daclip_jax.web.handler import Restorer
    from daclip_jax.web.page import CSS, build_app

    try:
        restorer = Restorer.from_checkpoints(args.daclip, args.unet, os.path.join(workdir, "results"),
                                             max_pixels=int(args.max_megapixels * 1e6))
    except (OSError, ValueError, ImportError) as e:
        print(f"error: cannot load the models: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    examples = write_examples(os.path.join(workdir, "examples")) if args.examples else []
    app = build_app(restorer, examples, default_steps=args.steps)
    # SIGTERM (a service manager, a test) stops the server like Ctrl+C, so the temporary
    # directory is removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"daclip-jax serve: http://{args.host}:{args.port} (Ctrl+C to stop); "
          f"temporary files in {workdir}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False,
               allowed_paths=[workdir], max_file_size=int(args.max_upload_mb * 1e6),
               theme=gr.themes.Default(), css=CSS, footer_links=["gradio"], quiet=True)
    return 0
