"""Hopper forward (csrc/sm90) beside PyTorch's cuDNN attention, in one process, on the same tensors.

Loads one or more builds of the kernels through their C entry point (flash_fwd_sm90_capi.cu, linked into a shared
library per build) so that several versions and the peer are timed in the same run, under the same clocks.

  python3 flash_fwd_sm90_peer_bench.py check LABEL=lib.so ...   float64 sweep (bf16, masks, GQA, odd sizes)
  python3 flash_fwd_sm90_peer_bench.py bench LABEL=lib.so ...   FlashAttention-3 paper grid vs cuDNN (TFLOP/s)
  python3 flash_fwd_sm90_peer_bench.py profile lib.so D SEQLEN CAUSAL LAUNCHES   a few launches for ncu

HEAD_DIMS="64 128" restricts check and bench to the head dims that run in those tiles (builds of some tiles only,
build_sm90_test.sh HEAD_DIMS=...).

Grid: batch x seqlen = 16k tokens, heads x head_dim = 2048, bf16, random normal inputs. TFLOP/s counts
4 B H S^2 D (halved when causal). Each method is timed as 5 batches of 10 back-to-back launches with CUDA events,
in BENCH_ROUNDS rounds (default 2) that alternate the methods in a rotated order; the median batch is reported.
"""

import ctypes
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, MODEL_DIM = 16384, 2048
BATCHES, LAUNCHES = 5, 10
# Rounds over the methods, each in a rotated order (BENCH_ROUNDS=8 for differences of a few percent: with 2 rounds
# in a fixed order short shapes read up to 10% apart between runs on an H200).
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
MAX_REL_ERROR_BF16 = 1e-2
MAX_LSE_ERROR = 2e-3
UNBOUNDED = -1
HEAD_DIM_TILES = (64, 128, 256)
BUILT_TILES = tuple(int(d) for d in os.environ.get("HEAD_DIMS", " ".join(map(str, HEAD_DIM_TILES))).split())


def built(d):
    """Whether head dim d runs in a tile of this build (the smallest tile that holds it)."""
    return min(t for t in HEAD_DIM_TILES if d <= t) in BUILT_TILES


class Kernel:
    """One build of the forward, loaded from its shared library."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_LOCAL)
        f = self.lib.jax_flash_sm90_fwd_bf16
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_float] * 2 + [ctypes.c_int64] * 3 + [
            ctypes.c_int, ctypes.c_void_p]
        self.fn = f
        self.sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.workspace = torch.zeros(4, dtype=torch.int32, device="cuda")

    def __call__(self, q, k, v, o, lse, scale, softcap=0.0, window=(UNBOUNDED, UNBOUNDED), offset=0):
        b, sq, hq, d = q.shape
        sk, hk = k.shape[1], k.shape[2]
        status = self.fn(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                         self.workspace.data_ptr(), b, sq, sk, hq, hk, d, scale, softcap, window[0], window[1], offset,
                         self.sms, torch.cuda.current_stream().cuda_stream)
        if status != 0:
            raise RuntimeError(f"launch failed: cudaError {status}")


def reference(q, k, v, scale, softcap, window, offset):
    """float64 attention with the mask of csrc/common/mask.h; rows that see no key: o = 0, lse = -inf."""
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    qd, kd, vd = (t.double() for t in (q, k, v))
    kd = kd.repeat_interleave(g, dim=2)
    vd = vd.repeat_interleave(g, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(sq, device=q.device)[:, None]
    j = torch.arange(sk, device=q.device)[None, :]
    c = i + sk - sq + offset
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if window[0] != UNBOUNDED:
        visible &= j >= c - window[0]
    if window[1] != UNBOUNDED:
        visible &= j <= c + window[1]
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, dim=-1)  # [b, h, q]
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    o = torch.einsum("bhqk,bkhd->bqhd", p, vd)
    return o, lse


MASKS = {
    "none": dict(window=(UNBOUNDED, UNBOUNDED)),
    "causal": dict(window=(UNBOUNDED, 0)),
    "window": dict(window=(96, 17)),
    "softcap": dict(window=(UNBOUNDED, UNBOUNDED), softcap=30.0),
    "causal+softcap": dict(window=(UNBOUNDED, 0), softcap=5.0),
    "left-window": dict(window=(200, UNBOUNDED)),
    "diagonal-only": dict(window=(0, 0)),
    "causal-offset": dict(window=(UNBOUNDED, 0), offset=-150),
}


def run_check(kernels):
    gen = torch.Generator(device="cuda").manual_seed(20261122)
    shapes = [(1, 1), (7, 129), (129, 7), (1000, 1000), (1100, 1300), (2048, 2048)]
    failures = 0
    worst = {}
    for label, kernel in kernels.items():
        worst_rel, worst_lse, cases = 0.0, 0.0, 0
        for d in filter(built, (64, 128, 256, 40, 96, 200)):
            for sq, sk in shapes:
                for name, mask in MASKS.items():
                    b, hk, g = 2, 2, 2 if (sq + d) % 2 else 1
                    hq = hk * g
                    q = torch.randn(b, sq, hq, d, generator=gen, device="cuda").bfloat16()
                    k = torch.randn(b, sk, hk, d, generator=gen, device="cuda").bfloat16()
                    v = torch.randn(b, sk, hk, d, generator=gen, device="cuda").bfloat16()
                    o = torch.full_like(q, math.nan)
                    lse = torch.full((b, hq, sq), math.nan, device="cuda")
                    scale = 1.0 / math.sqrt(d)
                    softcap = mask.get("softcap", 0.0)
                    kernel(q, k, v, o, lse, scale, softcap, mask["window"], mask.get("offset", 0))
                    ro, rlse = reference(q, k, v, scale, softcap, mask["window"], mask.get("offset", 0))
                    od = o.double()
                    nan = int(torch.isnan(od).sum()) + int(torch.isnan(lse).sum())
                    rel = float((od - ro).norm() / ro.norm().clamp_min(1e-30))
                    empty = torch.isinf(rlse)
                    bad_empty = int((empty & ~(torch.isinf(lse) & (lse < 0))).sum())
                    bad_empty += int((od.permute(0, 2, 1, 3)[empty] != 0).sum())
                    lerr = float((lse.double() - rlse)[~empty].abs().max()) if (~empty).any() else 0.0
                    ok = nan == 0 and bad_empty == 0 and rel <= MAX_REL_ERROR_BF16 and lerr <= MAX_LSE_ERROR
                    cases += 1
                    worst_rel, worst_lse = max(worst_rel, rel), max(worst_lse, lerr)
                    if not ok:
                        failures += 1
                        print(f"FAIL {label} {name} B{b} Sq{sq} Sk{sk} Hq{hq} Hk{hk} D{d}: rel {rel:.2e} "
                              f"lse {lerr:.2e} nan {nan} bad_empty {bad_empty}", flush=True)
        worst[label] = (cases, worst_rel, worst_lse)
        print(f"check {label}: {cases} cases, worst rel_err {worst_rel:.2e}, worst lse_err {worst_lse:.2e}",
              flush=True)
    print(f"check: {failures} failures")
    return failures


def time_ms(launch):
    start = [torch.cuda.Event(enable_timing=True) for _ in range(BATCHES)]
    stop = [torch.cuda.Event(enable_timing=True) for _ in range(BATCHES)]
    for _ in range(LAUNCHES):
        launch()
    for i in range(BATCHES):
        start[i].record()
        for _ in range(LAUNCHES):
            launch()
        stop[i].record()
    torch.cuda.synchronize()
    return [start[i].elapsed_time(stop[i]) / LAUNCHES for i in range(BATCHES)]


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run_bench(kernels, out_json):
    gen = torch.Generator(device="cuda").manual_seed(7)
    labels = ["cudnn"] + list(kernels)
    rows = []
    print(f"{'D':>4} {'seqlen':>6} {'causal':>6} " + " ".join(f"{l:>9}" for l in labels) + "  ratios to cuDNN; rel err",
          flush=True)
    for d in filter(built, HEAD_DIM_TILES):
        for s in (512, 1024, 2048, 4096, 8192, 16384):
            for causal in (False, True):
                b, h = TOKENS // s, MODEL_DIM // d
                q, k, v = (torch.randn(b, s, h, d, generator=gen, device="cuda").bfloat16() for _ in range(3))
                scale = 1.0 / math.sqrt(d)
                window = (UNBOUNDED, 0) if causal else (UNBOUNDED, UNBOUNDED)
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D] views
                outs = {label: (torch.empty_like(q), torch.empty(b, h, s, device="cuda")) for label in kernels}

                def cudnn():
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)

                launches = {"cudnn": cudnn}
                for label, kernel in kernels.items():
                    launches[label] = (lambda kernel=kernel, label=label: kernel(q, k, v, *outs[label], scale,
                                                                                 0.0, window))
                try:
                    ref = cudnn().transpose(1, 2).float()
                except RuntimeError:  # a cuDNN that wants [B, H, S, D] contiguous: give it copies
                    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
                    ref = cudnn().transpose(1, 2).float()
                errs = {}
                for label in kernels:
                    launches[label]()
                    errs[label] = float((outs[label][0].float() - ref).norm() / ref.norm())
                times = {label: [] for label in labels}
                for r in range(ROUNDS):
                    for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                        times[label] += time_ms(launches[label])
                flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
                tflops = {label: flops / (median(times[label]) * 1e-3) / 1e12 for label in labels}
                row = dict(d=d, seqlen=s, causal=causal, tflops=tflops, rel_err_vs_cudnn=errs)
                rows.append(row)
                print(f"{d:>4} {s:>6} {'yes' if causal else 'no':>6} " +
                      " ".join(f"{tflops[l]:>9.1f}" for l in labels) + "  " +
                      " ".join(f"{tflops[l] / tflops['cudnn']:.3f}" for l in kernels) + "; " +
                      " ".join(f"{errs[l]:.1e}" for l in kernels), flush=True)
                del q, k, v, qt, kt, vt, outs
    if out_json:
        with open(out_json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(0), rows=rows), f, indent=1)
    bad = sum(1 for r in rows for e in r["rel_err_vs_cudnn"].values() if not e <= MAX_REL_ERROR_BF16)
    print(f"bench: {bad} shapes whose output differs from cuDNN's by more than {MAX_REL_ERROR_BF16}")
    return bad


def run_profile(kernel, d, s, causal, launches):
    b, h = TOKENS // s, MODEL_DIM // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda").bfloat16() for _ in range(3))
    o, lse = torch.empty_like(q), torch.empty(b, h, s, device="cuda")
    window = (UNBOUNDED, 0) if causal else (UNBOUNDED, UNBOUNDED)
    for _ in range(launches):
        kernel(q, k, v, o, lse, 1.0 / math.sqrt(d), 0.0, window)
    torch.cuda.synchronize()
    return 0


def parse_kernels(args):
    return {a.split("=", 1)[0]: Kernel(a.split("=", 1)[1]) for a in args}


def main(argv):
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    mode = argv[1]
    if mode == "check":
        return run_check(parse_kernels(argv[2:]))
    if mode == "bench":
        return run_bench(parse_kernels(argv[2:]), os.environ.get("BENCH_JSON"))
    if mode == "profile":
        return run_profile(Kernel(argv[2]), int(argv[3]), int(argv[4]), argv[5] == "1", int(argv[6]))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv) else 0)
