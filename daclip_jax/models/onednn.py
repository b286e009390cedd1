"""oneDNN's convolutions, called from XLA on CPU (issue 14).

oneDNN (the library PyTorch's CPU convolutions run on) computes the UNet's convolutions at
about the machine's matmul rate. XLA's CPU filter gradient (a convolution whose window is the
whole image) is 2-5x slower than oneDNN's at the first UNet levels; oneDNN's forward, timed
alone, is 1.3-2.3x XLA's at large images with few channels (less when alternating with XLA
work). benchmarks/conv.py prints them side by side, benchmarks/unet.py --ab the whole UNet.

The library comes from the `onednn-cpu-gomp` wheel (Apache-2.0: a plain shared library,
libdnnl.so.3, no Python API) and is driven through its C API with ctypes; JAX hands over its
buffers without copies through `jax.experimental.buffer_callback` (models/conv.py). Nothing is
compiled at install time, and without the library (another OS, no libgomp) `available()` is
False and models/conv.py keeps XLA's convolution.

Only what models/conv.py needs is bound: float32, NHWC activations, HWIO weights, any kernel
size, stride and padding, no dilation or groups. Primitives are built once per shape and
cached; calls are serialised by a lock (a oneDNN stream and the memory objects are not
thread-safe, XLA may run independent callbacks concurrently, and one call uses every core).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading

import numpy as np

# Values from oneDNN's dnnl_types.h / dnnl_common_types.h (stable across the v3 ABI).
_SUCCESS = 0
_ENGINE_CPU = 1
_F32 = 3
_FORMAT_ANY = 1
_STREAM_IN_ORDER = 1
_FORWARD_TRAINING, _FORWARD_INFERENCE = 64, 96
_CONV_DIRECT = 1
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_FROM, _ARG_TO = 1, 17, 33, 1, 17
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_QUERY_IMPL_INFO_STR = 8
_QUERY_SRC_MD, _QUERY_DIFF_SRC_MD, _QUERY_WEIGHTS_MD = 129, 130, 131
_QUERY_DIFF_WEIGHTS_MD, _QUERY_DST_MD, _QUERY_DIFF_DST_MD = 132, 133, 134

_Dims = ctypes.c_int64 * 12
_void_p = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _void_p)]


class OneDNNError(RuntimeError):
    pass


def _candidates():
    if os.environ.get("DACLIP_ONEDNN_LIB"):
        yield os.environ["DACLIP_ONEDNN_LIB"]
    # the wheel installs its library under <prefix>/lib (a data file, not a Python package)
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield os.path.join(prefix, "lib", "libdnnl.so.3")
    found = ctypes.util.find_library("dnnl")
    if found:
        yield found


class _Library:
    """The loaded library, its CPU engine and one in-order stream."""

    def __init__(self, path):
        # oneDNN's OpenMP threads would otherwise spin after each call and take the cores
        # from XLA's own thread pool, which runs the next operation (GOMP reads it at load).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.dnnl_primitive_desc_query_md.restype = _void_p
        self.lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.engine, self.stream = _void_p(), _void_p()
        self.check(self.lib.dnnl_engine_create(ctypes.byref(self.engine), _ENGINE_CPU,
                                               ctypes.c_size_t(0)), "engine")
        self.check(self.lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine,
                                               ctypes.c_uint(_STREAM_IN_ORDER)), "stream")
        self.lock = threading.Lock()

    @staticmethod
    def check(status, what):
        if status != _SUCCESS:
            raise OneDNNError(f"oneDNN {what} failed (dnnl_status_t {status})")

    def md(self, dims, strides=None):
        """A float32 memory descriptor: plain with `strides`, or 'any' (oneDNN picks)."""
        md = _void_p()
        if strides is None:
            st = self.lib.dnnl_memory_desc_create_with_tag(ctypes.byref(md), len(dims),
                                                           _Dims(*dims), _F32, _FORMAT_ANY)
        else:
            st = self.lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), len(dims),
                                                               _Dims(*dims), _F32,
                                                               _Dims(*strides))
        self.check(st, "memory descriptor")
        return md

    def memory(self, md):
        mem = _void_p()
        self.check(self.lib.dnnl_memory_create(ctypes.byref(mem), md, self.engine, None), "memory")
        return mem

    def primitive(self, pd):
        prim = _void_p()
        self.check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd), "primitive")
        return prim

    def query_md(self, pd, what):
        return _void_p(self.lib.dnnl_primitive_desc_query_md(pd, what, 0))

    def impl_name(self, pd):
        s = ctypes.c_char_p()
        self.check(self.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0,
                                                      ctypes.byref(s)), "query")
        return s.value.decode()

    def execute(self, prim, args):
        arr = (_ExecArg * len(args))(*[_ExecArg(k, m) for k, m in args])
        self.check(self.lib.dnnl_primitive_execute(prim, self.stream, len(args), arr), "execute")


@functools.lru_cache(maxsize=1)
def _load():
    """(library or None, why not)."""
    errors = []
    for path in _candidates():
        if not os.path.exists(path) and os.sep in path:
            continue
        try:
            return _Library(path), None
        except (OSError, OneDNNError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    return None, "; ".join(errors) or "libdnnl.so.3 not found (pip install onednn-cpu-gomp)"


def available() -> bool:
    """Whether oneDNN loaded (and its CPU engine started)."""
    return _load()[0] is not None


def unavailable_reason() -> str | None:
    return _load()[1]


def _nhwc(lib, n, c, h, w):
    return lib.md((n, c, h, w), (h * w * c, 1, w * c, c))          # logical NCHW, physical NHWC


def _hwio(lib, o, i, kh, kw):
    return lib.md((o, i, kh, kw), (1, o, kw * i * o, i * o))       # logical OIHW, physical HWIO


class _Call:
    """One oneDNN primitive and its arguments. Each argument is given to `run` as a plain
    (NHWC / HWIO) array; where the primitive chose another layout for it (its fast kernels
    want blocked weights), a reorder into / out of a scratch buffer goes around the call."""

    def __init__(self, lib, pd, args):
        """args: (DNNL_ARG_*, plain memory descriptor, query for the chosen one, is_output)."""
        self.lib, self.prim = lib, lib.primitive(pd)
        self.impl = lib.impl_name(pd)
        self.plain, self.exec_args, self.before, self.after, self.scratch = [], [], [], [], []
        for arg, plain_md, query, is_output in args:
            plain = lib.memory(plain_md)
            self.plain.append(plain)
            chosen_md = lib.query_md(pd, query)
            if lib.lib.dnnl_memory_desc_equal(chosen_md, plain_md):
                self.exec_args.append((arg, plain))
                continue
            buf = np.empty(-(-lib.lib.dnnl_memory_desc_get_size(chosen_md) // 4), np.float32)
            chosen = lib.memory(chosen_md)
            lib.check(lib.lib.dnnl_memory_set_data_handle(chosen, _void_p(buf.ctypes.data)),
                      "set handle")
            self.scratch.append(buf)
            src, dst = (chosen, plain) if is_output else (plain, chosen)
            rpd = _void_p()
            lib.check(lib.lib.dnnl_reorder_primitive_desc_create(
                ctypes.byref(rpd), chosen_md if is_output else plain_md, lib.engine,
                plain_md if is_output else chosen_md, lib.engine, None), "reorder")
            (self.after if is_output else self.before).append((lib.primitive(rpd), src, dst))
            self.exec_args.append((arg, chosen))

    def run(self, *arrays: np.ndarray) -> None:
        lib = self.lib
        for mem, a in zip(self.plain, arrays):
            if not (a.flags.c_contiguous and a.dtype == np.float32):
                raise OneDNNError(f"oneDNN needs C-contiguous float32 buffers, got {a.dtype} "
                                  f"{a.strides}")
            lib.check(lib.lib.dnnl_memory_set_data_handle(mem, _void_p(a.ctypes.data)),
                      "set handle")
        for prim, src, dst in self.before:
            lib.execute(prim, [(_ARG_FROM, src), (_ARG_TO, dst)])
        lib.execute(self.prim, self.exec_args)
        for prim, src, dst in self.after:
            lib.execute(prim, [(_ARG_FROM, src), (_ARG_TO, dst)])
        lib.check(lib.lib.dnnl_stream_wait(lib.stream), "wait")


class Convolution:
    """`lax.conv_general_dilated(x, w, strides, padding, NHWC/HWIO/NHWC)` for one shape, in
    float32: `forward(x, w, y)`, `backward_data(dy, w, dx)` and `backward_weights(x, dy, dw)`
    write their result into the last (NHWC / HWIO) array; `out_shape` is y's NHWC shape.
    Primitives are built on first use."""

    def __init__(self, x_shape, w_shape, strides, padding):
        lib, why = _load()
        if lib is None:
            raise OneDNNError(why)
        n, h, w, c = x_shape
        kh, kw, _, o = w_shape
        (pt, pb), (pl, pr) = padding
        oh = (h + pt + pb - kh) // strides[0] + 1
        ow = (w + pl + pr - kw) // strides[1] + 1
        self.out_shape = (n, oh, ow, o)
        self.lib = lib
        self.x, self.y = _nhwc(lib, n, c, h, w), _nhwc(lib, n, o, oh, ow)
        self.w, self.w_any = _hwio(lib, o, c, kh, kw), lib.md((o, c, kh, kw))
        self.geometry = (_Dims(*strides), _Dims(0, 0), _Dims(pt, pl), _Dims(pb, pr))
        self._calls = {}
        self._hint = None

    def _forward_pd(self, prop_kind):
        pd = _void_p()
        self.lib.check(self.lib.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd), self.lib.engine, prop_kind, _CONV_DIRECT, self.x, self.w_any,
            None, self.y, *self.geometry, None), "forward descriptor")
        return pd

    def _call(self, which):
        if which in self._calls:
            return self._calls[which]
        lib = self.lib
        if self._hint is None:          # the backward descriptors are built against this
            self._hint = self._forward_pd(_FORWARD_TRAINING)
        pd = _void_p()
        if which == "forward":
            pd = self._forward_pd(_FORWARD_INFERENCE)
            args = [(_ARG_SRC, self.x, _QUERY_SRC_MD, False),
                    (_ARG_WEIGHTS, self.w, _QUERY_WEIGHTS_MD, False),
                    (_ARG_DST, self.y, _QUERY_DST_MD, True)]
        elif which == "backward_data":
            lib.check(lib.lib.dnnl_convolution_backward_data_primitive_desc_create(
                ctypes.byref(pd), lib.engine, _CONV_DIRECT, self.x, self.w_any, self.y,
                *self.geometry, self._hint, None), "input-gradient descriptor")
            args = [(_ARG_DIFF_DST, self.y, _QUERY_DIFF_DST_MD, False),
                    (_ARG_WEIGHTS, self.w, _QUERY_WEIGHTS_MD, False),
                    (_ARG_DIFF_SRC, self.x, _QUERY_DIFF_SRC_MD, True)]
        else:
            lib.check(lib.lib.dnnl_convolution_backward_weights_primitive_desc_create(
                ctypes.byref(pd), lib.engine, _CONV_DIRECT, self.x, self.w_any, None, self.y,
                *self.geometry, self._hint, None), "weight-gradient descriptor")
            args = [(_ARG_SRC, self.x, _QUERY_SRC_MD, False),
                    (_ARG_DIFF_DST, self.y, _QUERY_DIFF_DST_MD, False),
                    (_ARG_DIFF_WEIGHTS, self.w, _QUERY_DIFF_WEIGHTS_MD, True)]
        self._calls[which] = _Call(lib, pd, args)
        return self._calls[which]

    def _run(self, which, *arrays):
        with self.lib.lock:
            self._call(which).run(*arrays)

    def forward(self, x, w, y):
        self._run("forward", x, w, y)

    def backward_data(self, dy, w, dx):
        self._run("backward_data", dy, w, dx)

    def backward_weights(self, x, dy, dw):
        self._run("backward_weights", x, dy, dw)

    def implementations(self) -> dict:
        """{direction: oneDNN's implementation name} of the primitives built so far."""
        return {k: c.impl for k, c in self._calls.items()}


@functools.lru_cache(maxsize=None)
def convolution(x_shape, w_shape, strides, padding) -> Convolution:
    """The cached `Convolution` of one shape (all arguments hashable tuples)."""
    return Convolution(x_shape, w_shape, strides, padding)
