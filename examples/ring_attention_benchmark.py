"""How fast ring attention runs on this machine's GPUs, and whether its transfers overlap its kernels.

    python examples/ring_attention_benchmark.py                          # all local GPUs, bf16, D 128
    python examples/ring_attention_benchmark.py --seq-per-device 16384 --hlo-dir /tmp/ring_hlo

For N devices and a per-device length L it reports, for forward and forward+backward, causal and not:
- the ring's per-GPU throughput on the global sequence N*L (TFLOP/s counted on the global attention's matmuls,
  divided by N; causal halves them; fwd+bwd = 3.5 x forward, as in the FlashAttention papers),
- the single-GPU kernel's throughput at length L (what each device would do on its own),
- their ratio (1.0 = the ring costs nothing beyond its kernels),
- the ring's output against single-GPU attention over the whole sequence (relative error),
- from the compiled, scheduled HLO of each ring: which kernel calls (custom-calls or the conditionals that hold
  them) XLA placed between each collective-permute-start and its done, i.e. run while the transfer is in flight.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jax_flash

AXIS = "seq"
FWD_BWD_FLOP_FACTOR = 3.5  # backward = 2.5 x forward matmul FLOPs
KERNEL_TARGETS = ("jax_flash_fwd", "jax_flash_bwd")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seq-per-device", type=int, default=8192)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv-heads", type=int, default=16)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
  p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median reported)")
  p.add_argument("--hlo-dir", default=None, help="also write each ring's scheduled HLO here")
  return p.parse_args()


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def attention_flops(batch, heads, seqlen, head_dim, causal, backward) -> float:
  flops = 4.0 * batch * heads * seqlen * seqlen * head_dim * (0.5 if causal else 1.0)
  return flops * (FWD_BWD_FLOP_FACTOR if backward else 1.0)


def with_backward(attention_fn):
  """q, k, v, dout -> (o, dq, dk, dv): forward and backward in one call."""
  def fn(q, k, v, dout):
    o, pullback = jax.vjp(attention_fn, q, k, v)
    return (o, *pullback(dout))
  return fn


def overlap_report(hlo: str) -> list[str]:
  """For each collective-permute-start in the entry computation's schedule: the kernel work scheduled before its
  done (custom-calls to jax_flash targets, or conditionals that choose between plans of kernel calls)."""
  entry = hlo[hlo.index("ENTRY"):]
  entry = entry[:entry.index("\n}\n")] if "\n}\n" in entry else entry
  lines = [line.strip() for line in entry.splitlines()]
  name_of = lambda line: line.split("=", 1)[0].strip().removeprefix("ROOT ").strip()
  report = []
  for i, line in enumerate(lines):
    if "collective-permute-start(" not in line:
      continue
    start = name_of(line)
    done_at = next((j for j in range(i + 1, len(lines)) if "collective-permute-done(" in lines[j]
                    and re.search(rf"\b{re.escape(start)}\b", lines[j].split("collective-permute-done(", 1)[1])),
                   None)
    if done_at is None:
      report.append(f"{start}: no matching done in the entry computation")
      continue
    between = [lines[j] for j in range(i + 1, done_at)]
    kernels = [name_of(l) for l in between if any(t in l for t in KERNEL_TARGETS)]
    conditionals = [name_of(l) for l in between if " conditional(" in l]
    report.append(f"{start}: {len(kernels)} kernel custom-calls, {len(conditionals)} conditionals scheduled "
                  f"before its done")
  return report


def main():
  args = parse_args()
  devices = jax.devices()
  n = len(devices)
  dtype = jnp.dtype(args.dtype)
  local, total = args.seq_per_device, args.seq_per_device * n
  print(f"{n} x {devices[0].device_kind}; batch {args.batch}, heads {args.heads}/{args.kv_heads}, head_dim "
        f"{args.head_dim}, {dtype.name}; per-device length {local}, ring length {total}")
  mesh = jax.make_mesh((n,), (AXIS,), devices=devices)
  spec = P(None, AXIS)
  rng = np.random.default_rng(0)
  draw = lambda s, h: jnp.asarray(rng.standard_normal((args.batch, s, h, args.head_dim), np.float32)).astype(dtype)
  q, k, v, dout = draw(total, args.heads), draw(total, args.kv_heads), draw(total, args.kv_heads), draw(total, args.heads)
  q1, k1, v1, dout1 = (x[:, :local] for x in (q, k, v, dout))
  if args.hlo_dir:
    os.makedirs(args.hlo_dir, exist_ok=True)

  print(f"{'pass':8} {'causal':6} {'ring TF/s/GPU':>13} {'1-GPU TF/s':>10} {'ratio':>6} {'ring err':>9}")
  overlap = {}
  for causal in (False, True):
    layout = jax_flash.ring.default_layout(causal)
    laid = lambda x: jax.device_put(jax_flash.to_ring_layout(x, n, layout), NamedSharding(mesh, spec))
    ring_fn = lambda q, k, v: jax_flash.ring_attention(q, k, v, axis_name=AXIS, causal=causal)
    single_fn = lambda q, k, v: jax_flash.attention(q, k, v, causal=causal)
    for backward in (False, True):
      name = "fwd+bwd" if backward else "fwd"
      if backward:
        ring_call = jax.jit(jax.shard_map(with_backward(ring_fn), mesh=mesh, in_specs=(spec,) * 4,
                                          out_specs=(spec,) * 4))
        ring_args = tuple(laid(x) for x in (q, k, v, dout))
        single_call, single_args = jax.jit(with_backward(single_fn)), (q1, k1, v1, dout1)
      else:
        ring_call = jax.jit(jax.shard_map(ring_fn, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec))
        ring_args = tuple(laid(x) for x in (q, k, v))
        single_call, single_args = jax.jit(single_fn), (q1, k1, v1)
      ring_s = median_seconds(ring_call, *ring_args, repeats=args.repeats)
      single_s = median_seconds(single_call, *single_args, repeats=args.repeats)
      ring_tflops = attention_flops(args.batch, args.heads, total, args.head_dim, causal, backward) / n / ring_s / 1e12
      single_tflops = attention_flops(args.batch, args.heads, local, args.head_dim, causal, backward) / single_s / 1e12
      error = ""
      if not backward:
        got = jax_flash.from_ring_layout(np.asarray(ring_call(*ring_args), np.float32), n, layout)
        want = np.asarray(jax.jit(single_fn)(q, k, v), np.float32)
        error = f"{np.linalg.norm(got - want) / np.linalg.norm(want):.2e}"
      print(f"{name:8} {str(causal):6} {ring_tflops:13.4g} {single_tflops:10.4g} {ring_tflops / single_tflops:6.2f} "
            f"{error:>9}", flush=True)
      hlo = ring_call.lower(*ring_args).compile().as_text()
      overlap[(name, causal)] = overlap_report(hlo)
      if args.hlo_dir:
        with open(os.path.join(args.hlo_dir, f"ring_{name.replace('+', '_')}_causal{int(causal)}.hlo"), "w") as f:
          f.write(hlo)

  print("\nschedule of the ring's transfers (entry computation of the compiled HLO):")
  for (name, causal), lines in overlap.items():
    print(f"  {name} causal={causal}:")
    for line in lines or ["no collective-permute-start: transfers are synchronous on this backend"]:
      print(f"    {line}")


if __name__ == "__main__":
  main()
