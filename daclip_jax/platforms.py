"""Which platform JAX will run on, decided without initialising a backend.

Multi-process runs must not initialise a backend before `jax.distributed.initialize`, so these
read the environment, not `jax.devices()`.

libtpu (the `tpu` extra, installed for `daclip-jax compile`'s cross-compilation) changes what
JAX does at start-up on a machine without TPU chips: it tries to open them, prints libtpu's
warnings to stderr, takes libtpu's process lock (a second process then cannot build a TPU
topology: "Internal error when accessing libtpu multi-process lockfile") and falls back to
CPU. `prefer_cpu_without_chips()` asks for CPU directly in that case, which is where JAX ends
up anyway.
"""

from __future__ import annotations

import glob
import os


def tpu_chips_present() -> bool:
    """TPU chips on this host: /dev/accel* (v2-v5e) or /dev/vfio/<n> (v5p, v6e)."""
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def gpus_present() -> bool:
    """NVIDIA (/dev/nvidia<n>) or AMD (/dev/kfd) GPUs on this host."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def libtpu_installed() -> bool:
    from importlib.util import find_spec
    return find_spec("libtpu") is not None


def accelerator_plugins() -> list[str]:
    """Installed PJRT plugins other than libtpu (jax_plugins entry points: CUDA, ROCm, ...)."""
    from importlib.metadata import entry_points
    return sorted(ep.name for ep in entry_points(group="jax_plugins"))


def _platforms_setting() -> str:
    import jax
    return os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""


def default_platform_is_cpu() -> bool:
    """JAX's default platform is CPU: the first of JAX_PLATFORMS if set, else CPU unless an
    accelerator plugin is installed or libtpu is installed on a host with TPU chips."""
    platforms = _platforms_setting()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugins() and not (libtpu_installed() and tpu_chips_present())


def prefer_cpu_without_chips() -> bool:
    """Set `jax_platforms=cpu` when an accelerator runtime is installed (libtpu, or jax's CUDA
    plugin for GPU cross-compilation) but this host has no TPU chips and no GPU (and no explicit
    JAX_PLATFORMS, no backend started yet). Returns whether it did. Describing a TPU or GPU
    topology for cross-compilation still works afterwards."""
    # cheapest first: `import daclip_jax` must not import jax when no runtime is installed
    if os.environ.get("JAX_PLATFORMS") or tpu_chips_present():
        return False
    plugins = accelerator_plugins()
    if not libtpu_installed() and not plugins:
        return False
    if (plugins and gpus_present()) or _platforms_setting():
        return False
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_platforms", "cpu")
    return True
