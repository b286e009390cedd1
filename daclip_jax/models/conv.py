"""Convolutions for the UNet, with CPU-specific lowerings where XLA's CPU convolution is slow.

`conv_general_dilated` is a drop-in for `jax.lax.conv_general_dilated` (it is what
`nnx.Conv(conv_general_dilated=...)` calls). On CPU it rewrites the layer shapes for which we
measured a faster formulation (benchmarks/conv.py prints the measurements):

- 1x1 stride-1 convolutions (the ResBlocks' res_conv, the SpatialTransformer's proj_in /
  proj_out) are one GEMM over the pixels: XLA CPU runs them through its generic convolution;
  as a GEMM, forward + gradient is 1.5-2x faster on the UNet's shapes (the forward alone 0.5-3x:
  benchmarks/conv.py).

- Every other convolution (3x3, the 7x7 init_conv, the 4x4 stride-2 Downsample) is oneDNN's
  (models/onednn.py): forward, input gradient and filter gradient, through a custom VJP.
  XLA's filter gradient (a convolution whose window is the whole image) is 2-5x slower than
  oneDNN's at the first UNet levels; inside the whole UNet (benchmarks/unet.py --ab) the
  training step 2x128^2 took 2.55-2.72 s against 2.83-4.46 s with XLA's convolutions, the
  forward at 256^2 ~5 % less (2026-12-07, a loaded machine, CPU time per step: 7.18 s against
  8.08 s with the binding's one-thread calls, 7.27 against 8.05 s before them). Used when oneDNN loads and the computation runs on one device
  (a callback is not partitioned across devices); a shape whose descriptor oneDNN refuses when
  the convolution is traced (a negative padding) stays XLA's, with one debug log line.

Without oneDNN, 3x3 convolutions stay with XLA: im2col + GEMM, shifted GEMMs, Winograd
F(2x2,3x3) and jnp filter-gradient formulations were all slower than XLA's (benchmarks/conv.py);
so were Winograd F(4x4,3x3) in jnp (1.0-5x slower, relative error up to 1.6e-5) and split-K
filter-gradient GEMMs (measured once, not kept). Everything else goes
to `lax.conv_general_dilated` unchanged. On GPU/TPU nothing is rewritten (`cpu_kernels(platform)`
is False there): the accelerators' own convolutions are the fast path. The platform is that of
the devices the computation is traced for (the mesh in effect), not the host's default backend,
so a TPU program cross-compiled on a CPU machine (`daclip-jax compile`) gets no CPU kernel.

`tune_cpu_allocator()` (called when `daclip_jax.models` is imported) keeps XLA CPU's freed
buffers in the process heap instead of returning them to the OS and faulting them in again on
the next call. Against glibc's own (adaptive) thresholds, measured one process each: the
official UNet's forward at 256^2 97k -> 69k minor faults per call (CPU time ~3 % less), at
512^2 1.08M -> 0.79M (5 % less); the nf-16 training step at 64^2 is unchanged (61k either way;
its buffers are below glibc's adaptive threshold). Peak RSS unchanged (1.73 / 1.74 GiB at 512^2).
"""

from __future__ import annotations

import contextlib
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from daclip_jax.models import onednn
# decided without initialising a backend (platforms.py); tune_cpu_allocator and tests use it
from daclip_jax.platforms import default_platform_is_cpu

_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))   # lhs/rhs/out specs of NHWC, HWIO, NHWC
_NHWC_NAMES = ("NHWC", "HWIO", "NHWC")
_log = logging.getLogger(__name__)
_override: list[bool | None] = [None]
_onednn_override: list[bool | None] = [None]


def tune_cpu_allocator() -> bool:
    """glibc malloc thresholds raised (data.pipeline.tune_malloc), and the heap trimmed after
    each compilation (data.pipeline.trim_heap_after_compiles), when the default platform is
    CPU; nothing elsewhere. Idempotent. Returns whether the thresholds are set."""
    if _override[0] is False or not default_platform_is_cpu():
        return False
    from daclip_jax.data.pipeline import trim_heap_after_compiles, tune_malloc

    return tune_malloc() and trim_heap_after_compiles()


def traced_target() -> tuple[str, int]:
    """(platform, device count) of the computation being traced.

    The mesh in effect (`jax.set_mesh`, as the trainer and `daclip-jax compile` trace their
    step) names the devices the program is compiled for; only without one do JAX's default
    backend and its device count stand in. A TPU mesh traced on a CPU host (cross-compiling
    with libtpu's topology devices) must get the TPU program, not the host's CPU kernels:
    a buffer_callback does not lower for TPU at all."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    if device is not None:
        return device.platform, mesh.size
    return jax.default_backend(), jax.device_count()


def cpu_kernels(platform: str | None = None) -> bool:
    """Whether the CPU rewrites apply on `platform` (default: the platform traced for,
    `traced_target()`)."""
    if _override[0] is not None:
        return _override[0]
    return (platform or traced_target()[0]) == "cpu"


@contextlib.contextmanager
def force_cpu_kernels(enabled: bool | None):
    """Trace with the CPU rewrites on/off whatever the platform (A/B benchmarks, tests).
    Read when a function is traced: use a fresh `jax.jit` per setting."""
    prev, _override[0] = _override[0], enabled
    try:
        yield
    finally:
        _override[0] = prev


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return (tuple(dimension_numbers.lhs_spec), tuple(dimension_numbers.rhs_spec),
                tuple(dimension_numbers.out_spec)) == _NHWC
    return tuple(dimension_numbers) == _NHWC_NAMES


def _trivial(seq) -> bool:
    return seq is None or all(int(s) == 1 for s in seq)


def _zero_padding(padding) -> bool:
    if isinstance(padding, str):
        return padding.upper() == "VALID"
    return all(int(lo) == 0 and int(hi) == 0 for lo, hi in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
    """`lax.conv_general_dilated`, with the CPU rewrites of the module docstring."""
    plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
             and batch_group_count == 1 and _trivial(lhs_dilation) and _trivial(rhs_dilation)
             and not kwargs.get("out_sharding"))
    if plain and cpu_kernels():
        kh, kw = rhs.shape[:2]
        if kh == kw == 1 and _trivial(window_strides) and _zero_padding(padding):
            y = lax.dot(lhs.reshape(-1, lhs.shape[-1]), rhs.reshape(rhs.shape[2:]),
                        precision=precision, preferred_element_type=preferred_element_type)
            return y.reshape(lhs.shape[:-1] + y.shape[-1:])
        if (lhs.dtype == rhs.dtype == jnp.float32 and precision is None
                and preferred_element_type is None and onednn_enabled()):
            strides = tuple(int(s) for s in (window_strides or (1, 1)))
            if isinstance(padding, str):
                padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
            why = onednn.check(lhs.shape, rhs.shape, strides, pads)   # at trace time
            if why is None:
                return onednn_conv(lhs, rhs, strides, pads)
            _log.debug("XLA's convolution for %s * %s, strides %s, padding %s: %s",
                       lhs.shape, rhs.shape, strides, pads, why)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision=precision, preferred_element_type=preferred_element_type,
                                    **kwargs)


def onednn_enabled() -> bool:
    """oneDNN's convolutions are used: CPU rewrites on, oneDNN loaded, a single device
    traced for (a callback is not partitioned across devices)."""
    if _onednn_override[0] is not None:
        return _onednn_override[0] and cpu_kernels() and onednn.available()
    platform, n_devices = traced_target()
    return cpu_kernels(platform) and n_devices == 1 and onednn.available()


@contextlib.contextmanager
def force_onednn(enabled: bool | None):
    """Trace with oneDNN's convolutions on/off (A/B benchmarks, FLOP counts: XLA's cost analysis
    does not see inside a callback). Read when a function is traced."""
    prev, _onednn_override[0] = _onednn_override[0], enabled
    try:
        yield
    finally:
        _onednn_override[0] = prev


def _callback(which, out_shape, *args, key):
    """oneDNN's `which` direction of the convolution `key` on `args` as an XLA op, writing
    into XLA's output buffer (no copies)."""
    from jax.experimental.buffer_callback import buffer_callback

    def run(ctx, out, *bufs):
        del ctx
        onednn.run(which, *key, *(np.asarray(b) for b in bufs), np.asarray(out))

    return buffer_callback(run, jax.ShapeDtypeStruct(out_shape, jnp.float32),
                           vmap_method="sequential")(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv(x, w, strides, padding):
    """NHWC/HWIO float32 convolution (no dilation, no groups) computed by oneDNN; its gradients
    too, or XLA's where oneDNN refuses a backward descriptor (checked when the VJP is traced)."""
    return _onednn_forward(x, w, strides, padding)[0]


def _onednn_forward(x, w, strides, padding):
    key = (tuple(x.shape), tuple(w.shape), strides, padding)
    return _callback("forward", onednn.out_shape(*key), x, w, key=key), (x, w)


def _onednn_backward(strides, padding, res, dy):
    x, w = res
    key = (tuple(x.shape), tuple(w.shape), strides, padding)
    why = onednn.check(*key, "backward_data") or onednn.check(*key, "backward_weights")
    if why is None:
        return (_callback("backward_data", x.shape, dy, w, key=key),
                _callback("backward_weights", w.shape, x, dy, key=key))
    _log.debug("XLA's convolution gradients for %s: %s", key, why)
    _, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, strides, padding,
                                                           dimension_numbers=_NHWC_NAMES), x, w)
    return vjp(dy)


onednn_conv.defvjp(_onednn_forward, _onednn_backward)
