"""A jax_flash call captured into a CUDA graph (XLA command buffers) gives the results of the uncaptured call."""

from __future__ import annotations

import os
import pathlib
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


def _command_buffer_computations(dump_dir: pathlib.Path) -> list[str]:
  """The computations XLA outlined into command buffers, from the optimized HLO it dumped."""
  blocks = []
  for path in dump_dir.glob("*after_optimizations.txt"):
    for block in path.read_text().split("\n\n"):
      header = block.lstrip().split("\n", 1)[0]
      if "command_buffer" in header:
        blocks.append(block)
  return blocks


def test_command_buffer_capture_matches_uncaptured_run(tmp_path, rng):
  shape_q, shape_kv = (2, 300, 4, 64), (2, 420, 2, 64)
  np.savez(tmp_path / "inputs.npz", dtype="bfloat16",
           q=rng.standard_normal(shape_q, dtype=np.float32), k=rng.standard_normal(shape_kv, dtype=np.float32),
           v=rng.standard_normal(shape_kv, dtype=np.float32),
           dout=rng.standard_normal(shape_q, dtype=np.float32))
  dump = tmp_path / "dump"
  captured = _run_child(tmp_path, "captured", f"{CAPTURE_FLAGS} --xla_dump_to={dump} --xla_dump_hlo_as_text")
  plain = _run_child(tmp_path, "plain", NO_CAPTURE_FLAGS)

  outlined = "\n".join(_command_buffer_computations(dump))
  assert "jax_flash_fwd" in outlined and "jax_flash_bwd" in outlined, (
      "XLA did not put the jax_flash custom calls into a command buffer; optimized HLO dumped in " + str(dump))
  for name in ("o", "lse", "dk", "dv"):
    assert np.array_equal(captured[name], plain[name]), f"{name} differs between captured and uncaptured runs"
  assert_close(captured["dq"], plain["dq"], jnp.bfloat16, "dq, captured vs uncaptured", factor=0.1)
