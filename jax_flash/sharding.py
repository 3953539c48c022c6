"""Sharding rules: the forward and backward custom calls run on local shards of batch- and head-sharded operands.

Each call is a `custom_partitioning` op. Under Shardy (JAX's default partitioner) its `sharding_rule` tells the
propagation pass how the dimensions of operands and results correspond; under the older GSPMD partitioner
(`jax_use_shardy_partitioner=False`) `infer_sharding_from_operands` plays that part. Either way XLA's SPMD
partitioner then asks `partition` for the per-device program, and `_choose_layout` alone decides which
shardings the kernels run on; the partitioner reshards any operand that differs.

Local, with no collective:
  - batch split over any mesh axes;
  - heads split, GQA-aware. Query heads are kv-head-major, Hq = (Hk g): query head h reads kv head h // g. A split
    of the query heads over mesh axes A is local when A also splits the kv heads, or when a leading part of A
    splits the kv heads completely (one kv head per shard) and the rest of A splits each kv head's group of g
    query heads. In that second case the backward sums dk, dv over the group with one all-reduce over the rest of
    A (`_Layout.group_axes`): each shard holds only part of the group's query heads.
With collectives over the sequence's mesh axes only: a sequence split over mesh axes A (q's split, else k's;
`_sequence_sharding_plan`) runs ring attention over A (`jax_flash.ring.sharded_forward` / `sharded_backward`): K/V
shards travel around the ring with collective-permutes, and nothing is gathered. q, k, v (and in the backward
dout, o, lse, dlse) are all split over A, whatever split k, v arrived with.
Gathered, with a `ShardedGatherWarning` naming the axes: a split sequence that the ring cannot serve (seqlen_q !=
seqlen_k, or a length that A does not divide), a split head_dim, and a head split that does not line up with the
kv heads.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jax_flash import _ffi, ring
from jax_flash._config import AttentionConfig

AxisNames = tuple[str, ...]
_NO_MESH = jax.sharding.AbstractMesh((), ())


class _Kind(enum.Enum):
  """The role of one operand or result; its value is its Shardy factor mapping, `{heads}` the query-head axis and
  `{sq}`, `{sk}` the query and key sequence factors.

  Factors: ... the leading batch dimensions (one or more: vmap adds them), sq/sk query/key sequence (one factor s
  for self-attention, `_sequence_factors`), k kv heads, g query heads per kv head, d head_dim, c the words of the
  configuration key. The query head axis is (k g) where the mesh allows (`_query_heads_factors`).
  """

  QUERY = "... {sq} {heads} d"  # q, o, dout, dq: [*batch, Sq, Hq, D]
  KEY_VALUE = "... {sk} k d"  # k, v, dk, dv: [*batch, Sk, Hk, D]
  STATS = "... {heads} {sq}"  # lse, dlse: [*batch, Hq, Sq]
  CONFIG_KEY = "c"  # `_config_key`: [words]


# Dimensions counted from the end, after the leading batch dimensions.
_HEADS_DIM = -2  # of every array kind
_SEQ_DIM = {_Kind.QUERY: -3, _Kind.KEY_VALUE: -3, _Kind.STATS: -1}
_HEAD_DIM_DIM = {_Kind.QUERY: -1, _Kind.KEY_VALUE: -1}
_TRAILING_DIMS = {_Kind.QUERY: 3, _Kind.KEY_VALUE: 3, _Kind.STATS: 2}

_FORWARD_OPERANDS = (_Kind.QUERY, _Kind.KEY_VALUE, _Kind.KEY_VALUE)  # q, k, v
_FORWARD_RESULTS = (_Kind.QUERY, _Kind.STATS)  # o, lse
_BACKWARD_OPERANDS = (  # dout, q, k, v, o, lse, dlse
    _Kind.QUERY, _Kind.QUERY, _Kind.KEY_VALUE, _Kind.KEY_VALUE, _Kind.QUERY, _Kind.STATS, _Kind.STATS)
_BACKWARD_RESULTS = (_Kind.QUERY, _Kind.KEY_VALUE, _Kind.KEY_VALUE)  # dq, dk, dv

# Shardy must not split head_dim: q·k contracts it and the kernels need whole rows.
_NEED_REPLICATION_FACTORS = ("d",)


class ShardedGatherWarning(UserWarning):
  """A split that the kernels cannot run on locally is all-gathered before the attention call."""


def _warn_gather(what: str, axes: AxisNames, why: str) -> None:
  warnings.warn(
      f"jax_flash attention all-gathers {what} (sharded over mesh axes {axes}) before its kernels run: {why}.",
      ShardedGatherWarning,
      stacklevel=2,
  )


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The mesh axes that split the op's arrays, chosen so that each shard's kernel call is exact attention.

  Attributes:
    batch: for each leading batch dimension, the axes splitting it.
    query_heads: axes splitting Hq, major to minor.
    kv_heads: the leading part of `query_heads` that also splits Hk.
    sequence: axes splitting the sequence of q and k/v alike (major to minor); ring attention runs over them.
  """

  batch: tuple[AxisNames, ...]
  query_heads: AxisNames
  kv_heads: AxisNames
  sequence: AxisNames = ()

  @property
  def ring_axis(self) -> str | AxisNames:
    """`sequence` as the ring's axis_name: the device order along the sequence is that of a NamedSharding."""
    return self.sequence[0] if len(self.sequence) == 1 else self.sequence

  @property
  def group_axes(self) -> AxisNames:
    """Axes that split each kv head's group of query heads: dk, dv are summed over them."""
    return self.query_heads[len(self.kv_heads):]

  def spec(self, kind: _Kind) -> PartitionSpec:
    if kind is _Kind.CONFIG_KEY:
      return PartitionSpec()
    batch = [axes or None for axes in self.batch]
    sequence = self.sequence or None
    if kind is _Kind.STATS:
      return PartitionSpec(*batch, self.query_heads or None, sequence)
    heads = self.query_heads if kind is _Kind.QUERY else self.kv_heads
    return PartitionSpec(*batch, sequence, heads or None, None)


def _axes(arg: jax.ShapeDtypeStruct, dim: int) -> AxisNames:
  """The mesh axes (of size > 1) that split dimension `dim` of `arg`; none under a sharding without names."""
  sharding = arg.sharding
  if not isinstance(sharding, NamedSharding):
    return ()
  spec = (*sharding.spec, *(None,) * (len(arg.shape) - len(sharding.spec)))
  entry = spec[dim]
  if entry is None or entry is PartitionSpec.UNCONSTRAINED:
    return ()
  return tuple(a for a in ((entry,) if isinstance(entry, str) else entry) if sharding.mesh.shape[a] > 1)


def _leading_dims(arg: jax.ShapeDtypeStruct, kind: _Kind) -> int:
  return len(arg.shape) - _TRAILING_DIMS[kind]


def _union(axes: Iterable[AxisNames]) -> AxisNames:
  """The mesh axes named in any of `axes`, each once, in order of appearance."""
  return tuple(dict.fromkeys(a for names in axes for a in names))


def _size(mesh: jax.sharding.Mesh, axes: AxisNames) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _sequence_sharding_plan(
    mesh: jax.sharding.Mesh, kinds: Sequence[_Kind], arg_shapes: Sequence[jax.ShapeDtypeStruct], *, warn: bool
) -> AxisNames:
  """The one place that decides what a call with a split sequence does: the mesh axes to run ring attention over,
  or () to gather the sequence (with a warning when `warn`).

  The ring takes the sequence split of the first query-like operand that has one (q; dout in the backward), else
  of k, v; the partitioner brings every operand to it (from a replicated k, v that is a local slice). It needs
  self-attention (q and k/v of one global length, so that both split into the same positions) and a length that
  the axes divide (no padded shards).
  """
  splits = [_axes(arg, _SEQ_DIM[kind]) for kind in (_Kind.QUERY, _Kind.KEY_VALUE)
            for arg, arg_kind in zip(arg_shapes, kinds) if arg_kind is kind]
  axes = next((split for split in splits if split), ())
  if not axes:
    return ()
  seqlen_q = arg_shapes[kinds.index(_Kind.QUERY)].shape[_SEQ_DIM[_Kind.QUERY]]
  seqlen_k = arg_shapes[kinds.index(_Kind.KEY_VALUE)].shape[_SEQ_DIM[_Kind.KEY_VALUE]]
  why = None
  if seqlen_q != seqlen_k:
    why = (f"ring attention needs q and k/v of one sequence (self-attention), but seqlen_q {seqlen_q} != seqlen_k "
           f"{seqlen_k}; shard batch or heads instead")
  elif seqlen_q % _size(mesh, axes):
    why = (f"ring attention needs equal shards, but the sequence of {seqlen_q} does not split into "
           f"{_size(mesh, axes)}")
  if why is None:
    return axes
  if warn:
    _warn_gather("the sequence", axes, why)
  return ()


def _head_split(mesh, candidate: AxisNames, heads_q: int, heads_k: int) -> tuple[AxisNames, AxisNames] | None:
  """(query_heads, kv_heads) when splitting the query heads over `candidate` is local, else None."""
  if heads_q % _size(mesh, candidate):
    return None
  if heads_k % _size(mesh, candidate) == 0:
    return candidate, candidate
  for split in range(len(candidate)):
    if _size(mesh, candidate[:split]) == heads_k:
      return candidate, candidate[:split]
  return None


def _choose_head_split(
    mesh, q_axes: AxisNames, k_axes: AxisNames, taken: AxisNames, heads_q: int, heads_k: int
) -> tuple[AxisNames, AxisNames]:
  """(query_heads, kv_heads): the longest leading part of q's head axes, else of k's, that splits locally, using
  no axis in `taken` (those split the batch or the sequence)."""
  for sharded in (q_axes, k_axes):
    sharded = tuple(a for a in sharded if a not in taken)
    for end in range(len(sharded), 0, -1):
      split = _head_split(mesh, sharded[:end], heads_q, heads_k)
      if split is not None:
        return split
  return (), ()


def _choose_layout(
    mesh: jax.sharding.Mesh,
    kinds: Sequence[_Kind],
    arg_shapes: Sequence[jax.ShapeDtypeStruct],
    *,
    warn: bool,
) -> _Layout:
  """The layout the op runs in: as much of the operands' splits (q's first) as is local."""
  query = arg_shapes[kinds.index(_Kind.QUERY)]
  key = arg_shapes[kinds.index(_Kind.KEY_VALUE)]
  heads_q = query.shape[_HEADS_DIM]
  heads_k = key.shape[_HEADS_DIM]
  sequence = _sequence_sharding_plan(mesh, kinds, arg_shapes, warn=warn)
  # The batch dimensions split as q's are, else as k's (less any axis the sequence already uses).
  batch = tuple(_axes(query, dim) for dim in range(_leading_dims(query, _Kind.QUERY)))
  if not any(batch):
    batch = tuple(_axes(key, dim) for dim in range(_leading_dims(key, _Kind.KEY_VALUE)))
  batch = tuple(tuple(a for a in axes if a not in sequence) for axes in batch)

  head_dim_axes = _union(
      _axes(arg, _HEAD_DIM_DIM[kind]) for arg, kind in zip(arg_shapes, kinds) if kind in _HEAD_DIM_DIM)
  if head_dim_axes and warn:
    _warn_gather("head_dim", head_dim_axes, "the kernels need whole head_dim rows")

  query_heads, kv_heads = _choose_head_split(
      mesh, _axes(query, _HEADS_DIM), _axes(key, _HEADS_DIM), _union(batch) + sequence, heads_q, heads_k)
  dropped = tuple(a for a in _axes(query, _HEADS_DIM) if a not in query_heads)
  if dropped and warn:
    _warn_gather(
        "the query heads", dropped,
        f"that split of {heads_q} query heads over {heads_k} kv heads (kv-head-major groups of "
        f"{heads_q // heads_k}) would leave a shard with query heads whose kv head it does not hold")
  return _Layout(batch=batch, query_heads=query_heads, kv_heads=kv_heads, sequence=sequence)


def _shardings(mesh, layout: _Layout, kinds: Sequence[_Kind]) -> tuple[NamedSharding, ...]:
  return tuple(NamedSharding(mesh, layout.spec(kind)) for kind in kinds)


def _subaxes_free(mesh: jax.sharding.Mesh, factor_sizes: Sequence[int]) -> bool:
  """True when every split of a dimension with these (major to minor) factors over mesh axes uses whole axes.

  Shardy gives the axes that split a compound dimension to its factors major to minor, and splits an axis into
  sub-axes where a factor takes only part of it (4 query heads per kv head on an axis of 8 devices, say). JAX's
  custom_partitioning cannot hand a sub-axis sharding to its callbacks (it raises while decoding it), so the
  compound rule is used only on meshes where no sub-axis can arise.
  """
  sizes = [mesh.shape[a] for a in mesh.axis_names if mesh.shape[a] > 1]
  for count in range(1, len(sizes) + 1):
    for order in itertools.permutations(sizes, count):
      left = list(factor_sizes)
      for axis_size in order:
        factor = next((i for i, size in enumerate(left) if size > 1), None)
        if factor is None:
          break
        if left[factor] % axis_size:
          if math.gcd(left[factor], axis_size) > 1:
            return False
          break
        left[factor] //= axis_size
  return True


def _query_heads_factors(mesh: jax.sharding.Mesh, heads_k: int, group: int) -> str:
  """The query-head axis as Shardy factors.

  (k g) where the mesh allows it, so that Shardy carries head splits between q and k, v; k alone for MHA (g = 1;
  Shardy rejects size-1 factors in a compound); otherwise h, a factor of its own, and `_choose_layout` alone keeps
  the split kv-head-major.
  """
  if group == 1:
    return "k"
  if heads_k > 1 and _subaxes_free(mesh, (heads_k, group)):
    return "(k g)"
  return "h"


def _sequence_factors(operands: Sequence[_Kind], operand_types) -> dict[str, str]:
  """The sequence factors: one, s, for self-attention (q and k/v of one length), so that Shardy carries a sequence
  split between q and k, v as the ring needs it; otherwise sq and sk, which the ring does not serve."""
  seqlen_q = operand_types[operands.index(_Kind.QUERY)].shape[_SEQ_DIM[_Kind.QUERY]]
  seqlen_k = operand_types[operands.index(_Kind.KEY_VALUE)].shape[_SEQ_DIM[_Kind.KEY_VALUE]]
  return dict(sq="s", sk="s") if seqlen_q == seqlen_k else dict(sq="sq", sk="sk")


def _sharding_rule(operands: Sequence[_Kind], results: Sequence[_Kind]):
  """Shardy rule callback: the factor mapping of the op, for these shapes on this mesh."""

  def rule(config, mesh, operand_types, result_types):
    del config, result_types
    heads_q = operand_types[operands.index(_Kind.QUERY)].shape[_HEADS_DIM]
    heads_k = operand_types[operands.index(_Kind.KEY_VALUE)].shape[_HEADS_DIM]
    group = heads_q // heads_k
    factors = dict(heads=_query_heads_factors(mesh, heads_k, group), **_sequence_factors(operands, operand_types))
    mapping = ", ".join(kind.value.format(**factors) for kind in operands) + " -> " + ", ".join(
        kind.value.format(**factors) for kind in results)
    sizes = dict(g=group) if factors["heads"] == "(k g)" else {}
    return mapping, dict(sizes, need_replication_factors=_NEED_REPLICATION_FACTORS)

  return rule


@functools.cache
def _config_key(config: AttentionConfig) -> np.ndarray:
  """The static configuration as a constant operand: uint32 words of its fields as float64 (exact).

  A custom_partitioning op leaves its inner call out of the module that JAX hashes for the persistent compilation
  cache. Under `jax_remove_custom_partitioning_ptr_from_cache_key` two programs that differ only in, say,
  `causal` would then share one cached executable; as an operand, the configuration is part of the module.
  """
  fields = [float(getattr(config, field.name)) for field in dataclasses.fields(config)]
  return np.asarray(fields, np.float64).view(np.uint32)


def _over_leading_dims(call: Callable, operands: tuple[_Kind, ...]) -> Callable:
  """`call` on arrays with one or more leading batch dimensions: flattened into the kernels' one batch dimension
  (a bitcast, as they lead) and restored on the results. vmap adds such dimensions; keeping them apart until
  here, inside the op, lets each be split over the mesh on its own."""

  def flat_call(*args):
    *arrays, config = args
    batch = arrays[0].shape[:_leading_dims(arrays[0], operands[0])]
    outs = call(*(x.reshape(-1, *x.shape[len(batch):]) for x in arrays), config)
    return tuple(out.reshape(*batch, *out.shape[1:]) for out in outs)

  return flat_call


def _partitioned(
    call: Callable, ring_call: Callable, operands: tuple[_Kind, ...], results: tuple[_Kind, ...]
) -> Callable:
  """`call(*arrays, config)` as a custom_partitioning op whose shards run `call` on their local arrays, or
  `ring_call(*arrays, config, axis_name)` when the sequence is split (`_Layout.sequence`); both flattened."""
  kinds = (*operands, _Kind.CONFIG_KEY)

  def keyed_call(*args):
    *arrays, _, config = args
    return _over_leading_dims(call, operands)(*arrays, config)

  def per_shard(config: AttentionConfig, layout: _Layout, *args):
    *arrays, _ = args
    local = functools.partial(ring_call, axis_name=layout.ring_axis) if layout.sequence else call
    # JAX traces this in the context of the compile: under explicit sharding, the user's mesh, whose shardings
    # would then annotate every op of the ring after the partitioner has run (XLA cannot lower those). The
    # per-shard program needs no mesh: its collectives name their axes.
    with jax.sharding.use_abstract_mesh(_NO_MESH):
      outs = _over_leading_dims(local, operands)(*arrays, config)
    # dk, dv: each shard summed only over its part of a kv head's query-head group.
    return tuple(
        jax.lax.psum(out, layout.group_axes) if kind is _Kind.KEY_VALUE and layout.group_axes else out
        for out, kind in zip(outs, results))

  def partition(config, mesh, arg_shapes, result_shape):
    del result_shape
    layout = _choose_layout(mesh, kinds, arg_shapes, warn=True)
    return (mesh, functools.partial(per_shard, config, layout), _shardings(mesh, layout, results),
            _shardings(mesh, layout, kinds))

  def infer_sharding_from_operands(config, mesh, arg_shapes, result_shape):
    del config, result_shape
    return _shardings(mesh, _choose_layout(mesh, kinds, arg_shapes, warn=False), results)

  op = custom_partitioning(keyed_call, static_argnums=(len(kinds),))
  op.def_partition(
      partition,
      infer_sharding_from_operands=infer_sharding_from_operands,
      sharding_rule=_sharding_rule(kinds, results),
  )
  return lambda *args: op(*args[:-1], _config_key(args[-1]), args[-1])


def _sharded(
    call: Callable, ring_call: Callable, operands: tuple[_Kind, ...], results: tuple[_Kind, ...]
) -> Callable:
  """`call(*arrays, config)` partitioned as above, in whichever sharding context it is traced.

  - Inside a shard_map that leaves some mesh axes automatic (`axis_names` a strict subset), custom_partitioning
    cannot express per-shard layouts (XLA rejects its shardings there), so the plain call runs: operands split
    over the automatic axes are gathered. Fully manual contexts (shard_map over all axes, pmap) and a single
    device lower the plain call too, inside custom_partitioning.
  - Under explicit sharding (a context mesh with Explicit axes) every array's type carries its sharding, and the
    custom calls' results would be typed replicated. The op runs in `auto_axes`, so the partitioner chooses its
    layout as above, and its results are typed like their operands: o, dq like q; dk, dv like k; lse, dlse
    [B, H, S] with q's batch, head and sequence axes.
  """
  partitioned = _partitioned(call, ring_call, operands, results)
  call = _over_leading_dims(call, operands)

  def result_specs(arrays) -> tuple[PartitionSpec, ...]:
    def full_spec(x):
      spec = jax.typeof(x).sharding.spec
      return PartitionSpec(*spec, *(None,) * (x.ndim - len(spec)))

    query = full_spec(arrays[operands.index(_Kind.QUERY)])
    key = full_spec(arrays[operands.index(_Kind.KEY_VALUE)])
    *batch, seq, heads, _ = query
    stats = PartitionSpec(*batch, heads, seq)
    return tuple({_Kind.QUERY: query, _Kind.KEY_VALUE: key, _Kind.STATS: stats}[kind] for kind in results)

  def sharded_call(*args):
    *arrays, config = args
    mesh = jax.sharding.get_abstract_mesh()
    partially_manual = bool(mesh.manual_axes) and len(mesh.manual_axes) < len(mesh.axis_names)
    run = call if partially_manual else partitioned
    if not mesh.explicit_axes:
      return run(*arrays, config)
    in_auto_axes = jax.sharding.auto_axes(
        lambda *xs: run(*xs, config), axes=mesh.explicit_axes, out_sharding=result_specs(arrays))
    return in_auto_axes(*arrays)

  return sharded_call


# `_ffi.forward` and `_ffi.backward` with the rules above; same signatures, and every array may have more than
# one leading batch dimension (all with the same sizes).
forward = _sharded(_ffi.forward, ring.sharded_forward, _FORWARD_OPERANDS, _FORWARD_RESULTS)
backward = _sharded(_ffi.backward, ring.sharded_backward, _BACKWARD_OPERANDS, _BACKWARD_RESULTS)
