"""Ring attention across devices equals single-device jax_flash.attention: o, lse and the gradients.

Not collected on its own (the name does not match test_*.py): tests/test_ring_attention.py runs this file in a
subprocess with 8 simulated CPU devices (XLA_FLAGS must be set before JAX starts), and its gpu-marked test runs
it on all the GPUs of a machine. Every case computes o, lse and the vjp of both (random cotangents) in one
jitted mapped call and compares them with the same quantities from jax_flash.attention on one device.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash
from jax_flash import _ffi, ring
from jax_flash._validation import check_attention_args
from conftest import assert_close, random_qkv

NUM_DEVICES = jax.device_count()
ON_GPU = jax.default_backend() == "gpu"
pytestmark = pytest.mark.skipif(NUM_DEVICES < 2, reason="needs several devices: run through test_ring_attention.py")

# Local (per-device) sequence length: small on the CPU to keep the suite fast, a few kernel tiles on GPUs.
LOCAL_SEQLEN = 256 if ON_GPU else 16
HEAD_DIM = 128 if ON_GPU else 32  # 128: in every GPU build, slim ones included
# float32 on the CPU shows that the ring itself adds no error; GPUs run the 16-bit kernels.
DTYPE = jnp.bfloat16 if ON_GPU else jnp.float32
# The ring rounds each block's o to the input dtype before merging in float32; allow that over single-device.
RING_FACTOR = 2.0
# lse is float32 everywhere; 16-bit inputs move the scores themselves by about their rounding.
LSE_ATOL = {jnp.float32: 1e-5, jnp.float16: 5e-3, jnp.bfloat16: 2e-2}
# A second mesh axis (batch or an outer sequence axis) of 2 where that still leaves a ring of 2 or more.
OUTER = 2 if NUM_DEVICES % 2 == 0 and NUM_DEVICES >= 4 else 1


@dataclasses.dataclass(frozen=True)
class Case:
  causal: bool = False
  window_size: tuple[int, int] = (-1, -1)
  softcap: float = 0.0
  layout: str | None = None
  heads: tuple[int, int] = (4, 2)  # (heads_q, heads_k)
  batch: int = 2
  dtype: object = DTYPE

  def kwargs(self):
    return dict(causal=self.causal, window_size=self.window_size, softcap=self.softcap)


def _global_inputs(rng, case: Case):
  seqlen = LOCAL_SEQLEN * NUM_DEVICES
  heads_q, heads_k = case.heads
  q, k, v = random_qkv(rng, case.batch, seqlen, seqlen, heads_q, heads_k, HEAD_DIM, case.dtype)
  dout = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32)).astype(case.dtype)
  dlse = jnp.asarray(rng.standard_normal((case.batch, heads_q, seqlen), dtype=np.float32))
  return q, k, v, dout, dlse


def _single_device(case: Case, q, k, v, dout, dlse):
  """o, lse, dq, dk, dv of jax_flash.attention on the whole sequence on one device."""
  (o, lse), pullback = jax.vjp(lambda q, k, v: jax_flash.attention(q, k, v, return_lse=True, **case.kwargs()), q, k, v)
  return (o, lse, *pullback((dout, dlse)))


def _ring_local(attention_fn, q, k, v, dout, dlse):
  """On one device: the ring's o, lse and the vjp of both with the local cotangents."""
  (o, lse), pullback = jax.vjp(attention_fn, q, k, v)
  return (o, lse, *pullback((dout, dlse)))


def _layout_of(case: Case) -> str:
  return ring.default_layout(case.causal) if case.layout is None else case.layout


def _compare(case: Case, got, want):
  o, lse, dq, dk, dv = (np.asarray(jnp.asarray(x, jnp.float32)) for x in got)
  o_ref, lse_ref, dq_ref, dk_ref, dv_ref = (np.asarray(jnp.asarray(x, jnp.float32)) for x in want)
  for name, x, ref in (("o", o, o_ref), ("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
    assert_close(x, ref, case.dtype, f"ring {name} vs single-device", factor=RING_FACTOR)
  np.testing.assert_allclose(lse, lse_ref, atol=LSE_ATOL[case.dtype], rtol=0)


def _run_shard_map(case: Case, mesh, seq_axes, batch_axis, inputs, compiler_options=None):
  """The ring under shard_map with the sequence over `seq_axes` (and the batch over `batch_axis`, or None),
  compiled with `compiler_options`."""
  layout = _layout_of(case)
  names = seq_axes if isinstance(seq_axes, tuple) else (seq_axes,)
  shards = int(np.prod([mesh.shape[n] for n in names]))
  q, k, v, dout = (ring.to_ring_layout(x, shards, layout) for x in inputs[:4])
  dlse = ring.to_ring_layout(inputs[4], shards, layout, axis=2)
  spec, lse_spec = P(batch_axis, seq_axes), P(batch_axis, None, seq_axes)
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  attention_fn = lambda q, k, v: jax_flash.ring_attention(
      q, k, v, axis_name=seq_axes, layout=case.layout, return_lse=True, **case.kwargs()
  )
  mapped = jax.jit(jax.shard_map(
      lambda *xs: _ring_local(attention_fn, *xs), mesh=mesh,
      in_specs=(spec, spec, spec, spec, lse_spec), out_specs=(spec, lse_spec, spec, spec, spec),
  ), compiler_options=compiler_options)
  o, lse, dq, dk, dv = mapped(put(q, spec), put(k, spec), put(v, spec), put(dout, spec), put(dlse, lse_spec))
  back = lambda x, axis=1: ring.from_ring_layout(np.asarray(x.astype(jnp.float32)), shards, layout, axis=axis)
  return back(o), back(lse, 2), back(dq), back(dk), back(dv)


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape))


SHARD_MAP_CASES = {
    "noncausal_mha_contiguous": Case(heads=(4, 4)),
    "causal_gqa_zigzag_default": Case(causal=True),
    "causal_gqa_contiguous": Case(causal=True, layout="contiguous"),
    # A left window of 1.5 local shards: blocks are cut by the window on neighbouring devices only.
    "causal_window_spanning_devices_zigzag": Case(causal=True, window_size=(3 * LOCAL_SEQLEN // 2, 0)),
    "causal_window_spanning_devices_contiguous": Case(
        causal=True, window_size=(3 * LOCAL_SEQLEN // 2, -1), layout="contiguous"
    ),
    "noncausal_two_sided_window_mqa": Case(window_size=(LOCAL_SEQLEN + 3, LOCAL_SEQLEN // 2), heads=(4, 1)),
    "noncausal_softcap_zigzag": Case(softcap=5.0, layout="zigzag", batch=1),
}


@pytest.mark.parametrize("name", SHARD_MAP_CASES)
def test_ring_attention_under_shard_map_equals_single_device(rng, name):
  case = SHARD_MAP_CASES[name]
  inputs = _global_inputs(rng, case)
  got = _run_shard_map(case, _mesh((NUM_DEVICES,), ("sp",)), "sp", None, inputs)
  _compare(case, got, _single_device(case, *inputs))


def test_ring_attention_compiled_with_gpu_compiler_options_equals_single_device(rng):
  # On GPUs the K/V and dK/dV transfers are then copy-engine peer copies; on CPUs XLA must still accept the options.
  case = Case(causal=True)
  inputs = _global_inputs(rng, case)
  got = _run_shard_map(case, _mesh((NUM_DEVICES,), ("sp",)), "sp", None, inputs, ring.GPU_COMPILER_OPTIONS)
  _compare(case, got, _single_device(case, *inputs))


@pytest.mark.skipif(ON_GPU, reason="the 16-bit kernels are what the GPU cases already run")
def test_ring_attention_in_bfloat16_equals_single_device(rng):
  case = Case(causal=True, dtype=jnp.bfloat16)
  inputs = _global_inputs(rng, case)
  got = _run_shard_map(case, _mesh((NUM_DEVICES,), ("sp",)), "sp", None, inputs)
  _compare(case, got, _single_device(case, *inputs))


@pytest.mark.skipif(OUTER == 1, reason="needs 4 or more devices (an even count) for a batch axis beside the ring")
def test_ring_attention_with_batch_sharded_on_another_mesh_axis(rng):
  case = Case(causal=True)
  inputs = _global_inputs(rng, case)
  got = _run_shard_map(case, _mesh((OUTER, NUM_DEVICES // OUTER), ("data", "sp")), "sp", "data", inputs)
  _compare(case, got, _single_device(case, *inputs))


@pytest.mark.skipif(NUM_DEVICES % 2, reason="needs an even device count for a 2-axis mesh")
def test_ring_attention_over_a_tuple_of_mesh_axes(rng):
  # The ring spans both axes, so a 2 x (N/2) mesh works for any even N.
  case = Case(causal=True, window_size=(LOCAL_SEQLEN, 0))
  inputs = _global_inputs(rng, case)
  got = _run_shard_map(case, _mesh((2, NUM_DEVICES // 2), ("x", "y")), ("x", "y"), None, inputs)
  _compare(case, got, _single_device(case, *inputs))


PMAP_CASES = {
    "causal_gqa_zigzag": Case(causal=True),
    "noncausal_window_contiguous": Case(window_size=(LOCAL_SEQLEN, LOCAL_SEQLEN)),
}


@pytest.mark.parametrize("name", PMAP_CASES)
def test_ring_attention_under_pmap_equals_single_device(rng, name):
  case = PMAP_CASES[name]
  inputs = _global_inputs(rng, case)
  layout = _layout_of(case)
  # [B, S, ...] -> [N, B, S/N, ...] (sequence axis 1), and lse [B, H, S] -> [N, B, H, S/N].
  split = lambda x, axis=1: jnp.moveaxis(
      x.reshape(x.shape[:axis] + (NUM_DEVICES, x.shape[axis] // NUM_DEVICES) + x.shape[axis + 1:]), axis, 0
  )
  join = lambda x, axis=1: jnp.moveaxis(x, 0, axis).reshape(
      x.shape[1:axis + 1] + (-1,) + x.shape[axis + 2:]
  )
  laid = [ring.to_ring_layout(x, NUM_DEVICES, layout) for x in inputs[:4]]
  laid.append(ring.to_ring_layout(inputs[4], NUM_DEVICES, layout, axis=2))
  attention_fn = lambda q, k, v: jax_flash.ring_attention(
      q, k, v, axis_name="sp", layout=case.layout, return_lse=True, **case.kwargs()
  )
  mapped = jax.pmap(lambda *xs: _ring_local(attention_fn, *xs), axis_name="sp")
  out = mapped(*(split(x) for x in laid[:4]), split(laid[4], 2))
  back = lambda x, axis=1: ring.from_ring_layout(np.asarray(join(x, axis).astype(jnp.float32)), NUM_DEVICES, layout,
                                                 axis=axis)
  got = (back(out[0]), back(out[1], 2), back(out[2]), back(out[3]), back(out[4]))
  _compare(case, got, _single_device(case, *inputs))


SHARDED_ENTRY_CASES = {
    "causal_balanced_through_zigzag": Case(causal=True),
    "noncausal": Case(heads=(2, 2)),
    "causal_window_stays_contiguous": Case(causal=True, window_size=(LOCAL_SEQLEN // 2, 0)),
}


# Rings of all devices and of 2 (where the sharded entry points leave K/V contiguous under zigzag queries).
SHARDED_RING_SIZES = sorted({NUM_DEVICES, 2})


@pytest.mark.parametrize("ring_size", SHARDED_RING_SIZES)
@pytest.mark.parametrize("name", SHARDED_ENTRY_CASES)
def test_sharded_entry_points_on_contiguous_shards_equal_single_device(rng, name, ring_size):
  """What a sharding rule calls: the forward/backward custom calls on contiguous sequence shards."""
  case = SHARDED_ENTRY_CASES[name]
  q, k, v, dout, dlse = inputs = _global_inputs(rng, case)
  config = check_attention_args(q, k, v, softmax_scale=None, **case.kwargs())
  # The ring runs over "sp"; the other axis holds copies.
  mesh = _mesh((NUM_DEVICES // ring_size, ring_size), ("copies", "sp"))
  spec, lse_spec = P(None, "sp"), P(None, None, "sp")

  def local(q, k, v, dout, dlse):
    o, lse = ring.sharded_forward(q, k, v, config, "sp")
    return (o, lse, *ring.sharded_backward(dout, q, k, v, o, lse, dlse, config, "sp"))

  mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, spec, lse_spec),
                                 out_specs=(spec, lse_spec, spec, spec, spec)))
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  got = mapped(put(q, spec), put(k, spec), put(v, spec), put(dout, spec), put(dlse, lse_spec))
  _compare(case, got, _single_device(case, *inputs))



def _partitioned_op(global_fn, sharded_fn, arg_shardings, out_shardings, factors: str):
  """A custom_partitioning op that runs `sharded_fn` on local shards with fixed shardings (what a rule does)."""
  op = custom_partitioning(global_fn)
  op.def_partition(
      infer_sharding_from_operands=lambda mesh, args, result: out_shardings,
      partition=lambda mesh, args, result: (mesh, sharded_fn, out_shardings, arg_shardings),
      sharding_rule=factors,
  )
  return op


def test_sharded_entry_points_run_inside_custom_partitioning_without_gathering(rng):
  """The contract a sharding rule relies on: from a custom_partitioning lower_fn (every mesh axis bound), the
  entry points give the custom calls' global results on sequence-sharded operands, with no all-gather."""
  case = Case(causal=True)
  q, k, v, dout, dlse = _global_inputs(rng, case)
  config = check_attention_args(q, k, v, softmax_scale=None, **case.kwargs())
  mesh = jax.make_mesh((OUTER, NUM_DEVICES // OUTER), ("data", "sp"), axis_types=(AxisType.Auto,) * 2)
  seq, stats = NamedSharding(mesh, P("data", "sp")), NamedSharding(mesh, P("data", None, "sp"))
  forward = _partitioned_op(
      lambda q, k, v: _ffi.forward(q, k, v, config),
      lambda q, k, v: ring.sharded_forward(q, k, v, config, "sp"),
      (seq, seq, seq), (seq, stats), "b s h d, b s k d, b s k d -> b s h d, b h s",
  )
  backward = _partitioned_op(
      lambda *args: _ffi.backward(*args, config),
      lambda *args: ring.sharded_backward(*args, config, "sp"),
      (seq, seq, seq, seq, seq, stats, stats), (seq, seq, seq),
      "b s h d, b s h d, b s k d, b s k d, b s h d, b h s, b h s -> b s h d, b s k d, b s k d",
  )
  o_ref, lse_ref = _ffi.forward(q, k, v, config)
  grads_ref = _ffi.backward(dout, q, k, v, o_ref, lse_ref, dlse, config)

  fwd_args = [jax.device_put(x, seq) for x in (q, k, v)]
  bwd_args = [jax.device_put(x, s) for x, s in zip((dout, q, k, v, o_ref, lse_ref, dlse), (seq,) * 5 + (stats,) * 2)]
  o, lse = jax.jit(forward)(*fwd_args)
  grads = jax.jit(backward)(*bwd_args)
  assert_close(o, o_ref, case.dtype, "o through custom_partitioning", factor=RING_FACTOR)
  np.testing.assert_allclose(lse, lse_ref, atol=LSE_ATOL[case.dtype], rtol=0)
  for name, g, g_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
    assert_close(g, g_ref, case.dtype, f"{name} through custom_partitioning", factor=RING_FACTOR)
  for fn, args in ((forward, fwd_args), (backward, bwd_args)):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    assert "all-gather" not in hlo and "collective-permute" in hlo


def test_ring_kernels_are_set_up_to_run_beside_the_transfers(rng, monkeypatch):
  """Inside the ring every kernel call that runs beside a transfer carries the SM margin for NCCL and the dynamic
  tile schedule (all backward steps; all forward steps but the last, which runs alone); attention outside a ring has
  neither."""
  margin = 8  # not the default, so that the margin is seen to travel from ring.py into every call
  monkeypatch.setattr(ring, "TRANSFER_SM_MARGIN", margin)
  case = Case(causal=True)
  q, k, v, dout, dlse = _global_inputs(rng, case)
  mesh = _mesh((NUM_DEVICES,), ("sp",))
  spec, lse_spec = P(None, "sp"), P(None, None, "sp")
  attention_fn = lambda q, k, v: jax_flash.ring_attention(q, k, v, axis_name="sp", return_lse=True, **case.kwargs())
  mapped = jax.jit(jax.shard_map(
      lambda *xs: _ring_local(attention_fn, *xs), mesh=mesh,
      in_specs=(spec, spec, spec, spec, lse_spec), out_specs=(spec, lse_spec, spec, spec, spec),
  ))
  put = lambda x, s: jax.device_put(x, NamedSharding(mesh, s))
  sharded = (put(q, spec), put(k, spec), put(v, spec), put(dout, spec), put(dlse, lse_spec))
  ring_hlo = mapped.lower(*sharded).compile().as_text()
  beside, alone = (str(margin), "true"), ("0", "false")
  assert _schedule_settings(ring_hlo, _ffi.FWD_TARGET) == {beside, alone}
  assert _schedule_settings(ring_hlo, _ffi.BWD_TARGET) == {beside}
  single_hlo = jax.jit(lambda q, k, v: jax_flash.attention(q, k, v, causal=True)).lower(q, k, v).compile().as_text()
  assert _schedule_settings(single_hlo, _ffi.FWD_TARGET) == {alone}


def _schedule_settings(hlo: str, target: str) -> set[tuple[str, str]]:
  """(sm_margin, dynamic_schedule) of every custom call to `target` in compiled HLO text."""
  calls = [line for line in hlo.splitlines() if f'custom_call_target="{target}"' in line]
  return {(re.search(r"sm_margin = (\d+)", c).group(1), re.search(r"dynamic_schedule = (\w+)", c).group(1))
          for c in calls}
