"""The torch device of a stage: ``device: auto`` is the GPU when torch sees one, the CPU otherwise.

Every torch stage (motion, segment, cnmf, classify, gradcam, virtual_stain) resolves its config's
``device`` here, so one code path runs on both and a missing GPU is reported the same way.
"""

from __future__ import annotations

from calflow.errors import CalflowInputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto", *, key: str = "device"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a clear error.

    ``key`` names the config key in the error (e.g. ``cnmf.device``).
    """
    import torch

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES:
        raise CalflowInputError(f"{key}: {name!r} is not a device", fix=f"set {key} to one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CalflowInputError(f"{key}: CUDA was requested but torch sees no GPU",
                                fix=f"set {key}: auto (GPU when present, CPU otherwise)")
    return torch.device(name)
