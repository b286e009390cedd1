"""Models: CLIP / DA-CLIP towers and the IR-SDE ConditionalUNet."""

from daclip_jax.models.conv import tune_cpu_allocator

tune_cpu_allocator()   # CPU only: keep XLA's freed buffers in the heap (see models/conv.py)
