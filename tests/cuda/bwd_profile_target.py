"""One backward pass per head dim, for Nsight Compute to profile: jax_flash's kernels, FlashAttention-2's (PyTorch
SDPA's flash backend) or flash_attn3_jax's (FlashAttention-3), bf16, random normal inputs, batch x seqlen = 16k
tokens and heads x head_dim = 2048 as in the benchmark grid, non-causal unless --causal. Each head dim launches its
backward kernel exactly once, so `ncu --launch-count <number of head dims>` with a kernel-name filter captures one
launch per head dim:

  ncu --kernel-name regex:backward_kernel --launch-count 2 python3 tests/cuda/bwd_profile_target.py jax_flash
  ncu --kernel-name regex:flash_bwd_dq_dk_dv --launch-count 2 python3 tests/cuda/bwd_profile_target.py fa2
  ncu --kernel-name-base demangled --kernel-name regex:FlashAttnBwdSm90 --launch-count 1 \
      python3 tests/cuda/bwd_profile_target.py flash_attn3_jax --causal --head-dims 128
"""

import argparse
import functools

TOKENS, HIDDEN = 16384, 2048


def run_jax(attention, seqlen, head_dims):
  """attention(q, k, v) -> o for [B, S, H, D] arrays: one backward per head dim through jax.vjp."""
  import jax
  import jax.numpy as jnp

  for head_dim in head_dims:
    batch, heads = TOKENS // seqlen, HIDDEN // head_dim
    keys = jax.random.split(jax.random.key(head_dim), 4)
    q, k, v, dout = (jax.random.normal(key, (batch, seqlen, heads, head_dim), jnp.bfloat16) for key in keys)
    _, vjp = jax.vjp(attention, q, k, v)
    jax.block_until_ready(jax.jit(vjp)(dout))


def run_jax_flash(seqlen, head_dims, causal):
  import jax_flash

  run_jax(functools.partial(jax_flash.attention, causal=causal), seqlen, head_dims)


def run_flash_attn3_jax(seqlen, head_dims, causal):
  import flash_attn3_jax

  run_jax(functools.partial(flash_attn3_jax.flash_mha, is_causal=causal), seqlen, head_dims)


def run_fa2(seqlen, head_dims, causal):
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
      F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(dout)
    torch.cuda.synchronize()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  runs = {"jax_flash": run_jax_flash, "fa2": run_fa2, "flash_attn3_jax": run_flash_attn3_jax}
  parser.add_argument("impl", choices=sorted(runs))
  parser.add_argument("--seqlen", type=int, default=4096)
  parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 128])
  parser.add_argument("--causal", action="store_true")
  args = parser.parse_args()
  runs[args.impl](args.seqlen, args.head_dims, args.causal)


if __name__ == "__main__":
  main()
