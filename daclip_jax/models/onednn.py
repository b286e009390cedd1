"""oneDNN's convolutions, called from XLA on CPU (issues 14, 20).

oneDNN (the library PyTorch's CPU convolutions run on) computes the UNet's convolutions at
about the machine's matmul rate. XLA's CPU filter gradient (a convolution whose window is the
whole image) is 2-5x slower than oneDNN's at the first UNet levels; oneDNN's forward, timed
alone, is 1.3-2.3x XLA's at large images with few channels (less when alternating with XLA
work). benchmarks/conv.py prints them side by side, benchmarks/unet.py --ab the whole UNet.

The library comes from the `onednn-cpu-gomp` wheel (Apache-2.0: a plain shared library,
libdnnl.so.3, no Python API) and is driven through its C API with ctypes; JAX hands over its
buffers without copies through `jax.experimental.buffer_callback` (models/conv.py). Nothing is
compiled at install time. `available()` is False, with the reason, without the library, with a
library that is not v3 or lacks one of the functions bound here; models/conv.py then keeps
XLA's convolution.

Only what models/conv.py needs is bound: float32, NHWC activations, HWIO weights, any kernel
size, stride and padding, no dilation or groups. What keeps it safe and small:

- One thread makes every oneDNN call (descriptor, primitive, reorder, execute, destroy):
  XLA's callback threads hand the call over and wait. oneDNN's `gemm:jit` kernels (what it
  picks without AVX-512, and for some shapes with it) find their scratchpad through the
  thread that built the primitive and may crash executed from another, and GNU OpenMP keeps a
  team of worker threads per calling thread: with one calling thread there is one team.
- Scratchpads are user-managed (`dnnl_scratchpad_mode_user`) and live, with the blocked copies
  of arguments the primitives want (reordered weights), in one arena sized for the largest
  single call, not one buffer per shape.
- Primitives are cached per shape in an LRU with a byte budget (`DACLIP_ONEDNN_CACHE_MB`,
  default 64); evicted ones, and all of them at exit, are destroyed. oneDNN's own primitive
  cache is off, so a destroyed primitive is freed.
- `check` builds a shape's descriptor when JAX traces the convolution: a shape oneDNN refuses
  (a negative padding, say) is known then, and models/conv.py keeps XLA's convolution for it.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import ctypes.util
import functools
import os
import queue
import sys
import threading

import numpy as np

# Values from oneDNN's dnnl_types.h / dnnl_common_types.h (stable across the v3 ABI).
_SUCCESS = 0
_ENGINE_CPU = 1
_F32 = 3
_FORMAT_ANY = 1
_STREAM_IN_ORDER = 1
_SCRATCHPAD_USER = 1
_FORWARD_TRAINING, _FORWARD_INFERENCE = 64, 96
_CONV_DIRECT = 1
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_FROM, _ARG_TO = 1, 17, 33, 1, 17
_ARG_SCRATCHPAD = 80
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_QUERY_IMPL_INFO_STR = 8
_QUERY_SRC_MD, _QUERY_DIFF_SRC_MD, _QUERY_WEIGHTS_MD = 129, 130, 131
_QUERY_DIFF_WEIGHTS_MD, _QUERY_DST_MD, _QUERY_DIFF_DST_MD = 132, 133, 134
_QUERY_SCRATCHPAD_MD = 136
_ALIGN = 64
DIRECTIONS = ("forward", "backward_data", "backward_weights")

# Every function called below: all are resolved when the library loads.
_SYMBOLS = (
    "dnnl_version", "dnnl_set_primitive_cache_capacity", "dnnl_engine_create",
    "dnnl_stream_create", "dnnl_stream_wait", "dnnl_primitive_attr_create",
    "dnnl_primitive_attr_set_scratchpad_mode", "dnnl_memory_desc_create_with_tag",
    "dnnl_memory_desc_create_with_strides", "dnnl_memory_desc_equal", "dnnl_memory_desc_get_size",
    "dnnl_memory_desc_destroy", "dnnl_memory_create", "dnnl_memory_set_data_handle",
    "dnnl_memory_destroy", "dnnl_convolution_forward_primitive_desc_create",
    "dnnl_convolution_backward_data_primitive_desc_create",
    "dnnl_convolution_backward_weights_primitive_desc_create",
    "dnnl_reorder_primitive_desc_create", "dnnl_primitive_desc_query",
    "dnnl_primitive_desc_query_md", "dnnl_primitive_desc_destroy", "dnnl_primitive_create",
    "dnnl_primitive_execute", "dnnl_primitive_destroy")

# What one cached primitive holds besides its scratchpad (JIT code, kernel tables, descriptors):
# 59-62 KiB measured as RSS growth over 1200 primitives of 200 shapes (tests/test_onednn.py
# bounds the RSS growth over 50 image sizes).
PRIMITIVE_BYTES = 64 << 10

_Dims = ctypes.c_int64 * 12
_void_p = ctypes.c_void_p


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    pass


class _Worker:
    """The one thread that makes every oneDNN call; `call(fn, *args)` runs fn there and waits."""

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="daclip-onednn", daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            self.jobs.get()()

    def call(self, fn, *args):
        if threading.get_ident() == self.thread.ident:
            return fn(*args)
        done, box = threading.Event(), []

        def job():
            try:
                box.append((True, fn(*args)))
            except BaseException as e:   # handed to the caller
                box.append((False, e))
            done.set()

        self.jobs.put(job)
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value


@functools.lru_cache(maxsize=None)
def _worker(pid) -> _Worker:
    """The worker of this process (a forked child starts its own)."""
    return _Worker()


def _call(fn, *args):
    return _worker(os.getpid()).call(fn, *args)


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
    """The loaded library, its CPU engine, one in-order stream, the attribute every primitive
    is built with (user scratchpad), the arena, and the primitive cache. Used on the worker
    thread only."""

    def __init__(self, path):
        # oneDNN's OpenMP threads would otherwise spin after each call and take the cores
        # from XLA's own thread pool, which runs the next operation (GOMP reads it at load).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.path = path
        self.lib = lib = ctypes.CDLL(path)
        missing = [s for s in _SYMBOLS if not hasattr(lib, s)]
        if missing:
            raise OneDNNError(f"lacks {', '.join(missing)} (not oneDNN v3?)")
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        v = lib.dnnl_version().contents
        self.version = (v.major, v.minor, v.patch)
        if v.major != 3:
            raise OneDNNError(f"oneDNN {v.major}.{v.minor}.{v.patch}, v3 needed")
        lib.dnnl_primitive_desc_query_md.restype = _void_p
        lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
        self.check(lib.dnnl_set_primitive_cache_capacity(0), "primitive cache capacity")
        self.engine, self.stream, self.attr = _void_p(), _void_p(), _void_p()
        self.check(lib.dnnl_engine_create(ctypes.byref(self.engine), _ENGINE_CPU,
                                          ctypes.c_size_t(0)), "engine")
        self.check(lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine,
                                          ctypes.c_uint(_STREAM_IN_ORDER)), "stream")
        self.check(lib.dnnl_primitive_attr_create(ctypes.byref(self.attr)), "attribute")
        self.check(lib.dnnl_primitive_attr_set_scratchpad_mode(self.attr, _SCRATCHPAD_USER),
                   "scratchpad mode")
        self.arena = np.empty(0, np.uint8)
        self.cache = collections.OrderedDict()     # shape key -> Convolution, oldest first
        self.budget = int(float(os.environ.get("DACLIP_ONEDNN_CACHE_MB", "64")) * 2 ** 20)

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

    def set_handle(self, mem, address):
        self.check(self.lib.dnnl_memory_set_data_handle(mem, _void_p(address)), "set handle")

    def primitive(self, pd):
        prim = _void_p()
        self.check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd), "primitive")
        return prim

    def query_md(self, pd, what):
        return _void_p(self.lib.dnnl_primitive_desc_query_md(pd, what, 0))

    def size(self, md):
        return self.lib.dnnl_memory_desc_get_size(md) if md.value else 0

    def impl_name(self, pd):
        s = ctypes.c_char_p()
        self.check(self.lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0,
                                                      ctypes.byref(s)), "query")
        return s.value.decode()

    def execute(self, prim, args):
        arr = (_ExecArg * len(args))(*[_ExecArg(k, m) for k, m in args])
        self.check(self.lib.dnnl_primitive_execute(prim, self.stream, len(args), arr), "execute")

    def arena_address(self, nbytes):
        """The arena's aligned address, grown to hold `nbytes` (one call's blocked copies and
        scratchpad: calls run one at a time, so every shape shares it)."""
        if self.arena.nbytes < nbytes + _ALIGN:
            self.arena = np.empty(0, np.uint8)       # freed before the larger one is taken
            self.arena = np.empty(nbytes + _ALIGN, np.uint8)
        return -(-self.arena.ctypes.data // _ALIGN) * _ALIGN

    def convolution(self, key):
        """The cached Convolution of `key`, now the most recently used."""
        conv = self.cache.pop(key, None) or Convolution(self, *key)
        self.cache[key] = conv
        return conv

    def trim(self):
        """Destroy the least recently used convolutions until the cache is within its budget
        (the newest stays whatever its size)."""
        while len(self.cache) > 1 and sum(c.nbytes for c in self.cache.values()) > self.budget:
            self.cache.popitem(last=False)[1].destroy()

    def clear(self):
        while self.cache:
            self.cache.popitem()[1].destroy()
        self.arena = np.empty(0, np.uint8)


def _open(path):
    return _Library(path)


@functools.lru_cache(maxsize=1)
def _load():
    """(library or None, why not)."""
    errors = []
    for path in _candidates():
        if not os.path.exists(path) and os.sep in path:
            continue
        try:
            return _call(_open, path), None
        except (OSError, OneDNNError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    return None, "; ".join(errors) or "libdnnl.so.3 not found (pip install onednn-cpu-gomp)"


def available() -> bool:
    """Whether oneDNN v3 loaded with every function used here (and its CPU engine started)."""
    return _load()[0] is not None


def unavailable_reason() -> str | None:
    return _load()[1]


def _nhwc(lib, n, c, h, w):
    return lib.md((n, c, h, w), (h * w * c, 1, w * c, c))          # logical NCHW, physical NHWC


def _hwio(lib, o, i, kh, kw):
    return lib.md((o, i, kh, kw), (1, o, kw * i * o, i * o))       # logical OIHW, physical HWIO


def _aligned(n):
    return -(-n // _ALIGN) * _ALIGN


class _Call:
    """One oneDNN primitive and its arguments. Each argument is given to `run` as a plain
    (NHWC / HWIO) array; where the primitive chose another layout for it (its fast kernels
    want blocked weights), a reorder into / out of the arena goes around the call. The arena
    holds those blocked copies, then the scratchpad (the primitive's or a reorder's: they run
    one after another)."""

    def __init__(self, lib, pd, args):
        """args: (DNNL_ARG_*, plain memory descriptor, query for the chosen one, is_output)."""
        self.lib, self.pds, self.prims, self.mems = lib, [pd], [], []
        try:
            self._build(pd, args)
        except OneDNNError:
            self.destroy()          # nothing half-built is kept
            raise

    def _build(self, pd, args):
        lib = self.lib
        self.prim = self._primitive(pd)
        self.impl = lib.impl_name(pd)
        self.plain, self.exec_args, self.before, self.after = [], [], [], []
        self.in_arena, offset = [], 0      # (memory, offset into the arena)
        for arg, plain_md, query, is_output in args:
            plain = self._memory(plain_md)
            self.plain.append(plain)
            chosen_md = lib.query_md(pd, query)
            if lib.lib.dnnl_memory_desc_equal(chosen_md, plain_md):
                self.exec_args.append((arg, plain))
                continue
            chosen = self._memory(chosen_md)
            self.in_arena.append((chosen, offset))
            offset += _aligned(lib.size(chosen_md))
            src, dst = (chosen, plain) if is_output else (plain, chosen)
            rpd = _void_p()
            lib.check(lib.lib.dnnl_reorder_primitive_desc_create(
                ctypes.byref(rpd), chosen_md if is_output else plain_md, lib.engine,
                plain_md if is_output else chosen_md, lib.engine, lib.attr), "reorder")
            self.pds.append(rpd)
            (self.after if is_output else self.before).append((self._primitive(rpd), src, dst, rpd))
            self.exec_args.append((arg, chosen))
        # the scratchpads, all at one offset after the blocked copies
        self.scratchpad = 0
        scratch = {}
        for p in self.pds:
            md = lib.query_md(p, _QUERY_SCRATCHPAD_MD)
            if lib.size(md):
                scratch[p.value] = self._memory(md)
                self.in_arena.append((scratch[p.value], offset))
                self.scratchpad = max(self.scratchpad, lib.size(md))
        self.arena_bytes = offset + _aligned(self.scratchpad)
        pad = lambda p: [(_ARG_SCRATCHPAD, scratch[p.value])] if p.value in scratch else []
        self.exec_args += pad(pd)
        self.before, self.after = ([(prim, [(_ARG_FROM, s), (_ARG_TO, d), *pad(r)])
                                    for prim, s, d, r in reorders]
                                   for reorders in (self.before, self.after))

    def _primitive(self, pd):
        self.prims.append(self.lib.primitive(pd))
        return self.prims[-1]

    def _memory(self, md):
        self.mems.append(self.lib.memory(md))
        return self.mems[-1]

    def run(self, *arrays: np.ndarray) -> None:
        lib = self.lib
        for mem, a in zip(self.plain, arrays):
            if not (a.flags.c_contiguous and a.dtype == np.float32):
                raise OneDNNError(f"oneDNN needs C-contiguous float32 buffers, got {a.dtype} "
                                  f"{a.strides}")
            lib.set_handle(mem, a.ctypes.data)
        if self.in_arena:
            base = lib.arena_address(self.arena_bytes)
            for mem, offset in self.in_arena:
                lib.set_handle(mem, base + offset)
        for prim, args in self.before:
            lib.execute(prim, args)
        lib.execute(self.prim, self.exec_args)
        for prim, args in self.after:
            lib.execute(prim, args)
        lib.check(lib.lib.dnnl_stream_wait(lib.stream), "wait")

    def destroy(self):
        lib = self.lib.lib
        for p in self.prims:
            lib.dnnl_primitive_destroy(p)
        for m in self.mems:
            lib.dnnl_memory_destroy(m)
        for p in self.pds[1:]:     # the convolution's own pd belongs to its Convolution
            lib.dnnl_primitive_desc_destroy(p)
        self.prims, self.mems, self.pds = [], [], []


def out_shape(x_shape, w_shape, strides, padding):
    """The NHWC shape of `lax.conv_general_dilated(x, w, strides, padding)`."""
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    (pt, pb), (pl, pr) = padding
    return (n, (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1, o)


class Convolution:
    """`lax.conv_general_dilated(x, w, strides, padding, NHWC/HWIO/NHWC)` for one shape, in
    float32, in the three directions of DIRECTIONS. Descriptors and primitives are built on
    first use; used on the worker thread only (through `check` and `run`)."""

    def __init__(self, lib, x_shape, w_shape, strides, padding):
        n, h, w, c = x_shape
        kh, kw, _, o = w_shape
        (pt, pb), (pl, pr) = padding
        _, oh, ow, _ = out_shape(x_shape, w_shape, strides, padding)
        self.lib = lib
        self.x, self.y = _nhwc(lib, n, c, h, w), _nhwc(lib, n, o, oh, ow)
        self.w, self.w_any = _hwio(lib, o, c, kh, kw), lib.md((o, c, kh, kw))
        self.geometry = (_Dims(*strides), _Dims(0, 0), _Dims(pt, pl), _Dims(pb, pr))
        self._pds, self._calls = {}, {}

    @property
    def nbytes(self) -> int:
        """What the cache counts for this shape: each primitive's fixed cost (PRIMITIVE_BYTES,
        reorders included). Blocked copies and scratchpads are in the shared arena."""
        return sum(len(c.prims) for c in self._calls.values()) * PRIMITIVE_BYTES

    def _forward_pd(self, prop_kind):
        pd = _void_p()
        self.lib.check(self.lib.lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd), self.lib.engine, prop_kind, _CONV_DIRECT, self.x, self.w_any,
            None, self.y, *self.geometry, self.lib.attr), "forward descriptor")
        return pd

    def pd(self, which):
        """The primitive descriptor of `which` (created once; raises OneDNNError)."""
        if which in self._pds:
            return self._pds[which]
        lib, pd = self.lib, _void_p()
        if which == "forward":
            pd = self._forward_pd(_FORWARD_INFERENCE)
        else:
            if "hint" not in self._pds:          # the backward descriptors are built against it
                self._pds["hint"] = self._forward_pd(_FORWARD_TRAINING)
            if which == "backward_data":
                lib.check(lib.lib.dnnl_convolution_backward_data_primitive_desc_create(
                    ctypes.byref(pd), lib.engine, _CONV_DIRECT, self.x, self.w_any, self.y,
                    *self.geometry, self._pds["hint"], lib.attr), "input-gradient descriptor")
            else:
                lib.check(lib.lib.dnnl_convolution_backward_weights_primitive_desc_create(
                    ctypes.byref(pd), lib.engine, _CONV_DIRECT, self.x, self.w_any, None,
                    self.y, *self.geometry, self._pds["hint"], lib.attr),
                    "weight-gradient descriptor")
        self._pds[which] = pd
        return pd

    def call(self, which) -> _Call:
        if which not in self._calls:
            pd = self.pd(which)
            args = {
                "forward": [(_ARG_SRC, self.x, _QUERY_SRC_MD, False),
                            (_ARG_WEIGHTS, self.w, _QUERY_WEIGHTS_MD, False),
                            (_ARG_DST, self.y, _QUERY_DST_MD, True)],
                "backward_data": [(_ARG_DIFF_DST, self.y, _QUERY_DIFF_DST_MD, False),
                                  (_ARG_WEIGHTS, self.w, _QUERY_WEIGHTS_MD, False),
                                  (_ARG_DIFF_SRC, self.x, _QUERY_DIFF_SRC_MD, True)],
                "backward_weights": [(_ARG_SRC, self.x, _QUERY_SRC_MD, False),
                                     (_ARG_DIFF_DST, self.y, _QUERY_DIFF_DST_MD, False),
                                     (_ARG_DIFF_WEIGHTS, self.w, _QUERY_DIFF_WEIGHTS_MD, True)],
            }[which]
            self._calls[which] = _Call(self.lib, pd, args)
        return self._calls[which]

    def destroy(self):
        lib = self.lib.lib
        for c in self._calls.values():
            c.destroy()
        for pd in self._pds.values():
            lib.dnnl_primitive_desc_destroy(pd)
        for md in (self.x, self.y, self.w, self.w_any):
            lib.dnnl_memory_desc_destroy(md)
        self._pds, self._calls = {}, {}


def _library():
    lib, why = _load()
    if lib is None:
        raise OneDNNError(why)
    return lib


def _check(key, which):
    lib = _library()
    lib.convolution(key).pd(which)
    lib.trim()


def check(x_shape, w_shape, strides, padding, which="forward") -> str | None:
    """None if oneDNN builds the descriptor of this convolution (at trace time), else why not."""
    key = (tuple(x_shape), tuple(w_shape), tuple(strides), tuple(map(tuple, padding)))
    try:
        _call(_check, key, which)
    except OneDNNError as e:
        return str(e)
    return None


def _run(which, key, arrays):
    lib = _library()
    lib.convolution(key).call(which).run(*arrays)
    lib.trim()


def run(which, x_shape, w_shape, strides, padding, *arrays: np.ndarray) -> None:
    """Compute `which` (one of DIRECTIONS) of a convolution on the worker thread, writing the
    last array: forward(x, w, y), backward_data(dy, w, dx), backward_weights(x, dy, dw)."""
    _call(_run, which, (x_shape, w_shape, strides, padding), arrays)


def _info():
    lib = _library()
    return {"entries": len(lib.cache), "nbytes": sum(c.nbytes for c in lib.cache.values()),
            "budget": lib.budget, "arena_bytes": lib.arena.nbytes,
            "impls": {k: {w: c.impl for w, c in conv._calls.items()}
                      for k, conv in lib.cache.items()}}


def cache_info() -> dict:
    """entries, nbytes (counted against budget), budget, arena_bytes, and the implementation
    oneDNN chose per cached shape and direction."""
    return _call(_info)


def clear_cache() -> None:
    """Destroy every cached primitive and free the arena."""
    if available():
        _call(lambda: _library().clear())


@atexit.register
def _destroy_at_exit():
    if _load.cache_info().currsize and available():
        clear_cache()
