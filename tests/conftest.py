"""Strict JAX settings for the whole test suite (as in equinox's conftest).

Four simulated CPU devices so that the sharding code paths run in CI.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
