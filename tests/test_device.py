"""calflow.device: one device resolution for every torch stage."""

import pytest
import torch

from calflow.device import resolve_device
from calflow.errors import CalflowInputError


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_names_the_key_and_the_fix():
    with pytest.raises(CalflowInputError, match=r"cnmf.device: CUDA was requested.*Fix: set cnmf.device: auto"):
        resolve_device("cuda", key="cnmf.device")


def test_unknown_device_names_the_choices():
    with pytest.raises(CalflowInputError, match="one of auto, cpu, cuda"):
        resolve_device("tpu", key="segment.device")
