"""Tolerances for comparing one quantity computed two different ways (not a test module itself).

Two correct computations of the same value differ by rounding, and by how much depends on the
machine: a CPU with AVX-512 sums in other blocks and other orders than one with AVX2 only, MKL and
oneDNN pick kernels per CPU, and a fused ``addmm`` rounds differently from ``cdist``. A comparison
of two paths therefore gets a tolerance from the dtype the values were *computed* in and the size
of the reductions behind them, never float64's default because the result was cast to float64.

The bound is the standard one for a sum or dot product of ``n`` terms evaluated in any order
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5 and section 4.2):
``|computed - exact| <= gamma_n * sum |x_i|`` with ``gamma_n = n u / (1 - n u)`` and ``u`` the unit
roundoff. Each side carries such an error, hence the factor 2. It is a worst case, loose by about
``sqrt(n)`` in practice, yet still orders of magnitude below the error of any formula mistake the
tests look for.

Bit-identity (``torch.equal``) stays where the same code runs twice: a resumed run, a fixed seed,
a saved and reloaded model.

Example:
    >>> import torch
    >>> x = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    >>> assert_close_computed(x.sum(), x.double().sum(), terms=1000)
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}


def tolerance(computed_in: torch.dtype = torch.float32, terms: int = 1, scale: float = 1.0) -> dict[str, float]:
    """``rtol`` / ``atol`` for two evaluations of reductions over ``terms`` terms in ``computed_in``.

    ``scale`` is the sum of the terms' absolute values in units of the compared values: 1 for a sum
    of same-sign terms, larger where terms cancel (a variance from ``E[x^2] - E[x]^2``, a distance
    from ``|a|^2 + |b|^2 - 2 a.b``). ``atol`` covers values near zero at the same absolute error.

    Example:
        >>> t = tolerance(torch.float32, terms=8, scale=10.0)  # 9 roundings of 2**-24, on both sides
        >>> round(t["rtol"] * 2**24, 3), round(t["atol"] * 2**24, 3)
        (18.0, 180.0)
    """
    u = UNIT_ROUNDOFF[computed_in]
    n = max(int(terms), 1) + 1  # one more rounding for the final operation
    gamma = n * u / (1 - n * u)
    return {"rtol": 2 * gamma, "atol": 2 * gamma * max(float(scale), 1.0)}


def assert_close_computed(
    actual,
    expected,
    *,
    computed_in: torch.dtype = torch.float32,
    terms: int = 1,
    scale: float = 1.0,
) -> None:
    """``torch.testing.assert_close`` at :func:`tolerance`, whatever dtypes the results were cast to.

    Example:
        >>> import torch
        >>> a = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
        >>> assert_close_computed(a @ a.T, (a.double() @ a.double().T).float(), terms=32, scale=32.0)
    """
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    common = torch.promote_types(actual.dtype, expected.dtype)
    torch.testing.assert_close(
        actual.to(common), expected.to(common), **tolerance(computed_in, terms, scale), check_dtype=False
    )
