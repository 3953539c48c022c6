"""Helpers for tests of the APIs that choose between jax_flash's kernels and a dense fallback."""

from __future__ import annotations

import contextlib
import warnings

import jax

from jax_flash import FallbackWarning

FORWARD_TARGET = "jax_flash_fwd"


@contextlib.contextmanager
def no_fallback():
  """Fails the test if any jax_flash.FallbackWarning is raised inside."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", FallbackWarning)
    yield


def run_on_jax_flash(fn, *args):
  """fn(*args) under jit, asserting that it calls jax_flash's forward custom call and warns of no fallback."""
  with no_fallback():
    lowered = jax.jit(fn).lower(*args)
  assert FORWARD_TARGET in lowered.as_text(), "expected jax_flash's kernels, found no jax_flash custom call"
  return lowered.compile()(*args)


def lowers_to_jax_flash(fn, *args) -> bool:
  """True when fn(*args), jitted, calls jax_flash's forward custom call."""
  return FORWARD_TARGET in jax.jit(fn).lower(*args).as_text()
