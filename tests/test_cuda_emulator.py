"""The CPU emulator that runs reidfast's CUDA kernels without a GPU (csrc/cuda_emulator, REIDFAST_EMULATE_CUDA=1).

First the emulator itself, on small kernels written for it (csrc/cuda_emulator/self_test.cpp): barriers,
warp shuffles and ballots, the faults it reports, launch-configuration errors. Then reidfast's CUDA kernels
under every thread schedule: their results must not depend on the order threads run in between barriers
(bitwise), which a missing __syncthreads or __syncwarp would break. That the kernels match the reference is
checked by the backend-parametrised tests (test_distance, test_topk, test_triplet, test_triplet_backward_kernels),
which include cpu-cuda under the emulator.
"""
from __future__ import annotations

import pytest
import torch

import reidfast
from reidfast import _native

emulator = pytest.importorskip(
    "reidfast._cuda_emulator", reason="the CUDA emulator (a test tool) is built only with REIDFAST_CUDA_EMULATOR=1, as .ci/run does"
)
self_test = emulator.self_test
pytestmark = pytest.mark.cuda_emulator
SCHEDULES = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]


@pytest.fixture
def schedule():
    """Sets the emulator's thread schedule for a test and restores the default afterwards."""
    yield emulator.set_schedule
    emulator.set_schedule("forward", 0)


@pytest.mark.parametrize("order,seed", SCHEDULES)
def test_barrier_orders_shared_memory(schedule, order, seed):
    schedule(order, seed)
    values = list(range(3 * 96))
    expected = [v for block in range(3) for v in reversed(values[block * 96:(block + 1) * 96])]
    assert self_test.mirror(values, threads=96, barrier=True) == expected


def test_missing_barrier_is_exposed_by_some_schedule(schedule):
    """Without __syncthreads a thread may read its partner's slot before the partner writes it: the forward
    and reverse schedules each leave half the block reading stale values."""
    values = list(range(64))
    expected = list(reversed(values))
    wrong = []
    for order in ("forward", "reverse"):
        schedule(order, 0)
        self_test.mirror([-1] * 64, threads=64, barrier=True)  # stale shared memory from an earlier block
        out = self_test.mirror(values, threads=64, barrier=False)
        wrong.append(sum(a != b for a, b in zip(out, expected)))
    assert wrong[0] > 0 and wrong[1] > 0 and wrong[0] + wrong[1] == 64, wrong


@pytest.mark.parametrize("order,seed", SCHEDULES)
def test_warp_shuffle_and_ballot(schedule, order, seed):
    schedule(order, seed)
    values = [(7 * i) % 23 for i in range(128)]
    sums, ballots = self_test.warp_sums_and_ballots(values)
    for warp in range(4):
        lanes = values[warp * 32:(warp + 1) * 32]
        odd = sum(1 << lane for lane, v in enumerate(lanes) if v % 2)
        assert sums[warp * 32:(warp + 1) * 32] == [sum(lanes)] * 32
        assert ballots[warp * 32:(warp + 1) * 32] == [odd] * 32


def test_collective_with_an_exited_lane_is_reported():
    with pytest.raises(RuntimeError, match="exited"):
        self_test.run("early_exit", threads=64)


def test_deadlock_is_reported_not_hung():
    with pytest.raises(RuntimeError, match="deadlock"):
        self_test.run("deadlock", threads=64)


def test_full_mask_in_a_partial_warp_is_reported():
    with pytest.raises(RuntimeError, match="mask"):
        self_test.run("partial_warp", threads=40)


def test_emulator_recovers_after_a_fault():
    with pytest.raises(RuntimeError):
        self_test.run("early_exit", threads=32)
    assert self_test.mirror(list(range(32)), threads=32, barrier=True) == list(range(31, -1, -1))


def test_dynamic_shared_memory_starts_poisoned():
    assert self_test.run("dynamic_shared", threads=64) == [0xFF] * 64


@pytest.mark.parametrize(
    "grid_x,grid_y,block_x,shared,raise_to,expected",
    [
        (4, 1, 256, 0, -1, "cudaSuccess"),
        (1, 1, 1024, 0, -1, "cudaSuccess"),
        (1, 1, 1025, 0, -1, "cudaErrorInvalidConfiguration"),
        (0, 1, 32, 0, -1, "cudaErrorInvalidConfiguration"),
        (1, 65536, 32, 0, -1, "cudaErrorInvalidConfiguration"),
        (1, 1, 32, 48 * 1024, -1, "cudaSuccess"),
        (1, 1, 32, 48 * 1024 + 1, -1, "cudaErrorInvalidValue"),  # above 48 KiB needs cudaFuncSetAttribute
        (1, 1, 32, 100 * 1024, 100 * 1024, "cudaSuccess"),
        (1, 1, 32, 0, 227 * 1024 + 1, "cudaErrorInvalidValue"),  # the H100's per-block limit
    ],
)
def test_launch_configuration_errors(grid_x, grid_y, block_x, shared, raise_to, expected):
    assert self_test.launch_error(grid_x, grid_y, block_x, shared, raise_to) == expected


def test_schedule_names_are_checked():
    with pytest.raises(ValueError, match="order"):
        emulator.set_schedule("backwards")


# --- reidfast's CUDA kernels: results independent of the thread schedule ------------------------------------

def _kernel_outputs(metric: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Outputs of every CUDA kernel (distance, top-k with one and several chunks, mining, backward, the
    re-ranking Jaccard stage)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(70, 40, generator=generator).to(dtype)
    y = torch.randn(300, 40, generator=generator).to(dtype)
    labels = torch.arange(70) % 9
    outputs = []
    with reidfast.use_backend("cuda"):
        outputs.append(reidfast.pairwise_distance(x, y, metric=metric))
        outputs.extend(reidfast.topk_distance(x, y, k=7, metric=metric))
        outputs.extend(reidfast.topk_distance(x, k=33, metric=metric, exclude_self=True))
        anchors = x.float().requires_grad_()
        loss, details = reidfast.batch_hard_triplet_loss(anchors, labels, metric=metric, return_details=True)
        loss.backward()
        reranked = reidfast.re_ranking(x.float(), y.float(), k1=6, k2=3, metric=metric)  # the Jaccard kernel
    mined = [details.dist_ap, details.dist_an, details.hardest_positive, details.hardest_negative]
    return outputs + mined + [anchors.grad, reranked]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_are_schedule_independent(schedule, metric, dtype):
    if not _native.emulating_cuda():
        pytest.skip("the cuda backend runs on a card here, not on the emulator")
    schedule("forward", 0)
    baseline = _kernel_outputs(metric, dtype)
    for order, seed in SCHEDULES[1:]:
        schedule(order, seed)
        for index, (expected, got) in enumerate(zip(baseline, _kernel_outputs(metric, dtype))):
            assert torch.equal(expected, got), f"output {index} differs under the {order} schedule (seed {seed})"


def test_emulated_backend_is_reported():
    info = reidfast.backends()["cuda"]
    if _native.emulating_cuda():
        assert info.available and info.devices == ("cpu",) and info.details["emulated"]
        assert "emulator" in info.reason
    else:  # a card, or REIDFAST_EMULATE_CUDA=0: the real backend, on CUDA tensors only, never "emulated"
        assert not info.details.get("emulated") and "emulator" not in info.reason
        assert info.devices == (("cuda",) if info.available else ())
        assert info.available == (torch.cuda.is_available() and bool(_native.build_info().get("cuda")))


def test_emulation_rejects_device_tensors(monkeypatch):
    monkeypatch.setattr(_native, "EMULATE_CUDA", True)  # the switch is read once, at import
    monkeypatch.setattr(_native, "_cuda_emulator", emulator)
    meta = torch.empty(2, 2, device="meta")
    with pytest.raises(ValueError, match="host tensors"):
        _native.cuda_view(meta)


def test_sanitizer_workload_runs_on_the_emulator():
    """scripts/exercise_cuda_kernels.py (what compute-sanitizer runs on a card) stays runnable."""
    if not _native.emulating_cuda():
        pytest.skip("on a card this script runs under compute-sanitizer (scripts/gpu_session.sh)")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "exercise_cuda_kernels.py"
    spec = importlib.util.spec_from_file_location("exercise_cuda_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0


# --- the CUDA entry points' argument checks (host code that used to run only with a card) -----------------

def _emulated_view(tensor):
    return emulator.ArrayView(tensor.data_ptr(), _native.DTYPE_CODES[tensor.dtype], list(tensor.shape),
                              list(tensor.stride()), 0)


def test_topk_entry_point_checks_its_workspace():
    x, y = torch.randn(70, 8), torch.randn(3000, 8)
    values, indices = torch.empty(70, 5), torch.empty(70, 5, dtype=torch.int64)
    needed = emulator.topk_distance_workspace_bytes(70, 3000, 5)
    assert needed > 0  # several column chunks: the kernel needs scratch
    v = _emulated_view
    cases = {
        "workspace: expected at least": torch.empty(needed - 1, dtype=torch.uint8),
        "workspace: expected dtype uint8": torch.empty(needed, dtype=torch.int32),
        "workspace: expected a 16-byte aligned address": torch.empty(needed + 16, dtype=torch.uint8)[1:],
    }
    for message, workspace in cases.items():
        with pytest.raises(ValueError, match=message):
            emulator.topk_distance_cuda(v(x), v(y), 5, 0, False, v(values), v(indices), v(workspace), 0)


def test_mine_entry_point_checks_its_workspace():
    anchors, labels, index = torch.randn(70, 8), torch.arange(70) % 7, torch.arange(70)
    candidates, candidate_labels = torch.randn(5000, 8), torch.arange(5000) % 7
    needed = emulator.batch_hard_mine_workspace_bytes(70, 5000)
    assert needed > 0
    outputs = [torch.empty(70), torch.empty(70), torch.empty(70, dtype=torch.int64), torch.empty(70, dtype=torch.int64)]
    v = _emulated_view
    cases = {"workspace: expected at least": torch.empty(needed - 8, dtype=torch.uint8),
             "workspace: expected an 8-byte aligned": torch.empty(needed + 8, dtype=torch.uint8)[4:]}
    for message, workspace in cases.items():
        with pytest.raises(ValueError, match=message):
            emulator.batch_hard_mine_cuda(v(anchors), v(candidates), v(labels), v(candidate_labels), v(index), 0,
                                          *map(v, outputs), v(workspace), 0)


def test_distance_entry_point_checks_the_feature_pair():
    v = _emulated_view
    out = torch.empty(4, 5)
    with pytest.raises(ValueError, match="y: expected 3 features per row to match x, got 2"):
        emulator.pairwise_distance_cuda(v(torch.randn(4, 3)), v(torch.randn(5, 2)), v(out), 0, 0)
    with pytest.raises(ValueError, match="y: expected dtype float32 to match x"):
        emulator.pairwise_distance_cuda(v(torch.randn(4, 3)), v(torch.randn(5, 3).double()), v(out), 0, 0)
    with pytest.raises(ValueError, match="x: expected float32, float64, float16 or bfloat16"):
        integers = torch.ones(4, 3, dtype=torch.int64)
        emulator.pairwise_distance_cuda(v(integers), v(integers), v(out), 0, 0)


def test_rerank_jaccard_entry_point_checks_its_arguments():
    v = _emulated_view
    crow, col, val = torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.tensor([0.5, 0.5])
    start, item, weight = torch.tensor([0, 1, 1, 1]), torch.tensor([0]), torch.tensor([0.25])
    out = torch.zeros(2, 1)
    arrays = [crow, col, val, start, item, weight]
    emulator.rerank_jaccard_cuda(*map(v, arrays), 0.3, v(out), 0)  # well formed: runs
    assert torch.allclose(out, torch.tensor([[(1 - 0.25 / 1.75) * 0.7], [0.7]]))
    with pytest.raises(ValueError, match=r"lambda_value: expected a number in \[0, 1\], got 1.5"):
        emulator.rerank_jaccard_cuda(*map(v, arrays), 1.5, v(out), 0)
    with pytest.raises(ValueError, match="out: expected dtype float32, got float64"):
        emulator.rerank_jaccard_cuda(*map(v, arrays), 0.3, v(out.double()), 0)
    with pytest.raises(ValueError, match="entry_val: expected length 2, got 1"):
        emulator.rerank_jaccard_cuda(v(crow), v(col), v(val[:1]), *map(v, arrays[3:]), 0.3, v(out), 0)
    with pytest.raises(ValueError, match="query_crow: expected length 3, got 2"):
        emulator.rerank_jaccard_cuda(v(crow[:2]), *map(v, arrays[1:]), 0.3, v(out), 0)


def test_emulation_without_the_module_says_how_to_fix_it(monkeypatch):
    from reidfast import _dispatch

    monkeypatch.setattr(_native, "EMULATE_CUDA", True)
    monkeypatch.setattr(_native, "_cuda_emulator", None)
    monkeypatch.setattr(_native, "EMULATOR_LOAD_ERROR", "ImportError: simulated")
    _dispatch._cuda_emulator_info.cache_clear()
    try:
        info = reidfast.backends()["cuda"]
        assert not info.available and "simulated" in info.reason and "REIDFAST_CUDA_EMULATOR=1" in info.reason
    finally:
        _dispatch._cuda_emulator_info.cache_clear()
