"""Compile every kernel, at the block sizes its launcher picks, for real GPU targets.

Run as a script in a process without TRITON_INTERPRET (the kernels must be JIT functions):
the launchers are called on CPU tensors with each kernel replaced by a recorder, so no
kernel runs; every distinct launch is then compiled with ``triton.compile`` for sm_80 and
sm_90 and ``cuobjdump --dump-resource-usage`` reads registers, spills and shared memory.

    python tests/compilecheck.py [--hidden 128 1024] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from fusedrnn.kernels import (common, gru, lstm, pairing, plan, rnn, splitk, stationary,
                              stepclock)
from fusedrnn.kernels.plan import KERNEL_ENV

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}
_BACKEND = make_backend(TARGETS["sm_90"])  # specializes arguments as on either target
_TL = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
       torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32", torch.int8: "i8",
       torch.bool: "i1"}


class Recorder:
    """Stands in for a @triton.jit kernel: records each launch's signature instead of running."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def record(*args, num_warps=4, num_stages=3, **kwargs):
            bound = inspect.signature(self.kernel.fn).bind(*args, **kwargs).arguments
            names = {p.name for p in self.kernel.params if p.is_constexpr}
            if "ASM_ACQUIRE" in names and bound.get("PERSISTENT", True):
                bound["ASM_ACQUIRE"] = True  # what a CUDA launch passes
            if "PREFETCH" in names:
                bound["PREFETCH"] = True  # (likewise)
            # the JIT's own specialization of these arguments, as a launch makes it: which
            # pointers and integers are divisible by 16 (tt.divisibility, what lets loads
            # vectorize) and which integers are 1 (compiled in as constants)
            binder = create_function_from_signature(self.kernel.signature, self.kernel.params,
                                                    _BACKEND)
            bound_args, spec, options = binder(**bound, num_warps=num_warps)
            options, signature, jit_constexprs, attrs = self.kernel._pack_args(
                _BACKEND, {"num_warps": num_warps}, bound_args, spec, options)
            constexprs = {k: v for k, v in bound.items() if k in names}
            if num_stages != 3:  # (a launch option, not an argument: compile() takes it)
                constexprs["num_stages"] = num_stages
            sig = {}
            for name, value in bound.items():
                if name in constexprs:
                    sig[name] = "constexpr"
                elif isinstance(value, torch.Tensor):
                    sig[name] = "*" + _TL[value.dtype]
                else:
                    sig[name] = "i32" if abs(int(value)) < 2 ** 31 else "i64"
            key = (self.kernel.fn.__name__, tuple(sorted(signature.items())),
                   tuple(sorted((str(k), str(v)) for k, v in jit_constexprs.items())),
                   tuple(sorted((str(k), str(v)) for k, v in attrs.items())), num_warps,
                   num_stages)
            self.launches.setdefault(key, (self.kernel, sig, constexprs, num_warps,
                                           (signature, jit_constexprs, attrs)))
        return record


# What plan.device_rules reads off an A100 (sm_80: no wgmma, 163 KB a block), beside its
# 108 SMs: the plans the sm_80-only launches (narrow_launches) are captured with
A100 = dict(wide_tiles=False, smem_limit=163 * 1024)


def _as_on_gpu(sms: int, rules: dict | None = None):
    """Make the launchers, called on CPU tensors, launch what they would on a GPU with
    ``sms`` SMs (and ``rules``, plan.device_rules: an H100's where None): the GPU's plan
    (and a resident weight-stationary grid), bf16 dots on the tensor cores (no interpreter
    upcast), fp32 as torch's default (TF32: cudnn.allow_tf32)."""
    gpu = torch.device("cuda")
    real_plan = plan.plan

    def plan_for(cell, dtype, B, H, K, proj, device, training, ieee, backward=False,
                 directions=1):
        return real_plan(cell, dtype, B, H, K, proj, training, sms, True, ieee, backward,
                         directions, **(rules or {}))

    def dot_flags(dtype, device, allow_tf32=None):
        return common.dot_flags(dtype, gpu, True if allow_tf32 is None else allow_tf32)

    for mod in (lstm, gru, rnn):
        mod.plan_for, mod.dot_flags = plan_for, dot_flags


def capture(hidden_sizes, batches=(1, 64), dtypes=(torch.float32, torch.bfloat16),
            modes=("step", "sequence", "auto"), sms=132, rules=None):
    """Every distinct kernel launch the LSTM, GRU and RNN launchers make, forward and backward,
    as they would on a GPU with ``sms`` SMs and ``rules`` (``auto``: the plan's own choice,
    which is the weight-stationary kernel where it fits)."""
    launches = {}
    for mod in (lstm, gru, rnn, stationary, splitk):
        for name in dir(mod):
            if isinstance(getattr(mod, name), Recorder):  # captured before: record here now
                getattr(mod, name).launches = launches
            elif name.endswith("_kernel") and hasattr(getattr(mod, name), "arg_names"):
                setattr(mod, name, Recorder(getattr(mod, name), launches))
    _as_on_gpu(sms, rules)
    T, I = 2, 32
    for mode in modes:
        os.environ[KERNEL_ENV] = mode
        for batch in batches:
            # (pairs are weight-stationary: the plan's own choice, "auto", makes them)
            _capture_launchers(hidden_sizes, batch, dtypes, T, I, pairs=mode == "auto")
    os.environ.pop(KERNEL_ENV)
    return launches


def _capture_launchers(hidden_sizes, batch, dtypes, T, I, pairs=True):
    for H in hidden_sizes:
        for dt in dtypes:
            kw = dict(dtype=dt)
            x = torch.randn(T, batch, I, **kw)
            lengths = torch.full((batch,), T, dtype=torch.int64)
            for proj in (0, H // 2):
                K = proj or H
                w_hr = torch.randn(proj, H, **kw) if proj else None
                args = (x, torch.zeros(batch, K, **kw), torch.zeros(batch, H, **kw),
                        torch.randn(4 * H, I, **kw), torch.randn(4 * H, K, **kw),
                        torch.randn(4 * H, **kw), torch.randn(4 * H, **kw), w_hr)
                for save in (False, True):
                    out, h, c, saved = lstm.lstm_forward(*args, lengths, False, save)
                cell_grads = (None,) if proj else (None, torch.randn(T, batch, H, **kw))
                for d_cs in cell_grads:  # (d_cs: return_cell_states)
                    lstm.lstm_backward(x, args[3], args[4], w_hr, lengths, False, saved,
                                       torch.randn_like(out), torch.randn_like(h),
                                       torch.randn_like(c), d_cs=d_cs)
            gargs = (x, torch.zeros(batch, H, **kw), torch.randn(3 * H, I, **kw),
                     torch.randn(3 * H, H, **kw), torch.randn(3 * H, **kw),
                     torch.randn(3 * H, **kw))
            for save in (False, True):
                out, h, saved = gru.gru_forward(*gargs, lengths, False, save)
            gru.gru_backward(x, gargs[2], gargs[3], lengths, False, saved,
                             torch.randn_like(out), torch.randn_like(h))
            rargs = (x, torch.zeros(batch, H, **kw), torch.randn(H, I, **kw),
                     torch.randn(H, H, **kw), torch.randn(H, **kw), torch.randn(H, **kw))
            for save in (False, True):  # (relu differs in two pointwise lines: tanh only)
                out, h, saved = rnn.rnn_forward(*rargs, lengths, False, save)
            rnn.rnn_backward(x, rargs[2], rargs[3], lengths, False, saved,
                             torch.randn_like(out), torch.randn_like(h))
            if not pairs:
                continue
            # a bidirectional layer's two directions, paired into one launch where planned
            largs = (x, torch.zeros(batch, H, **kw), torch.zeros(batch, H, **kw),
                     torch.randn(4 * H, I, **kw), torch.randn(4 * H, H, **kw),
                     torch.randn(4 * H, **kw), torch.randn(4 * H, **kw), None)
            _capture_pair(lstm.lstm_forward_steps, lstm.lstm_backward_steps, largs,
                          (largs[3], largs[4], None), 2, lengths)
            _capture_pair(gru.gru_forward_steps, gru.gru_backward_steps, gargs,
                          gargs[2:4], 1, lengths)
            _capture_pair(rnn.rnn_forward_steps, rnn.rnn_backward_steps, rargs,
                          rargs[2:4], 1, lengths)


def _capture_pair(fwd, bwd, args, bwd_weights, n_states, lengths):
    """Forward (saving) and backward of both directions through pairing.run_pair."""
    res = pairing.run_pair(*(fwd(*args, lengths, bool(r), True, directions=2) for r in (0, 1)))
    pairing.run_pair(*(bwd(args[0], *bwd_weights, lengths, bool(r), res[r][-1],
                           *(torch.randn_like(t) for t in res[r][:1 + n_states]),
                           directions=2) for r in (0, 1)))


def capture_regularized(H=64, batch=16, dtype=torch.bfloat16, sms=132):
    """The launches of issue 14's options as a GPU makes them: LSTM and GRU with the
    variational state mask, zoneout and resets, the RNN with the mask and resets, forward
    (saving) and backward, in step, streaming-sequence and weight-stationary mode."""
    launches = {}
    for mod in (lstm, gru, rnn, stationary, splitk):
        for name in dir(mod):
            if isinstance(getattr(mod, name), Recorder):
                getattr(mod, name).launches = launches
            elif name.endswith("_kernel") and hasattr(getattr(mod, name), "arg_names"):
                setattr(mod, name, Recorder(getattr(mod, name), launches))
    _as_on_gpu(sms)
    T, I, kw = 2, 32, dict(dtype=dtype)
    x = torch.randn(T, batch, I, **kw)
    lengths = torch.full((batch,), T, dtype=torch.int64)
    hmask = torch.ones(batch, H, **kw)
    zoneout = (2 ** 40 + 1, 1 << 22, 1 << 21, 1)
    resets = torch.zeros(T, batch, dtype=torch.bool)
    resets[1, 0] = True
    for mode in ("step", "sequence", "stationary"):
        os.environ[KERNEL_ENV] = mode
        largs = (x, torch.zeros(batch, H, **kw), torch.zeros(batch, H, **kw),
                 torch.randn(4 * H, I, **kw), torch.randn(4 * H, H, **kw),
                 torch.randn(4 * H, **kw), torch.randn(4 * H, **kw), None)
        out, h, c, saved = lstm.lstm_forward(*largs, lengths, False, True, hmask=hmask,
                                             zoneout=zoneout, resets=resets)
        lstm.lstm_backward(x, largs[3], largs[4], None, lengths, False, saved,
                           torch.randn_like(out), torch.randn_like(h), torch.randn_like(c),
                           hmask=hmask, zoneout=zoneout, resets=resets)
        for G, fwd, bwd, opts in ((3, gru.gru_forward, gru.gru_backward, dict(zoneout=zoneout)),
                                  (1, rnn.rnn_forward, rnn.rnn_backward, {})):
            args = (x, torch.zeros(batch, H, **kw), torch.randn(G * H, I, **kw),
                    torch.randn(G * H, H, **kw), torch.randn(G * H, **kw),
                    torch.randn(G * H, **kw))
            out, h, saved = fwd(*args, lengths, False, True, hmask=hmask, resets=resets, **opts)
            bwd(x, args[2], args[3], lengths, False, saved, torch.randn_like(out),
                torch.randn_like(h), hmask=hmask, resets=resets, **opts)
    os.environ.pop(KERNEL_ENV)
    return launches


def _cuobjdump() -> str:
    path = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(path) if path.exists() else "cuobjdump"


def _dump(cubin: bytes, flag: str) -> str:
    """cuobjdump's text for a cubin: --dump-resource-usage or -sass."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([_cuobjdump(), flag, f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def resources(cubin: bytes) -> dict:
    text = _dump(cubin, "--dump-resource-usage")
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    # ptxas spills registers to the stack frame: STACK > 0 is a spill as much as LOCAL > 0
    return {"registers": int(fields.get("REG", -1)), "local": int(fields.get("LOCAL", -1)),
            "stack": int(fields.get("STACK", -1)), "shared": int(fields.get("SHARED", -1)),
            "spill_bytes": int(fields.get("LOCAL", -1)) + int(fields.get("STACK", -1))}


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def sass_loops(sass: str):
    """(instructions as (address, text), loops as (first, last) address) of SASS text: a
    loop is a backward branch and what it jumps over."""
    code = [(int(a, 16), ins) for a, ins in _SASS_LINE.findall(sass)]
    loops = []
    for addr, ins in code:
        m = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    return code, loops


def hot_spills(sass: str) -> int:
    """Local-memory accesses (spill loads/stores, LDL/STL) inside the innermost loops of the
    SASS: the hot loops (the reduction over K). Spills ptxas places outside them cost a few
    bytes per step at most; inside them they cost every iteration."""
    code, loops = sass_loops(sass)
    innermost = [(a, b) for a, b in loops
                 if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    return sum(1 for addr, ins in code if re.search(r"\b(LDL|STL)\b", ins)
               and any(a <= addr <= b for a, b in innermost))


def compile_options(launch) -> dict:
    """triton.compile's options for a recorded launch: its warps and pipeline stages."""
    _, _, constexprs, num_warps, _ = launch
    return {"num_warps": num_warps, "num_stages": constexprs.get("num_stages", 3)}


def source(launch, **constexprs) -> ASTSource:
    """What the JIT compiles for a recorded launch (its signature, constants and attributes
    as a launch specializes them), with some constexprs replaced by name."""
    kernel, _, _, _, (signature, jit_constexprs, attrs) = launch
    paths = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    return ASTSource(kernel, signature, {**jit_constexprs, **paths}, attrs)


_JOBS = []  # (launch, target) pairs, read by forked workers


def _compile(k: int, need_sass: bool = True):
    """Compile job k: (its row of the table, the compiled kernel, its SASS). Without
    ``need_sass`` the SASS is read only where the build spills (a build with no local
    memory has no spill in its loops): the SASS dump is most of a small build's check
    (~0.25 s of cuobjdump)."""
    (name, *_), launch, tname = _JOBS[k]
    _, sig, constexprs, num_warps, _ = launch
    start = time.perf_counter()
    compiled = triton.compile(source(launch), target=TARGETS[tname],
                              options=compile_options(launch))
    seconds = time.perf_counter() - start
    res = resources(compiled.asm["cubin"])
    sass = _dump(compiled.asm["cubin"], "-sass") if need_sass or res["spill_bytes"] else ""
    row = {"kernel": name, "target": tname, "num_warps": num_warps,
           "dtype": sig["w_ptr"][1:],  # the weights' dtype is the layer's
           "config": {k: str(v) for k, v in constexprs.items()},
           **res, "dynamic_shared": compiled.metadata.shared,
           "hot_spills": hot_spills(sass), "compile_s": round(seconds, 2)}
    return row, compiled, sass


def _compile_one(k: int) -> dict:
    return _compile(k, need_sass=False)[0]


def compile_all(launches, one=_compile_one, targets=tuple(TARGETS), keep=None) -> list[dict]:
    """Compile every recorded launch for every target (``keep(key, launch, target)``: only
    those it accepts), on all cores; ``one`` makes a row."""
    _JOBS[:] = [(key, launch, tname) for key, launch in launches.items() for tname in targets
                if keep is None or keep(key, launch, tname)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(one, range(len(_JOBS)))


def wide_tiles(num_warps: int) -> bool:
    """The plan's wide_tiles for a recorded weight-stationary launch of ``num_warps`` warps:
    only at 64 gate rows a forward does it matter, and there a wide tile's plain dot has
    WIDE_WARPS warps where a narrow tile's runs of K have at most MAX_K_RUNS."""
    return num_warps == plan.WIDE_WARPS


def within_register_budget(kernel_name: str, dtype: str, config: dict,
                           num_warps: int) -> bool:
    """Whether a weight-stationary launch's tiling is within the plan's register budgets
    (kernels/plan.py), where its builds must not spill. dtype: "bf16" | "fp16" | "fp32"."""
    cell = "lstm" if str(config["LSTM"]) == "True" else \
        "rnn" if str(config["RNN"]) != "0" else "gru"
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    return plan.within_register_budget(cell, dt, int(config["U"]), int(config["BB"]),
                                       int(config["NK"]), int(config["KC"]),
                                       kernel_name == "stationary_bwd_kernel",
                                       wide_tiles(num_warps))


def _wide_launch(key, launch) -> bool:
    """Whether a recorded weight-stationary launch is a wide tile's forward (plan.wide)."""
    c = launch[2]
    cell = "lstm" if c["LSTM"] else "rnn" if c["RNN"] else "gru"
    return plan.wide(cell, c["U"], key[0] != "stationary_fwd_kernel", wide_tiles(launch[3]))


def _proj_launch(key, launch) -> bool:
    """Whether a recorded launch is a weight-stationary LSTM pass with a projection
    (proj_launches checks those)."""
    return key[0].startswith("stationary_") and int(launch[2].get("PROJ", 0)) > 0


def _narrow_launch(key, launch) -> bool:
    """Whether a recorded weight-stationary launch is a narrow 16-unit tile's
    (plan.NARROW_UNITS: an LSTM or GRU, not the plain RNN's 4 x 4 units; 16 units a
    backward are narrow wherever they are planned)."""
    c = launch[2]
    return (not c["RNN"] and c["U"] == plan.NARROW_UNITS
            and not _wide_launch(key, launch))


def _within_budgets(launches: dict) -> dict:
    """The launches without the weight-stationary tilings planned past the register budgets:
    those spill by design, compile slowly (minutes at H=1024), and --stationary checks them."""
    return {k: v for k, v in launches.items() if not k[0].startswith("stationary_")
            or within_register_budget(k[0], v[1]["w_ptr"][1:], v[2], v[3])}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--auto-hidden", type=int, nargs="+",
                    help="hidden sizes of the plan's own choice (default: --hidden)")
    ap.add_argument("--json")
    ap.add_argument("--stationary", action="store_true",
                    help="the weight-stationary kernels' matrix and checks instead")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64],
                    help="batch sizes of the weight-stationary matrix")
    ap.add_argument("--wide", action="store_true",
                    help="with --stationary: the wide tiles' launches instead of the matrix")
    ap.add_argument("--splitk", action="store_true",
                    help="with --stationary: the split-K backward's launches instead")
    ap.add_argument("--ll", action="store_true",
                    help="with --stationary: the forward's LL-word launches instead")
    ap.add_argument("--red", action="store_true",
                    help="with --stationary: launches whose barriers arrive by red.release")
    ap.add_argument("--bf16-hidden", type=int, nargs="+", default=[256, 1024],
                    help="bf16 hidden sizes of the weight-stationary matrix")
    ap.add_argument("--clock", action="store_true",
                    help="with --stationary: launches recording their steps' clocks")
    ap.add_argument("--narrow", action="store_true",
                    help="with --stationary: the narrow 16-unit launches (NARROW)")
    ap.add_argument("--proj", action="store_true",
                    help="with --stationary: the LSTM's projection launches, both passes")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET: the kernels must be JIT functions")
    if args.stationary:
        return check_stationary(args.json, args.targets, tuple(args.batches), args.wide,
                                args.splitk, args.ll, args.red, args.clock,
                                tuple(args.bf16_hidden), args.narrow, args.proj)
    # the streaming kernels at every size; the plan's own choice ("auto": the
    # weight-stationary kernels where they fit, which --stationary checks in depth) at
    # --auto-hidden
    # sm_80 at B=64 and bf16 only: B=1's tiles are below wgmma's 64 rows, so sm_90 builds
    # them with the same MMAs as sm_80, and fp32's differ from bf16's on sm_80 by the
    # operands' type alone (each cost the suite ~1 minute of its 15)
    # (at B=64 only: B=1's tiles, 16 rows, hold a quarter of B=64's operands in the same
    # code, and were 154 of the 385 builds, ~1.5 minutes of CPU of the suite's 15 on two
    # cores; the weight-stationary kernels' B=1 tilings are --stationary's)
    found = capture(args.hidden, batches=(64,), modes=("step", "sequence"))
    # (B=64 takes tiles of 8 or 16 units on 132 SMs, plan.stream_blocks; a batch past the
    # SMs, 32: the largest hidden size's streaming tiles at B=512)
    found.update(capture(args.hidden[-1:], batches=(512,), modes=("sequence",)))
    found.update(capture(args.auto_hidden or args.hidden, batches=(64,), modes=("auto",)))
    # (sm_80: bf16, and the streaming kernels' sequence mode: its step mode is the same
    # tiles without the loop over time)
    rows = compile_all(_within_budgets(found),
                       keep=lambda key, launch, tname: tname == "sm_90" or (
                           "*bf16" in launch[1].values()
                           and str(launch[2].get("PERSISTENT", True)) == "True"))
    print(f"{'kernel':24} {'target':6} {'dtype':5} {'blocks (B,H,K)':14} {'warps':>5} "
          f"{'regs':>5} {'local':>6} {'stack':>6} {'smem':>6} {'hot-loop spills':>15}")
    for r in rows:
        c = r["config"]
        blocks = ",".join(c.get(k, "-") for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K"))
        blocks += " seq" if c.get("PERSISTENT") == "True" else " step"
        print(f"{r['kernel']:24} {r['target']:6} {r['dtype']:5} {blocks:14} {r['num_warps']:5d} "
              f"{r['registers']:5d} {r['local']:6d} {r['stack']:6d} {r['shared']:6d} "
              f"{r['hot_spills']:15d}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------------------
# the weight-stationary kernels: W stays out of the time loop, MMAs are not replicated
# ----------------------------------------------------------------------------------------
_DEF = re.compile(r"^\s*((?:%[\w.]+(?::\d+)?)(?:,\s*%[\w.]+(?::\d+)?)*)\s*=\s*(.*)$")


def _region(lines, start):
    """Lines of the region that opens on lines[start] (brace matching)."""
    depth, out = 0, []
    for line in lines[start:]:
        out.append(line)
        depth += line.count("{") - line.count("}")
        if depth <= 0 and len(out) > 1:
            break
    return out


def w_loads_in_time_loop(ttgir: str, arg: str = "w_ptr") -> int:
    """Global loads inside the time loop (the ``scf.for`` up to T) whose pointer derives
    from the kernel argument ``arg``: what a weight-stationary kernel must not have. A load
    is a tt.load or, where the pipeliner turned it into one (16-byte aligned operands, as a
    launch specializes them), an asynchronous copy to shared memory (cp.async)."""
    lines = ttgir.splitlines()
    defs = {}
    for line in lines:
        m = _DEF.match(line.split(" loc(")[0])
        if m:
            operands = [o.split("#")[0] for o in re.findall(r"%[\w.#]+", m.group(2))]
            for name in m.group(1).split(","):
                defs[name.strip().split(":")[0]] = operands

    def from_arg(name, seen):
        if name == f"%{arg}":
            return True
        if name in seen or name not in defs:
            return False
        seen.add(name)
        return any(from_arg(o, seen) for o in defs[name])

    # the loop over time runs to the argument T (its variable is %s on Triton 3.9, %argN
    # on 3.6)
    starts = [k for k, line in enumerate(lines)
              if re.match(r"\s*scf\.for %[\w.]+ = %[\w.]+ to %T step ", line)]
    if not starts:
        raise ValueError("no scf.for over T in the TTGIR: the time loop was not found")
    start = starts[0]
    n = 0
    for line in _region(lines, start):
        m = re.search(r"= (?:tt\.load|ttg\.async_copy_global_to_local) (%[\w.]+)", line)
        if m and from_arg(m.group(1), set()):
            n += 1
    return n


def _time_loop(sass: str):
    """(instructions, (first, last) address of the time loop): the outermost loop of the
    SASS holding an MMA (HMMA, or Hopper's HGMMA)."""
    code, loops = sass_loops(sass)
    mma = [a for a, ins in code if re.match(r"HG?MMA\b", ins)]
    holding = [(a, b) for a, b in loops if any(a <= x <= b for x in mma)]
    if not holding:
        return code, None
    return code, min(holding, key=lambda ab: ab[0] - ab[1])  # the outermost (largest)


def block_barriers_in_step(sass: str) -> int:
    """Block barriers (BAR.SYNC) a step issues outside the loops inside the time loop (the
    grid barrier's polls): each a round through shared memory for all the warps."""
    code, loop = _time_loop(sass)
    if loop is None:
        return 0
    _, loops = sass_loops(sass)
    inner = [(a, b) for a, b in loops if loop[0] <= a and b <= loop[1] and (a, b) != loop]
    return sum(1 for a, ins in code if loop[0] <= a <= loop[1] and re.search(r"\bBAR\b", ins)
               and not any(x <= a <= y for x, y in inner))


def mma_per_step(sass: str) -> int:
    """Tensor-core MMA instructions (HMMA, or Hopper's HGMMA) one warp issues per time
    step: those inside the time loop."""
    code, loop = _time_loop(sass)
    if loop is None:
        return 0
    return sum(1 for a, ins in code if loop[0] <= a <= loop[1] and re.match(r"HG?MMA\b", ins))


def warpgroup_mma(sass: str) -> bool:
    """Whether the time loop's MMAs are Hopper's warpgroup MMAs (HGMMA, wgmma: a wide
    tile's plain dot on sm_90) rather than mma.sync (HMMA)."""
    code, loop = _time_loop(sass)
    return loop is not None and any(loop[0] <= a <= loop[1] and re.match(r"HGMMA\b", ins)
                                    for a, ins in code)


def mma_chain_per_step(sass: str) -> int:
    """The longest chain of dependent MMAs in one time step: MMA after MMA, each taking the
    last one's accumulator (through any instructions between). A dependent HMMA waits out
    the previous one's latency (~33 cycles), so this chain, not the count, bounds a step's
    product time where it is long. Registers are followed by their first (base) name, in
    program order through the loop body."""
    code, loop = _time_loop(sass)
    if loop is None:
        return 0
    depth, longest = {}, 0
    for a, ins in code:
        if not loop[0] <= a <= loop[1]:
            continue
        ins = re.sub(r"^@!?U?P\w+\s+", "", ins)  # the predicate guard
        op, _, rest = ins.partition(" ")
        regs = re.findall(r"\bR(\d+)\b", rest)
        if not regs or op.startswith(("ST", "RED", "BAR", "BRA")):  # these write no register
            continue
        mma = re.match(r"HG?MMA\b", op) is not None
        sources = regs[-1:] if mma else regs[1:]  # an MMA continues its accumulator's chain
        d = max((depth.get(r, 0) for r in sources), default=0) + mma
        depth[regs[0]] = d
        longest = max(longest, d)
    return longest


def prefetches_before_mma(sass: str) -> int:
    """L1 prefetches (CCTL.E.PF*) a step issues before its first MMA: the forward's update
    inputs (stationary._prefetch_fwd), which must start before the product to hide under
    it."""
    code, loop = _time_loop(sass)
    if loop is None:
        return 0
    n = 0
    for a, ins in code:
        if not loop[0] <= a <= loop[1]:
            continue
        ins = re.sub(r"^@!?U?P\w+\s+", "", ins)
        if re.match(r"HG?MMA\b", ins):
            break
        n += bool(re.match(r"CCTL\.\w*\.?PF", ins))
    return n


def loads_among_mmas(sass: str) -> int:
    """Global loads a step issues between its first and its last MMA: each waits out an L2
    round trip inside the product (the forward's h chunks loaded chunk by chunk: the last
    chunk's, among the MMAs of the one before)."""
    code, loop = _time_loop(sass)
    if loop is None:
        return 0
    body = [re.sub(r"^@!?U?P\w+\s+", "", ins) for a, ins in code if loop[0] <= a <= loop[1]]
    mma = [k for k, ins in enumerate(body) if re.match(r"HG?MMA\b", ins)]
    return sum(1 for ins in body[mma[0]:mma[-1]] if re.match(r"LDG\b", ins)) if mma else 0


def mma_work_per_warp(config: dict, kernel: str, num_warps: int, dtype: str,
                      wgmma: bool = False) -> int:
    """The MMAs a step needs, divided over the warps: m16n8k16 (m16n8k8 for TF32) tiles of
    the forward's (4U x BB) gates over K = NK*KC, or the backward's G gates of (BB x U). (A
    split forward runs its SPLIT sub-tiles of BB rows in a loop: the SASS of the time step
    holds one sub-tile's MMAs, its loop's body.)
    ``wgmma`` (a wide forward's plain dot on sm_90): every warp of a warpgroup issues each
    of its warpgroup's MMAs, 64 rows by the warpgroup's share of the batch, so a warp
    issues the k steps times the 64-row tiles over the warpgroups along the rows."""
    U, BB, KC, NK = (int(config.get(k, 1)) for k in ("U", "BB", "KC", "NK"))
    k_step = 8 if dtype == "fp32" else 16
    k_tiles = NK * KC // k_step
    if kernel == "splitk_bwd_kernel":  # G dots (PR, KC) . (KC, U), a gate's K part each
        gates = 4 if str(config["LSTM"]) == "True" else 3
        BB = int(config["PR"])  # (the SASS of the time step holds one partial product)
        if wgmma:  # 64 rows a warpgroup's wgmma, the warpgroups over the rows, else U
            return gates * k_tiles * max(1, (BB // 64) // (num_warps // 4))
        return gates * max(1, BB // 16) * max(1, U // 8) * k_tiles // num_warps
    plain = config.get("RNN", "0") != "0"  # one gate: U rows forward, one gate backward
    if kernel == "stationary_fwd_kernel":
        rows = U if plain else 4 * U
        if wgmma:
            m_tiles = max(1, rows // 64)
            return k_tiles * m_tiles // min(m_tiles, num_warps // 4)
        return max(1, rows // 16) * max(1, BB // 8) * k_tiles // num_warps
    gates = 1 if plain else 4  # a batch of gates, a GRU's three padded to four
    return gates * max(1, BB // 16) * max(1, U // 8) * k_tiles // num_warps


def k_tiles(config: dict, dtype: str) -> int:
    """MMA steps along K of one gate's product: NK*KC / 16 (8 for TF32)."""
    return int(config.get("NK", 1)) * int(config["KC"]) // (8 if dtype == "fp32" else 16)


def _stationary_one(k: int) -> dict:
    return _stationary_row(*_compile(k))


def _stationary_row(row: dict, compiled, sass: str) -> dict:
    wgmma = warpgroup_mma(sass)
    return {**row, "triton": triton.__version__, "dyn_shared": compiled.metadata.shared,
            "w_loads_in_loop": w_loads_in_time_loop(compiled.asm["ttgir"]),
            "mma_per_step": mma_per_step(sass), "mma_chain": mma_chain_per_step(sass),
            "prefetches": prefetches_before_mma(sass), "loads_in_product": loads_among_mmas(sass),
            "k_tiles": k_tiles(row["config"], row["dtype"]),
            "wgmma": wgmma, "block_barriers": block_barriers_in_step(sass),
            "clock_reads": clock_reads_in_step(sass),
            "mma_work": mma_work_per_warp(row["config"], row["kernel"], row["num_warps"],
                                          row["dtype"], wgmma)}


def stationary_matrix(sms=132, batches=(1, 16, 64), bf16_hidden=(256, 1024),
                      inference=True):
    """The weight-stationary launches the issue's checks name: bf16 at B in {1, 16, 64}, H in
    {256, 1024}; fp16 and fp32 (TF32) at H=768. Forward (with and without saving for
    backward) and backward, LSTM, GRU and RNN, as planned for a GPU with ``sms`` SMs, those
    past the register budgets too (check_stationary compiles them for sm_90 only). (H=512
    dropped once the plan ran the past-budget tilings: with all of them, 166 launches took
    7.5 minutes to compile for both targets on two cores. Since the runs of K (plan.k_runs)
    no tiling at B=16 is past the budgets; the backward's at B=64, BB=64, are.)
    inference: also the forward without saving for backward (SAVE off: the same time step
    less the gates' stores), and the bidirectional pairs (PAIRED: the same step at an
    offset a direction); check_stationary builds those at B=16 only, the suite's time."""
    launches = {}
    kw = dict(modes=("auto",), sms=sms)
    for dt, hs in ((torch.bfloat16, tuple(bf16_hidden)), (torch.float16, (768,)),
                   (torch.float32, (768,))):
        for B in batches:
            launches.update(capture(hs, batches=(B,), dtypes=(dt,), **kw))
    # (without the wide tiles' forward, which the bidirectional B=64 H=1024 pairs, nor the
    # narrow tiles, which the bidirectional 16-bit B <= 32 pairs: --wide and --narrow check
    # them; 16 of 183 launches)
    # (nor the projection's launches, captured at proj_size H / 2: --proj checks them)
    return {k: v for k, v in launches.items()
            if k[0].startswith("stationary_") and not _wide_launch(k, v)
            and not _narrow_launch(k, v) and not _proj_launch(k, v)
            and (inference or (str(v[2].get("SAVE", True)) == "True"
                               and str(v[2]["PAIRED"]) == "False"))}


def wide_launches(sms=132):
    """The wide tiles' forward (plan.WIDE_UNITS, one plain dot a chunk) where a 132-SM GPU
    plans them: bf16 LSTM B=128 H=1024 training (an issue 11 target, 4 chunks of h, one at
    a time) and fp16 GRU B=512 H=768 inference (256 rows a program as 4 sub-tiles of 64,
    plan.sub_rows; 3 chunks loaded ahead): two launches, for the suite's time."""
    launches = {}
    for dt, B, H, lstm, save in ((torch.bfloat16, 128, 1024, True, True),
                                 (torch.float16, 512, 768, False, False)):
        for key, launch in capture([H], batches=(B,), dtypes=(dt,), modes=("auto",),
                                   sms=sms).items():
            c = launch[2]
            if (key[0] == "stationary_fwd_kernel" and c["LSTM"] == lstm and c["SAVE"] == save
                    and not c["PAIRED"] and _wide_launch(key, launch)):
                launches[key] = launch
                break  # (one of the layer's launches: they differ in strides' alignment)
    return launches


# Where the narrow 16-unit tiles (plan.NARROW_UNITS) are planned, per target: (dtype, LSTM,
# B, H, SMs, plan rules, paired). sm_80, an A100 (108 SMs): bf16 LSTM B=8 H=1024 (64
# programs, 4 chunks of h; an issue 11 target that streamed there) and fp16 GRU B=64 H=768's
# backward (2 batch groups of 32: 96 programs). sm_90: an H100 PCIe's 114 SMs at bf16 LSTM
# B=8 H=1024 (8 units: 128 groups), a bidirectional fp16 LSTM B=16 H=768 on a 132-SM
# GPU, its two directions paired on half the SMs each, and bf16 LSTM B=8 H=1536 there (192
# KB of W_hh a program: NARROW_W_BUDGET).
NARROW = {"sm_80": ((torch.bfloat16, True, 8, 1024, 108, A100, False),
                    (torch.float16, False, 64, 768, 108, A100, False)),
          "sm_90": ((torch.bfloat16, True, 8, 1024, 114, None, False),
                    (torch.float16, True, 16, 768, 132, None, True),
                    (torch.bfloat16, True, 8, 1536, 132, None, False))}


def narrow_launches(target: str, probe=()) -> dict:
    """The narrow tiles' launches planned for ``target``'s GPUs (NARROW, and ``probe``: more
    of its tuples), forward (saving) and backward of each, one launch each."""
    launches = {}
    for dt, lstm_cell, B, H, sms, rules, paired in (*NARROW[target], *probe):
        one = {}
        for key, launch in capture([H], batches=(B,), dtypes=(dt,), modes=("auto",),
                                   sms=sms, rules=rules).items():
            c = launch[2]
            if (key[0].startswith("stationary_") and c["LSTM"] == lstm_cell and not c["RNN"]
                    and c["U"] == plan.NARROW_UNITS and c.get("SAVE", True)
                    and c["PAIRED"] == paired and key[0] not in {k[0] for k in one}):
                one[key] = launch
        launches.update(one)
    return launches


def proj_launches(sms=132):
    """The LSTM's projection in the weight-stationary kernels (plan.proj_tiling) as a 132-SM
    GPU plans it, forward (inference and training) and backward: bf16 B=16 H=1024
    proj_size 512 (the operands loaded ahead) and fp16 B=64 H=768 proj_size 384 (chunk by
    chunk: ahead, m_t would be 768 B a thread)."""
    launches = {}
    for dt, B, H in ((torch.bfloat16, 16, 1024), (torch.float16, 64, 768)):
        launches.update({k: v for k, v in capture((H,), batches=(B,), dtypes=(dt,),
                                                  modes=("auto",), sms=sms).items()
                         if _proj_launch(k, v)})
    return launches


def splitk_launches(sms=132):
    """The split-K backward (kernels/splitk.py) where a 132-SM GPU plans it for issue 11's
    targets: bf16 LSTM and GRU B=128 H=1024 (64 rows a program, each gate's product its own
    chain), fp32 LSTM B=128 H=1024 (128 rows as 2 products of 64), bf16 GRU B=512
    H=1024 (256 as 4), and H=768 in 6 K parts of 128 (fp32 LSTM B=64: 4 of a tile's 6
    programs run the update) and 3 of 256 (bf16 GRU B=128), and bf16 LSTM B=512 H=768 (3
    parts, 128 update rows a program as 4 passes of 32). One launch each, for the suite's
    time."""
    launches = {}
    for dt, lstm_cell, B, H in ((torch.bfloat16, True, 128, 1024),
                                (torch.bfloat16, False, 128, 1024),
                                (torch.float32, True, 128, 1024),
                                (torch.bfloat16, False, 512, 1024),
                                (torch.float32, True, 64, 768),
                                (torch.bfloat16, False, 128, 768),
                                (torch.bfloat16, True, 512, 768)):
        for key, launch in capture([H], batches=(B,), dtypes=(dt,), modes=("auto",),
                                   sms=sms).items():
            if key[0] == "splitk_bwd_kernel" and launch[2]["LSTM"] == lstm_cell:
                launches[key] = launch
                break
    return launches


@contextlib.contextmanager
def _forced(flag: str):
    """plan.<flag> (FORCED_LL, FORCED_RED) set while the launches are captured."""
    setattr(plan, flag, True)
    try:
        yield
    finally:
        setattr(plan, flag, False)


def ll_launches(sms=132):
    """The weight-stationary forward with h exchanged as LL words (kernels/ll.py,
    plan.FORCED_LL) where a 132-SM GPU plans it at issue 11's latency-bound targets: fp16
    LSTM B=16 H=768 (cuDNN's persistent case, 32-bit words, 3 chunks), bf16 GRU B=8 H=1024
    and fp32 (TF32) LSTM B=8 H=1024 (64-bit words). Training launches (SAVE), one each."""
    launches = {}
    with _forced("FORCED_LL"):
        for dt, lstm_cell, B, H in ((torch.float16, True, 16, 768),
                                    (torch.bfloat16, False, 8, 1024),
                                    (torch.float32, True, 8, 1024)):
            for key, launch in capture([H], batches=(B,), dtypes=(dt,), modes=("auto",),
                                       sms=sms).items():
                c = launch[2]
                if (key[0] == "stationary_fwd_kernel" and c["LSTM"] == lstm_cell
                        and c["SAVE"] and not c["PAIRED"]):
                    assert c["LL"] in (16, 32), c
                    launches[key] = launch
                    break
    return launches


def red_launches(sms=132):
    """The weight-stationary kernels with their barriers arriving as a red.release
    (plan.FORCED_RED) at fp16 LSTM B=16 H=768 (forward and backward, training) and the
    split-K backward of bf16 LSTM B=128 H=1024 (two barriers a step)."""
    launches = {}
    with _forced("FORCED_RED"):
        for dt, B, H, kernels in ((torch.float16, 16, 768, ("stationary_fwd_kernel",
                                                             "stationary_bwd_kernel")),
                                  (torch.bfloat16, 128, 1024, ("splitk_bwd_kernel",))):
            for key, launch in capture([H], batches=(B,), dtypes=(dt,), modes=("auto",),
                                       sms=sms).items():
                c = launch[2]
                if (key[0] in kernels and c["LSTM"] and c.get("SAVE", True)
                        and not c.get("PAIRED", False)
                        and key[0] not in {k[0] for k in launches}):
                    assert c["RED"], c
                    launches[key] = launch
    return launches


def clock_launches(sms=132, record=True):
    """The weight-stationary forward and backward recording their steps' clocks
    (kernels/stepclock.py, what bench.phases runs on a GPU) at fp16 LSTM B=16 H=768,
    training (``record`` False: the same launches as they run untimed)."""
    launches = {}
    with stepclock.recording() if record else contextlib.nullcontext():
        for key, launch in capture([768], batches=(16,), dtypes=(torch.float16,),
                                   modes=("auto",), sms=sms).items():
            c = launch[2]
            if (key[0] in ("stationary_fwd_kernel", "stationary_bwd_kernel") and c["LSTM"]
                    and c.get("SAVE", True) and not c["PAIRED"]
                    and key[0] not in {k[0] for k in launches}):
                assert c["CLOCK"] == record, c
                launches[key] = launch
    return launches


def _step_ops(sass: str) -> list[str]:
    """The instructions of the time loop, innermost loops included (none without one)."""
    code, loop = _time_loop(sass)
    return [] if loop is None else [ins for a, ins in code if loop[0] <= a <= loop[1]]


def clock_reads_in_step(sass: str) -> dict:
    """The time loop's reads of the SM's cycle counter and of the GPU's clock."""
    ops = _step_ops(sass)
    return dict(clock=sum("SR_CLOCKLO" in o for o in ops),
                globaltimer=sum("SR_GLOBALTIMERLO" in o for o in ops))


def arrivals_in_step(sass: str) -> dict:
    """The barriers' arrivals in the time loop: atomic adds (whose value the program waits
    for) and red.release reductions (which return nothing)."""
    ops = _step_ops(sass)
    return dict(atomic=sum(bool(re.search(r"\bATOMG?\.E\.ADD\b", o)) for o in ops),
                red=sum(bool(re.search(r"\bREDG?\.E\.ADD", o)) for o in ops))


def spills_in_step(sass: str) -> int:
    """Local-memory accesses (LDL/STL) anywhere in the time loop: where its innermost loops
    are only the barriers' polls (the split-K backward), hot_spills sees none of them."""
    return sum(1 for ins in _step_ops(sass) if re.search(r"\b(LDL|STL)\b", ins))


def _splitk_one(k: int) -> dict:
    row, compiled, sass = _compile(k)
    return {**_stationary_row(row, compiled, sass), "spills_in_step": spills_in_step(sass),
            "arrivals": arrivals_in_step(sass),
            "w_hr_loads_in_loop": (w_loads_in_time_loop(compiled.asm["ttgir"], "w_hr_ptr")
                                   if row["kernel"].startswith("stationary_") else 0)}


def check_stationary(json_path=None, targets=tuple(TARGETS), batches=(1, 16, 64),
                     wide=False, splitk=False, ll_words=False, red=False,
                     clock=False, bf16_hidden=(256, 1024), narrow=False,
                     proj=False) -> list[dict]:
    # past the register budgets, sm_90 alone (the H100/H200 the plan measured them on):
    # those compiles take minutes, and sm_80 doubled them
    # (the wide tiles are sm_90's alone: plan.wgmma. sm_80 builds at B=16 and 16-bit only:
    # B=1's tilings, BB=8, are also B=16's where they have the most programs, B=64's are
    # built for sm_90 with the same MMAs (not wide: HMMA on both), fp32's differ by the
    # operands' type, and the suite keeps within 15 minutes)
    # (the narrow tiles: each target's own plans, NARROW)
    special = wide or splitk or ll_words or red or clock or narrow or proj
    narrows = {t: narrow_launches(t) for t in targets} if narrow else {}
    per_batch = {} if special else {b: stationary_matrix(batches=(b,),
                                                         bf16_hidden=bf16_hidden,
                                                         inference=b == 16)
                                    for b in batches}
    launches = wide_launches() if wide else splitk_launches() if splitk else ll_launches() \
        if ll_words else red_launches() if red else clock_launches() if clock else \
        proj_launches() if proj else \
        {k: v for m in narrows.values() for k, v in m.items()} if narrow else {
            k: v for m in per_batch.values() for k, v in m.items()}
    sm80 = {k for b, m in per_batch.items() if b == 16 for k in m}
    if proj:  # (bf16 B=16 on sm_80 too)
        sm80 = {k for k, v in launches.items() if v[1]["w_ptr"] == "*bf16"}
    rows = compile_all(launches, _splitk_one if special and not wide else _stationary_one,
                       targets,
                       keep=lambda key, launch, tname: key in narrows[tname] if narrow else (
                           tname == "sm_90"
                           or key in sm80 and launch[1]["w_ptr"] != "*fp32"
                           and within_register_budget(key[0], launch[1]["w_ptr"][1:],
                                                      launch[2], launch[3])
                           and not _wide_launch(key, launch)))
    print(f"{'kernel':22} {'target':6} {'dtype':5} {'U,BB,NKxKC':13} {'warps':>5} {'regs':>5} "
          f"{'spill':>5} {'smem':>7} {'W ld/step':>9} {'MMA/warp/step':>13} {'work':>5} "
          f"{'chain':>5}")
    for r in rows:
        c = r["config"]
        tiles = f"{c['U']},{c['BB']},{c.get('NK', c.get('S'))}x{c['KC']}"
        print(f"{r['kernel']:22} {r['target']:6} {r['dtype']:5} {tiles:13} {r['num_warps']:5d} "
              f"{r['registers']:5d} {r['spill_bytes']:5d} {r['dyn_shared']:7d} "
              f"{r['w_loads_in_loop']:9d} {r['mma_per_step']:13d} {r['mma_work']:5d} "
              f"{r['mma_chain']:5d}")
    if json_path:
        pathlib.Path(json_path).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
