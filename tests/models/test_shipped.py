"""The checkpoints `make accuracy` ships score what their metadata and ACCURACY.md say."""

from __future__ import annotations

import json

import pytest

from models import checkpoint
from models.data import load_digits
from models.evaluate import accuracy_at_levels
from tests.helpers import ROOT

SHIPPED = ["structured", "unstructured", "quantization"]  # structured: the default model


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("family", SHIPPED)
def test_shipped_checkpoint_matches_its_metadata_and_the_report(family, digits):
    path = ROOT / "models" / "weights" / f"digits_{family}_point.safetensors"
    net, meta, _ = checkpoint.load(path)
    assert (meta.family, meta.kind, meta.norm) == (family, "point", "group")

    stored = meta.accuracy
    again = accuracy_at_levels(net, digits.test, [r["alpha"] for r in stored], meta.mean, meta.std)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in stored]

    # The same network's row in benchmarks/results/accuracy.json, for the seed it was trained with.
    results = json.loads((ROOT / "benchmarks" / "results" / "accuracy.json").read_text())
    seed = meta.training["seed"]
    lcs = next(m for m in results["families"][family] if m["label"] == "LCS+P+IN")
    rows = [lcs["rows"][0], lcs["rows"][len(lcs["rows"]) // 2], lcs["rows"][-1]]  # three levels
    gammas = [r["gamma"] for r in rows]
    alphas = [meta.spec.calc.alpha(g) for g in gammas]
    measured = accuracy_at_levels(net, digits.test, alphas, meta.mean, meta.std)
    index = results["seeds"].index(seed)
    assert [r["accuracy"] for r in measured] == [r["seeds"][index] for r in rows]


def test_compute_bound_digits_model_matches_its_metadata_and_the_report():
    """cPreResNet20 on the digits padded to 32×32: three of its stored rows re-measured (the
    whole grid costs a minute on a loaded core), and ACCURACY.md's row is the metadata's."""
    path = ROOT / "models" / "weights" / "digits_cpreresnet20.safetensors"
    net, meta, _ = checkpoint.load(path)
    assert (meta.arch, meta.family, meta.kind) == ("cpreresnet20", "structured", "point")
    assert (meta.dataset, meta.input_size) == ("mnist-5000-32", [1, 32, 32])
    stored = meta.accuracy
    assert [r["alpha"] for r in stored] == meta.spec.calc.grid()
    data = load_digits(pad_to=32)
    some = [stored[0], stored[3], stored[-1]]  # widths 0.25, 0.625, 1
    again = accuracy_at_levels(net, data.test, [r["alpha"] for r in some], meta.mean, meta.std)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in some]

    report = (ROOT / "ACCURACY.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| digits_cpreresnet20 "))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert cells == [f"{100 * r['accuracy']:.1f}" for r in stored]
