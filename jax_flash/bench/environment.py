"""Where and how a benchmark ran: recorded with every result file, so numbers are never read without their GPU,
driver, software versions, date and command."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import shutil
import subprocess

import jax
import jaxlib

_QUERY_SECONDS = 10


def _nvidia_smi(field: str) -> str | None:
  """One field of the first GPU from nvidia-smi, or None where there is no nvidia-smi or it fails."""
  if shutil.which("nvidia-smi") is None:
    return None
  try:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=_QUERY_SECONDS, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  lines = out.strip().splitlines()
  return lines[0].strip() if lines else None


def _git_revision() -> str | None:
  """The commit of the measured source, when it is a git checkout."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          timeout=_QUERY_SECONDS, check=True).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def describe(argv: list[str], revision: str | None = None) -> dict:
  """GPU (or CPU) name, driver, JAX / jaxlib / jax_flash versions and build, date (UTC), command, revision."""
  import jax_flash

  device = jax.devices()[0]
  return {
      "device": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "driver": _nvidia_smi("driver_version") if device.platform == "gpu" else None,
      "gpu_clocks_max_mhz": _nvidia_smi("clocks.max.sm") if device.platform == "gpu" else None,
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "jax_flash": jax_flash.__version__,
      "jax_flash_build": jax_flash.build_info(),
      "revision": revision or _git_revision(),
      "python": platform.python_version(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "command": shlex.join(["python", "-m", "jax_flash.bench", *argv]),
      "env": {k: os.environ[k] for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS") if k in os.environ},
  }
