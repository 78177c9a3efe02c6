"""The plan (kernels/plan.py) and fusedrnn.explain: which kernel runs, on how many programs,
with W_hh on chip or not, and why. Pure functions of the sizes: no GPU needed."""
import pytest
import torch

import fusedrnn
from fusedrnn.kernels import plan as planning
from fusedrnn.kernels.plan import k_chunks, plan


def test_cudnn_best_case_fills_the_gpu_with_weights_on_chip():
    """fp16 LSTM, B=16, H=768 on an H100 (132 SMs): at least 96 programs, W_hh on chip."""
    p = plan("lstm", torch.float16, 16, 768, sm_count=132, training=True)
    assert p["kernel"] == "stationary" and p["weights_on_chip"]
    assert 96 <= p["programs"] <= 132
    assert p["w_bytes"] <= 160 * 1024 and p["reason"]


@pytest.mark.parametrize("K,want", [(768, (3, 256)), (1024, (4, 256)), (256, (1, 256)),
                                    (20, (1, 32)), (33, (3, 16)), (1, (1, 16))])
def test_k_chunks_are_powers_of_two_without_padding_768_to_1024(K, want):
    assert k_chunks(K) == want


def test_never_more_programs_than_sms_and_fallbacks_have_a_reason():
    for B in (1, 8, 32, 128, 512):
        for H in (128, 256, 512, 1024, 2048):
            for cell in ("lstm", "gru", "rnn"):
                for bwd in (False, True):
                    p = plan(cell, torch.bfloat16, B, H, sm_count=132, backward=bwd)
                    assert p["reason"]
                    if p["kernel"] in ("stationary", "sequence"):
                        assert p["programs"] <= 132
                    if p["kernel"] == "stationary":
                        assert p["weights_on_chip"] and p["programs"] == p["tiles"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_streaming_tiles_fill_the_sms(cell):
    """Where W_hh cannot stay on chip (16-bit H >= 1536 on 132 SMs), the streaming kernels'
    tiles (plan.stream_blocks) take fewer units so that about every SM streams a share
    of W_hh: 32-unit tiles made 64 programs at H=2048 and 48 at H=1536 (measured 0.4-0.95x
    cuDNN at H=2048 on the H200). A narrower tile, K chunks twice as deep (128), as many
    elements a chunk as a 32-unit tile's of 64 rows. Past the SMs (B=512) the tiles stay
    32 units, 64 deep; the interpreter's one program takes block_sizes' own."""
    for B, H, bh, programs in ((1, 2048, 16, 128), (8, 2048, 16, 128), (32, 1536, 16, 96),
                               (32, 2048, 16, 128), (512, 2048, 32, 132)):
        for backward in (False, True):
            p = plan(cell, torch.bfloat16, B, H, sm_count=132, training=True,
                     backward=backward)
            assert p["kernel"] == "sequence" and not p["weights_on_chip"], p
            assert (p["BLOCK_H"], p["programs"]) == (bh, programs), (B, H, backward, p)
            assert p["BLOCK_K"] == (128 if bh < 32 else 64), (B, H, backward, p)
            assert planning.plan_blocks(p, True) == tuple(
                p[k] for k in ("BLOCK_B", "BLOCK_H", "BLOCK_K", "warps"))
    assert planning.stream_blocks(cell, 8, 2048, True, 1, False)[1] == 32
    # fewer rows a tile (the LSTM's backward with the cell states' gradient)
    p = plan(cell, torch.bfloat16, 64, 2048, sm_count=132, training=True, backward=True)
    assert planning.plan_blocks(p, True, max_rows=32)[0] == 32


def test_streaming_sequence_kernels_pipeline_deeper(monkeypatch):
    """plan.stream_stages: a streaming sequence kernel (an SM to itself) keeps about
    STREAM_IN_FLIGHT bytes of its K chunks in flight, more than Triton's default 3 stages
    hold of the narrowed tiles' chunks, as far as twice the stages' chunks fit the device's
    shared memory a block; step kernels, exact fp32 and the interpreter keep 3."""
    def stages(cell, dtype, B, H, backward, **kw):
        p = plan(cell, dtype, B, H, sm_count=132, training=True, backward=backward, **kw)
        assert p["kernel"] == "sequence", p
        chunk = planning.stream_chunk_bytes(cell, dtype.itemsize, p["BLOCK_B"], p["BLOCK_H"],
                                            p["BLOCK_K"], backward)
        assert p["stages"] == 3 or 2 * p["stages"] * chunk <= kw.get(
            "smem_limit", planning.SMEM_BLOCK_LIMIT), p
        return p["stages"], (p["stages"] - 1) * chunk

    # bf16 LSTM B=8 H=2048: 20 KB chunks (16 units x 16 rows x 128 deep), three in flight;
    # the backward's 8 KB, four (STREAM_MAX_STAGES)
    assert stages("lstm", torch.bfloat16, 8, 2048, False) == (4, 60 * 1024)
    assert stages("lstm", torch.bfloat16, 8, 2048, True) == (5, 32 * 1024)
    assert stages("gru", torch.bfloat16, 32, 2048, False)[0] == 4
    assert stages("lstm", torch.float32, 8, 2048, False)[0] == 3  # (40 KB chunks: two do)
    # an RTX 3090's 99 KB a block, and 64 KB: no more than twice the stages' chunks
    assert stages("lstm", torch.bfloat16, 8, 2048, False, smem_limit=99 * 1024)[0] == 3
    assert stages("lstm", torch.bfloat16, 8, 2048, True, smem_limit=99 * 1024)[0] == 5
    assert stages("lstm", torch.bfloat16, 8, 2048, True, smem_limit=64 * 1024)[0] == 4
    assert planning.STREAM_MAX_STAGES >= max(stages("rnn", torch.bfloat16, 512, 2048, b)[0]
                                             for b in (False, True))
    assert "4-stage K loop" in plan("lstm", torch.bfloat16, 8, 2048, sm_count=132)["reason"]
    monkeypatch.setenv(planning.KERNEL_ENV, "sequence")
    assert plan("lstm", torch.bfloat16, 8, 2048, sm_count=132)["stages"] == 4
    assert plan("lstm", torch.bfloat16, 8, 2048, sm_count=1, cuda=False)["stages"] == 3
    monkeypatch.delenv(planning.KERNEL_ENV)
    assert plan("lstm", torch.float32, 8, 2048, sm_count=132, ieee=True)["stages"] == 3
    step = plan("lstm", torch.bfloat16, 2048, 2048, sm_count=132)  # (past 8 tiles an SM)
    assert step["kernel"] == "step" and step["stages"] == 3, step


def test_stream32_keeps_the_streaming_tiles_of_before(monkeypatch):
    """FUSEDRNN_KERNEL=stream32 (the bench's fused-stream32 rows): where a pass streams, the
    32-unit tiles and 64-deep K chunks of before plan.stream_blocks; elsewhere the plan's
    own choice."""
    monkeypatch.setenv(planning.KERNEL_ENV, "stream32")
    for backward in (False, True):
        p = plan("lstm", torch.bfloat16, 8, 2048, sm_count=132, training=True,
                 backward=backward)
        assert (p["kernel"], p["BLOCK_H"], p["BLOCK_K"], p["programs"]) == (
            "sequence", 32, 64, 64), p
        assert planning.plan_blocks(p, True)[1:3] == (32, 64)
        assert p["stages"] == planning.STREAM_DEFAULT_STAGES
    p = plan("lstm", torch.float16, 16, 768, sm_count=132)
    monkeypatch.delenv(planning.KERNEL_ENV)
    assert p == plan("lstm", torch.float16, 16, 768, sm_count=132)
    assert p["kernel"] == "stationary"


def test_projection_is_weight_stationary_and_exact_fp32_streams():
    """proj_size (plan.proj_tiling): the forward weight-stationary with the projection's
    phase (each unit group's programs project 16 units of P from m_t, W_hr's rows on
    chip), the backward with the gradient of P units a program first (at least 4: W_hh's
    columns on chip), then its own units' gates (W_hr's columns on chip), never split-K
    nor the LL or red.release exchanges; exact fp32 streams."""
    p = plan("lstm", torch.bfloat16, 16, 768, K=256, proj=True)
    assert p["kernel"] == "stationary" and p["weights_on_chip"] and p["programs"] >= 96
    assert (p["NK"] * p["KC"], p["PNK"] * p["PKC"]) == (256, 768)  # (K = P; W_hr's K = H)
    assert p["PU"] == 16 and -(-256 // p["PU"]) <= -(-768 // p["U"]), p
    assert not p["ll"] and not p["red"] and not planning.wide("lstm", p["U"], False)
    assert p["w_bytes"] + p["w_hr_bytes"] <= planning.SMEM_W_BUDGET
    assert "projection a second phase" in p["reason"]
    b = plan("lstm", torch.bfloat16, 16, 768, K=256, proj=True, backward=True)
    assert b["kernel"] == "stationary" and b["weights_on_chip"] and b.get("ksplit", 1) == 1
    assert b["NK"] * b["KC"] == 768  # (W_hh's rows, dgates' columns; W_hr's rows: P)
    assert b["PU"] == b["U"] and b["PNK"] * b["PKC"] == 256, b
    assert "projection's gradient a first phase" in b["reason"]
    # (where only wide tiles or split-K would fit, a projection streams: bf16 B=128 H=1024)
    for backward in (False, True):
        p = plan("lstm", torch.bfloat16, 128, 1024, K=512, proj=True, backward=backward)
        assert p["kernel"] == "sequence", p
    p = plan("lstm", torch.float32, 16, 256, ieee=True)
    assert p["kernel"] != "stationary" and "exact fp32" in p["reason"]


def test_kernel_override(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_KERNEL", "step")
    assert plan("gru", torch.bfloat16, 16, 768)["kernel"] == "step"
    # forced weight-stationary: where no tiling stays resident, a GPU plan streams and says
    # why (those tilings failed to compile or ran slower on an H200); the interpreter, one
    # program looping over the tiles, keeps it
    monkeypatch.setenv("FUSEDRNN_KERNEL", "stationary")
    p = plan("lstm", torch.float32, 512, 1024)
    assert p["kernel"] == "sequence" and "FUSEDRNN_KERNEL=stationary, but" in p["reason"]
    p = plan("lstm", torch.float32, 512, 1024, sm_count=1, cuda=False)
    assert p["kernel"] == "stationary" and not p["weights_on_chip"]
    assert plan("lstm", torch.bfloat16, 8, 1024)["weights_on_chip"]
    monkeypatch.setenv("FUSEDRNN_KERNEL", "bogus")
    with pytest.raises(ValueError, match="FUSEDRNN_KERNEL must be one of"):
        plan("gru", torch.bfloat16, 16, 768)


def test_explain_per_layer_and_direction():
    m = fusedrnn.LSTM(768, 768, num_layers=2, bidirectional=True, dtype=torch.float16)
    rows = fusedrnn.explain(m, torch.randn(1024, 16, 768, dtype=torch.float16), sm_count=132)
    assert len(rows) == 4
    assert {(r["layer"], r["direction"]) for r in rows} == {
        (0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")}
    for r in rows:
        assert {"kernel", "programs", "weights_on_chip", "reason"} <= set(r)
        # 96 unit groups of 8 do not fit half the GPU; 48 of 16 (narrow tiles) do: both
        # directions in one launch, 96 programs in all
        assert r["kernel"] == "stationary" and r["programs"] == 48
        assert r["U"] == planning.NARROW_UNITS and r["KS"] == 4, r
        assert r["directions"] == 2 and r["paired"]
        assert r["backward"]["kernel"] in ("stationary", "sequence", "step")
    with pytest.raises(TypeError, match="explain takes an LSTM"):
        fusedrnn.explain(torch.nn.Linear(2, 2), torch.randn(2, 2))


def test_explain_plans_where_the_backend_cannot_run():
    """A GPU plan from meta tensors (no memory) for a module on backend="triton", which
    cannot run there: the plan, and why the backend cannot run, instead of its error."""
    m = fusedrnn.GRU(1024, 1024, dtype=torch.bfloat16, device="meta", backend="triton")
    x = torch.empty(256, 8, 1024, dtype=torch.bfloat16, device="meta")
    row, = fusedrnn.explain(m, x, sm_count=132)
    assert row["kernel"] == "stationary" and row["weights_on_chip"], row
    assert row["backend"] is None and "meta device" in row["backend_error"]
    with pytest.raises(RuntimeError, match="cannot run here"):
        m(x)


def test_plain_rnn_plans_the_same_mma_shape_with_four_times_the_units():
    """One gate: U units are U rows of W_hh, so the RNN takes 4x the LSTM's units per
    program for the same 16 or 32 MMA rows."""
    lstm = plan("lstm", torch.float16, 16, 768, sm_count=132)
    rnn = plan("rnn", torch.float16, 16, 768, sm_count=132)
    assert rnn["kernel"] == "stationary" and rnn["weights_on_chip"]
    assert rnn["U"] in (16, 32) and rnn["warps"] == rnn["KS"] == 4
    assert rnn["warps_bwd"] == rnn["KS_bwd"] == 8
    assert rnn["w_bytes"] == rnn["U"] * 768 * 2 and rnn["gates"] == 1
    assert lstm["U"] * 4 >= 16
    cell = fusedrnn.RNNCell(768, 768, dtype=torch.float16)
    row, = fusedrnn.explain(cell, torch.randn(16, 768, dtype=torch.float16), sm_count=132)
    assert row["cell"] == "rnn" and row["kernel"] == "stationary"


def test_bidirectional_plans_pair_on_half_the_sms_or_fall_back_whole():
    for cell in ("lstm", "gru", "rnn"):
        for B, H in ((16, 768), (8, 256), (128, 1024), (1, 1024)):
            one = plan(cell, torch.bfloat16, B, H, sm_count=132)
            two = plan(cell, torch.bfloat16, B, H, sm_count=132, directions=2)
            assert two["directions"] == 2 and two["sm_count"] == 132
            if two.get("paired"):
                assert two["kernel"] == "stationary" and 2 * two["programs"] <= 132
                assert "both directions in one launch" in two["reason"]
            else:  # each direction on its own launch, planned for the whole GPU
                assert {k: v for k, v in two.items() if k != "directions"} == one
    m = fusedrnn.GRU(256, 256, bidirectional=True, dtype=torch.bfloat16)
    rows = fusedrnn.explain(m, torch.randn(64, 8, 256, dtype=torch.bfloat16), sm_count=132)
    assert [r["direction"] for r in rows] == ["forward", "reverse"]
    assert all(r["paired"] and 2 * r["programs"] <= 132 for r in rows)


def test_warps_are_the_batch_of_the_batched_dots():
    """Each step's product is a dot batched over its warps' work: the forward's KS runs of
    K, the backward's gates (4, or the plain RNN's 1) times KS runs. Triton 3.6 (the GPU
    machines') lays every warp of a batched dot along the batch, so a warp past it would
    redo another warp's MMAs; each run is at least 16 columns, a tl.dot's K."""
    for cell in ("lstm", "gru", "rnn"):
        for B in (1, 8, 16, 64, 128):
            for H in (1, 20, 64, 256, 768, 1024):
                for bwd in (False, True):
                    p = plan(cell, torch.bfloat16, B, H, sm_count=132, backward=bwd)
                    if p["kernel"] != "stationary" or p.get("ksplit"):  # (split-K: below)
                        continue
                    ks = p["KS_bwd"] if bwd else p["KS"]
                    gates = 4 if bwd and cell != "rnn" else 1
                    if planning.wide(cell, p["U"], bwd):  # a wide tile's plain dot (below)
                        assert p["warps"] == planning.WIDE_WARPS and ks == 1, p
                        continue
                    assert p["warps_bwd" if bwd else "warps"] == gates * ks <= 8, p
                    assert p["KC"] % ks == 0 and p["KC"] // ks >= 16, p
    # the cuDNN best case: 4 runs of 192 columns forward (chains of 12 MMAs, not 48), and
    # the backward's 4 gates x 2 runs
    p = plan("lstm", torch.float16, 16, 768, sm_count=132)
    assert (p["KS"], p["warps"], p["KS_bwd"], p["warps_bwd"]) == (4, 4, 2, 8)


def test_wide_tiles_only_where_no_narrower_tiling_is_resident():
    """16-bit B=128 at H=1024 streamed W_hh (0.5x cuDNN on an H200): its forward now keeps
    16 units of W_hh a program on chip (64 rows, 128 KB at bf16), 2 batch groups of 64, one
    plain dot a chunk on WIDE_WARPS warps; its backward is not a wide tile (the
    batched-gate backward spilled there) but split over K (below). Where 4 or 8 units fit,
    nothing changes."""
    p = plan("lstm", torch.bfloat16, 128, 1024, sm_count=132, training=True)
    assert p["kernel"] == "stationary" and p["weights_on_chip"] and p["programs"] == 128
    assert (p["U"], p["BB"], p["KS"], p["warps"]) == (16, 64, 1, planning.WIDE_WARPS)
    assert p["w_bytes"] == 64 * 1024 * 2
    assert plan("lstm", torch.bfloat16, 128, 1024, sm_count=132, backward=True)["ksplit"] > 1
    for cell in ("lstm", "gru", "rnn"):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            for B in (1, 8, 16, 32, 64, 128, 512):
                for H in (64, 256, 768, 1024):
                    p = plan(cell, dt, B, H, sm_count=132)
                    if p["kernel"] == "stationary" and planning.wide(cell, p["U"], False):
                        narrow = planning._best_tiling(cell, dt, B, H, 132, False, True, [
                            u * (4 if cell == "rnn" else 1) for u in planning.UNIT_CHOICES], 1)
                        assert narrow is None and p["BB"] >= planning.WIDE_MIN_BATCH, p


def test_split_tiles_where_one_chunk_of_h_is_over_the_register_budget():
    """fp32 (TF32) at 64 batch rows a program stages 512 B a thread of each K chunk of h;
    Triton 3.6's sm_90 builds of it spilled 104 B to 16 KB (the LSTM at H >= 768 with 32
    registers). Those programs keep their rows and the grid its size, and run each step as
    two sub-tiles of 32 rows (the kernel's BB), their warps and operand as at BB=32. The
    backward and 16-bit tilings of 64 rows stay whole."""
    for cell in ("lstm", "gru"):
        for B, H, programs in ((64, 768, 96), (64, 1024, 128), (128, 512, 128)):
            p = plan(cell, torch.float32, B, H, sm_count=132, training=True)
            assert (p["kernel"], p["U"], p["BB"], p["split"]) == ("stationary", 8, 64, 2), p
            assert p["programs"] == programs and p["weights_on_chip"], p
            assert "2 sub-tiles of 32 rows" in p["reason"], p
            nk, kc = planning.k_chunks(H)
            assert (p["KS"], p["warps"], p["x_ahead"]) == (
                planning.k_runs(cell, kc, 32, False, 8),
                planning.stationary_warps(cell, kc, 32, False, 8),
                planning.x_ahead(cell, torch.float32, 8, 32, nk, kc, False)), p
            assert plan(cell, torch.float32, B, H, sm_count=132,
                        backward=True).get("split", 1) == 1
    for dt in (torch.bfloat16, torch.float16):
        for B, H in ((64, 1024), (128, 512), (128, 1024), (16, 768)):
            p = plan("lstm", dt, B, H, sm_count=132, training=True)
            assert p["kernel"] == "stationary" and p["split"] == 1, p
    for B in (1, 8, 16, 32):  # at most 32 rows a program: whole
        assert plan("lstm", torch.float32, B, 768, sm_count=132)["split"] == 1


def test_rows_past_64_split_where_no_tiling_of_at_most_64_is_resident():
    """bf16 B=512 H=1024 (a target: 0.44x cuDNN streaming on the H200) and fp32 B=128
    H=1024 (0.68x) streamed: no tiling of at most 64 rows a program is resident on 132 SMs.
    Their forwards now keep W_hh on chip with 256 and 128 rows a program, as 4 sub-tiles
    (the wide tile's 64 rows; fp32's 32): 128 programs. Their backwards are split over K
    (kernels/splitk.py), and a bidirectional layer pairs such tilings only where the
    whole GPU would stream."""
    for cell in ("lstm", "gru"):
        for dt, B, want in ((torch.bfloat16, 512, (16, 256, 4)),
                            (torch.float32, 128, (8, 128, 4))):
            p = plan(cell, dt, B, 1024, sm_count=132, training=True)
            assert p["kernel"] == "stationary" and p["weights_on_chip"], p
            assert (p["U"], p["BB"], p["split"], p["programs"]) == (*want, 128), p
            assert f"{want[2]} sub-tiles of {want[1] // want[2]} rows" in p["reason"], p
            assert plan(cell, dt, B, 1024, sm_count=132, backward=True)["ksplit"] > 1
    # never past MAX_SPLIT sub-tiles: bf16 B=1024 H=1024 has none of 4 (512 programs)
    assert plan("lstm", torch.bfloat16, 1024, 1024, sm_count=132)["kernel"] == "sequence"
    # pairs: half of 132 SMs holds bf16 B=128 H=1024 only as 2 sub-tiles of 64, and the
    # whole GPU unsplit: the two directions take the whole GPU one after the other
    p = plan("lstm", torch.bfloat16, 128, 1024, sm_count=132, directions=2)
    assert not p.get("paired") and (p["BB"], p["split"]) == (64, 1), p
    # bf16 B=512 H=1024 on half: 128 programs of 256 rows, too many: the whole GPU's plan
    p = plan("lstm", torch.bfloat16, 512, 1024, sm_count=132, directions=2)
    assert (p["kernel"], p["BB"], p["split"]) == ("stationary", 256, 4), p
    assert not p.get("paired"), p


@pytest.mark.parametrize("kb", [227, 163, 99])  # H100/H200, A100, sm_86/89 (RTX 30xx/40xx)
def test_plans_fit_the_devices_shared_memory(kb, monkeypatch):
    """Every weight-stationary plan's program (the slice, the staged operand, the warps'
    partial sums: plan.stationary_smem, the builds' to the byte) fits the device's shared
    memory a block: the plans made for an H100 needed up to 224 KB, which fails to launch
    (OutOfResources) on an A100 (163 KB) or an sm_86/89 GPU (99 KB). plan_for asks the
    device."""
    limit = kb * 1024
    for cell in ("lstm", "gru", "rnn"):
        for dt in (torch.float16, torch.bfloat16, torch.float32):
            for B in (1, 8, 32, 64, 128, 512):
                for H in (128, 256, 512, 768, 1024, 2048):
                    for bwd in (False, True):
                        p = plan(cell, dt, B, H, sm_count=108, training=True, backward=bwd,
                                 wide_tiles=kb == 227, smem_limit=limit)
                        if p["kernel"] != "stationary":
                            assert f"within {kb} KB" in p["reason"] or "proj" in p["reason"]
                            continue
                        sub = p["BB"] // p["split"]
                        smem = planning.stationary_smem(cell, dt, p["U"], sub, p["NK"],
                                                        p["KC"], bwd, p["x_ahead"],
                                                        wide_tiles=kb == 227)
                        if p.get("ksplit"):  # (the backward split over K)
                            smem = planning.splitk_smem(cell, dt, p["U"], p["product_rows"],
                                                        p["KC"], p["x_ahead"])
                        assert smem <= limit, (smem, p)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(planning, "sm_count", lambda device: 108)
    monkeypatch.setattr(planning, "_capability", lambda index: (8, 0))
    monkeypatch.setattr(planning, "_smem_per_block", lambda index: 163 * 1024)
    p = planning.plan_for("lstm", torch.float32, 32, 512, 512, False, cuda, True, False,
                          backward=True)
    assert p == plan("lstm", torch.float32, 32, 512, sm_count=108, training=True,
                     backward=True, wide_tiles=False, smem_limit=163 * 1024)
    assert p != plan("lstm", torch.float32, 32, 512, sm_count=108, training=True,
                     backward=True, wide_tiles=False)  # (224 KB: not on an A100)


def test_wide_tiles_only_on_sm90(monkeypatch):
    """The wide tiles' plain dot is a wgmma on sm_90 alone (on sm_80 it spilled and repeated
    MMAs): plan_for asks plan.wgmma, which takes the device's capability, and never a ROCm
    device's (its capability is a gfx version)."""
    cuda = torch.device("cuda", 0)
    for capability, want in (((9, 0), True), ((8, 0), False), ((10, 0), False)):
        monkeypatch.setattr(planning, "_capability", lambda index, c=capability: c)
        assert planning.wgmma(cuda) is want
    monkeypatch.setattr(planning, "_capability", lambda index: (9, 4))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert planning.wgmma(cuda) is False
    p = plan("lstm", torch.bfloat16, 128, 1024, sm_count=132, wide_tiles=False)
    assert p["kernel"] == "sequence"


def test_narrow_kernel_choice_takes_the_narrow_tiles_first(monkeypatch):
    """FUSEDRNN_KERNEL=narrow (the bench's fused-narrow rows): 16-bit LSTM and GRU on the
    narrow 16-unit tiles wherever one is resident, where the plan's own are 4 or 8 units
    (bf16 B=8 H=1024 on an H200: 64 programs against 128); elsewhere the plan's own."""
    auto = {bwd: plan("lstm", torch.bfloat16, 8, 1024, sm_count=132, backward=bwd)
            for bwd in (False, True)}
    fp32 = plan("lstm", torch.float32, 8, 1024, sm_count=132)
    wide = plan("lstm", torch.bfloat16, 128, 1024, sm_count=132)
    monkeypatch.setenv("FUSEDRNN_KERNEL", "narrow")
    for bwd in (False, True):
        p = plan("lstm", torch.bfloat16, 8, 1024, sm_count=132, backward=bwd)
        assert (p["kernel"], p["U"], p["programs"]) == ("stationary", 16, 64), p
        assert (p["KS"], p["KS_bwd"]) == (4, 2) and auto[bwd]["U"] == 8
    assert plan("lstm", torch.float32, 8, 1024, sm_count=132) == fp32
    assert plan("lstm", torch.bfloat16, 128, 1024, sm_count=132) == wide  # (none resident)


def test_narrow_16_unit_tiles_where_8_units_make_more_groups_than_sms():
    """On an A100 (108 SMs, no wgmma, 163 KB a block) 8 units a program make 128 unit
    groups at H=1024, more than its SMs: every 16-bit LSTM and GRU at H=1024 streamed W_hh,
    even B=8 (and on an H100 PCIe's 114 SMs). There 16 units (64 gate rows, 128 KB of bf16
    W_hh) are a narrow tile: 64 programs, the forward's 4 runs of K on 4 warps and the
    backward's 4 gates x 2 runs on 8, as at 4 and 8 units; at most 32 batch rows a program
    (NARROW_MAX_BATCH). Where 4 or 8 units, or the wide tiles, are resident, nothing
    changes."""
    a100 = dict(sm_count=108, wide_tiles=False, smem_limit=163 * 1024)
    for cell in ("lstm", "gru"):
        for dt in (torch.bfloat16, torch.float16):
            for B, bwd in ((1, False), (8, False), (8, True), (16, True), (32, False)):
                p = plan(cell, dt, B, 1024, training=True, backward=bwd, **a100)
                assert p["kernel"] == "stationary" and p["weights_on_chip"], p
                assert (p["U"], p["programs"]) == (planning.NARROW_UNITS, 64), p
                assert (p["KS"], p["warps"], p["KS_bwd"], p["warps_bwd"]) == (4, 4, 2, 8), p
                assert not planning.wide(cell, p["U"], bwd, wide_tiles=False), p
                assert p["BB"] <= planning.NARROW_MAX_BATCH, p
                assert planning.stationary_smem(
                    cell, dt, p["U"], p["BB"], p["NK"], p["KC"], bwd, p["x_ahead"],
                    wide_tiles=False) <= a100["smem_limit"], p
            # the backward at 32 rows a program needs 192 KB; B=128 at H=768, 4 batch
            # groups of 32 (192 programs) or 2 of 64 (past NARROW_MAX_BATCH): stream
            assert plan(cell, dt, 32, 1024, backward=True, **a100)["kernel"] == "sequence"
            assert plan(cell, dt, 128, 768, **a100)["kernel"] == "sequence"
            # 8 units where they are resident (H=768: 96 groups)
            assert plan(cell, dt, 16, 768, **a100)["U"] == 8
        # fp32 (TF32): 16 units of W_hh at H=1024 are 256 KB, over the slice's budget
        assert plan(cell, torch.float32, 8, 1024, **a100)["kernel"] == "sequence"
    # fusedrnn.explain plans for an A100 from any machine
    m = fusedrnn.LSTM(1024, 1024, dtype=torch.bfloat16)
    row, = fusedrnn.explain(m, torch.randn(4, 8, 1024, dtype=torch.bfloat16), **a100)
    assert (row["U"], row["programs"], row["backward"]["U"]) == (16, 64, 16), row
    row, = fusedrnn.explain(m, torch.randn(4, 8, 1024, dtype=torch.bfloat16), sm_count=132)
    assert (row["U"], row["programs"]) == (8, 128), row
    # the plain RNN's 16 or 32 units (4 or 8, times 4: 16 or 32 rows) cover H=1024 already
    p = plan("rnn", torch.bfloat16, 8, 1024, **a100)
    assert p["kernel"] == "stationary" and p["U"] <= 32 and p["programs"] <= 108, p
    # sm_90 (wide tiles) with fewer SMs: an H100 PCIe's 114 (8 units: 128 groups at H=1024)
    p = plan("lstm", torch.bfloat16, 8, 1024, sm_count=114, training=True)
    assert (p["U"], p["programs"], p["KS"], p["warps"]) == (16, 64, 4, 4), p
    # and half of a 132-SM GPU, for a bidirectional layer's pair: 48 groups of 16 a direction
    p = plan("lstm", torch.float16, 16, 768, sm_count=132, directions=2)
    assert p["paired"] and (p["U"], p["programs"], p["KS"]) == (16, 48, 4), p
    # 16-bit H=1536 on 132 SMs (8 units: 192 groups): 96 programs of 16 units, 192 KB of
    # W_hh each (NARROW_W_BUDGET), where within the register budgets: forward B <= 16,
    # backward B <= 8 (at 16 rows its staged chunk takes it past 227 KB); the forward at 32
    # rows is past the register budget, and an A100's 163 KB holds no such slice
    for cell in ("lstm", "gru"):
        for B, bwd in ((1, False), (16, False), (8, True)):
            p = plan(cell, torch.bfloat16, B, 1536, sm_count=132, training=True, backward=bwd)
            assert (p["kernel"], p["U"], p["programs"]) == ("stationary", 16, 96), p
            assert (p["NK"], p["KC"], p["w_bytes"]) == (3, 512, planning.NARROW_W_BUDGET), p
            assert planning.within_register_budget(cell, torch.bfloat16, 16, p["BB"], 3, 512,
                                                   bwd, False), p
        for B, bwd, rules in ((32, False, {}), (16, True, {}), (8, False, a100)):
            p = plan(cell, torch.bfloat16, B, 1536, backward=bwd, **{"sm_count": 132, **rules})
            assert p["kernel"] == "sequence", p
    # a 132-SM GPU's one-direction plans keep their tiles: 8 units (or the wide tile's
    # forward at 64 rows) wherever they are resident
    for cell in ("lstm", "gru"):
        for B in (1, 8, 16, 32, 64, 128, 512):
            for bwd in (False, True):
                p = plan(cell, torch.bfloat16, B, 1024, sm_count=132, backward=bwd)
                if p["kernel"] == "stationary" and p["U"] == 16:
                    assert not bwd and (p["KS"], p["warps"]) == (1, planning.WIDE_WARPS), p


def test_splitk_backward_where_no_backward_tiling_is_resident():
    """The backward split over K (kernels/splitk.py) only where the backward would
    otherwise stream: 16-bit and fp32 LSTM/GRU at B=128 H=1024 (issue 11's targets that ran
    at 0.45-0.66x cuDNN's training step), fp32 at B=64-128 H=768, never the plain RNN,
    never where a backward tiling is resident, never forward; within the SMs, the shared
    memory and the accumulator budget, W_hh on chip, and the fewest bytes a step of its
    tilings."""
    for cell in ("lstm", "gru"):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            p = plan(cell, dt, 128, 1024, training=True, sm_count=132, backward=True)
            assert p["kernel"] == "stationary" and p["ksplit"] > 1 and p["weights_on_chip"]
            assert p["programs"] == p["tiles"] <= 132 and "split over K" in p["reason"]
            g = 4 if cell == "lstm" else 3
            assert p["w_bytes"] == g * p["KC"] * p["U"] * dt.itemsize <= planning.SMEM_W_BUDGET
            pr = p["product_rows"]
            assert planning.splitk_smem(cell, dt, p["U"], pr, p["KC"], p["x_ahead"]) \
                <= planning.SMEM_BLOCK_LIMIT
            assert (p["ksplit"] - 1) * p["KC"] < 1024 <= p["ksplit"] * p["KC"]
            accs = 1 if p["chained"] else g
            assert accs * pr * p["U"] * 4 // (32 * p["warps_bwd"]) <= planning.KSPLIT_ACC_BYTES
            assert planning.splitk_staged(dt, pr, p["KC"]) <= planning.KSPLIT_X_BYTES
            assert p["BB"] % pr == 0 and p["update_rows"] <= planning.KSPLIT_UPDATE_ROWS
            assert p["update_rows"] * p["ksplit"] == p["BB"]
            assert "ksplit" not in plan(cell, dt, 128, 1024, training=True, sm_count=132)
        # bf16 at B=128: 64 units, 64 rows, 4 parts of 256 rows a gate (128 KB of W_hh
        # a program), not chained (64 rows on 8 warps)
        p = plan(cell, torch.bfloat16, 128, 1024, training=True, sm_count=132, backward=True)
        assert (p["U"], p["BB"], p["KC"], p["ksplit"], p["chained"]) == (64, 64, 256, 4, False)
        # bf16 B=512 (a target: 0.24-0.31x training, streaming): 256 rows a program as 4
        # products of 64, the update one pass of 64 rows; B=1024 updates 128 rows a program
        # (its only tilings): 4 passes of 32 (KSPLIT_PASS_ROWS), where it streamed
        p = plan(cell, torch.bfloat16, 512, 1024, training=True, sm_count=132, backward=True)
        assert (p["U"], p["BB"], p["product_rows"], p["ksplit"], p["programs"]) == (
            64, 256, 64, 4, 128)
        assert p["update_rows"] == p["pass_rows"] == 64
        for B, H in ((1024, 1024), (512, 768)):
            p = plan(cell, torch.bfloat16, B, H, training=True, sm_count=132, backward=True)
            assert p["ksplit"] > 1 and p["weights_on_chip"], p
            assert (p["update_rows"], p["pass_rows"]) == (128, 32), p
            assert "4 passes of 32 rows" in p["reason"], p
        traffic = planning.splitk_traffic(cell, torch.bfloat16, 128, 1024, 64, 4)
        assert traffic == 16 * 128 * g * 1024 * 2 + 2 * 4 * 128 * 1024 * 4
        # H=768 (3 chunks of 256) in 3 or 6 K parts: fp32 B=64 and 128 (in the targets)
        # streamed their backward on 24-48 programs, where 2 parts of 512 were past the
        # W_hh budget; 16-bit B=128 took 2 parts of 512, the second half zeros (32 units,
        # 20 MB a step: now 64 units, 11 MB)
        for dt, B, parts in ((torch.float32, 64, 6), (torch.float32, 128, 6),
                             (torch.bfloat16, 128, 3), (torch.float16, 128, 3)):
            p = plan(cell, dt, B, 768, training=True, sm_count=132, backward=True)
            assert p["kernel"] == "stationary" and p["weights_on_chip"], p
            assert (p["ksplit"], p["KC"], p["U"]) == (parts, 768 // parts, 64), p
            assert p["update_rows"] == planning.splitk_update_rows(p["BB"], parts), p
            # (the tile's rows in fewer update shares than programs: the rest only multiply)
            assert p["BB"] % p["update_rows"] == 0 and p["BB"] // p["update_rows"] < parts
            assert p["w_bytes"] <= planning.SMEM_W_BUDGET and p["programs"] <= 132, p
    for cell, dt, B, H in (("rnn", torch.bfloat16, 128, 1024), ("lstm", torch.float16, 16, 768),
                           ("lstm", torch.bfloat16, 64, 1024)):
        p = plan(cell, dt, B, H, training=True, sm_count=132, backward=True)
        assert p["kernel"] == "stationary" and "ksplit" not in p, p
    # a bidirectional layer's split-K backward is never paired (one direction a launch)
    p = plan("lstm", torch.bfloat16, 128, 1024, training=True, sm_count=132, backward=True,
             directions=2)
    assert not p.get("paired") and p["ksplit"] > 1 and p["programs"] <= 132
    # sm_90 only (wide_tiles: wgmma): on sm_80 its builds repeated every MMA
    assert "ksplit" not in plan("lstm", torch.bfloat16, 128, 1024, training=True,
                                sm_count=108, backward=True, wide_tiles=False)
    # under the interpreter only where FORCED_KSPLIT asks
    assert "ksplit" not in plan("lstm", torch.float64, 20, 40, cuda=False, sm_count=1,
                                backward=True)
