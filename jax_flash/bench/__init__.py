"""`python -m jax_flash.bench`: jax_flash against its peers on the FlashAttention-3 paper's benchmark grid.

See `python -m jax_flash.bench --help`. Peers are entries of `peers.PEERS`; a peer that is not importable here, or
that does not support a shape, is skipped with its reason in the table and the JSON.
"""
