"""Shared test helpers: fresh random inputs, dtype tolerances, relative errors against float64 references."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Relative-error bounds ‖out − ref‖ / ‖ref‖ against the float64 reference, by input dtype: float32 arithmetic
# lands near 5e-7; 16-bit results are dominated by the final rounding of o (and of dq/dk/dv) to the dtype:
# about 2e-4 for float16 and 2e-3 for bfloat16 (measured), so the bounds leave a margin of about 4x.
RTOL = {jnp.float32: 5e-6, jnp.float16: 1e-3, jnp.bfloat16: 8e-3}

_seed = itertools.count(int(np.random.SeedSequence().entropy % (2**31)))


@pytest.fixture
def rng():
  """A fresh NumPy generator per test; the seed is printed on failure through the test's id-less output."""
  seed = next(_seed)
  print(f"rng seed {seed}")
  return np.random.default_rng(seed)


def random_qkv(rng, batch, seqlen_q, seqlen_k, heads_q, heads_k, head_dim, dtype):
  """Standard-normal q [B, Sq, Hq, D], k, v [B, Sk, Hk, D] in `dtype`, fresh on every call."""
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
  return (draw(batch, seqlen_q, heads_q, head_dim), draw(batch, seqlen_k, heads_k, head_dim),
          draw(batch, seqlen_k, heads_k, head_dim))


def rel_error(out, ref) -> float:
  """‖out − ref‖ / ‖ref‖ over the finite entries of ref; inf if out is non-finite where ref is finite."""
  out = np.asarray(out, dtype=np.float64)
  ref = np.asarray(ref, dtype=np.float64)
  finite = np.isfinite(ref)
  if not np.all(np.isfinite(out[finite])):
    return float("inf")
  denom = np.linalg.norm(ref[finite])
  return float(np.linalg.norm((out - ref)[finite]) / max(denom, 1e-30))


def assert_close(out, ref, dtype, what, factor=1.0):
  err = rel_error(out, ref)
  bound = RTOL[dtype] * factor
  assert err <= bound, f"{what}: relative error {err:.3g} > {bound:.3g}"


def assert_lse_matches(lse, ref_lse, atol):
  """lse equals the reference where the reference is finite, and is exactly -inf where it is -inf."""
  lse = np.asarray(lse, dtype=np.float64)
  ref_lse = np.asarray(ref_lse, dtype=np.float64)
  empty = np.isneginf(ref_lse)
  assert np.array_equal(np.isneginf(lse), empty), "lse is -inf exactly on the rows that see no key"
  assert not np.any(np.isnan(lse)), "lse has NaN"
  np.testing.assert_allclose(lse[~empty], ref_lse[~empty], atol=atol, rtol=0)
