"""bench/bench_gpu.py (the GPU speed check), run at tiny sizes on the CPU."""
from __future__ import annotations

import json
import sys

import nbformat
import pytest
import torch
from conftest import NOTEBOOK, load_bench


@pytest.fixture
def restore_modules():
    """Put sys.modules back as it was: the test below hides nbformat and re-imports the loaders."""
    saved = dict(sys.modules)
    yield
    sys.modules.clear()
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def bench_gpu():
    return load_bench("bench_gpu", "bench_gpu_under_test")


def test_bench_gpu_cpu_smoke_times_train_model_with_and_without_the_loader(bench_gpu, tmp_path):
    results = bench_gpu.main(["--cpu-smoke", "--json", str(tmp_path / "results.json")])
    assert results["steps_per_s"] > 0 and results["target_tokens_per_s"] > 0 and results["steps_per_epoch"] > 0
    assert 0 <= results["loader_share"] < 1 and results["loader_ms_per_batch"] > 0
    assert results["compute_only_s_per_step"] > 0 and all(s > 0 for s in results["projected_s"])
    assert results["mfu"] is None  # no GPU, no peak
    assert json.loads((tmp_path / "results.json").read_text())["device"] == "CPU"


def test_bench_gpu_reads_the_notebook_without_nbformat(bench_gpu, restore_modules):
    def cells(notebook):
        return [(c.cell_type, c.metadata.get("tags", []), c.source) for c in notebook.cells]

    assert cells(bench_gpu.read_notebook(NOTEBOOK)) == cells(nbformat.read(NOTEBOOK, as_version=4))
    sys.modules["nbformat"] = None  # `import nbformat` now fails, as on the GPU machine
    for name in ("nblib", "bench_loader"):
        sys.modules.pop(name, None)  # imported afresh under bench_gpu's stand-in
    fresh = load_bench("bench_gpu", "bench_gpu_without_nbformat")
    assert sys.modules["nbformat"].read is fresh.read_notebook
    lib = fresh.load_lib_cells(NOTEBOOK, "lib_without_nbformat")
    assert callable(lib.train_model) and callable(lib.get_ds)


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                            ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA L4", 121),
                                            ("Tesla T4", 65), ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", None)])
def test_bench_gpu_peak_table(bench_gpu, name, peak):
    assert bench_gpu.peak_for_name(name)[0] == peak


def test_bench_gpu_launched_ops_grow_with_depth(bench_gpu, lib):
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


def test_transformer_train_flops_counts_weights_per_token(bench_gpu, lib):
    model = lib.build_transformer(11, 13, 8, 8, d_model=16, N=1, h=2, dropout=0.0, d_ff=32)
    def matrices(module):
        return sum(p.numel() for p in module.parameters() if p.dim() > 1)
    expected = 6 * (matrices(model.encoder) * 100 + (matrices(model.decoder) + matrices(model.projection_layer)) * 80)
    assert bench_gpu.transformer_train_flops(model, 100, 80) == expected
