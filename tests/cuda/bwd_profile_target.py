"""One backward pass per head dim, for Nsight Compute to profile: jax_flash's kernels or FlashAttention-2's (PyTorch
SDPA's flash backend), bf16, non-causal, batch x seqlen = 16k tokens and heads x head_dim = 2048 as in the benchmark
grid. Each head dim launches its backward kernel exactly once, so `ncu --launch-count <number of head dims>` with a
kernel-name filter captures one launch per head dim:

  ncu --kernel-name regex:backward_kernel --launch-count 2 python3 tests/cuda/bwd_profile_target.py jax_flash
  ncu --kernel-name regex:flash_bwd_dq_dk_dv --launch-count 2 python3 tests/cuda/bwd_profile_target.py fa2
"""

import argparse

TOKENS, HIDDEN = 16384, 2048


def run_jax_flash(seqlen, head_dims):
  import jax
  import jax.numpy as jnp

  import jax_flash

  for head_dim in head_dims:
    batch, heads = TOKENS // seqlen, HIDDEN // head_dim
    keys = jax.random.split(jax.random.key(head_dim), 4)
    q, k, v, dout = (jax.random.normal(key, (batch, seqlen, heads, head_dim), jnp.bfloat16) for key in keys)
    _, vjp = jax.vjp(jax_flash.attention, q, k, v)
    jax.block_until_ready(jax.jit(vjp)(dout))


def run_fa2(seqlen, head_dims):
  import torch
  import torch.nn.functional as F
  from torch.nn.attention import SDPBackend, sdpa_kernel

  for head_dim in head_dims:
    batch, heads = TOKENS // seqlen, HIDDEN // head_dim
    q, k, v, dout = (torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    for t in (q, k, v):
      t.requires_grad_(True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
      F.scaled_dot_product_attention(q, k, v).backward(dout)
    torch.cuda.synchronize()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("impl", choices=["jax_flash", "fa2"])
  parser.add_argument("--seqlen", type=int, default=4096)
  parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
  args = parser.parse_args()
  (run_jax_flash if args.impl == "jax_flash" else run_fa2)(args.seqlen, args.head_dims)


if __name__ == "__main__":
  main()
