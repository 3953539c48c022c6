"""A jax_flash call captured into a CUDA graph (XLA command buffers) gives the results of the uncaptured call."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close

pytestmark = pytest.mark.gpu

CHILD = pathlib.Path(__file__).with_name("gpu_run_attention.py")
# Capture custom calls into command buffers even when they are alone in the program.
CAPTURE_FLAGS = "--xla_gpu_enable_command_buffer=CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"
NO_CAPTURE_FLAGS = "--xla_gpu_enable_command_buffer="


def _run_child(tmp_path: pathlib.Path, name: str, xla_flags: str) -> dict[str, np.ndarray]:
  out = tmp_path / f"{name}.npz"
  env = dict(os.environ, XLA_FLAGS=xla_flags, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run([sys.executable, str(CHILD), str(tmp_path / "inputs.npz"), str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"{name} run failed:\n{proc.stderr[-4000:]}"
  return dict(np.load(out))


def _thunk_kinds(dump_dir: pathlib.Path) -> str:
  """The final thunk sequences XLA dumped (after its thunk passes, which wrap commands into kCommandBuffer thunks)."""
  after = sorted(dump_dir.glob("*thunk_sequence_after_thunk_passes.txt")) or sorted(dump_dir.glob("*thunk_sequence.txt"))
  return "\n".join(path.read_text() for path in after)


def test_command_buffer_capture_matches_uncaptured_run(tmp_path, rng):
  shape_q, shape_kv = (2, 300, 4, 64), (2, 420, 2, 64)
  np.savez(tmp_path / "inputs.npz", dtype="bfloat16",
           q=rng.standard_normal(shape_q, dtype=np.float32), k=rng.standard_normal(shape_kv, dtype=np.float32),
           v=rng.standard_normal(shape_kv, dtype=np.float32),
           dout=rng.standard_normal(shape_q, dtype=np.float32))
  captured_dump, plain_dump = tmp_path / "captured_dump", tmp_path / "plain_dump"
  captured = _run_child(tmp_path, "captured", f"{CAPTURE_FLAGS} --xla_dump_to={captured_dump}")
  plain = _run_child(tmp_path, "plain", f"{NO_CAPTURE_FLAGS} --xla_dump_to={plain_dump}")

  # Only custom calls may become commands under CAPTURE_FLAGS, and jax_flash's are the only ones in the program.
  captured_thunks, plain_thunks = _thunk_kinds(captured_dump), _thunk_kinds(plain_dump)
  assert "kCommandBuffer" in captured_thunks, "no command buffer in the captured run:\n" + captured_thunks[:3000]
  assert not re.search(r"^\d+:\s*kCustomCall", captured_thunks, re.MULTILINE), (
      "a custom call runs outside the command buffers:\n" + captured_thunks[:3000])
  assert "kCommandBuffer" not in plain_thunks, "the uncaptured run used command buffers:\n" + plain_thunks[:3000]
  for name in ("o", "lse", "dk", "dv"):
    assert np.array_equal(captured[name], plain[name]), f"{name} differs between captured and uncaptured runs"
  assert_close(captured["dq"], plain["dq"], jnp.bfloat16, "dq, captured vs uncaptured", factor=0.1)
