"""oneDNN's convolution weight gradient, called from XLA on CPU (issue 14).

XLA's CPU lowering of a convolution's filter gradient (a convolution with batch and feature
swapped, whose window is the whole image) runs 2-10x slower than the forward convolution at the
UNet's large-image, few-channel layers; oneDNN (the library PyTorch's CPU convolutions run on)
computes the same gradient about as fast as a forward pass. benchmarks/conv.py prints both.

The library comes from the `onednn-cpu-gomp` wheel (Apache-2.0: a plain shared library,
libdnnl.so.3, with no Python API) and is driven through its C API with ctypes; JAX hands the
buffers over without copies through `jax.experimental.buffer_callback`. Nothing is compiled
at install time, and without the library (another OS, a missing libgomp) `available()` is
False and the caller keeps XLA's own gradient.

Only what models/conv.py needs is bound: float32 NHWC source / output gradient, HWIO weight
gradient, any kernel size, stride and padding, no dilation or groups. Primitives are built once
per shape and cached; calls are serialised by a lock (a oneDNN stream and the memory objects
are not thread-safe, and XLA may run independent callbacks concurrently; oneDNN uses every
core for one call anyway).
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
_FORWARD_TRAINING = 64
_CONV_DIRECT = 1
_ARG_SRC, _ARG_FROM, _ARG_TO = 1, 1, 17
_ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 145, 161
_QUERY_IMPL_INFO_STR = 8
_QUERY_SRC_MD, _QUERY_DIFF_WEIGHTS_MD, _QUERY_DIFF_DST_MD = 129, 132, 134

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


class WeightGrad:
    """dL/dW of `lax.conv_general_dilated(x, w, strides, padding, NHWC/HWIO/NHWC)` for one shape:
    `run(x, dy, out)` writes it into the float32 HWIO array `out`."""

    def __init__(self, x_shape, w_shape, strides, padding):
        lib, why = _load()
        if lib is None:
            raise OneDNNError(why)
        n, h, w, c = x_shape
        kh, kw, _, o = w_shape
        (pt, pb), (pl, pr) = padding
        oh = (h + pt + pb - kh) // strides[0] + 1
        ow = (w + pl + pr - kw) // strides[1] + 1
        self.lib = lib
        src, ddst = _nhwc(lib, n, c, h, w), _nhwc(lib, n, o, oh, ow)
        plain_w, any_w = _hwio(lib, o, c, kh, kw), lib.md((o, c, kh, kw))
        dims = lambda *v: _Dims(*v)
        conv_args = (dims(*strides), dims(0, 0), dims(pt, pl), dims(pb, pr))
        fwd = _void_p()
        lib.check(lib.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(fwd), lib.engine, _FORWARD_TRAINING, _CONV_DIRECT, src, any_w, None,
            ddst, *conv_args, None), "forward descriptor")
        # the weight gradient in the layout oneDNN prefers (its fast kernels write blocked
        # layouts; asked for plain HWIO it falls back to a slow GEMM path), then reordered
        bwd = _void_p()
        lib.check(lib.lib.dnnl_convolution_backward_weights_primitive_desc_create(
            ctypes.byref(bwd), lib.engine, _CONV_DIRECT, src, any_w, None, ddst, *conv_args,
            fwd, None), "weight-gradient descriptor")
        self.impl = lib.impl_name(bwd)
        self.conv = lib.primitive(bwd)
        self.src = lib.memory(lib.query_md(bwd, _QUERY_SRC_MD))
        self.ddst = lib.memory(lib.query_md(bwd, _QUERY_DIFF_DST_MD))
        got_w = lib.query_md(bwd, _QUERY_DIFF_WEIGHTS_MD)
        self.reorder = None
        self.out = lib.memory(plain_w)
        if not lib.lib.dnnl_memory_desc_equal(got_w, plain_w):
            size = lib.lib.dnnl_memory_desc_get_size(got_w)
            self.scratch = np.empty(-(-size // 4), np.float32)
            self.dw = lib.memory(got_w)
            lib.check(lib.lib.dnnl_memory_set_data_handle(
                self.dw, _void_p(self.scratch.ctypes.data)), "set handle")
            rpd = _void_p()
            lib.check(lib.lib.dnnl_reorder_primitive_desc_create(
                ctypes.byref(rpd), got_w, lib.engine, plain_w, lib.engine, None), "reorder")
            self.reorder = lib.primitive(rpd)
        else:
            self.dw = self.out

    def run(self, x: np.ndarray, dy: np.ndarray, out: np.ndarray) -> None:
        lib = self.lib
        with lib.lock:
            for mem, a in ((self.src, x), (self.ddst, dy), (self.out, out)):
                lib.check(lib.lib.dnnl_memory_set_data_handle(mem, _void_p(a.ctypes.data)),
                          "set handle")
            lib.execute(self.conv, [(_ARG_SRC, self.src), (_ARG_DIFF_DST, self.ddst),
                                    (_ARG_DIFF_WEIGHTS, self.dw)])
            if self.reorder is not None:
                lib.execute(self.reorder, [(_ARG_FROM, self.dw), (_ARG_TO, self.out)])
            lib.check(lib.lib.dnnl_stream_wait(lib.stream), "wait")


@functools.lru_cache(maxsize=None)
def weight_grad(x_shape, w_shape, strides, padding) -> WeightGrad:
    """The cached `WeightGrad` of one convolution shape (all arguments hashable tuples)."""
    return WeightGrad(x_shape, w_shape, strides, padding)
