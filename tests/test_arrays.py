"""The array boundary: numpy/torch/cupy in, the caller's type out, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidfast
from reidfast._arrays import NUMPY, TORCH, as_tensor, check_same_device, to_caller


def test_numpy_round_trip_shares_memory():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor, library = as_tensor(array, "x")
    assert library == NUMPY
    assert tensor.data_ptr() == array.ctypes.data
    back = to_caller(tensor * 2, library)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, array * 2)


def test_torch_passes_through_untouched():
    tensor = torch.randn(3, 2, requires_grad=True)
    same, library = as_tensor(tensor, "x")
    assert same is tensor and library == TORCH
    assert to_caller(same, library) is tensor


def test_awkward_numpy_layouts_are_normalised():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    reversed_rows = base[::-1]  # negative stride: torch.from_numpy cannot take it
    tensor, _ = as_tensor(reversed_rows, "x")
    np.testing.assert_array_equal(tensor.numpy(), reversed_rows)
    big_endian = base.astype(">f8")
    tensor, _ = as_tensor(big_endian, "x")
    np.testing.assert_array_equal(tensor.numpy(), base)
    read_only = base.copy()
    read_only.flags.writeable = False
    tensor, _ = as_tensor(read_only, "x")
    np.testing.assert_array_equal(tensor.numpy(), base)


def test_sequences_become_numpy():
    tensor, library = as_tensor([[1.0, 2.0], [3.0, 4.0]], "x")
    assert library == NUMPY and tensor.shape == (2, 2)


def test_unsupported_inputs_name_the_argument():
    with pytest.raises(ValueError, match="gallery: expected a torch tensor, numpy array or cupy array"):
        as_tensor(object(), "gallery")
    with pytest.raises(ValueError, match="x: unsupported numpy dtype"):
        as_tensor(np.array(["a", "b"]), "x")


def test_mixed_devices_name_the_argument():
    cpu = torch.zeros(2, 2)
    meta = torch.zeros(2, 2, device="meta")
    with pytest.raises(ValueError, match="y: expected the same device as x"):
        check_same_device(x=cpu, y=meta)
    assert check_same_device(x=cpu, y=None) == cpu.device


def test_public_op_answers_in_the_callers_type():
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = reidfast.pairwise_distance(x, x[:3])
    assert isinstance(out, np.ndarray) and out.shape == (5, 3) and out.dtype == np.float32
    out = reidfast.pairwise_distance(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor)


def test_cupy_round_trip_when_available():
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("cupy needs a CUDA device")
    x = cupy.random.standard_normal((6, 3), dtype=cupy.float32)
    out = reidfast.pairwise_distance(x)
    assert isinstance(out, cupy.ndarray) and out.shape == (6, 6)
    expected = reidfast.pairwise_distance(cupy.asnumpy(x))
    np.testing.assert_allclose(cupy.asnumpy(out), expected, atol=1e-4)
