"""How fast ring attention runs on this machine's GPUs, and whether its transfers overlap its kernels.

    python examples/ring_attention_benchmark.py                          # all local GPUs, bf16, D 128
    python examples/ring_attention_benchmark.py --seq-per-device 16384 --hlo-dir /tmp/ring_hlo --profile-dir /tmp/p

For N devices and a per-device length L it reports, for forward and forward+backward, causal and not:
- the ring's per-GPU throughput on the global sequence N*L (TFLOP/s counted on the global attention's matmuls,
  divided by N; causal halves them; fwd+bwd = 3.5 x forward, as in the FlashAttention papers),
- the single-GPU kernel's throughput at length L (what each device would do on its own),
- their ratio (1.0 = the ring costs nothing beyond its kernels), for ring_attention inside shard_map and for
  jax_flash.attention under jit on sequence-sharded arrays (the sharding rule's ring, `--jit-rule`), each compiled
  with XLA's defaults ("default") and with jax_flash.ring.GPU_COMPILER_OPTIONS ("recommended"),
- the ring's output against single-GPU attention over the whole sequence (relative error),
- from the compiled, scheduled HLO of each ring: for every collective-permute-start, the attention kernel calls
  (custom-calls, or the conditionals that hold them) that XLA placed before its done, i.e. that run while the
  transfer is in flight,
- with `--profile-dir`, from a profiler trace of each ring: per GPU and call, the time in attention kernels, in
  transfers (NCCL kernels, or peer copies where XLA copies between local GPUs), in other kernels (merges, slices,
  casts; the costliest named) and idle, and how much of the transfer time ran at the same time as an attention
  kernel,
- with `--variant`, all of the above for the ring compiled with other XLA options or ring settings, e.g.
  `--variant nccl:xla_gpu_collective_permute_mode=COLLECTIVES_PRIVATE_MEMORY sm8:sm_margin=8` (each
  LABEL:KEY=VALUE,...; sm_margin is jax_flash.ring.TRANSFER_SM_MARGIN, dynamic_schedule is
  jax_flash.ring.TRANSFER_DYNAMIC_SCHEDULE, any other key an XLA debug option passed to the compiler; a list value
  keeps its commas: xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL,CONDITIONAL).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
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
# Device kernels of jax_flash (sm90 forward/backward, sm80 forward/backward, pre/post-processing) and of NCCL.
ATTENTION_KERNELS = re.compile(
    r"flash_fwd|flash_bwd|forward_kernel|backward_kernel|backward_preprocess|backward_postprocess")
# Transfers: NCCL's kernels, or the copy engines' peer-to-peer copies (XLA's memcpy path between GPUs of one
# process, xla_gpu_use_memcpy_local_p2p). Device-to-device copies (MemcpyD2D) are local: "other".
TRANSFERS = re.compile(r"nccl|Memcpy ?(P2P|PtoP)", re.IGNORECASE)
CALLS_PER_SAMPLE = 4
PROFILED_CALLS = 3
OTHER_KERNELS_NAMED = 4  # the costliest non-attention, non-transfer kernels listed per trace
DEFAULT_VARIANT = "default"  # XLA's defaults
RECOMMENDED_VARIANT = "recommended"  # compiled with jax_flash.ring.GPU_COMPILER_OPTIONS
# Variant keys that set a jax_flash.ring constant (while the ring is traced) rather than an XLA option.
RING_SETTINGS = {"sm_margin": "TRANSFER_SM_MARGIN", "dynamic_schedule": "TRANSFER_DYNAMIC_SCHEDULE"}


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
  p.add_argument("--profile-dir", default=None, help="trace each ring here and report its kernel time breakdown")
  p.add_argument("--variant", type=parse_variant, nargs="*", default=[],
                 help="also measure the ring built as LABEL:KEY=VALUE,... says: sm_margin=M (the SMs the Hopper "
                      "kernels leave to the transfers, jax_flash.ring.TRANSFER_SM_MARGIN), dynamic_schedule=BOOL "
                      "(jax_flash.ring.TRANSFER_DYNAMIC_SCHEDULE) and XLA debug options, "
                      "e.g. xla_gpu_use_memcpy_local_p2p=true")
  p.add_argument("--profile-variants", nargs="*", default=None,
                 help="with --profile-dir, trace only these variants (labels; default: all)")
  p.add_argument("--jit-rule", action="store_true",
                 help="also time jax_flash.attention under jit on sequence-sharded arrays (the sharding rule)")
  args = p.parse_args()
  args.variants = [(DEFAULT_VARIANT, {}, {}), (RECOMMENDED_VARIANT, {}, dict(jax_flash.ring.GPU_COMPILER_OPTIONS))]
  args.variants += args.variant
  return args


def parse_variant(text: str):
  """'LABEL:KEY=VALUE,...' -> (label, jax_flash.ring constants to set, XLA compiler options)."""
  label, _, settings = text.partition(":")
  ring_settings, options = {}, {}
  # Settings are comma-separated; a value may itself hold commas (a list option): split only before "KEY=".
  for setting in filter(None, re.split(r",(?=[\w.]+=)", settings)):
    key, sep, value = setting.partition("=")
    if not sep:
      raise argparse.ArgumentTypeError(f"variant {text!r}: {setting!r} is not KEY=VALUE")
    parsed = {"true": True, "false": False}.get(value.lower(), int(value) if value.lstrip("-").isdigit() else value)
    if key in RING_SETTINGS:
      ring_settings[RING_SETTINGS[key]] = parsed
    else:
      options[key] = parsed
  return label, ring_settings, options


@contextlib.contextmanager
def ring_constants(settings: dict):
  """Sets jax_flash.ring constants (e.g. TRANSFER_SM_MARGIN) while a ring is traced, then restores them."""
  saved = {name: getattr(jax_flash.ring, name) for name in settings}
  for name, value in settings.items():
    setattr(jax_flash.ring, name, value)
  try:
    yield
  finally:
    for name, value in saved.items():
      setattr(jax_flash.ring, name, value)


def median_seconds(fn, *args, repeats: int) -> float:
  """Seconds per call: the median over `repeats` samples of CALLS_PER_SAMPLE calls issued back to back (as in a
  training loop, the host runs ahead of the GPUs, so the time is the devices', not the dispatch's)."""
  jax.block_until_ready(fn(*args))  # warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(CALLS_PER_SAMPLE)])
    times.append((time.perf_counter() - start) / CALLS_PER_SAMPLE)
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


# ----------------------------------------------------------------------------------------------------------------
# The schedule in the compiled HLO


def _computations(hlo: str) -> dict[str, list[str]]:
  """The instructions of each computation of a scheduled HLO module, in schedule order."""
  computations, name, body = {}, None, []
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      name, body = header.group(1), []
    elif line.startswith("}") and name is not None:
      computations[name] = body
      name = None
    elif name is not None and "=" in line:
      body.append(line.strip())
  return computations


def _name(instruction: str) -> str:
  return instruction.split("=", 1)[0].strip().removeprefix("ROOT ").strip().lstrip("%")


def _uses(instruction: str, opcode: str, operand: str) -> bool:
  """True when `instruction` is an `opcode` whose operands name `operand` (printed %operand, maybe after a type)."""
  if f" {opcode}(" not in instruction:
    return False
  return re.search(rf"%{re.escape(operand)}(?![\w.\-])", instruction.split(f" {opcode}(", 1)[1]) is not None


def overlap_report(hlo: str) -> list[str]:
  """For each collective-permute-start in any computation: the attention work scheduled before its done."""
  report = []
  for computation, lines in _computations(hlo).items():
    for i, line in enumerate(lines):
      if " collective-permute-start(" not in line:
        continue
      start = _name(line)
      done_at = next((j for j in range(i + 1, len(lines)) if _uses(lines[j], "collective-permute-done", start)),
                     None)
      if done_at is None:
        report.append(f"{computation}/{start}: its done is not in the same computation")
        continue
      between = lines[i + 1:done_at]
      kernels = sum(any(t in l for t in KERNEL_TARGETS) for l in between)
      conditionals = sum(" conditional(" in l for l in between)
      report.append(f"{computation}/{start}: {kernels} attention custom-calls and {conditionals} conditionals "
                    f"(of {len(between)} instructions) before its done")
  return report


def synchronous_permutes(hlo: str) -> int:
  return len(re.findall(r" collective-permute\(", hlo))


# ----------------------------------------------------------------------------------------------------------------
# The kernels in a profiler trace


def _union_length(intervals) -> float:
  total, end = 0.0, -np.inf
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def _overlap_length(intervals, others) -> float:
  """Time covered by both interval sets."""
  merged = []
  for a, b in sorted(others):
    if merged and a <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], b)
    else:
      merged.append([a, b])
  total = 0.0
  for a, b in intervals:
    for c, d in merged:
      total += max(0.0, min(b, d) - max(a, c))
  return total


def trace_breakdown(trace_dir: str, calls: int, timeline: bool) -> list[str]:
  """Per GPU, per call (ms): attention kernels, transfers (and the part overlapping attention), other kernels (the
  costliest named), idle, from the device events of the newest trace under `trace_dir`; with `timeline`, also
  every event of the middle call (stream, start offset and duration in microseconds)."""
  from jax._src.lib import _profile_data  # the profiler's XSpace reader, shipped with jaxlib

  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    return ["no trace was written"]
  data = _profile_data.ProfileData.from_file(files[-1])
  report = []
  for plane in data.planes:
    if not plane.name.startswith("/device:GPU:"):
      continue
    events = sorted((e.start_ns, e.end_ns, e.name, line.name) for line in plane.lines
                    if line.name.startswith("Stream") for e in line.events)
    if not events:
      report.append(f"{plane.name}: no stream events; lines {[line.name for line in plane.lines]}")
      continue
    kind = lambda n: ("attention" if ATTENTION_KERNELS.search(n) else "transfer" if TRANSFERS.search(n)
                      else "other")
    spans = {k: [(a, b) for a, b, n, _ in events if kind(n) == k] for k in ("attention", "transfer", "other")}
    first, last = events[0][0], max(b for _, b, _, _ in events)
    busy = _union_length([(a, b) for a, b, _, _ in events])
    ms = lambda ns: ns / calls / 1e6
    other_time = {}
    for a, b, n, _ in events:
      if kind(n) == "other":
        other_time[n[:40]] = other_time.get(n[:40], 0) + b - a
    costliest = sorted(other_time.items(), key=lambda item: -item[1])[:OTHER_KERNELS_NAMED]
    report.append(
        f"{plane.name}: per call {ms(last - first):.3f} ms span: "
        f"attention {ms(_union_length(spans['attention'])):.3f}, "
        f"transfers {ms(_union_length(spans['transfer'])):.3f} (overlapping attention "
        f"{ms(_overlap_length(spans['transfer'], spans['attention'])):.3f}), other kernels "
        f"{ms(_union_length(spans['other'])):.3f} ({len(spans['other']) // calls} launches: "
        + ", ".join(f"{name} {ms(t):.3f}" for name, t in costliest)
        + f"), idle {ms(last - first - busy):.3f}")
    transfer = next((e for line in plane.lines if line.name.startswith("Stream") for e in line.events
                     if TRANSFERS.search(e.name)), None)
    if transfer is not None:  # its launch shape (the CTAs a transfer kernel holds), as the tracer recorded it
      details = {str(k): str(v) for k, v in transfer.stats if "kernel" in str(k) or "memcpy" in str(k).lower()}
      report.append(f"    transfer {transfer.name[:40]}: {details}"[:300])
    if timeline:
      # The middle call: its events lie in the middle third of the traced span (calls run back to back).
      third = (last - first) / calls
      middle = [e for e in events if first + third <= e[0] < first + 2 * third]
      origin = middle[0][0] if middle else first
      for a, b, name, stream in middle:
        report.append(f"    {stream[:24]:24} +{(a - origin) / 1e3:8.1f} us  {(b - a) / 1e3:8.1f} us  {name[:70]}")
  return report or [f"no GPU planes; planes {[plane.name for plane in data.planes]}"]


def profile(fn, args, trace_dir: str, timeline: bool = False) -> list[str]:
  jax.block_until_ready(fn(*args))
  try:
    with jax.profiler.trace(trace_dir):
      jax.block_until_ready([fn(*args) for _ in range(PROFILED_CALLS)])
  except RuntimeError as e:  # no profiler on this machine (e.g. CUPTI missing): the timings still stand
    return [f"profiling failed: {e}"]
  return trace_breakdown(trace_dir, PROFILED_CALLS, timeline)


# ----------------------------------------------------------------------------------------------------------------


def compile_ring(mapped, mesh, out_specs, ring_args, ring_settings: dict, options: dict):
  """The ring under shard_map, traced with `ring_settings` (jax_flash.ring constants) and compiled with `options`."""
  with ring_constants(ring_settings):
    spec = P(None, AXIS)
    call = jax.jit(jax.shard_map(lambda *xs: mapped(*xs), mesh=mesh, in_specs=(spec,) * len(ring_args),
                                 out_specs=out_specs))
    return call.lower(*ring_args).compile(compiler_options=options or None)


def compile_rule(fn, rule_args, ring_settings: dict, options: dict):
  """jax_flash.attention under jit on sequence-sharded arrays (the sharding rule's ring), built likewise."""
  with ring_constants(ring_settings):
    return jax.jit(fn).lower(*rule_args).compile(compiler_options=options or None)


def main():
  args = parse_args()
  devices = jax.devices()
  n = len(devices)
  dtype = jnp.dtype(args.dtype)
  local, total = args.seq_per_device, args.seq_per_device * n
  print(f"{n} x {devices[0].device_kind}; batch {args.batch}, heads {args.heads}/{args.kv_heads}, head_dim "
        f"{args.head_dim}, {dtype.name}; per-device length {local}, ring length {total}")
  mesh = jax.make_mesh((n,), (AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
  spec = P(None, AXIS)
  sharded = NamedSharding(mesh, spec)
  rng = np.random.default_rng(0)
  draw = lambda s, h: jnp.asarray(rng.standard_normal((args.batch, s, h, args.head_dim), np.float32)).astype(dtype)
  q, dout = draw(total, args.heads), draw(total, args.heads)
  k, v = draw(total, args.kv_heads), draw(total, args.kv_heads)
  q1, k1, v1, dout1 = (x[:, :local] for x in (q, k, v, dout))
  for directory in (args.hlo_dir, args.profile_dir):
    if directory:
      os.makedirs(directory, exist_ok=True)

  labels = [label for label, _, _ in args.variants]
  columns = ["pass", "causal", "1-GPU TF/s", "ring TF/s/GPU"] + [f"ring {label}" for label in labels]
  columns += [f"jit {label}" for label in labels] if args.jit_rule else []
  columns += ["ring again"]  # the default ring timed once more: the spread of the measurement
  rows, schedules, breakdowns = [], {}, {}
  for causal in (False, True):
    layout = jax_flash.ring.default_layout(causal)
    laid = lambda x: jax.device_put(jax_flash.to_ring_layout(x, n, layout), sharded)
    ring_fn = lambda q, k, v: jax_flash.ring_attention(q, k, v, axis_name=AXIS, causal=causal)
    single_fn = lambda q, k, v: jax_flash.attention(q, k, v, causal=causal)
    for backward in (False, True):
      name = "fwd+bwd" if backward else "fwd"
      tag = f"{name.replace('+', '_')}_causal{int(causal)}"
      operands = (q, k, v, dout) if backward else (q, k, v)
      mapped = with_backward(ring_fn) if backward else ring_fn
      out_specs = (spec,) * 4 if backward else spec
      ring_args = tuple(laid(x) for x in operands)
      # The sequence in natural order, sharded over the mesh: the sharding rule runs the ring.
      rule_fn = with_backward(single_fn) if backward else single_fn
      rule_args = tuple(jax.device_put(x, sharded) for x in operands)
      single_call = jax.jit(with_backward(single_fn) if backward else single_fn)
      single_args = (q1, k1, v1, dout1)[:len(operands)]
      flops = lambda seqlen: attention_flops(args.batch, args.heads, seqlen, args.head_dim, causal, backward)
      per_gpu_tflops = lambda fn, a: flops(total) / n / median_seconds(fn, *a, repeats=args.repeats) / 1e12

      single_tflops = flops(local) / median_seconds(single_call, *single_args, repeats=args.repeats) / 1e12
      want = None if backward else np.asarray(jax.jit(single_fn)(q, k, v), np.float32)

      def ring_error(compiled) -> str:
        got = jax_flash.from_ring_layout(np.asarray(compiled(*ring_args), np.float32), n, layout)
        return f"{np.linalg.norm(got - want) / np.linalg.norm(want):.2e}"

      ring_tflops, ring_ratios, rule_ratios, rings = [], [], [], []
      for label, ring_settings, options in args.variants:
        traced = args.profile_dir and (args.profile_variants is None or label in args.profile_variants)
        compiled = compile_ring(mapped, mesh, out_specs, ring_args, ring_settings, options)
        rings.append(compiled)
        ring_tflops.append(per_gpu_tflops(compiled, ring_args))
        ring_ratios.append(ring_tflops[-1] / single_tflops)
        text = compiled.as_text()
        schedules[f"{name} causal={causal} ring {label}"] = overlap_report(text) + [
            f"{synchronous_permutes(text)} synchronous collective-permutes"] + (
            [] if backward else [f"error against 1-GPU attention on the whole sequence {ring_error(compiled)}"])
        if args.hlo_dir:
          with open(os.path.join(args.hlo_dir, f"ring_{tag}_{label}.hlo"), "w") as f:
            f.write(text)
        if traced:
          breakdowns[f"{name} causal={causal} ring {label}"] = profile(
              compiled, ring_args, os.path.join(args.profile_dir, f"{tag}_{label}"), timeline=not backward)
        if args.jit_rule:
          rule = compile_rule(rule_fn, rule_args, ring_settings, options)
          rule_ratios.append(per_gpu_tflops(rule, rule_args) / single_tflops)
          if args.hlo_dir:
            with open(os.path.join(args.hlo_dir, f"jit_{tag}_{label}.hlo"), "w") as f:
              f.write(rule.as_text())
          if traced:
            breakdowns[f"{name} causal={causal} jit {label}"] = profile(
                rule, rule_args, os.path.join(args.profile_dir, f"jit_{tag}_{label}"), timeline=not backward)
      default_ring = rings[0]  # args.variants starts with the default
      again = per_gpu_tflops(default_ring, ring_args) / single_tflops
      if args.profile_dir:
        breakdowns[f"{name} causal={causal} 1-GPU"] = profile(single_call, single_args,
                                                      os.path.join(args.profile_dir, f"{tag}_single"))
      error = "" if backward else ring_error(default_ring)
      cells = [name, str(causal), f"{single_tflops:.4g}", f"{ring_tflops[0]:.4g}"]
      cells += [f"{r:.2f}" for r in ring_ratios + rule_ratios + [again]]
      rows.append("  ".join(f"{c:>13}" for c in cells) + f"  {error:>9}")
      # Printed as each configuration finishes, so that a run cut short still shows what it measured.
      print("  ".join(f"{c:>13}" for c in columns) + f"  {'ring err':>9}")
      print(rows[-1])
      print("schedule of the ring's transfers (compiled HLO):")
      for label, lines in schedules.items():
        print(f"  {label}:")
        for line in lines:
          print(f"    {line}")
      if breakdowns:
        print(f"time per call from a profiler trace ({PROFILED_CALLS} calls):")
        for label, lines in breakdowns.items():
          print(f"  {label}:")
          for line in lines:
            print(f"    {line}")
      print(flush=True)
      schedules, breakdowns = {}, {}

  print("per-GPU throughput of the ring over the 1-GPU kernel (ratio columns):")
  print("  ".join(f"{c:>13}" for c in columns) + f"  {'ring err':>9}")
  for row in rows:
    print(row)


if __name__ == "__main__":
  main()
