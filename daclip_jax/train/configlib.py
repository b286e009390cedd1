"""Python configs (big_vision style): ``configs/x.py:arg`` + ``--config.a.b=v`` overrides + sweeps.

A config file defines ``get_config(arg=None) -> ml_collections.ConfigDict``; ``arg`` is a
string such as ``"runlocal"`` or ``"runlocal,batch=16"`` that :func:`parse_arg` turns into
typed knobs. It may also define ``get_sweep(arg=None)`` returning a list of override
dicts, built with :func:`product` / :func:`zipped` / :func:`sweep`.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
    """A config file, config arg or ``--config`` override that cannot be used as given.

    The training verbs print it as one line, without a traceback, so the message says what is
    wrong, where, and what to do.
    """

    def __str__(self):  # a KeyError subclass would otherwise print its message quoted
        return str(self.args[0]) if self.args else ""


class ConfigKeyError(ConfigError, KeyError):
    """An override names a field the config does not have."""


class ConfigTypeError(ConfigError, TypeError):
    """An override's value does not fit its field's type."""


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """``"runlocal,batch=16"`` -> {runlocal: True, batch: 16, ...defaults}; values keep
    the type of their default (a bare name means True)."""
    out = dict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, eq, raw = item.partition("=")
        if key not in defaults:
            raise ConfigError(f"unknown config arg {key!r} (after the config file's ':'); "
                              f"known: {', '.join(sorted(defaults))}")
        value = True if not eq else _literal(raw)
        if defaults[key] is not None and not isinstance(defaults[key], bool) and eq:
            kind = type(defaults[key])
            try:
                value = kind(value)
            except ValueError:
                raise ConfigError(f"config arg {key}={raw!r}: expected {kind.__name__} "
                                  f"(default {defaults[key]!r})") from None
        out[key] = value
    return ml_collections.ConfigDict(out)


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _load_module(path: str):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found (--config); give a config file such "
                          f"as configs/daclip_vit_b32.py, optionally with :ARG")
    path = os.path.abspath(path)
    spec = importlib.util.spec_from_file_location(f"_daclip_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_spec(spec: str) -> tuple[str, str | None]:
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``"configs/x.py:runlocal"`` -> the config."""
    path, arg = split_spec(spec)
    module = _load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg) (--config)")
    return module.get_config(arg)


def load_sweep(spec: str) -> list[dict]:
    """The override dicts of the config's ``get_sweep(arg)`` (``[{}]`` if it has none)."""
    path, arg = split_spec(spec)
    module = _load_module(path)
    if not hasattr(module, "get_sweep"):
        return [{}]
    return list(module.get_sweep(arg))


def set_override(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """``config.train.lr = value`` for ``dotted = "train.lr"``, converting a string value to
    the existing field's type (int/float/bool/tuple/None via Python literals)."""
    *parents, leaf = dotted.split(".")
    node = config
    for i, p in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            raise ConfigKeyError(f"--config.{dotted}: no field {'.'.join(parents[:i + 1])!r} "
                                 f"in the config; check the spelling against the config file")
        node = node[p]
    if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigKeyError(f"--config.{dotted}: {'.'.join(parents)!r} is a value, not a group")
    if leaf not in node:
        group = ".".join(parents) or "the config"
        raise ConfigKeyError(f"--config.{dotted}: no field {leaf!r} in {group} "
                             f"(known: {', '.join(sorted(node.keys()))})")
    if isinstance(value, str):
        old = node[leaf]
        if isinstance(old, str):
            pass
        elif isinstance(old, bool):
            low = value.lower()
            if low not in ("true", "false", "1", "0"):
                raise ConfigTypeError(f"--config.{dotted}={value}: expected a bool (true/false)")
            value = low in ("true", "1")
        else:
            value = _literal(value)
            if isinstance(old, float) and isinstance(value, int):
                value = float(value)
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    old = node[leaf]
    try:
        node[leaf] = value
    except TypeError:
        raise ConfigTypeError(f"--config.{dotted}={value!r}: {dotted} takes a value of type "
                              f"{type(old).__name__} (now {old!r})") from None


def parse_overrides(argv: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split ``--config.a.b=v`` / ``--config.a.b v`` from other arguments."""
    argv = list(argv)
    overrides, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key, eq, value = a[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{a} needs a value: {a}=VALUE")
                value = argv[i + 1]
                i += 1
            overrides.append((key, value))
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def apply_overrides(config, overrides: Iterable[tuple[str, Any]]):
    for key, value in overrides:
        set_override(config, key, value)
    return config


# ----------------------------------------------------------------------------- sweeps

def sweep(name: str, values: Iterable) -> list[dict]:
    """One axis: ``sweep("train.lr", [1e-4, 3e-4])``."""
    return [{name: v} for v in values]


def product(axes: Iterable[list[dict]]) -> list[dict]:
    """Cartesian product of axes (each a list of override dicts)."""
    out = []
    for combo in itertools.product(*axes):
        merged: dict = {}
        for d in combo:
            merged.update(d)
        out.append(merged)
    return out


def zipped(axes: Iterable[list[dict]]) -> list[dict]:
    """Element-wise combination of equally long axes."""
    axes = [list(a) for a in axes]
    if len({len(a) for a in axes}) > 1:
        raise ValueError(f"zipped axes differ in length: {[len(a) for a in axes]}")
    out = []
    for combo in zip(*axes):
        merged: dict = {}
        for d in combo:
            merged.update(d)
        out.append(merged)
    return out


def run_name(overrides: dict) -> str:
    """A directory-safe name for one sweep point: ``lr=0.0001,batch_size=16``."""
    if not overrides:
        return "base"
    parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
    return ",".join(parts).replace("/", "_").replace(" ", "")
