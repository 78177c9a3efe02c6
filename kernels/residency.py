"""Co-residency: every program of a sequence kernel must be on the GPU at once, or the
programs that do run wait at the grid barrier for ones that never start.

With cooperative launch (Triton >= 3.6 has ``launch_cooperative_grid``; common.
launch_sequence turns it on) the driver refuses such a grid. Where the installed Triton lacks
it, :func:`guard` compiles the kernel first and refuses, with a clear error, a grid larger
than :func:`max_coresident` computes from the compiled kernel's registers, warps and shared
memory. Either way the bounded barrier (common.group_barrier) is the last line.
"""
from __future__ import annotations

import torch

# an H100 SXM's limits per SM, for planning and tests without a GPU
H100 = dict(sm_count=132, regs_per_sm=65536, smem_per_sm=228 * 1024, threads_per_sm=2048,
            blocks_per_sm=32)
# an A100 SXM's (the narrow 16-unit tiles' GPU: plan.NARROW_UNITS)
A100 = dict(sm_count=108, regs_per_sm=65536, smem_per_sm=164 * 1024, threads_per_sm=2048,
            blocks_per_sm=32)


def limits(device: torch.device) -> dict:
    p = torch.cuda.get_device_properties(device)
    return dict(sm_count=p.multi_processor_count, regs_per_sm=p.regs_per_multiprocessor,
                smem_per_sm=p.shared_memory_per_multiprocessor,
                threads_per_sm=p.max_threads_per_multi_processor, blocks_per_sm=32)


def max_coresident(registers: int, num_warps: int, shared: int, lim: dict) -> int:
    """Programs of one kernel resident at once on the whole GPU: per SM the fewest that its
    registers (allocated per warp in units of 256), shared memory (1 KB reserved per
    block), threads and block slots allow, times the SMs."""
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = (lim["regs_per_sm"] // max(regs_per_warp, 1)) // num_warps
    by_smem = lim["smem_per_sm"] // (shared + 1024) if shared else lim["blocks_per_sm"]
    by_threads = lim["threads_per_sm"] // (32 * num_warps)
    return min(by_regs, by_smem, by_threads, lim["blocks_per_sm"]) * lim["sm_count"]


def check(programs: int, registers: int, num_warps: int, shared: int, lim: dict,
          what: str) -> None:
    fits = max_coresident(registers, num_warps, shared, lim)
    if programs > fits:
        raise RuntimeError(
            f"fusedrnn: the {what} sequence kernel needs {programs} programs resident at once, "
            f"but only {fits} fit on this GPU ({registers} registers a thread, {num_warps} "
            f"warps, {shared} B of shared memory a program); its barrier would hang. Use "
            f"FUSEDRNN_KERNEL=step or backend='native'.")


def guard(kernel, programs: int, kwargs: dict, device, cooperative: bool, what: str) -> None:
    """Before a sequence-kernel launch on CUDA without cooperative launch: refuse a grid
    that cannot be co-resident (compiles the kernel, which the launch then reuses). Not
    reached with the Tritons fusedrnn supports, and not yet run on a GPU."""
    if device.type != "cuda" or cooperative:
        return
    compiled = kernel.warmup(grid=(programs,), **kwargs)
    compiled._init_handles()
    check(programs, compiled.n_regs, kwargs.get("num_warps", 4), compiled.metadata.shared,
          limits(device), what)
