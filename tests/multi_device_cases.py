"""jax_flash.attention on several devices: batch- and head-sharded operands run on local shards with no collective
(forward and backward), under jit with Shardy or GSPMD, explicit sharding, shard_map, pmap and vmap; a sharded
sequence runs ring attention (collective-permutes, no all-gather); what cannot run locally or in the ring is
gathered with a ShardedGatherWarning; results equal the single-device ones.

Needs at least 2 devices, so it is not collected with the suite (its name does not start with test_):
  - CPU: tests/test_sharding.py runs it in a subprocess with 8 simulated devices
    (XLA_FLAGS=--xla_force_host_platform_device_count=8, which must be set before JAX starts);
  - GPUs: `pytest tests/multi_device_cases.py` on a machine with 2 or more of them.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jax_flash
from conftest import assert_close, random_qkv
from jax_flash.sharding import ShardedGatherWarning

DEVICES = jax.device_count()
PLATFORM = jax.devices()[0].platform
pytestmark = pytest.mark.skipif(DEVICES < 2, reason=f"needs 2 or more devices; found {DEVICES}")

# The GPU kernels take 16-bit inputs and the head dims of their build; the CPU ones float32 and any multiple of 8.
DTYPE = jnp.float32 if PLATFORM == "cpu" else jnp.bfloat16
HEAD_DIM = 16 if PLATFORM == "cpu" else min(jax_flash.build_info()["cuda_head_dims"])
SEQLEN = 32
AXES = ("data", "model")
COLLECTIVE = re.compile(r"\s(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")

# (data, model) mesh shapes: all devices on the batch, all on the heads, and both at once.
MESHES = {"batch": (DEVICES, 1), "heads": (1, DEVICES), "batch_and_heads": (2, DEVICES // 2)}
QKV_SPEC = P("data", None, "model")  # [B, S, H, D]: batch over data, heads over model


def _mesh(shape, axis_type=AxisType.Auto):
  if shape[0] * shape[1] != DEVICES or min(shape) < 1:
    pytest.skip(f"mesh {shape} does not fit {DEVICES} devices")
  return jax.make_mesh(shape, AXES, axis_types=(axis_type, axis_type))


def _qkv(rng, batch, heads_q, heads_k, mapped=()):
  """q [*mapped, B, S, Hq, D], k, v [*mapped, B, S, Hk, D]."""
  draw = lambda *shape: jnp.asarray(rng.standard_normal((*mapped, *shape), dtype=np.float32)).astype(DTYPE)
  return (draw(batch, SEQLEN, heads_q, HEAD_DIM), draw(batch, SEQLEN, heads_k, HEAD_DIM),
          draw(batch, SEQLEN, heads_k, HEAD_DIM))


def _forward(q, k, v):
  return jax_flash.attention(q, k, v, causal=True, return_lse=True)


def _loss(q, k, v):
  o, lse = _forward(q, k, v)
  return jnp.sum(jnp.sin(o.astype(jnp.float32))) + jnp.sum(jnp.cos(lse))


_gradient = jax.grad(_loss, argnums=(0, 1, 2))


def _single_device(fn, *args):
  """fn's results with every operand on one device: the unsharded program."""
  return jax.jit(fn)(*jax.device_put(args, jax.devices()[0]))


def _put(mesh, arrays, specs):
  return tuple(jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in zip(arrays, specs))


def _collectives(jitted, *args) -> set[str]:
  return set(COLLECTIVE.findall(jitted.lower(*args).compile().as_text()))


def _assert_equal_results(got, want, what, factor=1.0):
  for i, (g, w) in enumerate(zip(got, want)):
    assert_close(g, w, DTYPE if g.dtype == DTYPE else jnp.float32, f"{what} output {i}", factor=factor)


def _check_local(fn, args, what, unsharded=None):
  """fn runs on the sharded args with no collective and matches `unsharded` (default fn) on one device."""
  jitted = jax.jit(fn)
  assert _collectives(jitted, *args) == set(), f"{what}: the compiled program has collectives"
  results = jitted(*args)
  _assert_equal_results(results, _single_device(unsharded or fn, *args), what)
  return results


GROUPS = {"mha": 1, "gqa": 2}


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("mesh_shape", MESHES.values(), ids=MESHES.keys())
def test_batch_and_head_sharding_runs_locally_forward_and_backward(rng, mesh_shape, group):
  mesh = _mesh(mesh_shape)
  data, model = mesh_shape
  q, k, v = _put(mesh, _qkv(rng, 2 * data, model * group, model), [QKV_SPEC] * 3)
  o, lse = _check_local(_forward, (q, k, v), "forward")
  dq, dk, dv = _check_local(_gradient, (q, k, v), "backward")
  # Outputs keep the input sharding: o, dq like q; dk, dv like k, v; lse [B, H, S] by batch and heads.
  for out, arg in ((o, q), (dq, q), (dk, k), (dv, v)):
    assert out.sharding.is_equivalent_to(arg.sharding, out.ndim)
  assert lse.sharding.is_equivalent_to(NamedSharding(mesh, P("data", "model")), lse.ndim)


# [n, B, S, H, D] with heads over model and either the vmapped axis or the batch over data.
VMAP_SPECS = {"mapped_axis_sharded": P("data", None, None, "model"),
              "batch_sharded": P(None, "data", None, "model")}


@pytest.mark.parametrize("spec", VMAP_SPECS.values(), ids=VMAP_SPECS.keys())
def test_vmap_of_grad_under_sharding_runs_locally(rng, spec):
  mesh = _mesh(MESHES["batch_and_heads"])
  data, model = MESHES["batch_and_heads"]
  args = _put(mesh, _qkv(rng, 2 * data, 2 * model, model, mapped=(2 * data,)), [spec] * 3)
  _check_local(jax.vmap(_gradient), args, "vmap of grad")


def test_mqa_head_split_runs_the_forward_locally_and_sums_dk_dv_with_one_all_reduce(rng):
  # One kv head for all query heads: each shard holds part of that head's query group, so dk, dv are partial.
  mesh = _mesh(MESHES["heads"])
  q, k, v = _put(mesh, _qkv(rng, 2, 2 * DEVICES, 1), [QKV_SPEC, P(), P()])
  _check_local(_forward, (q, k, v), "forward")
  jitted = jax.jit(_gradient)
  assert _collectives(jitted, q, k, v) == {"all-reduce"}
  _assert_equal_results(jitted(q, k, v), _single_device(_gradient, q, k, v), "backward")


def test_head_sharded_queries_with_replicated_kv_slice_kv_locally(rng):
  mesh = _mesh(MESHES["heads"])
  q, k, v = _put(mesh, _qkv(rng, 2, 2 * DEVICES, DEVICES), [QKV_SPEC, P(), P()])
  _check_local(_forward, (q, k, v), "forward")


def _check_gathered_with_warning(fn, args, match):
  jitted = jax.jit(fn)
  with pytest.warns(ShardedGatherWarning, match=match):
    compiled = jitted.lower(*args).compile()
  assert "all-gather" in set(COLLECTIVE.findall(compiled.as_text()))
  _assert_equal_results(compiled(*args), _single_device(fn, *args), match)


# ----------------------------------------------------------------------------------------------------------------
# A sharded sequence: ring attention through the sharding rule

SEQ_AXES = ("data", "model", "seq")
# Per-device sequence length: a few kernel tiles on GPUs, small on the CPU.
SEQ_LOCAL = 256 if PLATFORM != "cpu" else 8
# (data, model, seq): the sequence over every device, and beside batch and head splits.
SEQ_MESHES = {"sequence": (1, 1, DEVICES), "sequence_batch_heads": (2, 2, DEVICES // 4)}
SEQ_SPEC = P("data", "seq", "model")  # [B, S, H, D]
# The ring rounds each block's o to the input dtype before merging in float32 (16-bit inputs on GPUs).
RING_FACTOR = 2.0
# (heads_q, heads_k) and the mask; windows in global positions, spanning ring blocks.
RING_CASES = {
    "noncausal_mha": dict(heads=(2, 2), causal=False),
    "causal_gqa": dict(heads=(4, 2), causal=True),
    "causal_window_gqa": dict(heads=(4, 2), causal=True, window_size=(3 * SEQ_LOCAL // 2, 0)),
    "two_sided_window_mqa": dict(heads=(2, 1), causal=False, window_size=(SEQ_LOCAL + 1, SEQ_LOCAL // 2)),
}


def _seq_mesh(shape, axis_type=AxisType.Auto):
  if math.prod(shape) != DEVICES or min(shape) < 1:
    pytest.skip(f"mesh {shape} does not fit {DEVICES} devices")
  return jax.make_mesh(shape, SEQ_AXES, axis_types=(axis_type,) * 3)


def _seq_inputs(rng, mesh_shape, heads, seqlen_k=None):
  data, model, seq = mesh_shape
  heads_q, heads_k = heads
  seqlen = SEQ_LOCAL * seq
  q, k, v = random_qkv(rng, 2 * data, seqlen, seqlen_k or seqlen, heads_q * model, heads_k * model, HEAD_DIM, DTYPE)
  return q, k, v


def _attention_fns(**kwargs):
  """forward (o, lse) and gradient (dq, dk, dv) of a loss that depends on o and lse."""
  forward = lambda q, k, v: jax_flash.attention(q, k, v, return_lse=True, **kwargs)

  def loss(q, k, v):
    o, lse = forward(q, k, v)
    return jnp.sum(jnp.sin(o.astype(jnp.float32))) + jnp.sum(jnp.cos(jnp.where(jnp.isfinite(lse), lse, 0.0)))

  return forward, jax.grad(loss, argnums=(0, 1, 2))


def _check_ring(fn, args, what):
  """fn compiles to collective-permutes (the ring) with no all-gather, and matches the unsharded program."""
  jitted = jax.jit(fn)
  collectives = _collectives(jitted, *args)
  assert "collective-permute" in collectives and "all-gather" not in collectives, f"{what}: {collectives}"
  results = jitted(*args)
  _assert_equal_results(results, _single_device(fn, *args), what, factor=RING_FACTOR)
  return results


def _assert_keeps_sharding(mesh, q, k, o, lse, grads, spec=SEQ_SPEC):
  """o, dq like q; dk, dv like k; lse [B, H, S] by q's batch, head and sequence axes."""
  for out, arg in ((o, q), (grads[0], q), (grads[1], k), (grads[2], k)):
    assert out.sharding.is_equivalent_to(arg.sharding, out.ndim), (out.sharding, arg.sharding)
  batch, seq, heads = spec[:3]
  assert lse.sharding.is_equivalent_to(NamedSharding(mesh, P(batch, heads, seq)), lse.ndim), lse.sharding


@pytest.mark.parametrize("case", RING_CASES.values(), ids=RING_CASES.keys())
@pytest.mark.parametrize("mesh_shape", SEQ_MESHES.values(), ids=SEQ_MESHES.keys())
def test_sequence_sharding_runs_ring_attention_forward_and_backward(rng, mesh_shape, case):
  case = dict(case)
  mesh = _seq_mesh(mesh_shape)
  q, k, v = _put(mesh, _seq_inputs(rng, mesh_shape, case.pop("heads")), [SEQ_SPEC] * 3)
  forward, gradient = _attention_fns(**case)
  o, lse = _check_ring(forward, (q, k, v), "forward")
  grads = _check_ring(gradient, (q, k, v), "backward")
  _assert_keeps_sharding(mesh, q, k, o, lse, grads)


def test_sequence_sharded_queries_with_replicated_kv_run_the_ring(rng):
  # k, v arrive whole: the partitioner slices them to q's sequence split, and the ring runs.
  mesh = _seq_mesh(SEQ_MESHES["sequence"])
  q, k, v = _put(mesh, _seq_inputs(rng, SEQ_MESHES["sequence"], (4, 2)), [SEQ_SPEC, P(), P()])
  forward, gradient = _attention_fns(causal=True)
  _check_ring(forward, (q, k, v), "forward")
  _check_ring(gradient, (q, k, v), "backward")


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def test_sequence_sharding_inside_set_mesh_runs_the_ring(rng, axis_type):
  mesh_shape = SEQ_MESHES["sequence_batch_heads"]
  mesh = _seq_mesh(mesh_shape, axis_type)
  inputs = _seq_inputs(rng, mesh_shape, (4, 2))
  forward, gradient = _attention_fns(causal=True)
  want = _single_device(forward, *inputs), _single_device(gradient, *inputs)
  with jax.set_mesh(mesh):
    args = _put(mesh, inputs, [SEQ_SPEC] * 3)
    for fn in (forward, gradient):
      collectives = _collectives(jax.jit(fn), *args)
      assert "collective-permute" in collectives and "all-gather" not in collectives, collectives
    (o, lse), grads = jax.jit(forward)(*args), jax.jit(gradient)(*args)
    if axis_type == AxisType.Explicit:
      assert jax.typeof(o).sharding.spec == P("data", "seq", "model", None)
      assert jax.typeof(lse).sharding.spec == P("data", "model", "seq")
      assert [jax.typeof(g).sharding.spec for g in grads] == [P("data", "seq", "model", None)] * 3
  _assert_keeps_sharding(mesh, *args[:2], o, lse, grads)
  _assert_equal_results((o, lse), want[0], "forward", factor=RING_FACTOR)
  _assert_equal_results(grads, want[1], "backward", factor=RING_FACTOR)


def test_gspmd_partitioner_runs_the_ring_for_a_sharded_sequence(rng):
  mesh_shape = SEQ_MESHES["sequence_batch_heads"]
  mesh = _seq_mesh(mesh_shape)
  args = _put(mesh, _seq_inputs(rng, mesh_shape, (4, 2)), [SEQ_SPEC] * 3)
  forward, gradient = _attention_fns(causal=True)
  jax.config.update("jax_use_shardy_partitioner", False)
  try:
    _check_ring(forward, args, "forward")
    _check_ring(gradient, args, "backward")
  finally:
    jax.config.update("jax_use_shardy_partitioner", True)


def test_vmap_of_grad_with_a_sharded_sequence_runs_the_ring(rng):
  # [n, B, S, H, D]: the vmapped axis becomes one more batch dimension inside the op.
  mesh_shape = SEQ_MESHES["sequence"]
  mesh = _seq_mesh(mesh_shape)
  inputs = [jnp.stack([x, -x]) for x in _seq_inputs(rng, mesh_shape, (4, 2))]
  args = _put(mesh, inputs, [P(None, None, "seq")] * 3)
  _check_ring(jax.vmap(_attention_fns(causal=True)[1]), args, "vmap of grad")


@pytest.mark.parametrize("fn", [_forward, _gradient], ids=["forward", "backward"])
def test_sequence_sharded_cross_attention_gathers_with_a_warning(rng, fn):
  # seqlen_q != seqlen_k: queries and keys do not split into the same positions, so the ring cannot serve it.
  mesh = _seq_mesh(SEQ_MESHES["sequence"])
  inputs = _seq_inputs(rng, SEQ_MESHES["sequence"], (2, 2), seqlen_k=SEQ_LOCAL * DEVICES // 2)
  args = _put(mesh, inputs, [SEQ_SPEC] * 3)
  _check_gathered_with_warning(fn, args, "seqlen_q .* != seqlen_k")


def test_head_dim_sharding_gathers_with_a_warning(rng):
  mesh = _mesh(MESHES["heads"])
  args = _put(mesh, _qkv(rng, 2, 2, 2), [P(None, None, None, "model")] * 3)
  _check_gathered_with_warning(_forward, args, "head_dim")


def test_head_split_across_kv_groups_gathers_with_a_warning(rng):
  # 3 kv heads with DEVICES query heads each, query heads split DEVICES ways: every shard's query heads share one
  # kv head, but 3 kv heads cannot be split over DEVICES, so the heads are gathered.
  mesh = _mesh(MESHES["heads"])
  args = _put(mesh, _qkv(rng, 2, 3 * DEVICES, 3), [QKV_SPEC, P(), P()])
  _check_gathered_with_warning(_forward, args, "the query heads")


def test_gspmd_partitioner_runs_batch_and_head_sharding_locally(rng):
  mesh = _mesh(MESHES["batch_and_heads"])
  data, model = MESHES["batch_and_heads"]
  args = _put(mesh, _qkv(rng, 2 * data, 2 * model, model), [QKV_SPEC] * 3)
  jax.config.update("jax_use_shardy_partitioner", False)
  try:
    _check_local(_forward, args, "forward")
    _check_local(_gradient, args, "backward")
  finally:
    jax.config.update("jax_use_shardy_partitioner", True)


def test_explicit_sharding_types_results_like_operands_and_runs_locally(rng):
  mesh = _mesh(MESHES["batch_and_heads"], AxisType.Explicit)
  data, model = MESHES["batch_and_heads"]
  args = _qkv(rng, 2 * data, 2 * model, model)
  want = _single_device(_forward, *args), _single_device(_gradient, *args)
  with jax.set_mesh(mesh):
    args = _put(mesh, args, [QKV_SPEC] * 3)
    forward, gradient = jax.jit(_forward), jax.jit(_gradient)
    assert _collectives(forward, *args) == set() and _collectives(gradient, *args) == set()
    (o, lse), grads = forward(*args), gradient(*args)
    assert jax.typeof(o).sharding.spec == P("data", None, "model", None)
    assert jax.typeof(lse).sharding.spec == P("data", "model", None)
    assert [jax.typeof(g).sharding.spec for g in grads] == [P("data", None, "model", None)] * 3
  _assert_equal_results((o, lse), want[0], "forward")
  _assert_equal_results(grads, want[1], "backward")


@pytest.mark.parametrize("fn", [_forward, _gradient], ids=["forward", "backward"])
def test_shard_map_runs_on_local_shards(rng, fn):
  mesh = _mesh(MESHES["batch_and_heads"])
  data, model = MESHES["batch_and_heads"]
  args = _qkv(rng, 2 * data, 2 * model, model)
  out_specs = (QKV_SPEC, P("data", "model")) if fn is _forward else (QKV_SPEC,) * 3
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(QKV_SPEC,) * 3, out_specs=out_specs)
  _check_local(mapped, args, "shard_map", unsharded=fn)


def test_shard_map_with_replicated_kv_runs_on_local_shards(rng):
  # MQA: q's heads split, the single kv head replicated; k, v do not vary over the mesh, q does.
  mesh = _mesh(MESHES["heads"])
  args = _qkv(rng, 2, 2 * DEVICES, 1)
  mapped = jax.shard_map(_forward, mesh=mesh, in_specs=(QKV_SPEC, P(), P()), out_specs=(QKV_SPEC, P("data", "model")))
  _check_local(mapped, args, "shard_map", unsharded=_forward)


def test_shard_map_over_some_axes_gathers_the_automatic_ones(rng):
  # axis_names={"data"} leaves "model" to the partitioner, where the plain call runs on gathered heads.
  mesh = _mesh(MESHES["batch_and_heads"])
  data, model = MESHES["batch_and_heads"]
  args = _put(mesh, _qkv(rng, 2 * data, 2 * model, model), [QKV_SPEC] * 3)
  mapped = jax.shard_map(_gradient, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=(P("data"),) * 3,
                         axis_names={"data"})
  _assert_equal_results(jax.jit(mapped)(*args), _single_device(_gradient, *args), "partially manual shard_map")


@pytest.mark.parametrize("fn", [_forward, _gradient], ids=["forward", "backward"])
def test_pmap_runs_on_local_shards(rng, fn):
  per_device = tuple(x.reshape(DEVICES, 2, *x.shape[1:]) for x in _qkv(rng, 2 * DEVICES, 4, 2))
  mapped = jax.pmap(fn)
  assert _collectives(mapped, *per_device) == set()
  got = mapped(*per_device)
  want = _single_device(fn, *(x.reshape(-1, *x.shape[2:]) for x in per_device))
  _assert_equal_results([g.reshape(w.shape) for g, w in zip(got, want)], want, "pmap")


def test_attention_config_is_part_of_the_module_that_the_compile_cache_hashes(rng):
  # jax_remove_custom_partitioning_ptr_from_cache_key hashes the module without custom_partitioning's callback
  # pointer; programs that differ only in causal must still differ there, or they would share an executable.
  assert isinstance(jax.config.jax_remove_custom_partitioning_ptr_from_cache_key, bool)
  mesh = _mesh(MESHES["batch_and_heads"])
  data, model = MESHES["batch_and_heads"]
  args = _put(mesh, _qkv(rng, 2 * data, 2 * model, model), [QKV_SPEC] * 3)
  texts = [re.sub(r'backend_config = "\d+"', "", jax.jit(functools.partial(jax_flash.attention, causal=causal))
                  .lower(*args).as_text()) for causal in (False, True)]
  assert texts[0] != texts[1]
