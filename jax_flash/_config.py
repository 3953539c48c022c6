"""The static (trace-time) parameters of one attention call, as the custom calls receive them."""

from __future__ import annotations

import dataclasses

UNBOUNDED = -1  # a window bound of -1 means no limit on that side


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Hashable static arguments shared by the forward and backward custom calls.

  Attributes:
    softmax_scale: multiplies q·k before the softmax.
    causal: bottom-right aligned causal mask (query i sees keys j <= i + Sk - Sq).
    window_left, window_right: bottom-right aligned sliding window; -1 is unbounded. With ``causal`` the right
      bound is 0.
    softcap: when > 0, scores s become softcap * tanh(s / softcap).
    diagonal_offset: internal (not in the public API): shifts the diagonal that causal and window bounds are
      measured from, to i + Sk - Sq + diagonal_offset. Ring attention uses it to place a block of keys at its
      global position relative to the local queries.
    deterministic: the backward adds dq's float32 partial sums in a fixed order on GPUs, so gradients are bitwise
      identical from run to run (slower); by default they add in whatever order the key blocks finish.
    sm_margin: internal: streaming multiprocessors the persistent GPU kernels leave idle, so that a collective
      running beside them (ring attention's K/V transfer) gets SMs. Ignored on the CPU.
    dynamic_schedule: internal: persistent GPU kernels take their tiles from an atomic counter instead of a fixed
      stride, so that when a collective running beside them holds some SMs, the CTAs that start first do the work
      of those that start late. Ignored on the CPU.
  """

  softmax_scale: float
  causal: bool = False
  window_left: int = UNBOUNDED
  window_right: int = UNBOUNDED
  softcap: float = 0.0
  diagonal_offset: int = 0
  deterministic: bool = False
  sm_margin: int = 0
  dynamic_schedule: bool = False

  @property
  def effective_window_right(self) -> int:
    return 0 if self.causal else self.window_right
