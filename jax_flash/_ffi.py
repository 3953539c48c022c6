"""The bridge to the compiled extension: registers its FFI targets with XLA and builds the custom calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash._config import AttentionConfig

try:
  from jax_flash import _jax_flash_ext as _ext
except ImportError as e:  # pragma: no cover - only when the package was not built
  raise ImportError(
      "jax_flash's compiled extension (_jax_flash_ext) is missing: install the package with `pip install .` "
      "from its source tree rather than importing it from an unbuilt checkout."
  ) from e

FWD_TARGET = "jax_flash_fwd"
BWD_TARGET = "jax_flash_bwd"

# Platforms with a handler in this build, e.g. {"cpu"} or {"cpu", "CUDA"}.
_PLATFORMS: set[str] = set()
for _name, _handlers in _ext.registrations().items():
  for _platform, _capsule in _handlers.items():
    jax.ffi.register_ffi_target(_name, _capsule, platform=_platform)
    _PLATFORMS.add(_platform)


def has_cuda() -> bool:
  """True when this build carries CUDA kernels."""
  return "CUDA" in _PLATFORMS


def build_info() -> dict[str, object]:
  """What this build of the extension contains."""
  archs = _ext.cuda_archs()
  head_dims = _ext.cuda_head_dims()
  return {
      "platforms": sorted(_PLATFORMS),
      "cuda_archs": archs.split(",") if archs else [],
      "cuda_head_dims": [int(d) for d in head_dims.split(",")] if head_dims else [],
  }


# dtypes the CUDA kernels take (16-bit tensor cores); the CPU kernels also take float32.
GPU_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _target_platform() -> str:
  """The platform a call traced now will run on: the default device's if one is set, else the default backend's."""
  device = jax.config.jax_default_device
  if device is None:
    return jax.default_backend()
  platform = device if isinstance(device, str) else device.platform
  return "gpu" if platform in ("cuda", "gpu") else platform


def check_platform_supported(dtype=None, head_dim: int | None = None) -> None:
  """Raises at trace time when the call will run on a GPU that this build, or the CUDA kernels, cannot serve."""
  if _target_platform() != "gpu":
    return
  if not has_cuda():
    raise RuntimeError(
        "jax_flash was built without CUDA kernels (no nvcc was found when it was installed), but JAX's default "
        "backend is a GPU. Reinstall on a machine with the CUDA toolkit (`pip install .`), or run on the CPU "
        "(e.g. inside `with jax.default_device(jax.devices('cpu')[0]):`)."
    )
  if dtype is not None and jnp.dtype(dtype) not in GPU_DTYPES:
    raise TypeError(
        f"q, k and v must be float16 or bfloat16 on GPUs (the CUDA kernels run on 16-bit tensor cores); got "
        f"{jnp.dtype(dtype).name}. Cast them, e.g. q.astype(jnp.bfloat16), or run on the CPU for float32."
    )
  built = build_info()["cuda_head_dims"]
  if head_dim is not None and built and head_dim > max(built):
    raise ValueError(
        f"head_dim {head_dim} has no CUDA kernel in this build (built for head dims {built}; a head dim runs on the "
        f"smallest built one >= it). Reinstall with JAX_FLASH_HEAD_DIMS including {max(built)} or more, e.g. "
        f"JAX_FLASH_HEAD_DIMS='64;128;256'."
    )


def _attrs(config: AttentionConfig) -> dict[str, object]:
  return dict(
      softmax_scale=np.float32(config.softmax_scale),
      causal=bool(config.causal),
      window_left=np.int64(config.window_left),
      window_right=np.int64(config.window_right),
      softcap=np.float32(config.softcap),
      diagonal_offset=np.int64(config.diagonal_offset),
      deterministic=bool(config.deterministic),
      sm_margin=np.int64(config.sm_margin),
      dynamic_schedule=bool(config.dynamic_schedule),
  )


def _result(shape: tuple[int, ...], dtype, operands: tuple[jax.Array, ...]) -> jax.ShapeDtypeStruct:
  """A result type. Inside shard_map it varies over the manual mesh axes that the operands vary over, as
  the per-shard results do (an ffi_call's results are otherwise typed as equal on all shards)."""
  varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying for x in operands))
  if not varying:
    return jax.ShapeDtypeStruct(shape, dtype)
  return jax.ShapeDtypeStruct(
      shape,
      dtype,
      sharding=jax.sharding.NamedSharding(jax.sharding.get_abstract_mesh(), jax.sharding.PartitionSpec()),
      manual_axis_type=jax.sharding.ManualAxisType(varying=varying),
  )


def _stats_shape(q: jax.Array, operands: tuple[jax.Array, ...]) -> jax.ShapeDtypeStruct:
  batch, seqlen_q, heads_q, _ = q.shape
  return _result((batch, heads_q, seqlen_q), jnp.float32, operands)


# The forward's scratch for the persistent Hopper kernel's tile counter (int32 words). Workspaces are outputs of
# the calls so that the CUDA handlers allocate nothing at run time; the calls have the same outputs on every
# platform, so the batching and partitioning rules around them need not know the platform.
FWD_WORKSPACE_WORDS = 4


def forward(q: jax.Array, k: jax.Array, v: jax.Array, config: AttentionConfig) -> tuple[jax.Array, jax.Array]:
  """o [B, Sq, Hq, D] (q's dtype) and lse [B, Hq, Sq] (float32) from q [B, Sq, Hq, D], k, v [B, Sk, Hk, D]."""
  operands = (q, k, v)
  outputs = (
      _result(q.shape, q.dtype, operands),
      _stats_shape(q, operands),
      _result((FWD_WORKSPACE_WORDS,), jnp.int32, operands),  # workspace, dropped
  )
  o, lse, _ = jax.ffi.ffi_call(FWD_TARGET, outputs, vmap_method="sequential")(*operands, **_attrs(config))
  return o, lse


def backward(
    dout: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    o: jax.Array,
    lse: jax.Array,
    dlse: jax.Array,
    config: AttentionConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """dq [B, Sq, Hq, D], dk, dv [B, Sk, Hk, D] from the cotangents of o and lse and the forward's residuals.

  Three workspaces are dropped: the float32 dq accumulator [B, Sq, Hq, D] (CUDA), float32 softmax_d [B, Hq, Sq]
  (rowsum(dout * o) - dlse, every platform) and the int32 dq semaphores [B, Hq, Sq] (CUDA with
  ``config.deterministic``: they order the key blocks' additions into dq).
  """
  operands = (dout, q, k, v, o, lse, dlse)
  outputs = tuple(_result(x.shape, x.dtype, operands) for x in (q, k, v)) + (
      _result(q.shape, jnp.float32, operands),  # dq accumulator, dropped
      _stats_shape(q, operands),  # softmax_d, dropped
      _result((q.shape[0], q.shape[2], q.shape[1]), jnp.int32, operands),  # dq semaphores, dropped
  )
  dq, dk, dv, _, _, _ = jax.ffi.ffi_call(BWD_TARGET, outputs, vmap_method="sequential")(*operands, **_attrs(config))
  return dq, dk, dv
