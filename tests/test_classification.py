"""Section 2 (complaint classification): the notebook's lib cells, tested without a kernel or a network."""
from __future__ import annotations

import copy
import gzip
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import EMBEDDED_COMPLAINTS, REPO
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

FIXTURE_CSV = REPO / "tests" / "fixtures" / "complaints_synthetic.csv"
NARRATIVE = "Consumer complaint narrative"
LONG_ENOUGH = "my credit report shows an account that is not mine and the bureau will not remove it at all"


@pytest.fixture(scope="module")
def tokenizer(lib):
    return lib.BertTokenizer.from_pretrained(str(lib.minilm_dir()))


def tiny_bert_config(lib, num_labels: int = 5):
    return lib.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=512, max_position_embeddings=64, num_labels=num_labels)


def write_csv(path, rows, encoding="utf-8"):
    pd.DataFrame(rows).to_csv(path, index=False, encoding=encoding)
    return path


# --- cleaning --------------------------------------------------------------------------------------

def test_clean_removes_redactions_and_masked_amounts(lib):
    text = "On XX/XX/2019 I paid {$250.00} to XXXX XXXX, account XXXX/XXXX/XXXX, and xxxx ignored me."
    assert lib.clean_complaint_text(text) == "On I paid to , account , and ignored me."
    assert "Exxon" in lib.clean_complaint_text("Exxon charged me twice")  # words that merely contain xx survive


def test_clean_removes_html_special_characters_and_whitespace(lib):
    text = "<p>The bank&nbsp;closed   my\n\taccount</p><br/>without notice!!! ★★ <a href='x'>link</a>"
    cleaned = lib.clean_complaint_text(text)
    assert "<" not in cleaned and ">" not in cleaned and "href" not in cleaned
    assert "★" not in cleaned
    assert "  " not in cleaned and "\n" not in cleaned and "\t" not in cleaned
    assert cleaned == cleaned.strip()
    assert "The bank closed my account without notice!" in cleaned


# --- loading ---------------------------------------------------------------------------------------

def test_load_complaints_reads_good_file_and_drops_empty_narratives(lib, tmp_path):
    path = write_csv(tmp_path / "c.csv", {"Product": ["Mortgage", "Debt collection", "Mortgage", "Student loan"],
                                          NARRATIVE: [LONG_ENOUGH, None, "   ", LONG_ENOUGH + " too"]})
    df = lib.load_complaints(path)
    assert list(df["Product"]) == ["Mortgage", "Student loan"]
    assert df.attrs["dropped_empty"] == 2


def test_load_complaints_reads_gzip(lib, tmp_path):
    path = tmp_path / "c.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        pd.DataFrame({"Product": ["Mortgage"], NARRATIVE: [LONG_ENOUGH]}).to_csv(f, index=False)
    assert len(lib.load_complaints(path)) == 1


def test_load_complaints_missing_column_names_it(lib, tmp_path):
    path = write_csv(tmp_path / "c.csv", {"Product": ["Mortgage"], "text": [LONG_ENOUGH]})
    with pytest.raises(ValueError, match="Consumer complaint narrative"):
        lib.load_complaints(path)


def test_load_complaints_empty_and_missing_files(lib, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        lib.load_complaints(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lib.load_complaints(tmp_path / "nope.csv")
    header_only = write_csv(tmp_path / "h.csv", {"Product": [None], NARRATIVE: [None]})
    with pytest.raises(ValueError, match="no rows"):
        lib.load_complaints(header_only)


def test_load_complaints_unreadable_file(lib, tmp_path):
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match="not a readable CSV"):
        lib.load_complaints(broken)


def test_load_complaints_decodes_non_utf8(lib, tmp_path):
    path = write_csv(tmp_path / "latin.csv", {"Product": ["Mortgage"], NARRATIVE: ["The café charged me 50€ — " + LONG_ENOUGH]},
                     encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    df = lib.load_complaints(path)
    assert df.attrs["encoding"] != "utf-8"
    assert "café" in df[NARRATIVE].iloc[0] and "€" in df[NARRATIVE].iloc[0]


def test_complaints_source_prefers_explicit_then_offline_then_errors(lib, tmp_path):
    given = write_csv(tmp_path / "given.csv", {"Product": ["Mortgage"], NARRATIVE: [LONG_ENOUGH]})
    resolve = partial(lib.resolve_run_sources, hub_online=False, drive_online=False, data_dir=tmp_path / "data")
    assert resolve(str(given), embedded_complaints=tmp_path / "none.gz")["complaints"].path == given
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "missing.csv"), embedded_complaints=given)
    complaints = resolve(None, embedded_complaints=given)["complaints"]
    assert complaints.path == given and complaints.standin and complaints.used.startswith("OFFLINE STAND-IN")
    with pytest.raises(FileNotFoundError, match="A5_COMPLAINTS_CSV"):
        resolve(None, embedded_complaints=tmp_path / "none.gz")


# --- classes and split -----------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["fixture", "embedded"])
def test_merge_and_keep_leaves_at_least_five_classes(lib, source):
    df = lib.load_complaints(FIXTURE_CSV if source == "fixture" else EMBEDDED_COMPLAINTS)
    for name, profile in lib.CLASSIFICATION_PROFILES.items():
        prepared = lib.prepare_complaints(df, profile["sample_size"], seed=42)
        assert len(prepared["class_names"]) >= 5, (source, name)
        assert prepared["merged_counts"].index.isin(lib.PRODUCT_MERGE).sum() == 0  # every raw alias was merged
        kept = prepared["clean"]["product"].unique()
        assert prepared["merged_counts"][kept].min() >= prepared["min_class"]


def test_prepare_complaints_cleans_labels_and_counts(lib):
    df = lib.load_complaints(EMBEDDED_COMPLAINTS)
    prepared = lib.prepare_complaints(df, 600, seed=42)
    clean = prepared["clean"]
    assert len(prepared["sample"]) == 600 and prepared["n_single_source"] > 0
    assert prepared["class_names"] == sorted(clean["product"].unique())
    assert (clean["product"].map(prepared["class_names"].index) == clean["label"]).all()
    assert clean["text"].str.split().str.len().min() >= lib.MIN_WORDS
    assert (clean["text"] == clean["Consumer complaint narrative"].map(lib.clean_complaint_text)).all()


def test_split_complaints_has_no_overlap_and_is_stratified(lib):
    rng = np.random.default_rng(0)
    texts = [f"complaint number {i} about product {i % 5} " + LONG_ENOUGH for i in range(200)]
    texts += [t.upper() + "  " for t in texts[:40]]  # duplicates up to case and spacing
    df = pd.DataFrame({"text": texts, "label": [i % 5 for i in range(200)] + [i % 5 for i in range(40)]})
    df = df.sample(frac=1.0, random_state=int(rng.integers(1000)))
    train, val, test, n_dup = lib.split_complaints(df, test_size=0.2, val_size=0.1, seed=1)
    assert n_dup == 40
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    norm = lambda s: set(s.str.lower().str.split().str.join(" "))
    assert not norm(train["text"]) & norm(test["text"]) and not norm(val["text"]) & (norm(train["text"]) | norm(test["text"]))
    assert test["label"].value_counts().tolist() == [8] * 5 and val["label"].value_counts().tolist() == [4] * 5


# --- dataset and padding ---------------------------------------------------------------------------

def test_complaint_dataset_items_and_truncation(lib, tokenizer):
    long_text = " ".join(["mortgage"] * 2000)
    ds = lib.ComplaintDataset([long_text, "short complaint"], [3, 1], tokenizer, max_len=128)
    assert len(ds) == 2
    item = ds[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert item["input_ids"].shape == item["attention_mask"].shape == (128,)
    assert item["input_ids"][0].item() == tokenizer.cls_token_id and item["input_ids"][-1].item() == tokenizer.sep_token_id
    assert item["labels"].dtype == torch.long and item["labels"].item() == 3
    short = ds[1]
    assert short["input_ids"].shape[0] == 4 and short["attention_mask"].sum().item() == 4  # [CLS] short complaint [SEP]
    padded = lib.ComplaintDataset(["short complaint"], [1], tokenizer, max_len=32, pad_to_max_len=True)[0]
    assert padded["input_ids"].shape == (32,) and padded["attention_mask"].sum().item() == 4
    assert (padded["input_ids"][4:] == tokenizer.pad_token_id).all()


def test_pad_to_longest_pads_each_batch_to_its_longest_item(lib):
    batch = [{"input_ids": torch.tensor([101, 7, 8, 102]), "attention_mask": torch.ones(4, dtype=torch.long),
              "labels": torch.tensor(2)},
             {"input_ids": torch.tensor([101, 9, 102]), "attention_mask": torch.ones(3, dtype=torch.long),
              "labels": torch.tensor(0)}]
    out = lib.pad_to_longest(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert out["labels"].tolist() == [2, 0]


def test_length_bucket_sampler_covers_every_index_once(lib):
    lengths = np.random.default_rng(0).integers(5, 500, size=333)
    for shuffle in (True, False):
        sampler = lib.LengthGroupedBatchSampler(lengths.tolist(), batch_size=16, shuffle=shuffle, seed=3)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(333))
    sampler = lib.LengthGroupedBatchSampler(lengths.tolist(), batch_size=16, shuffle=True, seed=3, group_batches=1000)
    spread = np.mean([np.ptp(lengths[b]) for b in sampler])
    assert spread < 0.1 * np.ptp(lengths)  # one pool: batches are runs of the sorted lengths


# --- metrics ---------------------------------------------------------------------------------------

def test_classification_metrics_match_sklearn(lib):
    y_true = [0, 0, 1, 1, 2, 2, 2, 3]
    y_pred = [0, 1, 1, 1, 2, 0, 2, 2]
    m = lib.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("macro", "weighted"):
        f = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], average=average, zero_division=0)[2]
        assert m[f"f1_{average}"] == pytest.approx(f)
    assert m["f1_macro"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3, 0.0]))  # by hand; class 3 is never predicted
    assert m["f1_macro"] == pytest.approx(lib.macro_f1(y_true, y_pred, 4))
    assert m["confusion"].tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 1, 0]]
    per_class = m["per_class"]
    assert list(per_class.index) == ["a (2)", "b (2)", "c (3)", "d (1)", "macro average"]  # the test count in brackets
    assert per_class.loc["b (2)", "precision"] == pytest.approx(2 / 3) and per_class.loc["b (2)", "recall"] == 1.0
    assert per_class.loc["d (1)"].tolist() == [0.0, 0.0, 0.0]  # never predicted: 0, not an error
    assert per_class.loc["macro average", "F1"] == pytest.approx(m["f1_macro"])
    assert per_class.loc["macro average", "recall"] == pytest.approx(
        precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)[1])


def test_bootstrap_intervals_and_paired_difference(lib):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 400)
    good = np.where(rng.random(400) < 0.85, y_true, rng.integers(0, 4, 400))
    bad = np.where(rng.random(400) < 0.5, y_true, rng.integers(0, 4, 400))
    everything = np.arange(400)[None, :]
    scores = lib._resampled_scores(y_true, good, everything, 4)
    assert scores["f1_macro"][0] == pytest.approx(f1_score(y_true, good, average="macro"))
    assert scores["accuracy"][0] == pytest.approx(accuracy_score(y_true, good))
    assert scores["f1_weighted"][0] == pytest.approx(f1_score(y_true, good, average="weighted"))
    intervals = lib.bootstrap_intervals(y_true, good, 4, seed=1)
    low, high = intervals["f1_macro"]
    assert low < f1_score(y_true, good, average="macro") < high and high - low < 0.15
    diff, low, high = lib.paired_bootstrap_difference(y_true, good, bad, 4, seed=1)
    assert low > 0 and diff == pytest.approx(f1_score(y_true, good, average="macro") - f1_score(y_true, bad, average="macro"))
    _, low, high = lib.paired_bootstrap_difference(y_true, good, good.copy(), 4, seed=1)
    assert low == high == 0.0  # the same predictions: no difference in any resample
    for metric, score in (("accuracy", accuracy_score), ("f1_weighted", partial(f1_score, average="weighted"))):
        diff, low, high = lib.paired_bootstrap_difference(y_true, good, bad, 4, seed=1, metric=metric)
        assert low > 0 and diff == pytest.approx(score(y_true, good) - score(y_true, bad))


def test_training_costs_read_the_saved_model_and_refuse_a_missing_one(lib, tmp_path):
    saved = tmp_path / "adapter"
    saved.mkdir()
    (saved / "adapter_model.safetensors").write_bytes(b"0" * 250_000)
    history = [{"epoch_time_s": 10.0}, {"epoch_time_s": 12.0}]
    costs = lib.training_costs(history, saved, "none", trainable=5, total=10)
    assert costs["size on disk (MB)"] == pytest.approx(0.25)
    assert costs["s / epoch"] == pytest.approx(11.0) and costs["training time (s)"] == pytest.approx(22.0)
    with pytest.raises(FileNotFoundError, match="no saved model"):  # costs asked for before the model is saved
        lib.training_costs(history, tmp_path / "not_saved_yet", "none", trainable=5, total=10)


def test_balanced_class_weights(lib):
    weights = lib.balanced_class_weights([0, 0, 0, 1], 3)
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])


def test_predict_classifier_agrees_with_its_predictions(lib):
    torch.manual_seed(0)
    model = lib.BertForSequenceClassification(tiny_bert_config(lib, num_labels=3))
    items = [{"input_ids": torch.randint(5, 1000, (int(n),)), "labels": torch.tensor(i % 3)}
             for i, n in enumerate(torch.randint(4, 20, (24,)))]
    for item in items:
        item["attention_mask"] = torch.ones_like(item["input_ids"])
    loader = torch.utils.data.DataLoader(items, batch_size=8, collate_fn=lambda b: lib.pad_to_longest(b, 0))
    m = lib.predict_classifier(model, loader, torch.device("cpu"), lib.choose_precision("cpu"))
    assert m["accuracy"] == pytest.approx(accuracy_score(m["y_true"], m["y_pred"]))
    assert m["y_true"].tolist() == [i % 3 for i in range(24)]
    assert m["probs"].shape == (24, 3) and np.allclose(m["probs"].sum(1), 1, atol=1e-5)
    assert (m["probs"].argmax(1) == m["y_pred"]).all()


# --- training loop ---------------------------------------------------------------------------------

def test_train_classifier_learns_a_separable_toy_task(lib):
    """Token 10 means class 0, token 20 means class 1: a few epochs must beat chance clearly."""
    torch.manual_seed(0)
    config = lib.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = lib.BertForSequenceClassification(config)
    items = []
    for i in range(128):
        label = i % 2
        ids = torch.tensor([1] + [10 + 10 * label] * 3 + torch.randint(30, 50, (4,)).tolist() + [2])
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(label)})
    sampler = lib.LengthGroupedBatchSampler([len(item["input_ids"]) for item in items], 16, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=lambda b: lib.pad_to_longest(b, 0))
    optimizer, scheduler = lib.make_optimizer(model, lr=3e-3, total_steps=6 * len(loader))
    criterion = torch.nn.CrossEntropyLoss(weight=lib.balanced_class_weights([0, 1], 2))
    history = lib.train_classifier(model, loader, loader, optimizer, scheduler, 6, torch.device("cpu"),
                                   lib.choose_precision("cpu"), show_progress=False,
                                   criterion=criterion)
    assert len(history) == 6 and {"train_loss", "val_acc", "val_f1", "best", "epoch_time_s"} <= set(history[0])
    assert max(h["val_acc"] for h in history) > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = max(history, key=lambda h: h["val_f1"])
    kept = lib.predict_classifier(model, loader, torch.device("cpu"), lib.choose_precision("cpu"))
    assert kept["accuracy"] == pytest.approx(best["val_acc"])  # the model holds the best epoch's weights


def toy_classifier(lib, label_of):
    """A one-layer BERT (seed 0) and a loader of 32 six-token items, item i labelled label_of(i)."""
    torch.manual_seed(0)
    config = lib.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = lib.BertForSequenceClassification(config)
    items = [{"input_ids": torch.randint(3, 50, (6,)), "attention_mask": torch.ones(6, dtype=torch.long),
              "labels": torch.tensor(int(label_of(i)))} for i in range(32)]
    sampler = lib.LengthGroupedBatchSampler([6] * 32, 8, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=lambda b: lib.pad_to_longest(b, 0))
    return model, loader


def test_validation_loss_is_the_training_criterion(lib):
    """Train and validation curves plot the same loss: a class-weighted criterion weighs validation too."""
    model, loader = toy_classifier(lib, lambda i: i % 4 == 0)  # a quarter in class 1
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.25, 4.0]))
    optimizer, scheduler = lib.make_optimizer(model, lr=1e-3, total_steps=len(loader))
    (record,) = lib.train_classifier(model, loader, loader, optimizer, scheduler, 1, torch.device("cpu"),
                                     lib.choose_precision("cpu"), show_progress=False, criterion=criterion)
    cpu, fp32 = torch.device("cpu"), lib.choose_precision("cpu")
    assert record["val_loss"] == pytest.approx(lib.predict_classifier(model, loader, cpu, fp32, criterion)["loss"])
    assert record["val_loss"] != pytest.approx(lib.predict_classifier(model, loader, cpu, fp32)["loss"], rel=1e-3)


def test_train_classifier_stops_when_validation_stalls(lib):
    model, loader = toy_classifier(lib, lambda i: i % 2)  # random labels: nothing to learn
    optimizer, scheduler = lib.make_optimizer(model, lr=1e-3, total_steps=40 * len(loader))
    history = lib.train_classifier(model, loader, loader, optimizer, scheduler, 40, torch.device("cpu"),
                                   lib.choose_precision("cpu"), show_progress=False, patience=2)
    assert len(history) < 40
    assert [h["best"] for h in history[-2:]] == [False, False]


def test_schedule_with_linear_decay(lib):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lib.warmup_schedule(opt, warmup_steps=4, total_steps=20, decay="linear")
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] < 0.1 and all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))


# --- LoRA ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [4, 8])
def test_lora_trainable_parameters_match_formula(lib, r):
    num_labels, hidden, layers = 5, 128, 2
    torch.manual_seed(0)
    base = lib.BertForSequenceClassification(tiny_bert_config(lib, num_labels))
    base_total = sum(p.numel() for p in base.parameters())
    lora = lib.get_peft_model(base, lib.LoraConfig(task_type=lib.TaskType.SEQ_CLS, r=r, lora_alpha=2 * r,
                                                     lora_dropout=0.1, target_modules=["query", "value"]))
    adapters = layers * 2 * r * (hidden + hidden)  # query and value: hidden -> hidden, A is r x in, B is out x r
    head = hidden * num_labels + num_labels  # SEQ_CLS makes the new classifier trainable
    trainable, total = lib.model_parameter_counts(lora)
    assert trainable == adapters + head
    assert total == base_total + adapters  # the base with its adapters; peft's frozen copy of the head is not counted
    assert lora.get_nb_trainable_parameters()[1] == total + head  # peft's own count includes that copy


def nontrivial_lora(lib):
    """A tiny BERT with the notebook's LoRA adapters, B drawn at random (it starts at zero) so the adapter
    changes the function."""
    torch.manual_seed(0)
    base = lib.BertForSequenceClassification(tiny_bert_config(lib, num_labels=4))
    lora = lib.get_peft_model(base, lib.LoraConfig(task_type=lib.TaskType.SEQ_CLS, **lib.LORA_HPARAMS))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return lora


def test_merged_model_predicts_like_adapter_model(lib):
    lora = nontrivial_lora(lib)
    lora.eval()
    ids = torch.randint(5, 1000, (16, 24))
    mask = torch.ones_like(ids)
    mask[8:, 18:] = 0
    with torch.no_grad():
        adapted = lora(input_ids=ids, attention_mask=mask).logits
        with lora.disable_adapter():
            plain = lora(input_ids=ids, attention_mask=mask).logits
        merged_model = copy.deepcopy(lora).merge_and_unload()
        merged_model.eval()
        merged = merged_model(input_ids=ids, attention_mask=mask).logits
        adapted_again = lora(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapter is not trivial
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    assert torch.equal(merged.argmax(-1), adapted.argmax(-1))
    torch.testing.assert_close(adapted_again, adapted)  # merging a copy left the adapter model unchanged


def test_minilm_files_and_tokenizer_vocabulary(lib, tokenizer):
    assert (lib.minilm_dir() / "config.json").is_file()
    assert len(tokenizer) == 30522
    assert tokenizer.tokenize("Mortgage PAYMENTS") == ["mortgage", "payments"]  # lower-casing is on


def test_lib_cells_have_no_side_effects(lib):
    assert not hasattr(lib, "df") and not hasattr(lib, "small_bert") and not hasattr(lib, "test_metrics")


def test_merge_check_compares_in_fp32_whatever_the_run_precision(lib):
    """W·x + B·A·x and (W + BA)·x round differently: in bf16 the logits drift apart (and can flip a near-tie),
    in fp32 they agree to well under the notebook's tolerance of 1e-3."""
    lora = nontrivial_lora(lib)
    merged = copy.deepcopy(lora).merge_and_unload()
    items = [{"input_ids": torch.randint(5, 1000, (int(n),)), "labels": torch.tensor(i % 4)}
             for i, n in enumerate(torch.randint(6, 24, (32,)))]
    for item in items:
        item["attention_mask"] = torch.ones_like(item["input_ids"])
    loader = torch.utils.data.DataLoader(items, batch_size=8, collate_fn=lambda b: lib.pad_to_longest(b, 0))
    gaps = {}
    for name in ("fp32", "bf16"):
        precision = lib.Precision(name, "cpu", "test")
        adapter_out, merged_out = (lib.predict_classifier(m, loader, torch.device("cpu"), precision) for m in (lora, merged))
        gaps[name] = float((adapter_out["logits"] - merged_out["logits"]).abs().max())
    assert gaps["fp32"] < 1e-4 < gaps["bf16"]


def test_predictions_come_back_in_dataset_order_from_a_length_grouped_loader(lib, tokenizer):
    """The evaluation loader sorts complaints by length; predictions must still line up with the labels' order,
    or every test metric compares the wrong pairs."""
    texts = [" ".join(["mortgage"] * n) for n in (30, 3, 12, 7, 25, 1, 18, 9)]
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    dataset = lib.ComplaintDataset(texts, labels, tokenizer, max_len=64)
    loader = lib.make_loader(dataset, 3, tokenizer.pad_token_id, shuffle=False)
    assert [i for batch in loader.batch_sampler for i in batch] != list(range(8))  # the loader reorders
    torch.manual_seed(0)
    model = lib.BertForSequenceClassification(lib.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3))
    out = lib.predict_classifier(model, loader, torch.device("cpu"), lib.choose_precision("cpu"))
    assert out["y_true"].tolist() == labels
    for i in range(8):  # each row's prediction is that complaint's own
        single = lib.make_loader(lib.ComplaintDataset([texts[i]], [labels[i]], tokenizer, 64), 1,
                                 tokenizer.pad_token_id, shuffle=False)
        alone = lib.predict_classifier(model, single, torch.device("cpu"), lib.choose_precision("cpu"))
        assert torch.allclose(alone["logits"][0], out["logits"][i], atol=1e-5)


def test_mean_pooled_head_reads_the_mean_of_real_tokens(lib):
    torch.manual_seed(0)
    model = lib.BertForMeanPooledClassification(tiny_bert_config(lib, num_labels=3)).eval()
    assert model.bert.pooler is None  # the [CLS] pooler is not part of this head
    ids = torch.randint(5, 1000, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        short = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits
    expected = model.classifier(torch.stack([hidden[0, :4].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.logits[:1], short, atol=1e-5, rtol=1e-5)  # padding changes nothing
    assert out.loss is not None and torch.isfinite(out.loss)


def test_lora_head_follows_the_base_models_training(lib, tmp_path):
    assert lib.trained_pooling(lib.minilm_dir()) == "mean"  # all-MiniLM-L6-v2: a mean-pooling sentence encoder
    assert lib.trained_pooling(tmp_path) == "cls"  # no sentence-transformers pooling config: BERT's [CLS] + pooler
    assert lib.trained_pooling("prajjwal1/bert-tiny") == "cls"
    model, _, origin = lib.load_lora_base(4, allow_downloads=False)
    assert isinstance(model, lib.BertForMeanPooledClassification) and origin.startswith("all-MiniLM-L6-v2")
    model, _, _ = lib.load_lora_base(4, allow_downloads=False, pooling="cls")
    assert type(model) is lib.BertForSequenceClassification


def test_mean_pooled_lora_trains_only_adapters_and_head_and_merges(lib):
    torch.manual_seed(0)
    base = lib.BertForMeanPooledClassification(tiny_bert_config(lib, num_labels=4))
    lora = lib.get_peft_model(base, lib.LoraConfig(task_type=lib.TaskType.SEQ_CLS, **lib.LORA_HPARAMS))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    lora.eval()
    ids, mask = torch.randint(5, 1000, (4, 10)), torch.ones(4, 10, dtype=torch.long)
    with torch.no_grad():
        adapted = lora(input_ids=ids, attention_mask=mask).logits
        merged = copy.deepcopy(lora).merge_and_unload().eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_make_optimizer_warms_up_over_its_fraction_of_the_steps(lib):
    model = torch.nn.Linear(3, 2)
    peaks = {}
    for fraction in (0.0, 0.1, 0.5):
        optimizer, scheduler = lib.make_optimizer(model, lr=1.0, total_steps=20, warmup_fraction=fraction)
        rates = []
        for _ in range(20):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        peaks[fraction] = rates.index(max(rates))  # the step at which warm-up ends
        assert rates[-1] < rates[peaks[fraction]]  # then linear decay
    assert peaks[0.0] == 0 and peaks[0.0] < peaks[0.1] < peaks[0.5] <= 10
