"""Smoke run of the drop-in modules until the full benchmark lands: times each backend that
can run here against torch.nn on a small LSTM and GRU, after checking it matches."""
import time

import torch
from torch import nn

import fusedrnn


def _time(fn, reps=5):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main():
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
    print(f"{'cell':5} {'backend':10} {'ms':>8} {'vs torch.nn':>12} {'max |diff|':>11}")
    x = torch.randn(64, 8, 128)
    for mode in ("LSTM", "GRU"):
        ref = getattr(nn, mode)(128, 128)
        want = ref(x)[0]
        base = _time(lambda: ref(x))
        for backend in ("native", "reference"):
            m = getattr(fusedrnn, mode)(128, 128, backend=backend)
            m.load_state_dict(ref.state_dict())
            with torch.no_grad():
                diff = (m(x)[0] - want).abs().max().item()
                ms = _time(lambda: m(x))
            print(f"{mode:5} {backend:10} {ms:8.2f} {base / ms:11.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
