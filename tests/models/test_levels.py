"""The calculators γ(α) of §3.4 and their inverses."""

import pytest

from models import Calculator, SubspaceSpec


def test_structured_affine_map():
    c = Calculator.default("structured")
    assert c.gamma(0.0) == 0.25 and c.gamma(1.0) == 1.0
    assert c.gamma(0.5) == pytest.approx(0.625)
    assert c.alpha(0.625) == pytest.approx(0.5)


def test_unstructured_is_one_minus_alpha():
    c = Calculator.default("unstructured")
    assert c.gamma(0.3) == pytest.approx(0.7)
    assert c.gamma(0.0) == pytest.approx(0.975)  # clamped to the trained range


def test_quantization_bits_on_the_grid():
    c = Calculator.default("quantization")
    assert [c.gamma(a) for a in c.grid()] == [3, 4, 5, 6, 7, 8]
    assert c.gamma(0.55) == 6  # snapped up to the next bit width
    assert c.alpha(8) == 1.0


@pytest.mark.parametrize("family", ["structured", "unstructured", "quantization"])
def test_round_trip_and_range_errors(family):
    c = Calculator.default(family)
    for a in c.grid():
        assert c.alpha(c.gamma(a)) == pytest.approx(a)
    _lo, hi = c.gamma_range
    with pytest.raises(ValueError, match="outside"):
        c.alpha(hi + 1)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="family"):
        SubspaceSpec("pruning")
    with pytest.raises(ValueError, match="kind"):
        SubspaceSpec("structured", "plane")
