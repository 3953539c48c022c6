"""Ring attention: exact attention over a sequence split across the devices of one mapped axis.

Each device holds a shard of the sequence, q [B, S/N, Hq, D] and k, v [B, S/N, Hk, D]. The K/V shards travel
around the ring of N devices with `lax.ppermute`; at every step each device runs jax_flash's kernel on its queries
against the K/V block it holds, and merges the block's (o, lse) into a float32 running result (log-sum-exp merge).
The backward visits the blocks in the forward's reverse order (starting on the block the forward ended with, kept
as a residual, and ending on the device's own), recomputes each block's gradient from the GLOBAL o and lse (which
makes it exactly that block's share), and carries float32 dK/dV accumulators with the blocks, so they arrive at
their owners during the owners' last kernels.

Overlap. The next transfer is issued before the current block's kernel and neither depends on the other, so XLA
schedules the transfer's collective-permute-start before the kernel and its done after it, on a stream of its own.
Two things keep transfer and kernel from running side by side (2 x H200 traces of
`examples/ring_attention_benchmark.py --profile-dir`; README's ring section has the numbers):
- XLA keeps one collective-permute in flight, so of K and V the second runs synchronously, exposed, unless XLA's
  combiner merges the two into one collective. It does so up to `xla_gpu_collective_permute_combine_threshold_bytes`
  of K plus V (30 MiB by default); raising it above one shard's K plus V (an XLA flag or compiler option) makes the
  step one transfer.
- NCCL's send/receive kernel runs 16 CTAs that cannot share an SM with a CTA of the persistent Hopper forward, and
  it must run on both GPUs at once. Which of the two starts first varies from call to call. NCCL first: it holds
  16 SMs for its ~0.27 ms; with unmasked tiles split statically over its CTAs the forward ended about that much
  later, so steps beside a transfer take tiles from a counter (`TRANSFER_DYNAMIC_SCHEDULE`). The forward first:
  NCCL waits for the forward's CTAs to retire and runs mostly exposed. Leaving SMs free (`TRANSFER_SM_MARGIN`)
  measured no faster.
For ring training on the GPUs of one process, compile the training step with `GPU_COMPILER_OPTIONS` (below): K/V
then move by copy-engine peer copies, one collective per step, and run beside the kernels without taking SMs.

Masks. A device's shard is made of one chunk (contiguous layout) or two chunks (zigzag layout) of the global
sequence. For each ring step, device and (query chunk, key chunk) pair, the global chunk positions decide at trace
time whether the pair is fully masked, fully visible or cut by the causal/window diagonal; the kernel's internal
`diagonal_offset` places a cut pair's diagonal where the global mask has it. Pairs are grouped into as few kernel
calls as express the mask exactly. Devices whose plans differ select theirs with `lax.switch`, which lowers to an
HLO conditional: XLA runs only the chosen branch, so fully masked blocks cost no kernel time (a select would run
every branch). On GPUs a conditional reads its branch index on the host, which waits for the stream: about 30 us
of idle GPU per such step on an H200 (the causal zigzag timeline of the benchmark). Steps where no device has work
are not computed at all, and K/V jump over them in one transfer, so a sliding window only pays for the ring steps
it spans.

Layouts. Causal attention over contiguous shards leaves device 0 with one block of work and device N-1 with N.
The zigzag layout (device i holds global chunks i and 2N-1-i of 2N) gives every device the same work at every step.
`to_ring_layout` / `from_ring_layout` move a global sequence into and out of a layout.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_flash import _ffi
from jax_flash._config import UNBOUNDED, AttentionConfig
from jax_flash._validation import check_attention_args

ZIGZAG = "zigzag"
CONTIGUOUS = "contiguous"
LAYOUTS = (ZIGZAG, CONTIGUOUS)
_CHUNKS_PER_SHARD = {ZIGZAG: 2, CONTIGUOUS: 1}

# Axes of the sequence dimension: q/k/v/o [B, S, H, D] and lse [B, H, S].
_SEQ_AXIS = 1
_LSE_SEQ_AXIS = 2
# SMs the persistent Hopper forward leaves free during a ring step, for NCCL's K/V transfer to run beside it. NCCL's
# send/receive kernel takes 16 CTAs (640 threads, ~100 KB of shared memory each) that no forward CTA can share an SM
# with: on 2 x H200 margins of 4 and 8 cannot host it and measured slower than 0, and 16 measured no faster (the
# forward takes 10% longer on 116 SMs; README's ring section, the ring benchmark's --variant sm16:sm_margin=16), so
# none is left.
TRANSFER_SM_MARGIN = 0
# The persistent Hopper forward hands out its tiles through an atomic counter during a ring step instead of a fixed
# stride: when NCCL's kernel starts first and holds SMs, the forward CTAs that did start take the late ones' tiles, so
# the kernel's end is not held back by the transfer (with the fixed stride it took 0.96-1.39 ms instead of 0.80).
TRANSFER_DYNAMIC_SCHEDULE = True

# XLA options for ring training on the GPUs of one process: `jax.jit(step, compiler_options=GPU_COMPILER_OPTIONS)`,
# or as flags before JAX starts, XLA_FLAGS="--xla_gpu_collective_permute_mode=peer
# --xla_gpu_collective_permute_combine_threshold_bytes=1073741824". Peer memory: each collective-permute is a
# copy-engine copy into the peer GPU's buffer instead of NCCL's send/receive kernel, which cannot share SMs with the
# persistent forward. The threshold: K and V of a step travel as one collective (XLA keeps one in flight; above
# its default 30 MiB the second would run synchronously). They concern GPU collective-permutes only; a CPU compile
# ignores them.
GPU_COMPILER_OPTIONS = {
    "xla_gpu_collective_permute_mode": "COLLECTIVES_PEER_MEMORY",
    "xla_gpu_collective_permute_combine_threshold_bytes": 1 << 30,
}

AxisName = Hashable | tuple[Hashable, ...]


# ----------------------------------------------------------------------------------------------------------------
# Layouts


def _chunk_ids(num_shards: int, layout: str, shard: int, split: int | None = None) -> tuple[int, ...]:
  """Global chunk indices held by `shard`, in local order, its shard cut into `split` chunks (default: the layout's
  own count; chunks are S / (num_shards * split) long). A contiguous shard may be cut finer, a zigzag one not."""
  split = _CHUNKS_PER_SHARD[layout] if split is None else split
  if layout == ZIGZAG:
    return (shard, 2 * num_shards - 1 - shard)
  return tuple(shard * split + j for j in range(split))


def _layout_order(num_shards: int, layout: str) -> np.ndarray:
  """Global chunk index at each chunk position of the laid-out sequence, shard after shard."""
  return np.array([c for shard in range(num_shards) for c in _chunk_ids(num_shards, layout, shard)])


def _check_layout(layout: Any) -> str:
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}")
  return layout


def _permute_chunks(x: Any, num_shards: Any, layout: Any, axis: Any, inverse: bool, name: str) -> jax.Array:
  layout = _check_layout(layout)
  if isinstance(num_shards, (bool, np.bool_)) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
    raise ValueError(f"{name}: num_shards must be a positive int; got {num_shards!r}")
  on_host = isinstance(x, np.ndarray)
  if not on_host:
    x = jnp.asarray(x)
  if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
    raise ValueError(f"{name}: axis must be an int in [-{x.ndim}, {x.ndim}) for an array of shape {x.shape}; "
                     f"got {axis!r}")
  axis = int(axis) % x.ndim
  order = _layout_order(int(num_shards), layout)
  if x.shape[axis] % len(order):
    raise ValueError(
        f"{name}: the sequence length (axis {axis} of shape {x.shape}) must be a multiple of {len(order)} "
        f"({num_shards} shards x {_CHUNKS_PER_SHARD[layout]} chunks for layout {layout!r})"
    )
  chunked = x.reshape(x.shape[:axis] + (len(order), x.shape[axis] // len(order)) + x.shape[axis + 1:])
  order = np.argsort(order) if inverse else order
  if on_host:
    return np.take(chunked, order, axis=axis).reshape(x.shape)
  # Keep the array's sharding (e.g. the sequence split over a mesh axis): explicit sharding asks for it.
  moved = chunked.at[(slice(None),) * axis + (order,)].get(out_sharding=jax.typeof(chunked).sharding)
  return moved.reshape(x.shape)


def to_ring_layout(x: Any, num_shards: int, layout: str = ZIGZAG, *, axis: int = _SEQ_AXIS) -> Any:
  """Reorders a global sequence so that splitting `axis` into `num_shards` equal contiguous shards hands shard i
  the chunks that `ring_attention(..., layout=layout)` expects on device i.

  zigzag: the sequence is cut into 2N chunks and shard i gets chunks i and 2N-1-i. contiguous: unchanged.
  Use it on every per-token array (tokens, positions, targets, q/k/v); `axis` is the sequence axis (1 for
  [B, S, ...], 2 for an lse [B, H, S]). NumPy arrays stay NumPy (for host-side data pipelines); a jax.Array keeps
  its sharding.
  """
  return _permute_chunks(x, num_shards, layout, axis, inverse=False, name="to_ring_layout")


def from_ring_layout(x: Any, num_shards: int, layout: str = ZIGZAG, *, axis: int = _SEQ_AXIS) -> Any:
  """The inverse of `to_ring_layout`: puts a laid-out sequence (e.g. ring_attention's output) back in order."""
  return _permute_chunks(x, num_shards, layout, axis, inverse=True, name="from_ring_layout")


def default_layout(causal: bool) -> str:
  """The layout `ring_attention` uses when none is given: zigzag for causal attention (balanced), else contiguous."""
  return ZIGZAG if causal else CONTIGUOUS


# ----------------------------------------------------------------------------------------------------------------
# The schedule: which kernel calls each device makes at each ring step (static, built at trace time)


@dataclasses.dataclass(frozen=True)
class _Block:
  """One kernel call: local query rows [rows[0], rows[1]) against rows [cols[0], cols[1]) of the held K/V."""

  rows: tuple[int, int]
  cols: tuple[int, int]
  config: AttentionConfig


_Plan = tuple[_Block, ...]  # the kernel calls of one device at one step; () when all its pairs are masked


@dataclasses.dataclass(frozen=True)
class _Step:
  """A ring step on which at least one device has work."""

  distance: int  # the held K/V shard belongs to the device `distance` places back along the ring
  plans: tuple[_Plan, ...]  # the distinct plans of this step
  plan_of_device: tuple[int, ...]  # index into `plans`, by device


_HIDDEN, _VISIBLE, _CUT = "hidden", "visible", "cut"


def _visibility(delta: int, chunk: int, config: AttentionConfig) -> str:
  """How a chunk x chunk block of queries sees its keys when the diagonal of query row i is at key i + delta."""
  left, right = config.window_left, config.effective_window_right
  # Row i sees keys [i + delta - left, i + delta + right] of [0, chunk).
  if (right != UNBOUNDED and chunk - 1 + delta + right < 0) or (left != UNBOUNDED and delta - left > chunk - 1):
    return _HIDDEN
  if (left == UNBOUNDED or chunk - 1 + delta - left <= 0) and (right == UNBOUNDED or delta + right >= chunk - 1):
    return _VISIBLE
  return _CUT


def _rectangles(n: int):
  """Every sub-rectangle ((a0, a1), (b0, b1)) of an n x n grid of chunk pairs."""
  spans = [(lo, hi) for lo in range(n) for hi in range(lo + 1, n + 1)]
  return [(rows, cols) for rows in spans for cols in spans]


def _rectangle_config(rect, deltas, kinds, chunk: int, config: AttentionConfig) -> AttentionConfig | None:
  """A config under which one kernel call over `rect` reproduces every pair's mask, or None if none does."""
  (a0, a1), (b0, b1) = rect
  cells = [(a, b) for a in range(a0, a1) for b in range(b0, b1)]
  if all(kinds[a][b] == _VISIBLE for a, b in cells):
    return dataclasses.replace(config, causal=False, window_left=UNBOUNDED, window_right=UNBOUNDED,
                               diagonal_offset=0)
  # In the call, pair (a, b)'s diagonal sits at delta_call + ((a - a0) - (b - b0)) * chunk; try the delta_call
  # that makes each pair exact and keep the first that reproduces all of them.
  shift = lambda a, b: ((a - a0) - (b - b0)) * chunk
  for a, b in cells:
    delta_call = deltas[a][b] - shift(a, b)
    if all(
        _visibility(delta_call + shift(x, y), chunk, config) == kinds[x][y]
        and (kinds[x][y] != _CUT or delta_call + shift(x, y) == deltas[x][y])
        for x, y in cells
    ):
      seqlen_q, seqlen_k = (a1 - a0) * chunk, (b1 - b0) * chunk
      # The kernel puts row i's diagonal at i + Sk - Sq + diagonal_offset.
      return dataclasses.replace(config, diagonal_offset=delta_call - (seqlen_k - seqlen_q))
  return None


@functools.lru_cache(maxsize=None)
def _plan_for_pairs(deltas: tuple[tuple[int, ...], ...], chunk: int, config: AttentionConfig) -> _Plan:
  """The fewest kernel calls (then the least computed area) that cover every pair that is not fully masked once.

  deltas[a][b]: where local query chunk a's diagonal falls in held key chunk b. Shards have at most two chunks, so
  trying every set of disjoint rectangles (at most 2^9) is cheap.
  """
  n = len(deltas)
  kinds = [[_visibility(d, chunk, config) for d in row] for row in deltas]
  needed = {(a, b) for a in range(n) for b in range(n) if kinds[a][b] != _HIDDEN}
  if not needed:
    return ()
  options = []
  for rect in _rectangles(n):
    cells = {(a, b) for a in range(*rect[0]) for b in range(*rect[1])}
    rect_config = _rectangle_config(rect, deltas, kinds, chunk, config) if cells & needed else None
    if rect_config is not None:
      options.append((cells, _Block((rect[0][0] * chunk, rect[0][1] * chunk),
                                    (rect[1][0] * chunk, rect[1][1] * chunk), rect_config)))
  best, best_cost = None, None
  for count in range(1, len(needed) + 1):
    for chosen in itertools.combinations(options, count):
      covered = [cells for cells, _ in chosen]
      if sum(map(len, covered)) != len(set().union(*covered)) or not needed <= set().union(*covered):
        continue  # overlapping calls would count a pair twice; uncovered pairs would be missed
      cost = sum(map(len, covered))
      if best_cost is None or cost < best_cost:
        best, best_cost = tuple(block for _, block in chosen), cost
    if best is not None:
      return best
  raise AssertionError("single-pair calls always cover every pair")


def _split(layout: str, kv_layout: str) -> int:
  """Chunks per shard in a schedule whose queries are in `layout` and keys/values in `kv_layout`."""
  return max(_CHUNKS_PER_SHARD[layout], _CHUNKS_PER_SHARD[kv_layout])


@functools.lru_cache(maxsize=None)
def _schedule(num_shards: int, layout: str, kv_layout: str, chunk: int, config: AttentionConfig) -> tuple[_Step, ...]:
  """The ring steps with work, for queries in `layout`, keys/values in `kv_layout`, shards of `chunk`-long chunks
  and the mask in `config`."""
  split = _split(layout, kv_layout)
  steps = []
  for distance in range(num_shards):
    plans = []
    for device in range(num_shards):
      q_chunks = _chunk_ids(num_shards, layout, device, split)
      k_chunks = _chunk_ids(num_shards, kv_layout, (device - distance) % num_shards, split)
      deltas = tuple(tuple((qc - kc) * chunk for kc in k_chunks) for qc in q_chunks)
      plans.append(_plan_for_pairs(deltas, chunk, config))
    if any(plans):
      distinct = list(dict.fromkeys(plans))
      steps.append(_Step(distance, tuple(distinct), tuple(distinct.index(p) for p in plans)))
  return tuple(steps)


# ----------------------------------------------------------------------------------------------------------------
# Forward and backward on local shards


@dataclasses.dataclass(frozen=True)
class _Ring:
  axis_name: AxisName
  size: int
  layout: str  # of the queries (and of q-shaped arrays: o, dout, dq, lse)
  kv_layout: str  # of the keys and values (and of dk, dv)

  def shift(self, x, hops: int):
    """x from the device `hops` places back along the ring (each array its own collective: one dtype each)."""
    if hops % self.size == 0:
      return x
    perm = [(d, (d + hops) % self.size) for d in range(self.size)]
    return jax.tree.map(lambda leaf: lax.ppermute(leaf, self.axis_name, perm), x)

  def schedule(self, seqlen: int, config: AttentionConfig) -> tuple[_Step, ...]:
    return _schedule(self.size, self.layout, self.kv_layout, seqlen // _split(self.layout, self.kv_layout), config)

  def run(self, step: _Step, plan_fn, *operands):
    """plan_fn(plan, *operands) with this device's plan for `step`; a conditional when plans differ by device."""
    if len(step.plans) == 1:
      return plan_fn(step.plans[0], *operands)
    index = jnp.asarray(step.plan_of_device, dtype=jnp.int32)[lax.axis_index(self.axis_name)]
    return lax.switch(index, [functools.partial(plan_fn, plan) for plan in step.plans], *operands)


def _take(x, span: tuple[int, int], axis: int = _SEQ_AXIS):
  return lax.slice_in_dim(x, span[0], span[1], axis=axis)


def _put(x, update, span: tuple[int, int], axis: int = _SEQ_AXIS):
  return lax.dynamic_update_slice_in_dim(x, update, span[0], axis=axis)


def _per_row(stat):
  """[B, H, S] row statistic -> [B, S, H, 1], to scale o [B, S, H, D]."""
  return jnp.swapaxes(stat, 1, 2)[..., None]


def _merge(o_acc, lse_acc, o_blk, lse_blk):
  """Softmax results over two disjoint key sets -> the result over their union, in float32.

  o_acc, o_blk [B, S, H, D] are normalised over their own keys (any float dtype); lse_* [B, H, S] f32.
  """
  lse = jnp.logaddexp(lse_acc, lse_blk)
  # Rows that have seen no key yet have lse -inf on both sides: measure from 0 so their weights are 0, not NaN.
  base = jnp.where(jnp.isneginf(lse), 0.0, lse)
  o = (o_acc.astype(jnp.float32) * _per_row(jnp.exp(lse_acc - base))
       + o_blk.astype(jnp.float32) * _per_row(jnp.exp(lse_blk - base)))
  return o, lse


def _covers_all_rows(plan: _Plan, seqlen: int) -> bool:
  return len(plan) == 1 and plan[0].rows == (0, seqlen)


def _rows_disjoint(plan: _Plan) -> bool:
  spans = sorted(block.rows for block in plan)
  return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _first_plan(plan: _Plan, q, k, v):
  """The result of a one-block plan over all local rows: it starts the accumulator, with nothing to merge."""
  (block,) = plan
  return _ffi.forward(q, _take(k, block.cols), _take(v, block.cols), block.config)


def _forward_plan(plan: _Plan, q, k, v, o_acc, lse_acc):
  """Merges the plan's blocks into (o_acc, lse_acc); merged rows take o_acc's dtype (q's on the final step)."""
  for block in plan:
    o_blk, lse_blk = _ffi.forward(_take(q, block.rows), _take(k, block.cols), _take(v, block.cols), block.config)
    o_rows, lse_rows = _merge(_take(o_acc, block.rows), _take(lse_acc, block.rows, _LSE_SEQ_AXIS), o_blk, lse_blk)
    o_acc = _put(o_acc, o_rows.astype(o_acc.dtype), block.rows)
    lse_acc = _put(lse_acc, lse_rows, block.rows, _LSE_SEQ_AXIS)
  return o_acc, lse_acc


def _beside_transfer(config: AttentionConfig, ring: _Ring) -> AttentionConfig:
  """The kernels' config for ring steps that run beside a K/V transfer: SMs left for it and a dynamic tile schedule
  (a ring of one device has no transfers)."""
  transfers = ring.size > 1
  return dataclasses.replace(config, sm_margin=TRANSFER_SM_MARGIN if transfers else 0,
                             dynamic_schedule=TRANSFER_DYNAMIC_SCHEDULE and transfers)


def _ring_forward(q, k, v, config: AttentionConfig, ring: _Ring):
  """o [B, S/N, Hq, D] (q's dtype), lse [B, Hq, S/N] f32 of the local queries against the whole ring's keys, and
  the K/V block the last step held (where `_ring_backward` starts).

  The accumulator o is float32 between merges, and costs no extra pass where it need not: a first step whose
  kernel call covers every row starts it with the call's result (q's dtype, nothing to merge), and a final step
  whose calls merge each row once writes q's dtype directly (o is rounded once, as a final cast would).
  """
  seqlen = q.shape[_SEQ_AXIS]
  # The kernels of every step but the last run while the next K/V transfer is in flight, and leave it room; the
  # last step's have the GPU to themselves.
  transfer_steps = ring.schedule(seqlen, _beside_transfer(config, ring))
  steps = transfer_steps[:-1] + ring.schedule(seqlen, config)[-1:]
  held = (k, v)
  acc = None  # (o, lse) over the keys seen so far
  for i, step in enumerate(steps):
    # Issue the next transfer first: it and this step's kernels depend only on `held`, so they overlap.
    following = ring.shift(held, steps[i + 1].distance - step.distance) if i + 1 < len(steps) else None
    if acc is None and all(_covers_all_rows(plan, seqlen) for plan in step.plans):
      acc = ring.run(step, _first_plan, q, *held)
    else:
      if acc is None:
        # Derived from q so that they vary over the same mapped axes as q (shard_map's vma typing).
        acc = (jnp.zeros_like(q, dtype=jnp.float32),  # [B, S/N, Hq, D]
               jnp.full_like(jnp.swapaxes(q[..., 0], 1, 2), -jnp.inf, dtype=jnp.float32))  # [B, Hq, S/N]
      final = i + 1 == len(steps) and all(_rows_disjoint(plan) for plan in step.plans)
      o_acc, lse_acc = acc
      acc = ring.run(step, _forward_plan, q, *held, o_acc.astype(q.dtype if final else jnp.float32), lse_acc)
    last_held, held = held, following
  o, lse = acc
  return o.astype(q.dtype), lse, last_held


def _backward_plan(plan: _Plan, dout, q, k, v, o, lse, dlse, dq_acc):
  """Adds this step's dq into dq_acc; returns the held block's dk, dv contributions as fresh f32 arrays, so that
  adding the incoming dK/dV accumulators waits for their transfer only after the kernels."""
  dk = jnp.zeros_like(k, dtype=jnp.float32)  # [B, S/N, Hk, D]
  dv = jnp.zeros_like(v, dtype=jnp.float32)
  for block in plan:
    rows = lambda x, axis=_SEQ_AXIS: _take(x, block.rows, axis)
    dq_blk, dk_blk, dv_blk = _ffi.backward(
        rows(dout), rows(q), _take(k, block.cols), _take(v, block.cols), rows(o), rows(lse, _LSE_SEQ_AXIS),
        rows(dlse, _LSE_SEQ_AXIS), block.config,
    )
    dq_acc = _put(dq_acc, rows(dq_acc) + dq_blk.astype(jnp.float32), block.rows)
    dk = _put(dk, _take(dk, block.cols) + dk_blk.astype(jnp.float32), block.cols)
    dv = _put(dv, _take(dv, block.cols) + dv_blk.astype(jnp.float32), block.cols)
  return dq_acc, dk, dv


def _ring_backward(dout, q, k, v, o, lse, dlse, config: AttentionConfig, ring: _Ring, last_held=None):
  """dq, dk, dv of the local shards, from the cotangents of the global o and lse (local shards of them).

  The steps run in the forward's reverse order, so the block each device holds last is its own: the float32 dK/dV
  accumulators travel with the blocks, and the last one arrives home while the own block's kernels run, instead of
  a transfer after the last kernel that nothing overlaps. The first step's block is `last_held`, the block the
  forward ended with (`_ring_forward`'s third result, kept as a residual); without it, it is fetched here.
  """
  dq_acc = jnp.zeros_like(q, dtype=jnp.float32)
  steps = ring.schedule(q.shape[_SEQ_AXIS], _beside_transfer(config, ring))[::-1]
  held = ring.shift((k, v), steps[0].distance) if last_held is None else last_held
  dkv = None  # float32 dK/dV accumulators of the held block; they travel with it
  for i, step in enumerate(steps):
    last = i + 1 == len(steps)
    hops = None if last else steps[i + 1].distance - step.distance
    # The next block is this device's own when its distance is 0: no transfer for it.
    following = None if last else (k, v) if steps[i + 1].distance == 0 else ring.shift(held, hops)
    dq_acc, dk, dv = ring.run(step, _backward_plan, dout, q, *held, o, lse, dlse, dq_acc)
    dkv = (dk, dv) if dkv is None else (dkv[0] + dk, dkv[1] + dv)
    # The sums travel on with the block; after the last step they are complete and go to the block's owner (no
    # transfer when that is this device, as it is whenever the own block has work).
    dkv = ring.shift(dkv, -step.distance if last else hops)
    held = following
  dk, dv = dkv
  return dq_acc.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ring_attention(q, k, v, config: AttentionConfig, ring: _Ring):
  o, lse, _ = _ring_forward(q, k, v, config, ring)
  return o, lse


def _ring_attention_fwd(q, k, v, config, ring):
  # The block the forward ends on is one more K/V shard per device to keep, and spares the backward a transfer
  # before its first kernel.
  o, lse, last_held = _ring_forward(q, k, v, config, ring)
  return (o, lse), (q, k, v, o, lse, last_held)


def _ring_attention_bwd(config, ring, residuals, cotangents):
  q, k, v, o, lse, last_held = residuals
  dout, dlse = cotangents
  return _ring_backward(dout.astype(q.dtype), q, k, v, o, lse, dlse.astype(jnp.float32), config, ring, last_held)


_ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


# ----------------------------------------------------------------------------------------------------------------
# Public API


def _ring_size(axis_name: Any) -> int:
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  if not names or not all(isinstance(n, Hashable) for n in names):
    raise TypeError(f"axis_name must be a mapped axis name or a non-empty tuple of them; got {axis_name!r}")
  try:
    return int(lax.axis_size(axis_name))
  except NameError as e:
    raise ValueError(
        f"axis_name {axis_name!r} is not a mapped axis here: call ring_attention inside jax.shard_map (or jax.pmap) "
        f"whose mesh has that axis, with the sequence dimension of q, k and v split over it"
    ) from e


def _make_ring(q, k, axis_name: Any, layout: Any, causal: bool) -> _Ring:
  if q.shape[_SEQ_AXIS] != k.shape[_SEQ_AXIS]:
    raise ValueError(
        f"ring_attention needs q and k/v split alike along the sequence: the local seqlen of q "
        f"({q.shape[_SEQ_AXIS]}) must equal that of k and v ({k.shape[_SEQ_AXIS]})"
    )
  size = _ring_size(axis_name)
  layout = default_layout(causal) if layout is None else _check_layout(layout)
  chunks = _CHUNKS_PER_SHARD[layout]
  if q.shape[_SEQ_AXIS] % chunks:
    raise ValueError(
        f"layout {layout!r} splits each local shard into {chunks} chunks: the local seqlen must be a multiple of "
        f"{chunks}; got {q.shape[_SEQ_AXIS]}"
    )
  return _Ring(axis_name, size, layout, layout)


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    axis_name: AxisName,
    causal: bool = False,
    softmax_scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    layout: str | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Exact attention over a sequence split across the devices of the mapped axis `axis_name`.

  Call it inside `jax.shard_map` (or `jax.pmap`) on each device's shard of the sequence; the result on each
  device is that device's shard of `jax_flash.attention` applied to the whole sequence, and so are the gradients.

  Args:
    q: the local queries, [batch, seqlen / N, heads_q, head_dim], N the size of `axis_name`.
    k, v: the local keys and values, [batch, seqlen / N, heads_k, head_dim]; heads_q a multiple of heads_k (GQA).
    axis_name: the mesh axis (or tuple of axes) the sequence is split over; device i is the one with
      `lax.axis_index(axis_name) == i`.
    causal, softmax_scale, window_size, softcap: as in `jax_flash.attention`, in GLOBAL sequence positions
      (q and k/v have the same global length, so the diagonal is query i -> key i).
    layout: which chunks of the global sequence each device holds. "zigzag": device i holds chunks i and 2N-1-i of
      2N (balances causal work; local seqlen must be even); "contiguous": device i holds chunk i of N. Default:
      zigzag when causal, else contiguous. Put data in a layout with `to_ring_layout` and results back with
      `from_ring_layout`. A short sliding window is cheaper contiguous: it then only spans neighbouring devices.
    return_lse: also return the local shard of lse, [batch, heads_q, seqlen / N] float32.

  Returns:
    o [batch, seqlen / N, heads_q, head_dim] in q's dtype (and lse), in the same layout as the inputs.

  K/V move around the ring with `ppermute` (each transfer overlapping a block's kernel); memory per device is
  O(seqlen / N). Differentiable with respect to q, k and v (and through lse when returned).
  """
  config = check_attention_args(
      q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap
  )
  if not isinstance(return_lse, bool):
    raise TypeError(f"return_lse must be a Python bool; got {return_lse!r} ({type(return_lse).__name__})")
  ring = _make_ring(q, k, axis_name, layout, config.causal)
  _ffi.check_platform_supported()
  o, lse = _ring_attention(q, k, v, config, ring)
  return (o, lse) if return_lse else o


# ----------------------------------------------------------------------------------------------------------------
# Entry points for a sharding rule (custom_partitioning) of the forward and backward custom calls


def _sequence_layout(config: AttentionConfig, size: int, seqlen: int) -> str:
  """The layout the sharded entry points compute in: zigzag where it balances causal work (and the shard splits
  in two), contiguous otherwise (no causal mask, or a left window that a contiguous ring spans in few steps)."""
  balanced = config.causal and config.window_left == UNBOUNDED and size > 1 and seqlen % 2 == 0
  return ZIGZAG if balanced else CONTIGUOUS


def _contiguous_to_zigzag(x, ring: _Ring, axis: int):
  """Local contiguous shards -> local zigzag shards, with one transfer per half-shard.

  Contiguous device d holds global chunks 2d and 2d+1 (of 2N); zigzag device e holds chunks e and 2N-1-e. Chunk g
  goes to device z(g) = min(g, 2N-1-g). For each half j, d -> z(2d+j) is a permutation of the devices, and the
  half-chunk that arrives from half j is e's first zigzag chunk when g = e, i.e. when e has the parity of j.
  """
  n = ring.size
  half = x.shape[axis] // 2
  halves = (_take(x, (0, half), axis), _take(x, (half, 2 * half), axis))
  zig = lambda g: min(g, 2 * n - 1 - g)
  arrived = [lax.ppermute(h, ring.axis_name, [(d, zig(2 * d + j)) for d in range(n)]) for j, h in enumerate(halves)]
  even = lax.axis_index(ring.axis_name) % 2 == 0
  first = lax.select(even, arrived[0], arrived[1])
  second = lax.select(even, arrived[1], arrived[0])
  return jnp.concatenate([first, second], axis=axis)


def _zigzag_to_contiguous(x, ring: _Ring, axis: int):
  """The inverse of `_contiguous_to_zigzag`: device e sends its chunk of parity j back to device (chunk) // 2."""
  n = ring.size
  half = x.shape[axis] // 2
  first, second = _take(x, (0, half), axis), _take(x, (half, 2 * half), axis)
  even = lax.axis_index(ring.axis_name) % 2 == 0
  by_parity = (lax.select(even, first, second), lax.select(even, second, first))
  zig = lambda g: min(g, 2 * n - 1 - g)
  halves = [lax.ppermute(h, ring.axis_name, [(zig(2 * d + j), d) for d in range(n)]) for j, h in enumerate(by_parity)]
  return jnp.concatenate(halves, axis=axis)


# Largest ring on which the sharded entry points leave K/V contiguous under zigzag queries. The queries alone decide
# each device's total work, so it stays balanced; but per step it is not, and a device waits for the block its
# neighbour forwards at the start of that neighbour's step. With 2 devices both blocks leave at the start, so
# nothing waits; with 4 and 8 a model of that dependency (each step's work in visible pairs) gives a 12% longer
# ring than zigzag K/V, more than the K/V exchange that zigzag K/V costs.
_MAX_RING_WITH_CONTIGUOUS_KV = 2


def _sharded_ring(q, k, config: AttentionConfig, axis_name: AxisName) -> _Ring:
  """The ring of the sharded entry points. The queries take the balanced layout (they decide each device's work);
  on small rings K/V stay in the contiguous order the partitioner hands over, which spares their exchange into and
  out of zigzag order (and dK, dV's on the way back): the schedule places each held K/V chunk where it lies."""
  if q.shape[_SEQ_AXIS] != k.shape[_SEQ_AXIS]:
    raise ValueError(
        f"ring attention over a sharded sequence needs q and k/v split alike: local seqlen of q "
        f"{q.shape[_SEQ_AXIS]}, of k and v {k.shape[_SEQ_AXIS]} (gather the sequence for cross-attention instead)"
    )
  size = _ring_size(axis_name)
  layout = _sequence_layout(config, size, q.shape[_SEQ_AXIS])
  return _Ring(axis_name, size, layout, CONTIGUOUS if size <= _MAX_RING_WITH_CONTIGUOUS_KV else layout)


def _into_layout(layout: str, ring: _Ring, arrays: Sequence[jax.Array], axes: Sequence[int]):
  """Local contiguous shards -> local shards in `layout`."""
  if layout == CONTIGUOUS:
    return list(arrays)
  return [_contiguous_to_zigzag(x, ring, axis) for x, axis in zip(arrays, axes)]


def _out_of_layout(layout: str, ring: _Ring, arrays: Sequence[jax.Array], axes: Sequence[int]):
  """Local shards in `layout` -> local contiguous shards."""
  if layout == CONTIGUOUS:
    return list(arrays)
  return [_zigzag_to_contiguous(x, ring, axis) for x, axis in zip(arrays, axes)]


def sharded_forward(q, k, v, config: AttentionConfig, axis_name: AxisName):
  """The forward custom call (`_ffi.forward`) for a sequence split over the mesh axes `axis_name`, on local shards.

  Contract, for a `custom_partitioning` rule whose operands have the sequence dimension sharded:
  - Call it where `axis_name` is bound: the `lower_fn` a partition callback returns (custom_partitioning binds
    every mesh axis there), a `jax.shard_map` body, or a `pmap`.
  - q [B, S/N, Hq, D], k, v [B, S/N, Hk, D] are the local shards of a sequence split in N = size(axis_name)
    contiguous blocks along `axis_name` (device with `lax.axis_index(axis_name) == i` holds block i: the order in
    which a NamedSharding tiles a dimension over a tuple of mesh axes). q and k/v must be split alike (self
    attention: equal global seqlen). Batch and heads may additionally be sharded over other mesh axes; the
    ring only communicates over `axis_name`.
  - `config` is the validated AttentionConfig of the call (diagonal_offset 0), in global positions.
  - Returns (o [B, S/N, Hq, D], lse [B, Hq, S/N] f32): the local shards of the global result, with the same
    sharding as q (o) and as q's sequence dimension on lse's last axis.
  Causal attention without a left window bound computes its queries in the zigzag layout (q is exchanged in, o
  and lse out, with two half-shard transfers each), so every device does the same work over the ring; K/V too on
  rings of more than `_MAX_RING_WITH_CONTIGUOUS_KV` devices. Anything else runs contiguously.
  """
  ring = _sharded_ring(q, k, config, axis_name)
  (q,) = _into_layout(ring.layout, ring, (q,), (_SEQ_AXIS,))
  k, v = _into_layout(ring.kv_layout, ring, (k, v), (_SEQ_AXIS,) * 2)
  o, lse, _ = _ring_forward(q, k, v, config, ring)
  return tuple(_out_of_layout(ring.layout, ring, (o, lse), (_SEQ_AXIS, _LSE_SEQ_AXIS)))


def sharded_backward(dout, q, k, v, o, lse, dlse, config: AttentionConfig, axis_name: AxisName):
  """The backward custom call (`_ffi.backward`) for a sequence split over `axis_name`, on local shards.

  Same contract as `sharded_forward`: dout, q, o [B, S/N, Hq, D], k, v [B, S/N, Hk, D], lse, dlse [B, Hq, S/N] are
  local contiguous shards; o and lse are `sharded_forward`'s results. Returns the local shards of (dq, dk, dv).
  """
  ring = _sharded_ring(q, k, config, axis_name)
  seq, lse_seq = _SEQ_AXIS, _LSE_SEQ_AXIS
  dout, q, o, lse, dlse = _into_layout(ring.layout, ring, (dout, q, o, lse, dlse), (seq, seq, seq, lse_seq, lse_seq))
  k, v = _into_layout(ring.kv_layout, ring, (k, v), (seq, seq))
  dq, dk, dv = _ring_backward(dout, q, k, v, o, lse, dlse, config, ring)
  (dq,) = _out_of_layout(ring.layout, ring, (dq,), (seq,))
  dk, dv = _out_of_layout(ring.kv_layout, ring, (dk, dv), (seq, seq))
  return dq, dk, dv
