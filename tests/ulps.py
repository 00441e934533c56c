"""Comparing two computations of the same function by different float paths (another order of operations, a cache,
chunks, a fused kernel, another implementation).

Their difference is rounding, so it scales with the values' magnitude and the dtype's resolution: the tolerance is
``ulps`` units of ``eps(dtype) * max|expected|``, one number per comparison, written beside it with what it was
measured at (the largest over this project's CPU kernel sets: ``ATEN_CPU_CAPABILITY`` = avx512, avx2, default; see
tests/suite.py). Comparisons of two sides that run the same operations by construction stay exact
(``rtol=0, atol=0``).
"""
import torch


def assert_close_ulps(actual: torch.Tensor, expected: torch.Tensor, ulps: float, scale: float = None) -> None:
    """``|actual - expected| <= ulps * eps * scale`` elementwise (eps of ``expected``'s dtype); ``scale``: the
    magnitude the rounding comes from, default ``max|expected|`` (a loss term: the whole loss it is summed into)."""
    actual, expected = actual.detach(), expected.detach()
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    atol = ulps * torch.finfo(expected.dtype).eps * max(scale, torch.finfo(expected.dtype).tiny)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol,
                               msg=lambda m: f"{m}\nallowed: {ulps} ulps of max|expected| = {scale:.3g}")
