"""Flax is an optional dependency: jax_flash imports without it, and jax_flash.flax says how to get it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_WITHOUT_FLAX = textwrap.dedent(
    """
    import sys
    sys.modules["flax"] = None  # as if Flax were not installed
    import jax_flash
    print(jax_flash.dot_product_attention.__name__)
    try:
      import jax_flash.flax
    except ImportError as e:
      print(e)
    """
)


def test_jax_flash_imports_without_flax_and_its_flax_package_names_the_extra(tmp_path):
  # Run outside the source tree, so the installed package (with its extension) is the one imported.
  result = subprocess.run(
      [sys.executable, "-c", _WITHOUT_FLAX], cwd=tmp_path, capture_output=True, text=True, check=True
  )
  lines = result.stdout.splitlines()
  assert lines[0] == "dot_product_attention"
  assert "pip install 'jax_flash[flax]'" in lines[1]
