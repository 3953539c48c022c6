"""Diagonal bands: the visibility patterns jax_flash's kernels compute, in the coordinates other APIs use.

jax.nn and Flax state masks with query i and key j on the same diagonal when j == i (top-left alignment:
``jnp.tril(ones((T, S)))`` is their causal mask). jax_flash aligns causal and window bounds to the bottom-right
corner instead (query i's diagonal is key i + S - T). A `Band` holds a pattern in the top-left coordinates, so
masks, ``is_causal``, ``local_window_size`` and jax_flash's own ``causal``/``window_size`` all meet in one place,
and says whether (and how) jax_flash.attention computes it exactly.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import jax.numpy as jnp
import numpy as np

from jax_flash._config import UNBOUNDED


@dataclasses.dataclass(frozen=True)
class Band:
  """Query i sees key j when ``lo <= j - i <= hi``; None leaves that side unbounded."""

  lo: int | None = None
  hi: int | None = None

  def __str__(self) -> str:
    at = lambda bound: "i" if bound == 0 else f"i{bound:+d}"
    lower = "" if self.lo is None else f"{at(self.lo)} <= "
    upper = "" if self.hi is None else f" <= {at(self.hi)}"
    return f"query i sees keys {lower}j{upper}"

  def intersect(self, other: Band) -> Band:
    pick = lambda a, b, f: a if b is None else b if a is None else f(a, b)
    return Band(pick(self.lo, other.lo, max), pick(self.hi, other.hi, min))

  @classmethod
  def from_jax_flash(cls, seqlen_q: int, seqlen_k: int, *, causal: bool, window_size: tuple[int, int]) -> Band:
    """The band of jax_flash.attention's bottom-right aligned ``causal`` and ``window_size`` (checked by the caller)."""
    diagonal = seqlen_k - seqlen_q
    left, right = window_size
    right = 0 if causal else right
    return cls(None if left == UNBOUNDED else diagonal - left, None if right == UNBOUNDED else diagonal + right)

  def normalized(self, seqlen_q: int, seqlen_k: int) -> Band:
    """The same pattern with bounds that hide nothing ([T, S] has j - i in [1 - T, S - 1]) written as None."""
    lo = None if self.lo is not None and self.lo <= 1 - seqlen_q else self.lo
    hi = None if self.hi is not None and self.hi >= seqlen_k - 1 else self.hi
    return Band(lo, hi)

  @property
  def is_full(self) -> bool:
    return self.lo is None and self.hi is None

  def has_empty_rows(self, seqlen_q: int, seqlen_k: int) -> bool:
    """True when some query row sees no key: row i sees j in [max(0, i + lo), min(S - 1, i + hi)]."""
    if self.hi is not None and self.hi < 0:  # row 0 sees nothing
      return True
    if self.lo is not None and self.lo > seqlen_k - seqlen_q:  # row T - 1 sees nothing
      return True
    return self.lo is not None and self.hi is not None and self.lo > self.hi

  def to_jax_flash(self, seqlen_q: int, seqlen_k: int) -> tuple[bool, tuple[int, int]] | None:
    """(causal, window_size) for jax_flash.attention giving exactly this band, or None when no pair does.

    None when an edge lies beyond jax_flash's bottom-right diagonal on the wrong side, which window bounds (>= 0)
    cannot express: the upper edge above it (e.g. jax.nn's top-left causal mask with T < S), or the lower edge
    below it (then the last rows see no key).
    """
    diagonal = seqlen_k - seqlen_q
    left = UNBOUNDED if self.lo is None else diagonal - self.lo
    right = UNBOUNDED if self.hi is None else self.hi - diagonal
    if (self.lo is not None and left < 0) or (self.hi is not None and right < 0):
      return None
    if right == 0:
      return True, (left, UNBOUNDED)
    return False, (left, right)

  def visible(self, seqlen_q: int, seqlen_k: int, xp: ModuleType = jnp):
    """[T, S] boolean (``xp`` is jax.numpy or numpy): True where query i sees key j."""
    offset = xp.arange(seqlen_k)[None, :] - xp.arange(seqlen_q)[:, None]  # [T, S] j - i
    visible = xp.ones((seqlen_q, seqlen_k), dtype=bool)
    if self.lo is not None:
      visible = visible & (offset >= self.lo)
    if self.hi is not None:
      visible = visible & (offset <= self.hi)
    return visible

  @classmethod
  def from_mask(cls, mask: np.ndarray) -> Band | None:
    """The band equal to a concrete [T, S] boolean mask, or None when the mask is no band (or shows nothing)."""
    seqlen_q, seqlen_k = mask.shape
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
      return None
    offsets = cols - rows
    band = cls(int(offsets.min()), int(offsets.max()))
    if not np.array_equal(band.visible(seqlen_q, seqlen_k, xp=np), mask):
      return None
    return band.normalized(seqlen_q, seqlen_k)
