"""The `full` profile at its real sizes, one short epoch on the CPU.

Everything of TRANSLATION_PROFILES["full"] stays as configured: the paper's model (d_model 512, N 6, h 8,
d_ff 2048), seq_len 350, batches of at most 2,048 padded tokens, its warm-up/cosine schedule, Adam's betas,
eval_batch_size and bleu_every. Only the data are small: a few hundred made-up pairs shaped like opus_books
en-it (mostly 5-25 words, a tail up to ~300 tokens), written by the test as JSON lines.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil

import pytest
import torch

pytestmark = pytest.mark.slow  # about a minute and a half on two CPU cores

THREADS = int(os.environ.get("A5_TEST_THREADS", "1"))
PAPER = {"d_model": 512, "N": 6, "h": 8, "d_ff": 2048, "seq_len": 350, "max_tokens": 2048}
N_SHORT = 200  # pairs of 5-25 words
LONG_TOKENS = (120, 210, 300)  # English tokens (words and punctuation) of the tail's pairs
# The paper's base model without its embeddings and output projection: 6 encoder layers (self-attention and
# feed-forward) and 6 decoder layers (self-attention, cross-attention and feed-forward), ~44.1M weights.
PAPER_BODY = (43.5e6, 44.7e6)

EN_TEXT = ("the king said unto his people and they went into the city of stone where old men sat by a gate "
           "while children ran with bread water wine fire light house road river field mountain sea night day "
           "good great small young strong quiet after before over under through")
IT_TEXT = ("il re disse al suo popolo e essi andarono nella città di pietra dove vecchi uomini sedevano presso "
           "una porta mentre fanciulli correvano con pane acqua vino fuoco luce casa strada fiume campo monte mare "
           "notte giorno buono grande piccolo giovane forte quieto dopo prima sopra sotto attraverso")
EN_WORDS, IT_WORDS = sorted(set(EN_TEXT.split())), sorted(set(IT_TEXT.split()))  # made-up word lists


def sentence(rng: random.Random, words: list[str], n_tokens: int) -> str:
    """Exactly n_tokens tokens for the Whitespace pre-tokenizer: words, now and then a comma, a final full stop."""
    tokens: list[str] = []
    while len(tokens) < n_tokens - 1:
        comma = 1 < len(tokens) < n_tokens - 2 and tokens[-1] != "," and rng.random() < 0.1
        tokens.append("," if comma else rng.choice(words))
    text = " ".join(tokens).replace(" ,", ",") + "."
    return text[0].upper() + text[1:]


def opus_like_pairs(seed: int = 0) -> list[dict]:
    """Rows like opus_books en-it: {"id", "translation": {"en", "it"}}, Italian about as long as the English."""
    rng = random.Random(seed)
    words = [min(25, max(5, round(rng.lognormvariate(math.log(12), 0.45)))) for _ in range(N_SHORT)]
    pairs = []
    for i, n_en in enumerate([n + 1 for n in words] + list(LONG_TOKENS)):  # + 1: the full stop
        n_it = min(330, round(n_en * rng.uniform(0.9, 1.15)))  # 330 + [EOS] fits seq_len 350
        pairs.append({"id": str(i), "translation": {"en": sentence(rng, EN_WORDS, n_en),
                                                    "it": sentence(rng, IT_WORDS, n_it)}})
    return pairs


@pytest.fixture(scope="module")
def threads():
    """One intra-op thread: decoding runs ~1,400 small matrix products per step, which a second OpenMP thread only
    slows down (by milliseconds each when the cores are shared); the large training products lose little."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def full_run(lib, tmp_path_factory, threads):
    tmp_path = tmp_path_factory.mktemp("full")
    pairs = opus_like_pairs()
    data = tmp_path / "opus_books-en-it.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    config = lib.get_config(**{
        **lib.TRANSLATION_PROFILES["full"], "datasource": str(data), "num_epochs": 1, "show_progress": False,
        "model_folder": str(tmp_path / "weights"), "experiment_name": str(tmp_path / "runs"),
        "tokenizer_file": str(tmp_path / "tokenizer_{0}.json"),
        # greedy_decode re-runs the decoder over the whole prefix: a barely trained model writes up to seq_len=350
        # tokens, minutes of CPU per printed example; the whole split is still decoded, by the cached `translate`
        "num_examples": 0,
    })
    result = lib.train_model(config, allow_downloads=False)
    yield {"config": config, "pairs": pairs, "result": result, "folder": tmp_path / "weights"}
    shutil.rmtree(tmp_path / "weights", ignore_errors=True)  # a 0.5 GB checkpoint (weights and Adam's moments)


def test_full_profile_is_the_paper_configuration(lib, full_run):
    config = full_run["config"]
    assert {key: config[key] for key in PAPER} == PAPER
    for key, value in lib.TRANSLATION_PROFILES["full"].items():
        assert config[key] == value, key
    assert config["adam_betas"] == (0.9, 0.98) and config["lr_decay"] == "cosine"


def test_one_epoch_runs_with_finite_losses(full_run):
    history = full_run["result"]["history"]
    assert len(history) == 1 and history[0]["epoch"] == 1
    assert math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["val_loss"])
    assert history[0]["steps"] == len(full_run["result"]["train_dataloader"]) > 1
    checkpoint = full_run["folder"] / "tmodel_00.pt"
    assert checkpoint.is_file() and sorted(p.name for p in full_run["folder"].iterdir()) == ["tmodel_00.pt"]


def test_every_training_batch_fits_max_tokens(full_run):
    loader, max_tokens = full_run["result"]["train_dataloader"], PAPER["max_tokens"]
    sampler, lengths = loader.batch_sampler, loader.batch_sampler.lengths
    sampler.set_epoch(0)  # the epoch that ran
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(loader.dataset)))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= max_tokens, batch
    assert any(len(batch) < full_run["config"]["batch_size"] for batch in batches)  # the token budget binds
    for batch in loader:  # the padded tensors the model saw
        assert batch["encoder_input"].numel() <= max_tokens and batch["label"].numel() <= max_tokens


def test_long_pairs_are_kept(full_run):
    result = full_run["result"]
    train, val = result["train_dataloader"].dataset, result["val_dataloader"].dataset
    assert len(train) + len(val) == len(full_run["pairs"])  # nothing dropped as longer than seq_len 350
    kept = set(train.src_texts) | set(val.src_texts)
    assert all(p["translation"]["en"] in kept for p in full_run["pairs"][N_SHORT:])
    longest = max(train.lengths + val.lengths)
    assert 300 <= longest <= PAPER["seq_len"]


def test_validation_decodes_the_whole_split(full_run):
    result = full_run["result"]
    val, validation = result["val_dataloader"].dataset, result["validation"]
    assert len(val) == int(len(full_run["pairs"]) * 0.1)  # every source sentence is distinct
    assert len(validation["predicted"]) == len(val)
    assert validation["expected"] == val.tgt_texts
    assert math.isfinite(validation["bleu"]) and math.isfinite(validation["chrf"])
    assert math.isfinite(result["history"][0]["bleu"])  # the last epoch scores, whatever bleu_every says


def test_parameter_count_is_the_paper_model(lib, full_run):
    result, config = full_run["result"], full_run["config"]
    vocab_src, vocab_tgt = result["tokenizer_src"].get_vocab_size(), result["tokenizer_tgt"].get_vocab_size()
    total = lib.model_parameter_counts(result["model"])[1]
    assert total == lib.model_parameter_counts(lib.get_model(config, vocab_src, vocab_tgt))[1]
    body = sum(p.numel() for p in result["model"].parameters() if {vocab_src, vocab_tgt}.isdisjoint(p.shape))
    assert PAPER_BODY[0] < body < PAPER_BODY[1], body


def test_beam_search_translates(lib, full_run, threads):
    result = full_run["result"]
    sources = result["val_dataloader"].dataset.src_texts[:2]
    translations = lib.translate(result["model"], sources, result["tokenizer_src"], result["tokenizer_tgt"],
                                 PAPER["seq_len"], result["device"], beam_size=4)
    assert len(translations) == 2 and all(isinstance(t, str) for t in translations)
