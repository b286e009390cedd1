"""Evaluation metrics shared by the trainers and `daclip-jax eval`."""
