"""Child process for the CUDA-graph test: runs attention forward and backward on saved inputs under the XLA_FLAGS
it was started with and saves the results. Usage: python gpu_run_attention.py INPUTS.npz OUTPUTS.npz"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash


def main(inputs_path: str, outputs_path: str) -> None:
  inputs = np.load(inputs_path)
  dtype = jnp.dtype(str(inputs["dtype"]))
  q, k, v, dout = (jnp.asarray(inputs[name]).astype(dtype) for name in ("q", "k", "v", "dout"))

  @jax.jit
  def run(q, k, v, dout):
    (o, lse), vjp = jax.vjp(lambda q, k, v: jax_flash.attention(q, k, v, causal=True, return_lse=True), q, k, v)
    return (o, lse) + vjp((dout, jnp.zeros_like(lse)))

  results = run(q, k, v, dout)
  # Run a second time: a captured graph is replayed, not re-recorded, on later executions.
  results = run(q, k, v, dout)
  np.savez(outputs_path, **{name: np.asarray(x.astype(jnp.float32)) for name, x in
                            zip(("o", "lse", "dq", "dk", "dv"), results)})


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
