"""jax_flash's Flax layers (needs the optional dependency: ``pip install jax_flash[flax]``).

Linen, here: `FlashMultiHeadDotProductAttention` (drop-in for ``flax.linen.MultiHeadDotProductAttention``) and
`FlashSelfAttention`. nnx, in `jax_flash.flax.nnx`: `FlashMultiHeadAttention` (drop-in for
``flax.nnx.MultiHeadAttention``) and `FlashSelfAttention`.
"""

try:
  import flax  # noqa: F401
except ImportError as e:  # pragma: no cover - only without the optional dependency
  raise ImportError(
      "jax_flash.flax needs Flax, an optional dependency: pip install 'jax_flash[flax]' (or pip install flax)"
  ) from e

from jax_flash.flax import nnx
from jax_flash.flax.linen import FlashMultiHeadDotProductAttention, FlashSelfAttention

__all__ = ["FlashMultiHeadDotProductAttention", "FlashSelfAttention", "nnx"]
