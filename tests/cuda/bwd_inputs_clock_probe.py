"""The backward alone through JAX (jit of the vjp function, residuals from jax.vjp), jax_flash beside
flash_attn3_jax, with random-normal and with constant inputs, and the SM clock and board power right after each
backward's timing. Random inputs can hold a GPU at its power limit (lower clock); the standalone harness
(flash_bwd_sm90_test bench) fills constants. Head dim 128, bf16, batch x seqlen = 16k tokens, 16 heads:

  python3 tests/cuda/bwd_inputs_clock_probe.py        # one JSON line per (shape, inputs, implementation)
"""

import json
import subprocess

import jax
import jax.numpy as jnp

import jax_flash
from jax_flash.bench.timing import time_call

TOKENS, HEADS, HEAD_DIM = 16384, 16, 128
SHAPES = [(16384, True), (4096, True), (16384, False)]  # (seqlen, causal)
CALLS, BATCHES = 30, 7
BACKWARD_FLOP_FACTOR = 2.5


def implementations(causal):
  scale = HEAD_DIM**-0.5
  impls = {"jax_flash": lambda q, k, v: jax_flash.attention(q, k, v, causal=causal, softmax_scale=scale)}
  try:
    import flash_attn3_jax
  except ImportError:
    return impls
  # Its non-causal backward gives wrong gradients (README.md, "Latest results"), so only causal runs it.
  if causal:
    impls["flash_attn3_jax"] = lambda q, k, v: flash_attn3_jax.flash_mha(q, k, v, softmax_scale=scale, is_causal=True)
  return impls


def clock_and_power():
  query = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader"]
  return subprocess.run(query, capture_output=True, text=True).stdout.strip()


def main():
  for seqlen, causal in SHAPES:
    batch = TOKENS // seqlen
    shape = (batch, seqlen, HEADS, HEAD_DIM)  # [B, S, H, D]
    forward_flops = 4 * batch * HEADS * seqlen * seqlen * HEAD_DIM / (2 if causal else 1)
    for inputs in ("random", "constant"):
      if inputs == "random":
        q, k, v, dout = (jax.random.normal(key, shape, jnp.bfloat16) for key in jax.random.split(jax.random.PRNGKey(0), 4))
      else:
        q = k = v = dout = jnp.full(shape, 0.5, jnp.bfloat16)
      for name, attention in implementations(causal).items():
        forward = jax.jit(attention)
        _, vjp_fn = jax.vjp(attention, q, k, v)
        backward = jax.jit(lambda fn, g: fn(g))
        t_fwd = time_call(forward, (q, k, v), calls=CALLS, batches=BATCHES)
        t_bwd = time_call(backward, (vjp_fn, dout), calls=CALLS, batches=BATCHES)
        print(json.dumps(dict(seqlen=seqlen, causal=causal, inputs=inputs, impl=name,
                              fwd_tflops=round(forward_flops / t_fwd / 1e12, 1),
                              bwd_tflops=round(BACKWARD_FLOP_FACTOR * forward_flops / t_bwd / 1e12, 1),
                              clock_power_after_bwd=clock_and_power())), flush=True)


if __name__ == "__main__":
  main()
