"""jax_flash: exact attention for JAX at FlashAttention speed.

    import jax_flash
    o = jax_flash.attention(q, k, v, causal=True)   # q [B, Sq, Hq, D], k/v [B, Sk, Hk, D]
"""

from jax_flash._dispatch import FallbackWarning
from jax_flash._ffi import build_info, has_cuda
from jax_flash.attention import attention
from jax_flash.dot_product_attention import dot_product_attention
from jax_flash.reference import reference_attention
from jax_flash.ring import from_ring_layout, ring_attention, to_ring_layout

__all__ = [
    "FallbackWarning", "attention", "build_info", "dot_product_attention", "from_ring_layout", "has_cuda",
    "reference_attention", "ring_attention", "to_ring_layout",
]
__version__ = "0.1.0"
