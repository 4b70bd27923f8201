"""bench/bench_gpu.py (the GPU speed check) and bench/bench_batching.py, run at tiny sizes on CPU."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import load_bench


@pytest.fixture
def restore_modules():
    """Put sys.modules back as it was: the lib loader may add stand-ins for missing modules."""
    saved = dict(sys.modules)
    yield
    sys.modules.clear()
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def bench_gpu():
    return load_bench("bench_gpu", "bench_gpu_under_test")


def test_bench_gpu_cpu_smoke_runs_both_sections(bench_gpu, tmp_path):
    results = bench_gpu.main(["--cpu-smoke", "--json", str(tmp_path / "results.json")])
    s1, s2 = results["section1"], results["section2"]
    assert s1["steps_per_s"] > 0 and s1["target_tokens_per_s"] > 0 and s1["steps_per_epoch"] > 0
    assert 0 < s1["projected_s"][0] <= s1["projected_s"][1]
    assert len(s2["models"]) == 3 and all(m["projected_s"] > 0 for m in s2["models"].values())
    assert s1["mfu"] is None  # no GPU, no peak
    assert json.loads((tmp_path / "results.json").read_text())["device"] == "CPU"


def test_bench_gpu_wordpiece_tokenizer_when_no_vocab_is_carried(bench_gpu, capsys):
    results = bench_gpu.main(["--cpu-smoke", "--sections", "2", "--tokenizer", "wordpiece"])
    assert "WordPiece trained here" in capsys.readouterr().out
    assert len(results["section2"]["models"]) == 3


def test_bench_gpu_loads_lib_cells_without_nbformat_or_plotting(bench_gpu, restore_modules):
    for name in ("nbformat", "matplotlib", "matplotlib.pyplot", "sklearn", "torch.utils.tensorboard", "tqdm"):
        sys.modules[name] = None  # `import name` now fails as if it were not installed
    lib = bench_gpu.load_lib()
    assert callable(lib.get_config) and callable(lib.train_classifier) and callable(lib.transformer_train_flops)
    assert list(lib.tqdm(range(3), disable=True)) == [0, 1, 2]


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                            ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA L4", 121),
                                            ("Tesla T4", 65), ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", None)])
def test_bench_gpu_peak_table(bench_gpu, name, peak):
    assert bench_gpu.peak_for_name(name)[0] == peak


def test_bench_batching_quick():
    results = load_bench("bench_batching", "bench_batching_under_test").main(["--quick", "--threads", "1"])
    assert set(results) == {"seed", "full@512"}
    seed, full = results["seed"], results["full@512"]
    assert len(seed) == len(full) == 4
    assert seed[-1]["steps"] > full[-1]["steps"]  # larger batches: fewer steps for the same tokens
    assert abs(seed[-1]["tokens"] - full[-1]["tokens"]) < 0.2 * seed[-1]["tokens"]


def test_bench_batching_one_run_per_peak_lr():
    results = load_bench("bench_batching", "bench_batching_under_test").main(
        ["--quick", "--threads", "1", "--epochs", "0.2", "--peak-lr", "7e-4", "2e-3"])
    assert set(results) == {"seed", "full@512,lr0.0007", "full@512,lr0.002"}
    low, high = results["full@512,lr0.0007"], results["full@512,lr0.002"]
    assert [row["steps"] for row in low] == [row["steps"] for row in high]  # same batches, only the lr differs
    assert high[1]["lr"] > low[1]["lr"]


def test_bench_batching_one_run_per_beta2_and_training_loss_logged():
    results = load_bench("bench_batching", "bench_batching_under_test").main(
        ["--quick", "--threads", "1", "--epochs", "0.2", "--beta2", "0.98", "0.999", "--skip-seed",
         "--peak-lr", "1e-3", "--decay", "none"])
    assert set(results) == {"full@512,b2=0.98", "full@512,b2=0.999"}
    a, b = results["full@512,b2=0.98"], results["full@512,b2=0.999"]
    assert [row["steps"] for row in a] == [row["steps"] for row in b]
    assert a[-1]["val_loss"] != b[-1]["val_loss"]  # the optimizer differs, nothing else
    assert all(row["train_loss"] > 0 for row in a + b)
    assert a[-1]["lr"] == pytest.approx(1e-3)  # --decay none: the peak holds after the warm-up


def test_bench_gpu_launched_ops_grow_with_depth(bench_gpu):
    lib = bench_gpu.load_lib()
    counts = []
    for layers in (1, 2):
        config = lib.get_config(d_model=16, N=layers, h=2, d_ff=32, seq_len=12)
        lib.set_seed(0)
        model = lib.get_model(config, 50, 60)
        batch = {"encoder_input": torch.randint(4, 50, (3, 7)), "decoder_input": torch.randint(4, 60, (3, 6)),
                 "encoder_mask": torch.ones(3, 1, 1, 7, dtype=torch.int),
                 "decoder_mask": lib.casual_mask(6).int().expand(3, 1, 6, 6), "label": torch.randint(4, 60, (3, 6))}
        counts.append(bench_gpu.launched_ops(lib, model, batch, pad=1))
        assert all(p.grad is None for p in model.parameters())  # the counting step leaves no gradients behind
    assert 100 < counts[0] < counts[1] < 2 * counts[0]  # a layer adds its ops; embeddings and the loss do not double
