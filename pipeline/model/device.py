"""Where networks run and in which precision: one policy for the node, ``predict``, ``train``
and brain extraction.

Why one policy: the same model id must give the same numbers whichever command runs it.
When the node, ``segnode predict`` and training each picked their own device and autocast
type, a model validated with ``predict`` could run differently in the node.

The rules (the node's, from ``[model] device`` in node.toml):

* ``"auto"`` (or None): the first CUDA device when torch sees one, else the CPU.
* ``"cpu"``: the CPU, in float32.
* ``"cuda"`` or ``"cuda:N"``: that GPU; an error when CUDA is not available, because a site
  that asked for a GPU wants to know it is not getting one (a CPU fallback is minutes slower
  per study).
* Autocast on CUDA is bfloat16 (float16 on a GPU that torch says lacks bfloat16, where
  training adds a GradScaler); on the CPU there is no autocast: bfloat16 without hardware
  support is about 2x slower there than float32 (the project's stack notes).

This module imports torch but nothing of the model; ``torch.cuda`` is asked only when called.
"""

from __future__ import annotations

import torch

from segnode.pipeline.model.errors import DeviceError

AUTO = "auto"
"""The device name that lets the policy choose (``[model] device = "auto"``)."""


def select_device(name: str | None = AUTO) -> torch.device:
    """The torch device for a configured name (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        DeviceError: an unknown name, or a CUDA device asked for where CUDA is unavailable.
    """
    if name is None or name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} asked for, but CUDA is not available on this machine; "
            "use auto or cpu"
        )
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type for ``device``: bfloat16 on CUDA (float16 where the GPU has no
    bfloat16), None (float32 throughout) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
