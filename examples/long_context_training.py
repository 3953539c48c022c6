"""Long-context training with the sequence split over devices: ring attention in a small decoder-only transformer.

    python examples/long_context_training.py                  # no GPU: 8 simulated CPU devices, a few minutes
    python examples/long_context_training.py --mapping pmap   # the same steps under jax.pmap, not jax.shard_map
    python examples/long_context_training.py --help           # every hyperparameter is a flag

Every sequence is split over all local devices (GPUs when present, else `--cpu-devices` simulated CPU devices):
device i holds the zigzag chunks i and 2N-1-i of the sequence, and `jax_flash.ring_attention` passes keys and
values around the ring, so no device ever holds more than seq_len / N tokens of any activation.

The task (key-value retrieval across the whole context): `--facts` facts, each binding a key to a value, and
`--questions` questions sit at random positions among random filler tokens; each question asks for the value
of a key whose fact came earlier, at any distance up to the whole sequence, and typically lives on another
device. Only attention over the whole sequence answers it: chance accuracy is 1 / --values. "far acc" is the
accuracy on questions whose fact lies at least half the sequence back.

Restartable without checkpoints: the run is a pure function of its command line. Data for step s comes from
the seed and s, parameters from the seed, so re-running the printed command reproduces the run.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shlex
import sys
import time

# Simulated CPU devices must be requested before JAX starts; the flag has no effect on GPUs.
_CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--mapping", choices=("shard_map", "pmap"), default="shard_map", help="how the sequence is mapped")
  p.add_argument("--cpu-devices", type=int, default=8, help="simulated CPU devices when there is no GPU")
  p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (split over the devices)")
  p.add_argument("--batch", type=int, default=4, help="sequences per step")
  p.add_argument("--facts", type=int, default=8, help="key-value facts hidden in each sequence")
  p.add_argument("--questions", type=int, default=128, help="questions about earlier facts in each sequence")
  p.add_argument("--keys", type=int, default=8, help="distinct keys")
  p.add_argument("--values", type=int, default=8, help="distinct values")
  p.add_argument("--filler", type=int, default=64, help="distinct filler tokens")
  p.add_argument("--d-model", type=int, default=128)
  p.add_argument("--head-dim", type=int, default=32)
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--kv-heads", type=int, default=2, help="grouped-query attention: key/value heads")
  p.add_argument("--steps", type=int, default=80)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--warmup", type=int, default=20)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--eval-every", type=int, default=20)
  p.add_argument("--eval-batches", type=int, default=2)
  p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                 help="attention dtype; auto: float32 on CPU, bfloat16 on GPU")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


ARGS = parse_args()
if _CPU_DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_DEVICES_FLAG}={ARGS.cpu_devices}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jax_flash  # noqa: E402

AXIS = "seq"  # the mesh / pmap axis the sequence is split over
LAYOUT = "zigzag"  # balances causal attention over the ring
ROPE_BASE = 10000.0  # larger than any sequence here: positions stay distinguishable
MLP_RATIO = 4
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.95, 1e-8


# ----------------------------------------------------------------------------------------------------------------
# The task


def make_batch(args, stream: int, index: int) -> dict[str, np.ndarray]:
  """A batch of the retrieval task, a pure function of (seed, stream, index); every array is [B, S].

  `facts` facts (distinct keys, random values) and `questions` questions sit at random positions among random
  filler tokens; each question asks for the value of a fact that came before it, at any distance. Each
  position carries three fields, embedded and summed (as token and segment embeddings are): its kind (a filler
  id, FACT or QUESTION), its key and its value (NONE where absent). The target at a question is the value of
  the fact with its key; `distance` is how far back that fact is.
  """
  rng = np.random.default_rng([args.seed, stream, index])
  shape = (args.batch, args.seq_len)
  fact_kind, question_kind = args.filler, args.filler + 1
  batch = dict(
      kind=rng.integers(0, args.filler, size=shape).astype(np.int32),
      key=np.full(shape, args.keys, dtype=np.int32),  # `keys` is the NONE key
      value=np.full(shape, args.values, dtype=np.int32),  # `values` is the NONE value
      target=np.zeros(shape, dtype=np.int32),
      distance=np.zeros(shape, dtype=np.int32),
      mask=np.zeros(shape, dtype=np.float32),
      position=np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), shape).copy(),
  )
  for b in range(args.batch):
    # The first fact opens the sequence, so every question has one to ask about.
    spots = np.concatenate([[0], 1 + rng.permutation(args.seq_len - 1)[:args.facts + args.questions - 1]])
    facts, questions = np.sort(spots[:args.facts]), spots[args.facts:]
    keys = rng.choice(args.keys, size=args.facts, replace=False)
    values = rng.integers(0, args.values, size=args.facts)
    batch["kind"][b, facts], batch["key"][b, facts], batch["value"][b, facts] = fact_kind, keys, values
    # Question at position p asks about a uniformly chosen fact among those before p.
    seen = np.searchsorted(facts, questions)  # facts before each question (>= 1)
    asked = (rng.random(args.questions) * seen).astype(np.int64)
    batch["kind"][b, questions], batch["key"][b, questions] = question_kind, keys[asked]
    batch["target"][b, questions], batch["mask"][b, questions] = values[asked], 1.0
    batch["distance"][b, questions] = questions - facts[asked]
  return batch


# ----------------------------------------------------------------------------------------------------------------
# The model: pre-norm decoder-only transformer, RoPE, grouped-query ring attention


def init_params(args, key):
  head_dim = args.head_dim
  keys = iter(jax.random.split(key, 4 + 6 * args.layers))
  normal = lambda shape, std: std * jax.random.normal(next(keys), shape, jnp.float32)
  # Weights ~ N(0, 1/fan_in) keep activations O(1); residual branches are scaled down with depth.
  dense = lambda fan_in, fan_out, gain=1.0: normal((fan_in, fan_out), gain / math.sqrt(fan_in))
  residual_gain = 1.0 / math.sqrt(2 * args.layers)
  layers = [
      dict(
          attn_norm=jnp.ones(args.d_model), mlp_norm=jnp.ones(args.d_model),
          wq=dense(args.d_model, args.heads * head_dim),
          wk=dense(args.d_model, args.kv_heads * head_dim),
          wv=dense(args.d_model, args.kv_heads * head_dim),
          wo=dense(args.heads * head_dim, args.d_model, residual_gain),
          w_in=dense(args.d_model, MLP_RATIO * args.d_model),
          w_out=dense(MLP_RATIO * args.d_model, args.d_model, residual_gain),
      )
      for _ in range(args.layers)
  ]
  embed = {field: normal((size + 1, args.d_model), 1.0)  # + 1: the NONE entry (and QUESTION for `kind`)
           for field, size in (("kind", args.filler + 1), ("key", args.keys), ("value", args.values))}
  return dict(embed=embed, layers=layers, final_norm=jnp.ones(args.d_model), head=dense(args.d_model, args.values))


def rms_norm(x, scale):
  return x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def rope(x, positions):
  """Rotary embedding of the first half of x [B, S, H, Dh]'s features at global token positions [B, S].

  The other half is left unrotated: features that compare content regardless of distance (partial rotary)."""
  rotated = x.shape[-1] // 2
  half = rotated // 2
  freqs = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # [B, S, 1, half]
  x1, x2, rest = x[..., :half], x[..., half:rotated], x[..., rotated:]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)


def forward(args, params, batch, attn_dtype):
  """Value logits [B, S/N, values] for this device's shard of the batch (global positions in batch["position"])."""
  positions = batch["position"]
  batch_size, seqlen = positions.shape
  head_dim = args.head_dim
  x = sum(params["embed"][field][batch[field]] for field in ("kind", "key", "value"))
  for layer in params["layers"]:
    h = rms_norm(x, layer["attn_norm"])
    q = rope((h @ layer["wq"]).reshape(batch_size, seqlen, args.heads, head_dim), positions)
    k = rope((h @ layer["wk"]).reshape(batch_size, seqlen, args.kv_heads, head_dim), positions)
    v = (h @ layer["wv"]).reshape(batch_size, seqlen, args.kv_heads, head_dim)
    o = jax_flash.ring_attention(q.astype(attn_dtype), k.astype(attn_dtype), v.astype(attn_dtype),
                                 axis_name=AXIS, causal=True, layout=LAYOUT)
    x = x + o.astype(jnp.float32).reshape(batch_size, seqlen, -1) @ layer["wo"]
    h = rms_norm(x, layer["mlp_norm"])
    x = x + jax.nn.gelu(h @ layer["w_in"]) @ layer["w_out"]
  return rms_norm(x, params["final_norm"]) @ params["head"]


def ring_metrics(args, params, batch, attn_dtype) -> dict[str, jax.Array]:
  """Loss and accuracies over the whole batch: sums over this device's questions, summed over the ring.

  `far_acc` counts only the questions whose fact is at least half the sequence back.
  """
  logits = forward(args, params, batch, attn_dtype)
  mask, far = batch["mask"], batch["mask"] * (batch["distance"] >= args.seq_len // 2)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["target"][..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == batch["target"]).astype(jnp.float32)
  sums = {name: lax.psum(jnp.sum(x), AXIS) for name, x in
          dict(nll=nll * mask, correct=correct * mask, count=mask, far_correct=correct * far, far=far).items()}
  return dict(loss=sums["nll"] / sums["count"], acc=sums["correct"] / sums["count"],
              far_acc=sums["far_correct"] / jnp.maximum(sums["far"], 1.0))


# ----------------------------------------------------------------------------------------------------------------
# Optimiser: AdamW with linear warmup and cosine decay


def learning_rate(args, step):
  warm = jnp.minimum(1.0, (step + 1) / args.warmup)
  progress = jnp.clip((step - args.warmup) / max(1, args.steps - args.warmup), 0.0, 1.0)
  return args.lr * warm * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def adamw(args, params, grads, state, step):
  mu, nu = state
  mu = jax.tree.map(lambda m, g: ADAM_B1 * m + (1 - ADAM_B1) * g, mu, grads)
  nu = jax.tree.map(lambda n, g: ADAM_B2 * n + (1 - ADAM_B2) * g * g, nu, grads)
  lr = learning_rate(args, step)
  t = step + 1

  def update(p, m, n):
    m_hat, n_hat = m / (1 - ADAM_B1**t), n / (1 - ADAM_B2**t)
    decay = args.weight_decay * p if p.ndim > 1 else 0.0  # no decay on norm scales
    return p - lr * (m_hat / (jnp.sqrt(n_hat) + ADAM_EPS) + decay)

  return jax.tree.map(update, params, mu, nu), (mu, nu)


# ----------------------------------------------------------------------------------------------------------------
# Mapping the sequence over the devices


class SequenceParallel:
  """Places batches ({name: [B, S]}) with the sequence split over the devices and maps per-device functions."""

  def __init__(self, mapping: str, devices):
    self.mapping, self.devices, self.n = mapping, devices, len(devices)
    self.mesh = jax.make_mesh((self.n,), (AXIS,), devices=devices)

  def place(self, batch):
    """Host arrays [B, S] in sequence order -> per-device shards in the zigzag ring layout."""
    laid = {name: jax_flash.to_ring_layout(x, self.n, LAYOUT) for name, x in batch.items()}
    if self.mapping == "pmap":
      # [B, S] -> [N, B, S/N]: device i gets the i-th block of the laid-out sequence.
      return {name: np.stack(np.split(x, self.n, axis=1)) for name, x in laid.items()}
    return {name: jax.device_put(x, NamedSharding(self.mesh, P(None, AXIS))) for name, x in laid.items()}

  def map(self, fn):
    """fn(params, batch) -> replicated outputs, run on every device's shard of the batch."""
    if self.mapping == "pmap":
      mapped = jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), devices=self.devices)
      return lambda params, batch: jax.tree.map(lambda x: x[0], mapped(params, batch))
    spec = P(None, AXIS)
    return jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), spec), out_specs=P())


def build_steps(args, sp: SequenceParallel, attn_dtype):
  def loss_and_grads(params, batch):
    def loss_fn(p):
      metrics = ring_metrics(args, p, batch, attn_dtype)
      return metrics["loss"], metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if sp.mapping == "pmap":
      # pmap does not track which values are replicated: each device holds d(its tokens' share)/d(params) times
      # N (the transpose of psum is psum); the mean over devices is the gradient. shard_map's replication
      # typing inserts that reduction itself, since params enter replicated (in_specs P()).
      grads = lax.pmean(grads, AXIS)
    return metrics, grads

  mapped_grads = sp.map(loss_and_grads)
  mapped_eval = sp.map(lambda params, batch: ring_metrics(args, params, batch, attn_dtype))

  # On GPUs, the ring's K/V travel by copy-engine peer copies, one collective per step (ignored on CPUs).
  @functools.partial(jax.jit, compiler_options=jax_flash.ring.GPU_COMPILER_OPTIONS)
  def train_step(params, opt_state, step, batch):
    metrics, grads = mapped_grads(params, batch)
    params, opt_state = adamw(args, params, grads, opt_state, step)
    return params, opt_state, metrics

  return train_step, jax.jit(mapped_eval)


# ----------------------------------------------------------------------------------------------------------------
# The run


class ProgressBar:
  """One status line redrawn in place on a terminal; plain log lines (from `log`) either way."""

  WIDTH = 30

  def __init__(self, total: int):
    self.total, self.start, self.tty = total, time.perf_counter(), sys.stdout.isatty()

  def update(self, done: int, status: str):
    if not self.tty:
      return
    filled = self.WIDTH * done // self.total
    elapsed = time.perf_counter() - self.start
    eta = elapsed / max(done, 1) * (self.total - done)
    bar = "#" * filled + "." * (self.WIDTH - filled)
    sys.stdout.write(f"\r[{bar}] {done}/{self.total} {status} {elapsed:.0f}s<{eta:.0f}s ")
    sys.stdout.flush()

  def log(self, line: str):
    if self.tty:
      sys.stdout.write("\r\033[K")
    print(line, flush=True)


def main(args):
  if args.heads % args.kv_heads:
    sys.exit("--heads must be a multiple of --kv-heads")
  if args.facts > args.keys:
    sys.exit(f"--facts ({args.facts}) must be at most --keys ({args.keys}): each fact has its own key")
  if args.facts + args.questions > args.seq_len:
    sys.exit(f"--facts + --questions ({args.facts + args.questions}) must fit in --seq-len ({args.seq_len})")
  devices = jax.devices()
  n = len(devices)
  if args.seq_len % (2 * n):
    sys.exit(f"--seq-len must be a multiple of 2 x {n} devices for the zigzag layout; got {args.seq_len}")
  on_gpu = devices[0].platform == "gpu"
  attn_dtype = jnp.dtype(("bfloat16" if on_gpu else "float32") if args.dtype == "auto" else args.dtype)

  sp = SequenceParallel(args.mapping, devices)
  print(f"reproduce: python {shlex.join(sys.argv)}" + ("" if "--seed" in sys.argv else f" --seed {args.seed}"))
  print(f"devices: {n} x {devices[0].device_kind} ({devices[0].platform}), mapping {args.mapping}, "
        f"{args.seq_len // n} tokens per device ({LAYOUT} layout)")
  print(f"task: {args.facts} key-value facts and {args.questions} questions about them scattered over "
        f"{args.seq_len} tokens; chance accuracy {1 / args.values:.3f}")

  params = init_params(args, jax.random.key(args.seed))
  count = sum(x.size for x in jax.tree.leaves(params))
  print(f"model: {args.layers} layer(s), d_model {args.d_model}, {args.heads} query / {args.kv_heads} kv heads of "
        f"{args.head_dim}, "
        f"{count / 1e3:.0f}k parameters, attention in {attn_dtype.name}")
  opt_state = jax.tree.map(jnp.zeros_like, (params, params))
  train_step, eval_step = build_steps(args, sp, attn_dtype)

  placed = lambda stream, index: sp.place(make_batch(args, stream, index))

  train_stream, eval_stream = 0, 1
  eval_batches = [placed(eval_stream, i) for i in range(args.eval_batches)]

  def evaluate():
    results = [jax.device_get(eval_step(params, b)) for b in eval_batches]
    return {name: float(np.mean([r[name] for r in results])) for name in results[0]}

  bar = ProgressBar(args.steps)
  first = evaluate()
  bar.log(f"step {0:5d}  eval loss {first['loss']:.3f}  acc {first['acc']:.3f}  far acc {first['far_acc']:.3f}")
  window = []
  start = time.perf_counter()
  for step in range(args.steps):
    params, opt_state, metrics = train_step(params, opt_state, jnp.int32(step), placed(train_stream, step))
    window.append(jax.device_get(metrics))
    if step == 0:
      start = time.perf_counter()  # leave compilation out of the throughput
    done = step + 1
    tokens_per_s = (done - 1) * args.batch * args.seq_len / max(time.perf_counter() - start, 1e-9)
    bar.update(done, f"loss {window[-1]['loss']:.3f} acc {window[-1]['acc']:.2f} {tokens_per_s:,.0f} tok/s")
    if done % args.eval_every == 0 or done == args.steps:
      last = evaluate()
      train_loss, train_acc = (np.mean([m[name] for m in window]) for name in ("loss", "acc"))
      window = []
      bar.log(f"step {done:5d}  train loss {train_loss:.3f}  acc {train_acc:.3f}  |  eval loss {last['loss']:.3f}  "
              f"acc {last['acc']:.3f}  far acc {last['far_acc']:.3f}  |  {tokens_per_s:,.0f} tokens/s")
  print(f"done: {args.steps} steps in {time.perf_counter() - bar.start:.0f}s; eval accuracy {first['acc']:.3f} -> "
        f"{last['acc']:.3f}, on facts >= {args.seq_len // 2} tokens back {first['far_acc']:.3f} -> "
        f"{last['far_acc']:.3f} (chance {1 / args.values:.3f})")


if __name__ == "__main__":
  main(ARGS)
