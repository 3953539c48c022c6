"""Computes attention with jax_flash, checks it against jax.nn.dot_product_attention, and prints time and memory.

    python examples/quickstart.py                      # B=1, S=4096, H=16, D=128, float32, forward and backward
    python examples/quickstart.py --seqlen 1024 --dtype bfloat16 --causal
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash


def median_seconds(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up outside the timed runs
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def temp_bytes(fn, *args):
  """Scratch memory XLA reserves for the compiled program (the score matrix lives here for XLA's attention)."""
  return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--seqlen", type=int, default=4096)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
  parser.add_argument("--causal", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  shape = (args.batch, args.seqlen, args.heads, args.head_dim)
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(args.dtype) for _ in range(3))

  ours = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, causal=args.causal))
  xla = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=args.causal, implementation="xla"))
  loss = lambda attn: (lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) ** 2))
  ours_grad = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))
  xla_grad = jax.jit(jax.grad(loss(xla), argnums=(0, 1, 2)))

  o, o_xla = ours(q, k, v), xla(q, k, v)
  err = float(jnp.linalg.norm((o - o_xla).astype(jnp.float32)) / jnp.linalg.norm(o_xla.astype(jnp.float32)))
  g_err = max(float(jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32)))
              for a, b in zip(ours_grad(q, k, v), xla_grad(q, k, v)))

  print(f"jax_flash {jax_flash.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"build {jax_flash.build_info()}")
  print(f"q, k, v {shape} {args.dtype}, causal={args.causal}")
  print(f"relative difference to jax.nn.dot_product_attention: output {err:.2e}, gradients {g_err:.2e}")
  print(f"{'':10} {'jax_flash':>12} {'xla':>12} {'ratio':>7}")
  for name, a, b in (("forward", ours, xla), ("fwd+bwd", ours_grad, xla_grad)):
    ta, tb = median_seconds(a, q, k, v, repeats=args.repeats), median_seconds(b, q, k, v, repeats=args.repeats)
    print(f"{name + ' s':10} {ta:12.3f} {tb:12.3f} {ta / tb:7.2f}")
  for name, a, b in (("forward", ours, xla), ("fwd+bwd", ours_grad, xla_grad)):
    ma, mb = temp_bytes(a, q, k, v), temp_bytes(b, q, k, v)
    print(f"{name + ' MiB':10} {ma / 2**20:12.1f} {mb / 2**20:12.1f} {ma / mb:7.3f}   (XLA scratch memory)")


if __name__ == "__main__":
  main()
