"""What the benchmark runs: configurations and the grids of GUIDE section 5."""
from __future__ import annotations

import dataclasses
import itertools

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Config:
    cell: str            # "lstm" | "gru" | "rnn" (tanh)
    dtype: str           # key of DTYPES
    mode: str            # "inference" (forward under inference_mode) | "training" (fwd + bwd)
    B: int
    H: int
    T: int
    I: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0        # the LSTM's proj_size (0: none)

    @property
    def gates(self) -> int:
        return {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]

    def label(self) -> str:
        extra = f" L={self.layers}" if self.layers > 1 else ""
        extra += " bidir" if self.bidirectional else ""
        extra += f" P={self.proj}" if self.proj else ""
        return (f"{self.cell} {self.dtype} {self.mode} B={self.B} H={self.H} T={self.T} "
                f"I={self.I}{extra}")

    def recurrent_flops(self) -> float:
        """Flops of h_{t-1} W_hh^T (and with a projection, m_t W_hr^T) over the sequence (x3
        for training: forward, dgates W_hh, dgates^T h), all layers and directions."""
        K = self.proj or self.H
        per = 2.0 * self.B * (self.gates * self.H * K + (K * self.H if self.proj else 0)) \
            * self.T
        dirs = self.layers * (2 if self.bidirectional else 1)
        return per * dirs * (3 if self.mode == "training" else 1)

    def recurrent_bytes(self) -> float:
        """The fewest bytes the recurrence must move per sequence: W_hh once, and per step
        the gate pre-activations in, h out (and c in and out for the LSTM, in fp32); x2 for
        training, which reads them back."""
        elt = torch.finfo(DTYPES[self.dtype]).bits // 8
        K = self.proj or self.H
        per_step = self.B * (self.gates * self.H + K) * elt
        if self.cell == "lstm":
            per_step += self.B * self.H * 4 * 2
        weights = (self.gates * self.H * K + (K * self.H if self.proj else 0)) * elt
        total = weights + per_step * self.T
        dirs = self.layers * (2 if self.bidirectional else 1)
        return total * dirs * (2 if self.mode == "training" else 1)

    def cudnn_persistent_likely(self) -> bool:
        """Whether PyTorch's heuristics likely put cuDNN on a persistent algorithm (the
        package's own rule, which ``auto`` uses too)."""
        from fusedrnn.kernels.auto_table import cudnn_persistent_likely
        return cudnn_persistent_likely(self.cell, DTYPES[self.dtype], self.B, self.H, self.I,
                                       self.layers, self.bidirectional)


def gpu_grid(cells, dtypes, modes, batches, hiddens, T=256, quick=False):
    """GUIDE section 5: 1-layer configs over B x H with I = H, plus 2-layer bidirectional
    at B=32, H=512 (and 1-layer bf16 at B=16, H=1024), plus cuDNN's persistent fp16 LSTM
    case. Small configs first, so a run cut by its time budget keeps the most rows."""
    if quick:
        batches = [b for b in batches if b in (8, 128)] or batches[:2]
        hiddens = [h for h in hiddens if h in (256, 1024)] or hiddens[:2]
    grid = [Config(c, d, m, b, h, T, h)
            for h, b, c, d, m in itertools.product(hiddens, batches, cells, dtypes, modes)]
    grid += [Config(c, d, m, 32, 512, T, 512, layers=2, bidirectional=True)
             for c, d, m in itertools.product(cells, dtypes, modes)]
    # a bidirectional layer whose directions pair as narrow 16-unit tiles on half the SMs
    # (plan.NARROW_UNITS; at H=512 they pair at 8 units)
    if "bf16" in dtypes and not quick:
        grid += [Config(c, "bf16", m, 16, 1024, T, 1024, bidirectional=True)
                 for c, m in itertools.product([c for c in cells if c != "rnn"], modes)]
    if "lstm" in cells and not quick:
        grid += [Config("lstm", "fp16", m, 16, h, T, h)
                 for h, m in itertools.product((512, 768, 1024), modes)]
    return grid


def targets():
    """GUIDE section 5's target configurations, measured before the grid: cuDNN's persistent
    best case (fp16 LSTM B=16 H=I=768 T=1024), bf16/fp32 LSTM and GRU at B in {8, 128},
    H in {256, 1024}, T=256, the large batch (bf16 B=512 H=1024), fp32 LSTM B=128 H=768
    training, and the LSTM with proj_size (bf16 B=16 H=1024 P=512: cuDNN's per-step
    algorithm; both passes weight-stationary with the projection's phase, plan.proj_tiling,
    new since the last GPU run); then one streaming configuration (bf16 LSTM B=8 H=2048)."""
    out = [Config("lstm", "fp16", m, 16, 768, 1024, 768) for m in ("inference", "training")]
    out += [Config(c, d, m, b, h, 256, h) for h, b, c, d, m in itertools.product(
        (1024, 256), (8, 128), ("lstm", "gru"), ("bf16", "fp32"), ("inference", "training"))]
    out += [Config(c, "bf16", m, 512, 1024, 256, 1024)
            for c, m in itertools.product(("lstm", "gru"), ("inference", "training"))]
    # fp32 at H=768 (3 chunks of 256): the backward split over K in 6 parts, which the grid's
    # hidden sizes (powers of two) never plan
    out += [Config("lstm", "fp32", "training", 128, 768, 256, 768)]
    out += [Config("lstm", "bf16", m, 16, 1024, 256, 1024, proj=512)
            for m in ("inference", "training")]
    # last, beside the targets: where W_hh streams (bf16 LSTM B=8 H=2048; H200, 2026-11-27:
    # 0.40-0.95x cuDNN on 64 programs), the narrowed tiles and deeper K-loop pipeline
    # (plan.stream_blocks, stream_stages) against fused-stream32's old ones, timed whatever
    # the grid's budget leaves (the grid reaches H=2048 last)
    out += [Config("lstm", "bf16", m, 8, 2048, 256, 2048) for m in ("inference", "training")]
    return out


def cpu_grid(cells, modes):
    """Small CPU sizes: what a machine without a GPU can time in a minute or two."""
    return [Config(c, "fp32", m, b, h, 32, h)
            for h, b, c, m in itertools.product((64, 256), (1, 16), cells, modes)]
