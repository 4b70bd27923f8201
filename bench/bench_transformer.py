"""Seed-literal vs our Section 1 pipeline, same data and model config, one process.

Training: useful (non-[PAD]) target tokens per second.
  seed: every item padded to seq_len=350, plain shuffled DataLoader, textbook attention (weights kept);
  ours: length-grouped batches trimmed to their longest item, fused scaled_dot_product_attention (the opt-in
        `fused_attention` switch).
Decoding: milliseconds per generated token.
  seed: `greedy_decode`, one sentence at a time, the source padded to seq_len, the whole prefix
        re-run through the decoder at every step;
  ours: `beam_search_decode_batch` with one beam, a batch of sentences with the key/value cache, sources trimmed.

    python bench/bench_transformer.py            # paper config: d_model 512, N 6, h 8, batch 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402


class ItemsOnly(torch.utils.data.Dataset):
    """The seed's loading: items padded to seq_len one at a time, collated by the default collate."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[i]


def set_textbook_attention(model, on: bool) -> None:
    for module in model.modules():
        if hasattr(module, "store_attention_scores"):
            module.store_attention_scores = on  # off: the fused kernel (the model is built with fused_attention)


def train_tokens_per_second(lib, model, loader, steps: int, textbook: bool) -> float:
    set_textbook_attention(model, textbook)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=1, label_smoothing=0.1)
    batches = iter(loader)
    tokens, elapsed = 0, 0.0
    for step in range(steps + 1):  # the first step warms up allocators and is not timed
        batch = next(batches)
        started = time.perf_counter()
        loss = lib.compute_loss(model, batch, loss_fn, "cpu")
        n_tokens = int((batch["label"] != 1).sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            tokens, elapsed = tokens + n_tokens, elapsed + time.perf_counter() - started
    return tokens / elapsed


@torch.no_grad()
def seed_decode_ms_per_token(lib, model, dataset, tok_src, tok_tgt, n_sentences: int, max_len: int) -> float:
    set_textbook_attention(model, True)
    model.eval()
    generated, started = 0, time.perf_counter()
    for i in range(n_sentences):
        item = dataset[i]
        source, mask = item["encoder_input"].unsqueeze(0), item["encoder_mask"].unsqueeze(0)
        out = lib.greedy_decode(model, source, mask, tok_src, tok_tgt, max_len, "cpu")
        generated += len(out) - 1
    return 1000 * (time.perf_counter() - started) / generated


@torch.no_grad()
def our_decode_ms_per_token(lib, model, dataset, tok_tgt, n_sentences: int, max_len: int) -> float:
    set_textbook_attention(model, False)
    model.eval()
    indices = [dataset.indices[i] for i in range(n_sentences)]  # a Subset of the BilingualBatches
    source = dataset.dataset.__getitems__(indices)["encoder_input"]
    sos, eos, pad = lib.special_ids(tok_tgt)
    started = time.perf_counter()
    out = lib.beam_search_decode_batch(model, source, lib.batch_masks(source, None, pad), sos, eos, pad, max_len,
                                       beam_size=1)
    elapsed = time.perf_counter() - started
    return 1000 * elapsed / int((out[:, 1:] != pad).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--seed-steps", type=int, default=3, help="timed training steps, seed path")
    parser.add_argument("--our-steps", type=int, default=12, help="timed training steps, our path")
    parser.add_argument("--seed-sentences", type=int, default=3, help="sentences decoded one by one")
    parser.add_argument("--our-sentences", type=int, default=64, help="sentences decoded as one batch")
    parser.add_argument("--decode-len", type=int, default=40, help="max_len for both decoders (tokens incl. [SOS])")
    args = parser.parse_args()

    lib = load_lib_cells(args.notebook)
    config = lib.get_config(datasource="bible", fused_attention=True)  # paper sizes: d_model 512, N 6, h 8, d_ff 2048
    # (batch 8, seq_len 350); FusedMultiHeadAttentionBlock runs the seed's attention while weights are kept
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        pairs = [p for p in lib.load_translation_pairs(config) if all(t.strip() for t in p["translation"].values())]
        tok_src, tok_tgt = lib.build_tokenizer(config, pairs, "en"), lib.build_tokenizer(config, pairs, "it")
    pairs, *_ = lib.drop_long_pairs(pairs, tok_src, tok_tgt, "en", "it", config["seq_len"])
    dataset = lib.BilingualBatches(pairs, tok_src, tok_tgt, "en", "it", config["seq_len"])
    model = lib.get_model(config, tok_src.get_vocab_size(), tok_tgt.get_vocab_size())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(dataset):,} KJV->Diodati pairs; "
          f"model d_model={config['d_model']} N={config['N']} h={config['h']} d_ff={config['d_ff']} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), batch {config['batch_size']}")

    generator = torch.Generator().manual_seed(0)
    seed_loader = DataLoader(ItemsOnly(dataset), batch_size=config["batch_size"], shuffle=True, generator=generator)
    our_loader = lib.pair_loader(dataset, config["batch_size"], shuffle=True, seed=0)
    seed_tps = train_tokens_per_second(lib, model, seed_loader, args.seed_steps, textbook=True)
    our_tps = train_tokens_per_second(lib, model, our_loader, args.our_steps, textbook=False)

    # Decode the same (shuffled) validation-like sentences with both decoders.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1)).tolist()
    sample = torch.utils.data.Subset(dataset, order[: max(args.seed_sentences, args.our_sentences)])
    seed_ms = seed_decode_ms_per_token(lib, model, sample, tok_src, tok_tgt, args.seed_sentences, args.decode_len)
    our_ms = our_decode_ms_per_token(lib, model, sample, tok_tgt, args.our_sentences, args.decode_len)

    print(f"{'':28}{'seed-literal':>14}{'ours':>14}{'ratio':>10}")
    print(f"{'train: target tokens/s':28}{seed_tps:14.1f}{our_tps:14.1f}{our_tps / seed_tps:9.1f}x")
    print(f"{'decode: ms / generated token':28}{seed_ms:14.2f}{our_ms:14.2f}{seed_ms / our_ms:9.1f}x")


if __name__ == "__main__":
    main()
