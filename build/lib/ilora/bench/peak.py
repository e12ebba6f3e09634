"""The matmul peak of this machine, measured now, under the same load as what it is compared with."""

from __future__ import annotations

from collections.abc import Callable

import torch


def gemm_burst(size: int = 2048, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               count: int = 4) -> tuple[Callable[[], None], float]:
    """A closure running `count` size x size @ size x size products, and the FLOPs it does (2 n^3 each).

    Timed beside other work (see `interleaved_medians`) it gives the machine's matmul rate under that load.
    """
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)

    def burst() -> None:
        for _ in range(count):
            torch.mm(a, b, out=out)

    return burst, 2.0 * size**3 * count
