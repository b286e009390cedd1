"""The public names of `daclip_jax` are the documented callables, whatever was imported first."""

import importlib
import pkgutil

import numpy as np

import daclip_jax


def test_public_names_resolve_to_callables_after_every_submodule_is_imported():
    # importing a submodule binds it on the package: it must not shadow a public function
    for mod in pkgutil.walk_packages(daclip_jax.__path__, "daclip_jax."):
        importlib.import_module(mod.name)
    for name in daclip_jax.__all__:
        obj = getattr(daclip_jax, name)
        assert name == "DEGRADATIONS" or callable(obj), name
    assert len(daclip_jax.DEGRADATIONS) == 10
    x = daclip_jax.preprocess(np.zeros((40, 60, 3), np.uint8))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert daclip_jax.tokenize(["hazy"]).shape == (1, 77)
