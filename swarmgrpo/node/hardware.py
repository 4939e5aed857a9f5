"""What this machine can contribute: device, memory, compute capability, FP8, engines."""

from __future__ import annotations

import importlib.util
import os
import platform

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
