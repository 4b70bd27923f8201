"""bench/bench_cpu_recipe.py and bench/bench_lora_recipe.py: their design, and each one's quick mode end to end."""
from __future__ import annotations

import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def cpu_recipe():
    return load_bench("bench_cpu_recipe", "bench_cpu_recipe_under_test")


@pytest.fixture(scope="module")
def lora_recipe():
    return load_bench("bench_lora_recipe", "bench_lora_recipe_under_test")


def test_cycled_loader_hands_out_exactly_the_steps_over_seeded_epochs(cpu_recipe):
    class Sampler:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    class Loader(list):
        batch_sampler = Sampler()

    loader = Loader([1, 2, 3])
    cycled = cpu_recipe.CycledLoader(loader, 7)
    assert len(cycled) == 7 and list(cycled) == [1, 2, 3, 1, 2, 3, 1]
    assert loader.batch_sampler.epochs == [0, 1, 2]  # each pass its own seeded order
    cycled.batch_sampler.set_epoch(5)  # train_model's call changes nothing: the cycle owns the epochs
    assert list(cpu_recipe.CycledLoader(loader, 2)) == [1, 2]


def test_development_split_comes_from_the_notebooks_training_pairs(lib, cpu_recipe, tmp_path):
    path, n = cpu_recipe.training_pairs_file(lib, tmp_path, max_pairs=600)
    train_side = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(train_side) == n > 0
    config = lib.get_config(**lib.TRANSLATION_PROFILES["cpu"], datasource="bible", seed=cpu_recipe.SEED,
                            tokenizer_file=f"{tmp_path}/check-{{0}}.json")
    pairs = lib.load_translation_pairs(config, allow_downloads=False)[:600]
    tokenizers = [lib.build_tokenizer(config, pairs, lang) for lang in ("en", "it")]
    kept = lib.drop_long_pairs(pairs, *tokenizers, "en", "it", config["seq_len"])[0]
    _, validation = lib.split_by_source(kept, "en", config["val_fraction"], cpu_recipe.SEED)
    assert not {p["translation"]["en"] for p in train_side} & {p["translation"]["en"] for p in validation}


def test_cpu_recipe_quick_run(cpu_recipe, tmp_path):
    log = tmp_path / "log.txt"
    rows = cpu_recipe.main(["--quick", "--variants", "reference", "tied_lr1e-3", "--log", str(log)])
    assert [r["variant"] for r in rows] == ["reference", "tied_lr1e-3"]
    for row in rows:
        assert row["steps"] >= 1 and row["s_per_step"] > 0 and 0 <= row["bleu"] <= 100 and 0 <= row["chrf"] <= 100
    assert rows[1]["params"] < rows[0]["params"]  # the tied variant has one (vocab x d_model) matrix fewer
    assert "BLEU" in log.read_text()


def test_cpu_recipe_timing_only(cpu_recipe):
    rows = cpu_recipe.main(["--quick", "--timing-only", "--variants", "reference", "reference_fused_attention"])
    assert [r["variant"] for r in rows] == ["reference", "reference_fused_attention"]
    assert all(r["s_per_step"] > 0 for r in rows)


def test_lora_recipe_design(lora_recipe):
    assert lora_recipe.CONFIGS[0]["pooling"] == "cls" and lora_recipe.CENTRE["pooling"] == "mean"
    assert len({lora_recipe.describe(c) for c in lora_recipe.CONFIGS}) == len(lora_recipe.CONFIGS)
    assert lora_recipe.target_modules("encoder only") == lora_recipe.ENCODER_TARGETS
    assert "pooler" not in lora_recipe.ENCODER_TARGETS


@pytest.mark.slow
def test_lora_recipe_quick_run(lora_recipe, tmp_path):
    rows = lora_recipe.main(["--quick", "--log", str(tmp_path / "log.txt")])
    assert len(rows) == len(lora_recipe.CONFIGS) + 1  # stage 1, then the best configuration again
    assert all(0 <= r["f1_macro"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[-1]["val_f1_by_epoch"] and "stage 2" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_lora_recipe_full_epoch_quick_run(lora_recipe):
    rows = lora_recipe.main(["--quick", "--full-epoch"])
    assert [r["batch"] for r in rows] == [batch for _, batch in lora_recipe.FULL_EPOCH]
    assert all(len(r["val_f1_by_epoch"]) == 1 and 0 <= r["f1_macro"] <= 1 for r in rows)


@pytest.fixture(scope="module")
def cpu_horizon():
    return load_bench("bench_cpu_horizon", "bench_cpu_horizon_under_test")


def test_cpu_horizon_quick_run(cpu_horizon, tmp_path):
    """The whole schedule, then every decoder on the development split: plain greedy first, the others against it."""
    log = tmp_path / "log.txt"
    rows = cpu_horizon.main(["--quick", "--log", str(log)])
    assert [r["decoder"] for r in rows][0] == "greedy" and len(rows) == 9
    assert rows[0]["p_bleu"] is None and all(r["p_bleu"] is not None for r in rows[1:])
    assert all(0 <= r["bleu"] <= 100 and 0 <= r["chrf"] <= 100 for r in rows)
    banned = [r for r in rows if "banned" in r["decoder"]]
    assert banned and all(r["unk_pct"] == 0 for r in banned)  # the ban leaves no written [UNK]
    assert "dev loss by epoch" in log.read_text()


def test_lora_recipe_full_epoch_sets(lora_recipe):
    assert lora_recipe.FULL_EPOCH_SETS["batch"] == lora_recipe.FULL_EPOCH
    for name, runs in lora_recipe.FULL_EPOCH_SETS.items():
        assert runs and all(batch > 0 and config["pooling"] == "mean" for config, batch in runs), name


def changed_keys(config: dict, reference: dict) -> set[str]:
    return {key for key in reference if config[key] != reference[key]}


def test_lora_collapse_design(lora_recipe):
    """Each cause is the sweep's collapse with one factor changed; the scale set holds r x lr at the two values."""
    sweep, *variants = lora_recipe.COLLAPSE
    assert sweep["pooling"] == "cls" and sweep["r"] == 16 and sweep["lr"] == 2e-3 and sweep["loss"] == "plain"
    assert all(len(changed_keys(config, sweep)) == 1 for config in variants)
    products = sorted(round(c["r"] * c["lr"], 6) for c in lora_recipe.COLLAPSE_SCALE)
    assert products == [0.016, 0.032, 0.032]
    assert all(c["loss"] == "plain" and c["pooling"] == "cls" for c in lora_recipe.COLLAPSE_SCALE)


@pytest.mark.slow
def test_lora_collapse_quick_run(lora_recipe, tmp_path):
    """Unweighted runs score and report the most predicted class's share (1.0 is a collapse to one class)."""
    log = tmp_path / "log.txt"
    rows = lora_recipe.main(["--quick", "--collapse", "scale", "--log", str(log)])
    assert len(rows) == len(lora_recipe.COLLAPSE_SCALE)
    assert all(0 < r["top_class_share"] <= 1 and 0 <= r["f1_macro"] <= 1 for r in rows)
    assert "top class" in log.read_text()


def test_lora_warmup_set_changes_only_the_warmup(lora_recipe):
    for config, batch in lora_recipe.FULL_EPOCH_SETS["warmup"]:
        assert changed_keys(config, lora_recipe.CENTRE) == {"warmup"} and batch == 8
