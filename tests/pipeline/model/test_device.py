"""The one device policy (``segnode.pipeline.model.device``) of the node, predict and train."""

from __future__ import annotations

import pytest
import torch

from segnode.pipeline.model.device import autocast_dtype, select_device
from segnode.pipeline.model.errors import DeviceError


def test_auto_takes_cuda_when_present_else_the_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == select_device(None).type == expected


def test_the_cpu_runs_in_float32() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_an_error_not_a_silent_cpu_run() -> None:
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="CUDA is not available"):
            select_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocasts_in_bfloat16_where_the_gpu_has_it() -> None:
    device = select_device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(device) == expected


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        select_device(name)
