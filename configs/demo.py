"""The end-to-end demo (`daclip-jax demo`); the config itself is embedded in the package
(daclip_jax/demo/config.py) so an installed daclip-jax runs it without this file.

    daclip-jax demo --workdir runs/demo --config configs/demo.py          # = the default
    daclip-jax demo --workdir /tmp/demo --config configs/demo.py:smoke    # smoke size
"""

from daclip_jax.demo import get_config  # noqa: F401
