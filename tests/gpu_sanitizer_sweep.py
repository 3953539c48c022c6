"""A small sweep of forward and backward calls for compute-sanitizer (memcheck, racecheck), covering partial tiles,
GQA, masks with rows and keys that see nothing, softcap, both dtypes and every built head dim:

    compute-sanitizer --tool memcheck --kernel-name kns=jax_flash --error-exitcode 1 python tests/gpu_sanitizer_sweep.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash

# (batch, seqlen_q, seqlen_k, heads_q, heads_k, causal, window, softcap); small so that racecheck stays quick.
SHAPES = (
    (1, 1, 1, 1, 1, False, (-1, -1), 0.0),
    (1, 77, 130, 4, 2, True, (-1, -1), 0.0),
    (2, 130, 77, 2, 1, False, (16, 8), 5.0),
    (1, 200, 70, 2, 2, True, (0, 0), 0.0),
)


def main() -> None:
  rng = np.random.default_rng(0)
  for head_dim in jax_flash.build_info()["cuda_head_dims"]:
    for dtype in (jnp.float16, jnp.bfloat16):
      for batch, sq, sk, hq, hk, causal, window, softcap in SHAPES:
        q = jnp.asarray(rng.standard_normal((batch, sq, hq, head_dim), np.float32)).astype(dtype)
        k = jnp.asarray(rng.standard_normal((batch, sk, hk, head_dim), np.float32)).astype(dtype)
        v = jnp.asarray(rng.standard_normal((batch, sk, hk, head_dim), np.float32)).astype(dtype)
        loss = lambda q, k, v: jax_flash.attention(q, k, v, causal=causal, window_size=window,
                                                   softcap=softcap).astype(jnp.float32).sum()
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
        jax.block_until_ready(grads)
        print(f"d{head_dim} {jnp.dtype(dtype).name} b{batch} sq{sq} sk{sk} h{hq}/{hk} causal={causal} "
              f"window={window} softcap={softcap}: ok", flush=True)


if __name__ == "__main__":
  main()
