"""Examples per second of a training step (forward + backward) of Section 2's small BERT, with every
complaint padded to max_len versus padded per batch to its longest item (with and without length
bucketing). One process, the same complaints, the same model; uses the notebook's own lib cells.

    python bench/bench_dynamic_padding.py [--n 256] [--max-len 512] [--batch-size 32] [--threads 2]

Reads the notebook named by A5_NOTEBOOK (default assignment5.ipynb) and the complaints file the
notebook would use (A5_COMPLAINTS_CSV, else the copy committed under data/).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
os.chdir(REPO)  # the lib cells resolve data paths from the working directory

import torch  # noqa: E402
from nblib import load_lib_cells  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


def examples_per_second(model, loader, repeats: int) -> tuple[float, float]:
    """(examples/s, mean padded length) over `repeats` passes, after one warm-up batch."""
    model.train()
    warm = next(iter(loader))
    model(**warm).loss.backward()
    model.zero_grad(set_to_none=True)
    seen, padded_tokens, started = 0, 0, time.perf_counter()
    for _ in range(repeats):
        for batch in loader:
            model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)
            seen += batch["labels"].size(0)
            padded_tokens += batch["input_ids"].numel()
    return seen / (time.perf_counter() - started), padded_tokens / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="complaints to run through the model")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lib = load_lib_cells(Path(os.environ.get("A5_NOTEBOOK", REPO / "assignment5.ipynb")))
    csv = os.environ.get("A5_COMPLAINTS_CSV") or None
    path = lib.resolve_run_sources(csv, hub_online=False, drive_online=False)["complaints"].path
    origin = lib.shown_path(path)
    df = lib.sample_complaints(lib.load_complaints(path), args.n, seed=0)
    texts = df["Consumer complaint narrative"].map(lib.clean_complaint_text).tolist()
    labels = [0] * len(texts)

    tokenizer = lib.BertTokenizer.from_pretrained(str(lib.minilm_dir()))
    torch.manual_seed(0)
    model = lib.BertForSequenceClassification(lib.BertConfig(
        vocab_size=len(tokenizer), num_labels=7, max_position_embeddings=args.max_len, hidden_size=128,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=512))
    collate = partial(lib.pad_to_longest, pad_token_id=tokenizer.pad_token_id)

    fixed = lib.ComplaintDataset(texts, labels, tokenizer, max_len=args.max_len, pad_to_max_len=True)
    dynamic = lib.ComplaintDataset(texts, labels, tokenizer, max_len=args.max_len)
    loaders = {
        f"pad every item to max_len={args.max_len}": DataLoader(fixed, batch_size=args.batch_size, collate_fn=collate),
        "dynamic: pad to longest in batch (random batches)": DataLoader(dynamic, batch_size=args.batch_size,
                                                                       collate_fn=collate),
        "dynamic + length-bucketed batches (the notebook's loader)": lib.make_loader(
            dynamic, args.batch_size, tokenizer.pad_token_id, shuffle=True, seed=0),
    }
    print(f"data: {origin}; {len(texts)} complaints, mean {sum(dynamic.lengths) / len(texts):.0f} real tokens "
          f"(max_len {args.max_len}); model: small BERT, {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"batch {args.batch_size}; {torch.get_num_threads()} threads; forward + backward")
    rates = {}
    for name, loader in loaders.items():
        rates[name], mean_len = examples_per_second(model, loader, args.repeats)
        print(f"{name:60s} {rates[name]:8.1f} examples/s  (mean padded length {mean_len:.0f})")
    baseline = rates[next(iter(rates))]
    for name in list(rates)[1:]:
        print(f"speed-up of '{name}' over fixed padding: {rates[name] / baseline:.1f}x")


if __name__ == "__main__":
    main()
