"""Runs tests/multi_device_cases.py on 8 simulated CPU devices, in a subprocess: the device count must be set
before JAX starts, and the rest of the suite runs with one device."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

SIMULATED_DEVICES = 8
CASES = pathlib.Path(__file__).with_name("multi_device_cases.py")
OUTPUT_TAIL = 6000  # characters of the subprocess' output shown on failure


def test_sharding_cases_pass_on_8_simulated_cpu_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={SIMULATED_DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", CASES.name],
      # From tests/, so that `python -m pytest` puts no source checkout of jax_flash ahead of the installed one.
      cwd=CASES.parent, env=env, capture_output=True, text=True, check=False)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-OUTPUT_TAIL:]
  summary = output.strip().splitlines()[-1]
  assert "passed" in summary and "skipped" not in summary, summary
