"""Ring attention: its schedule (exact masks, skipped blocks, balance), layouts, argument checks, and the
multi-device equivalence cases of ring_multidevice_cases.py run on 8 simulated CPU devices (or on GPUs)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash
from jax_flash import ring
from jax_flash._config import UNBOUNDED, AttentionConfig
from jax_flash.reference import visible_mask

from conftest import assert_close, random_qkv

CASES_FILE = pathlib.Path(__file__).with_name("ring_multidevice_cases.py")
SIMULATED_DEVICES = 8
# Cheaper XLA:CPU compiles: the cases are small and compile-bound.
FAST_CPU_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _run_cases(env_updates: dict[str, str], *, allow_skips: bool) -> str:
  # -P: import the installed jax_flash (with its compiled extension), not the source tree in the working directory.
  env = dict(os.environ, **env_updates)
  result = subprocess.run(
      [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", str(CASES_FILE)],
      cwd=CASES_FILE.parent.parent, env=env, capture_output=True, text=True, timeout=900,
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, output
  summary = output.strip().splitlines()[-1]
  assert re.search(r"\d+ passed", summary), output
  # On 8 devices every case applies; a machine with 2 GPUs skips those that need more devices (or CPU dtypes).
  assert allow_skips or "skipped" not in summary, output
  return summary


def test_ring_attention_on_8_simulated_cpu_devices_equals_single_device():
  _run_cases({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={SIMULATED_DEVICES} {FAST_CPU_COMPILE}",
  }, allow_skips=False)


@pytest.mark.gpu
def test_ring_attention_on_local_gpus_equals_single_gpu():
  if len(jax.devices()) < 2 or jax.default_backend() != "gpu":
    pytest.skip("needs at least 2 GPUs")
  # This process may already hold most of the GPU memory (JAX preallocates): the cases allocate as they go.
  print(_run_cases({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, allow_skips=True))


# ----------------------------------------------------------------------------------------------------------------
# The schedule: every step's kernel calls reproduce the global mask exactly, and skip what it hides


def _global_visible(config: AttentionConfig, q_pos: np.ndarray, k_pos: np.ndarray) -> np.ndarray:
  """[len(q_pos), len(k_pos)]: True where global query q_pos[i] sees global key k_pos[j] (Sq == Sk)."""
  diff = k_pos[None, :] - q_pos[:, None]  # key position relative to the query's diagonal
  visible = np.ones(diff.shape, dtype=bool)
  if config.window_left != UNBOUNDED:
    visible &= diff >= -config.window_left
  if config.effective_window_right != UNBOUNDED:
    visible &= diff <= config.effective_window_right
  return visible


def _positions(num_shards: int, layout: str, seqlen: int, shard: int) -> np.ndarray:
  """Global positions of the tokens a shard holds."""
  laid = ring.to_ring_layout(np.arange(seqlen * num_shards)[None], num_shards, layout)[0]
  return laid[shard * seqlen:(shard + 1) * seqlen]


def _plan_mask(plan, seqlen: int) -> tuple[np.ndarray, int]:
  """The mask a device's kernel calls apply to (local queries x held keys), and how many calls cover a pair."""
  covered = np.zeros((seqlen, seqlen), dtype=int)
  mask = np.zeros((seqlen, seqlen), dtype=bool)
  for block in plan:
    (r0, r1), (c0, c1) = block.rows, block.cols
    covered[r0:r1, c0:c1] += 1
    mask[r0:r1, c0:c1] = np.asarray(visible_mask(r1 - r0, c1 - c0, block.config))
  return mask, int(covered.max(initial=0))


MASKS = {
    "full": AttentionConfig(softmax_scale=1.0),
    "causal": AttentionConfig(softmax_scale=1.0, causal=True),
    "causal_window_5": AttentionConfig(softmax_scale=1.0, causal=True, window_left=5),
    "causal_window_13": AttentionConfig(softmax_scale=1.0, causal=True, window_left=13),
    "window_3_9": AttentionConfig(softmax_scale=1.0, window_left=3, window_right=9),
    "window_right_only": AttentionConfig(softmax_scale=1.0, window_right=6),
}


def _chunk(layout: str, kv_layout: str, seqlen: int) -> int:
  return seqlen // (2 if ring.ZIGZAG in (layout, kv_layout) else 1)


# (query layout, K/V layout): ring_attention's two, and the sharding rule's causal one (K/V left contiguous).
LAYOUT_PAIRS = [(layout, layout) for layout in ring.LAYOUTS] + [(ring.ZIGZAG, ring.CONTIGUOUS)]


@pytest.mark.parametrize("layout,kv_layout", LAYOUT_PAIRS)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_schedule_reproduces_the_global_mask_on_every_device_and_step(num_shards, mask, layout, kv_layout):
  config, seqlen = MASKS[mask], 8
  steps = {step.distance: step
           for step in ring._schedule(num_shards, layout, kv_layout, _chunk(layout, kv_layout, seqlen), config)}
  for device in range(num_shards):
    q_pos = _positions(num_shards, layout, seqlen, device)
    for distance in range(num_shards):
      k_pos = _positions(num_shards, kv_layout, seqlen, (device - distance) % num_shards)
      want = _global_visible(config, q_pos, k_pos)
      step = steps.get(distance)
      plan = step.plans[step.plan_of_device[device]] if step else ()
      got, overlap = _plan_mask(plan, seqlen)
      assert overlap <= 1, f"device {device} step {distance}: a pair is computed twice"
      np.testing.assert_array_equal(got, want, err_msg=f"device {device} step {distance} plan {plan}")
      if not want.any():
        assert plan == (), f"device {device} step {distance}: a fully masked step still runs {plan}"


def _visible_pairs_per_device(num_shards: int, layout: str, config: AttentionConfig, seqlen: int,
                              kv_layout: str | None = None):
  """[step, device] number of visible (query, key) pairs that device's plan computes."""
  kv_layout = layout if kv_layout is None else kv_layout
  work = np.zeros((num_shards, num_shards), dtype=int)
  for step in ring._schedule(num_shards, layout, kv_layout, _chunk(layout, kv_layout, seqlen), config):
    for device in range(num_shards):
      work[step.distance, device] = _plan_mask(step.plans[step.plan_of_device[device]], seqlen)[0].sum()
  return work


def test_zigzag_gives_every_device_the_same_causal_work_at_every_step():
  work = _visible_pairs_per_device(8, "zigzag", MASKS["causal"], 16)
  assert np.all(work == work[:, :1]), work


def test_zigzag_queries_over_contiguous_keys_give_every_device_the_same_causal_work_over_the_ring():
  work = _visible_pairs_per_device(8, "zigzag", MASKS["causal"], 16, kv_layout="contiguous")
  totals = work.sum(axis=0)
  assert np.all(totals == totals[0]), work


def test_contiguous_causal_skips_blocks_above_the_diagonal():
  work = _visible_pairs_per_device(8, "contiguous", MASKS["causal"], 16)
  # Device d holds keys of devices 0..d only in steps 0..d: it computes nothing afterwards.
  for device in range(8):
    assert np.all(work[:device + 1, device] > 0) and np.all(work[device + 1:, device] == 0), work


def test_short_window_runs_only_the_ring_steps_it_spans():
  config = AttentionConfig(softmax_scale=1.0, causal=True, window_left=10)
  steps = ring._schedule(8, "contiguous", "contiguous", 16, config)
  assert [s.distance for s in steps] == [0, 1]


def test_noncausal_zigzag_runs_one_unmasked_kernel_call_per_step():
  for step in ring._schedule(4, "zigzag", "zigzag", 8, MASKS["full"]):
    assert len(step.plans) == 1 and len(step.plans[0]) == 1
    config = step.plans[0][0].config
    assert not config.causal and config.window_left == config.window_right == UNBOUNDED


# ----------------------------------------------------------------------------------------------------------------
# Layout helpers


def test_zigzag_layout_gives_shard_i_chunks_i_and_2n_minus_1_minus_i():
  tokens = np.repeat(np.arange(4), 2)[None]  # 4 chunks of 2 tokens; each token is its chunk's index
  np.testing.assert_array_equal(ring.to_ring_layout(tokens, 2, "zigzag")[0], [0, 0, 3, 3, 1, 1, 2, 2])
  np.testing.assert_array_equal(ring.to_ring_layout(tokens, 2, "contiguous"), tokens)


@pytest.mark.parametrize("layout", ring.LAYOUTS)
def test_ring_layout_round_trips_numpy_and_jax_arrays_along_any_axis(rng, layout):
  x = rng.standard_normal((2, 3, 24))
  laid = ring.to_ring_layout(x, 3, layout, axis=2)
  assert isinstance(laid, np.ndarray)
  np.testing.assert_array_equal(ring.from_ring_layout(laid, 3, layout, axis=-1), x)
  laid_jax = ring.to_ring_layout(jnp.asarray(x, jnp.float32), 3, layout, axis=2)
  np.testing.assert_array_equal(np.asarray(laid_jax), laid.astype(np.float32))


def test_ring_layout_rejects_lengths_that_do_not_split_into_chunks():
  with pytest.raises(ValueError, match="multiple of 6"):
    ring.to_ring_layout(np.zeros((1, 10)), 3, "zigzag")
  with pytest.raises(ValueError, match="layout must be one of"):
    ring.to_ring_layout(np.zeros((1, 12)), 3, "striped")
  with pytest.raises(ValueError, match="num_shards"):
    ring.from_ring_layout(np.zeros((1, 12)), 0)


# ----------------------------------------------------------------------------------------------------------------
# One device, and argument checks


def _one_device_ring(q, k, v, **kwargs):
  mesh = jax.make_mesh((1,), ("sp",), devices=jax.devices()[:1])
  spec = P(None, "sp")
  f = jax.shard_map(lambda q, k, v: jax_flash.ring_attention(q, k, v, axis_name="sp", **kwargs), mesh=mesh,
                    in_specs=(spec,) * 3, out_specs=spec)
  put = lambda x: jax.device_put(x, NamedSharding(mesh, spec))
  return jax.jit(f)(put(q), put(k), put(v))


@pytest.mark.parametrize("causal", [False, True])
def test_ring_of_one_device_equals_attention(rng, causal):
  q, k, v = random_qkv(rng, 2, 40, 40, 4, 2, 32, jnp.float32)
  assert_close(_one_device_ring(q, k, v, causal=causal), jax_flash.attention(q, k, v, causal=causal), jnp.float32,
               "ring of one device")


def test_ring_attention_outside_a_mapped_axis_says_where_to_call_it(rng):
  q, k, v = random_qkv(rng, 1, 8, 8, 2, 2, 16, jnp.float32)
  with pytest.raises(ValueError, match="shard_map"):
    jax_flash.ring_attention(q, k, v, axis_name="sp")


def test_ring_attention_rejects_bad_arguments(rng):
  q, k, v = random_qkv(rng, 1, 8, 8, 2, 2, 16, jnp.float32)
  with pytest.raises(ValueError, match="layout must be one of"):
    _one_device_ring(q, k, v, layout="ring")
  with pytest.raises(ValueError, match="multiple of 2"):
    _one_device_ring(q[:, :7], k[:, :7], v[:, :7], causal=True)
  with pytest.raises(ValueError, match="local seqlen of q"):
    _one_device_ring(q, k[:, :4], v[:, :4])
  with pytest.raises(TypeError, match="return_lse"):
    _one_device_ring(q, k, v, return_lse=1)
  with pytest.raises(TypeError, match="causal"):
    _one_device_ring(q, k, v, causal="yes")
  with pytest.raises(TypeError, match="axis_name"):
    jax_flash.ring_attention(q, k, v, axis_name=())
