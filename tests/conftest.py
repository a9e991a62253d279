"""Test configuration: float64 on, so accuracy tests mean what they say."""

import jax

jax.config.update("jax_enable_x64", True)
