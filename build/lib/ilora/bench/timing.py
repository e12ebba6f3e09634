"""Interleaved median timings and the machine facts printed beside them."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns within every repeat.

    The order rotates from repeat to repeat so that no side always runs right after the other's cache
    misses. Warm-up rounds are run but not recorded.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def machine() -> dict[str, object]:
    """Where the numbers come from: CPU/GPU, threads, and the load average (1, 5, 15 min)."""
    info: dict[str, object] = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from ilora.backbones import cpu_has_avx512_bf16

    info["avx512_bf16"] = cpu_has_avx512_bf16()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
