"""jax_flash._band: top-left bands (how jax.nn and Flax state masks) and their exact jax_flash equivalents."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jax_flash._band import Band
from jax_flash._config import AttentionConfig
from jax_flash.reference import visible_mask

LENGTHS = range(1, 6)
BOUNDS = [None, *range(-6, 7)]


def _all_bands():
  for seqlen_q, seqlen_k, lo, hi in itertools.product(LENGTHS, LENGTHS, BOUNDS, BOUNDS):
    yield seqlen_q, seqlen_k, Band(lo, hi)


def test_visible_is_the_band_definition():
  band = Band(-1, 2)
  expected = np.array([[-1 <= j - i <= 2 for j in range(5)] for i in range(4)])
  np.testing.assert_array_equal(band.visible(4, 5, xp=np), expected)


def test_empty_rows_are_detected_exactly():
  for seqlen_q, seqlen_k, band in _all_bands():
    visible = band.visible(seqlen_q, seqlen_k, xp=np)
    assert band.has_empty_rows(seqlen_q, seqlen_k) == (not visible.any(axis=1).all()), (seqlen_q, seqlen_k, band)


def test_jax_flash_arguments_reproduce_every_band_they_can_express():
  for seqlen_q, seqlen_k, band in _all_bands():
    if band.has_empty_rows(seqlen_q, seqlen_k):
      continue
    aligned = band.normalized(seqlen_q, seqlen_k).to_jax_flash(seqlen_q, seqlen_k)
    if aligned is None:
      # Only an upper edge above the bottom-right diagonal is out of reach (window bounds are >= 0).
      assert band.hi is not None and band.hi < seqlen_k - seqlen_q, (seqlen_q, seqlen_k, band)
      continue
    causal, window_size = aligned
    back = Band.from_jax_flash(seqlen_q, seqlen_k, causal=causal, window_size=window_size)
    np.testing.assert_array_equal(
        back.visible(seqlen_q, seqlen_k, xp=np), band.visible(seqlen_q, seqlen_k, xp=np),
        err_msg=f"{band} over T={seqlen_q}, S={seqlen_k} -> causal={causal}, window_size={window_size}",
    )


@pytest.mark.parametrize(
    "causal, window_size",
    [(False, (-1, -1)), (False, (2, -1)), (False, (0, 3)), (False, (3, 1)), (True, (-1, -1)), (True, (2, 0))],
)
def test_from_jax_flash_matches_the_reference_mask(causal, window_size):
  config = AttentionConfig(1.0, causal=causal, window_left=window_size[0], window_right=window_size[1])
  for seqlen_q, seqlen_k in [(3, 3), (2, 5), (5, 2)]:
    band = Band.from_jax_flash(seqlen_q, seqlen_k, causal=causal, window_size=window_size)
    np.testing.assert_array_equal(
        band.visible(seqlen_q, seqlen_k, xp=np), np.asarray(visible_mask(seqlen_q, seqlen_k, config))
    )


def test_from_mask_recovers_bands_and_rejects_other_masks():
  for seqlen_q, seqlen_k, band in _all_bands():
    visible = band.visible(seqlen_q, seqlen_k, xp=np)
    found = Band.from_mask(visible)
    if not visible.any():
      assert found is None
    else:
      np.testing.assert_array_equal(found.visible(seqlen_q, seqlen_k, xp=np), visible)
      assert found == found.normalized(seqlen_q, seqlen_k)
  holes = np.ones((4, 4), bool)
  holes[2, 1] = False  # a band with one hidden pair inside is no band
  assert Band.from_mask(holes) is None
  assert Band.from_mask(np.eye(4, dtype=bool)[::-1]) is None  # anti-diagonal


def test_intersect_keeps_the_tighter_bounds():
  assert Band(-3, None).intersect(Band(None, 0)) == Band(-3, 0)
  assert Band(-3, 2).intersect(Band(-1, 5)) == Band(-1, 2)
  assert Band().intersect(Band()) == Band()
