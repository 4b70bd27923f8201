"""bench/bench_lora_sweep.py: it scores on the notebook's validation split, and --quick runs the sweep."""
from __future__ import annotations

import pytest
import torch
from conftest import load_bench

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_lora_sweep")


def test_one_factor_at_a_time_design(bench):
    configs = bench.sweep_configs()
    assert len(configs) == 7 and configs[0] == bench.CENTRE
    assert len({tuple(sorted(c.items())) for c in configs}) == 7
    for config in configs[1:]:  # each differs from the centre in exactly one factor
        assert sum(config[k] != bench.CENTRE[k] for k in bench.CENTRE) == 1
    assert {c["r"] for c in configs} == set(bench.RANKS)
    assert {c["targets"] for c in configs} == set(bench.TARGETS)
    assert {c["lr"] for c in configs} == set(bench.LEARNING_RATES)


def test_best_config_breaks_ties_by_fewer_parameters(bench):
    rows = [{"f1_macro": 0.6701, "trainable": 900}, {"f1_macro": 0.6704, "trainable": 300},
            {"f1_macro": 0.65, "trainable": 10}]
    assert bench.best_config(rows)["trainable"] == 300
    assert bench.best_config([*rows, {"f1_macro": 0.69, "trainable": 5000}])["trainable"] == 5000


def test_quick_run(lib, bench, capsys):
    results = bench.main(["--quick"], lib=lib)
    out = capsys.readouterr().out
    assert set(results["split"]) == {"train", "validation", "classes"}  # no test split anywhere
    assert results["split"]["classes"] >= 5 and results["split"]["validation"] > 300
    rows = results["rows"]
    assert len(rows) == 7
    assert all(0 <= r["f1_macro"] <= 1 and 0 <= r["accuracy"] <= 1 and r["train_s"] > 0 for r in rows)
    by_targets = {r["targets"]: r["trainable"] for r in rows if r["r"] == 16 and r["lr"] == 2e-3}
    assert by_targets["q,v"] < by_targets["q,k,v"] < by_targets["q,k,v,dense"]
    assert results["best"] == bench.best_config(rows)
    table = out.split("macro-F1\n", 1)[1].split("\n\n", 1)[0].splitlines()  # the rows under the header
    assert len(table) == 7 and "BEST by macro-F1" in out
