"""Device knowledge in one place: what this machine can contribute (device, memory, compute
capability, FP8, engines), whether a device multiplies FP8, and which device a config names.

torch is imported inside the functions, so importing this module stays light."""

from __future__ import annotations

import importlib.util
import os
import platform

from swarmgrpo.core.errors import UserError

FP8_MIN_CAPABILITY = (8, 9)  # Ada (L40S, RTX 4090) and Hopper (H100, H200)


def probe() -> dict:
    import torch

    caps = {
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "device_memory_bytes": 0,
        "compute_capability": "",
        "fp8": False,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "engines": ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else []),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        major, minor = props.major, props.minor
        caps.update(
            device="cuda",
            device_name=props.name,
            device_memory_bytes=props.total_memory,
            compute_capability=f"{major}.{minor}",
            fp8=(major, minor) >= FP8_MIN_CAPABILITY,
        )
    return caps


def fp8_capable(device) -> bool:
    """Whether `device` (a torch.device) multiplies e4m3 in hardware (compute capability >= 8.9):
    vLLM's FP8 rollouts."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def gpu_has_fp8() -> bool:
    """Whether this machine's first GPU multiplies FP8."""
    import torch

    return torch.cuda.is_available() and fp8_capable(torch.device("cuda"))


def resolve_device(name: str = "auto"):
    """The torch.device a config's `device` names. "auto": the first GPU where there is one, else the
    CPU; "cuda" without one is refused."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            'device "cuda" asked for, but torch sees no GPU (a CPU build of torch, or no driver); '
            'use device "auto" or "cpu"'
        )
    return torch.device(name)
