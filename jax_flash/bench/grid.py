"""The FlashAttention-3 paper's benchmark grid and the FLOP counts that turn times into TFLOP/s."""

from __future__ import annotations

import dataclasses

TOKENS = 16384  # batch x seqlen
HIDDEN = 2048  # heads x head_dim
HEAD_DIMS = (64, 128, 256)
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_HEAD_DIMS = (64, 128)
QUICK_SEQLENS = (1024, 4096)
DTYPES = ("bfloat16", "float16")

# Passes and their cost in units of the forward's matmul FLOPs.
PASS_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
PASSES = tuple(PASS_FLOP_FACTOR)


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  seqlen: int
  heads: int
  head_dim: int
  causal: bool

  @classmethod
  def from_grid(cls, seqlen: int, head_dim: int, causal: bool) -> "Shape":
    return cls(batch=TOKENS // seqlen, seqlen=seqlen, heads=HIDDEN // head_dim, head_dim=head_dim, causal=causal)

  def flops(self, pass_name: str) -> float:
    """Attention matmul FLOPs: forward 4 B H S^2 D, halved when causal; backward 2.5x; fwd+bwd 3.5x."""
    forward = 4.0 * self.batch * self.heads * self.seqlen * self.seqlen * self.head_dim
    if self.causal:
      forward /= 2
    return forward * PASS_FLOP_FACTOR[pass_name]

  def label(self) -> str:
    return f"D{self.head_dim} S{self.seqlen}{' causal' if self.causal else ''}"


def shapes(quick: bool, head_dims=None, seqlens=None) -> list[Shape]:
  """The grid (or its quick subset), optionally restricted to some head dims and sequence lengths."""
  head_dims = head_dims or (QUICK_HEAD_DIMS if quick else HEAD_DIMS)
  seqlens = seqlens or (QUICK_SEQLENS if quick else SEQLENS)
  return [Shape.from_grid(s, d, c) for d in head_dims for s in seqlens for c in (False, True)]


def coarse_to_fine(shapes_: list[Shape]) -> list[Shape]:
  """The same shapes, every other sequence length (the longest included) first: a run cut short by its time limit
  still covers every (head dim, causal) panel across the whole range of lengths."""
  seqlens = sorted({s.seqlen for s in shapes_})
  rank = {s: ((len(seqlens) - 1 - i) % 2, i) for i, s in enumerate(seqlens)}
  return sorted(shapes_, key=lambda s: rank[s.seqlen])
