"""FlashAttention-2 through PyTorch (SDPA's flash backend) on the FlashAttention-3 paper's grid, as the peer that
`python -m jax_flash.bench` cannot time in its own process (it has no PyTorch). Run it in a separate process on the
same GPU, in the same device call:

  python3 tests/cuda/fa2_torch_bench.py --json fa2.json [--head-dims 64 128 256] [--seqlens 512 ... 16384]

Grid: batch x seqlen = 16k tokens, heads x head_dim = 2048, bf16, random normal inputs in SDPA's [B, H, S, D] layout.
TFLOP/s counts 4 B H S^2 D for the forward (halved when causal), 2.5x that for the backward and 3.5x for forward +
backward; the backward's time is (forward + backward) - forward, as jax_flash.bench does. Each pass is timed as the
median of several batches of back-to-back calls between CUDA events, after warm-up calls.
"""

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HIDDEN = 16384, 2048
HEAD_DIMS = (64, 128, 256)
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
WARMUP, BATCHES = 3, 7
SECONDS_PER_BATCH = 0.02
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def median_seconds(fn):
  """Median seconds per call of fn() over BATCHES batches of back-to-back calls, after WARMUP calls."""
  for _ in range(WARMUP):
    fn()
  start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
  start.record()
  fn()
  end.record()
  torch.cuda.synchronize()
  calls = max(1, int(SECONDS_PER_BATCH / max(start.elapsed_time(end) / 1e3, 1e-6)))
  times = []
  for _ in range(BATCHES):
    start.record()
    for _ in range(calls):
      fn()
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3 / calls)
  return statistics.median(times)


def time_shape(seqlen, head_dim, causal):
  """{pass: seconds} of FlashAttention-2 for one grid shape."""
  batch, heads = TOKENS // seqlen, HIDDEN // head_dim
  q, k, v, dout = (torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
  for t in (q, k, v):
    t.requires_grad_(True)

  def forward():
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

  def forward_backward():
    q.grad = k.grad = v.grad = None
    forward().backward(dout)

  with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
    fwd = median_seconds(forward)
  with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
    fwd_bwd = median_seconds(forward_backward)
  return {"fwd": fwd, "bwd": fwd_bwd - fwd, "fwd_bwd": fwd_bwd}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
  parser.add_argument("--head-dims", nargs="+", type=int, default=list(HEAD_DIMS))
  parser.add_argument("--seqlens", nargs="+", type=int, default=list(SEQLENS))
  args = parser.parse_args()

  results = []
  print(f"# FlashAttention-2 (torch {torch.__version__}, SDPA flash backend) on {torch.cuda.get_device_name()}")
  print("| pass | D | S | causal | TFLOP/s |\n|---|---|---|---|---|")
  for head_dim in args.head_dims:
    for seqlen in args.seqlens:
      for causal in (False, True):
        seconds = time_shape(seqlen, head_dim, causal)
        batch, heads = TOKENS // seqlen, HIDDEN // head_dim
        fwd_flops = 4 * batch * heads * seqlen * seqlen * head_dim / (2 if causal else 1)
        for pass_name, s in seconds.items():
          tflops = FLOP_FACTOR[pass_name] * fwd_flops / s / 1e12
          results.append({"pass": pass_name, "seqlen": seqlen, "head_dim": head_dim, "causal": causal,
                          "batch": batch, "heads": heads, "seconds": s, "tflops": tflops})
          print(f"| {pass_name} | {head_dim} | {seqlen} | {'yes' if causal else 'no'} | {tflops:.0f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"peer": "flash_attention_2_torch", "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
