"""Does `full`'s batching and schedule learn at least as well as the seed's batch 8 / lr 1e-4?

A short side-by-side on CPU at a reduced model size: the same data, the same initial weights, and the
same number of target tokens seen (label tokens that are not [PAD]); validation loss is measured with
the notebook's own `evaluate_loss` on the same validation split at 25/50/75/100% of those tokens.

  (a) seed:  random batches of 8 sentences, constant lr 1e-4, no warm-up (the seed's sampling; batches
             are trimmed to their longest item, which changes the speed but not the arithmetic);
  (b) full:  `full`'s recipe scaled down: length-grouped batches of up to --max-tokens padded tokens
             (default `full`'s 2,048: about 5x the padded tokens of a random batch of 8, here as at full's
             seq_len 350), peak lr `full`'s 7e-4 scaled to the reduced width by the paper's own rule (the
             learning rate goes as d_model^-0.5, so 1.4e-3 at d_model 128; --peak-lr overrides it), linear
             warm-up over the same share of all steps as `full`'s (computed on the Bible at its seq_len 350
             and 20 epochs), then cosine decay to 0 at the end of the token budget; Adam's beta2 `full`'s
             0.98, the paper's (--beta2 overrides it; the seed's is PyTorch's 0.999).

Both train as the notebook's `train_model` does: label-smoothed (0.1) cross-entropy, Adam (eps 1e-9),
gradient clipping at 1, dropout 0.1. The default budget is `full`'s horizon, 20 epochs, on a seeded
subset of 4,000 Bible pairs (--seed picks another subset, split, initialisation and batch order).

    python bench/bench_batching.py            # (a) and (b), 20 epochs of 3.5k pairs: about 12 minutes
    python bench/bench_batching.py --max-tokens 2048 4096 --peak-lr 1.4e-3 2.1e-3 --beta2 0.98 0.999
                                              # one (b) run per combination
    python bench/bench_batching.py --epochs 1 --max-pairs 16000 --max-tokens 2048 8192 --peak-lr 7e-4 --beta2 0.999
                                              # the first, shorter comparison's settings (results/batching.txt)
    python bench/bench_batching.py --quick    # seconds: proves the script runs
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402

CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)


def target_tokens(dataset) -> int:
    """Label tokens of one epoch: each target plus its [EOS]."""
    return sum(len(ids) + 1 for ids in dataset.tgt_ids)


def full_warmup_fraction(lib, pairs: list[dict]) -> tuple[float, int, float]:
    """(warm-up share of all steps, steps per epoch, mean padded tokens of a batch of 8) for `full` on these pairs."""
    full = lib.get_config(**lib.TRANSLATION_PROFILES["full"], datasource="bible")
    with tempfile.TemporaryDirectory() as tmp:
        full["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        tok_src, tok_tgt = lib.build_tokenizer(full, pairs, "en"), lib.build_tokenizer(full, pairs, "it")
    kept, *_ = lib.drop_long_pairs(pairs, tok_src, tok_tgt, "en", "it", full["seq_len"])
    n_train = len(kept) - int(len(kept) * full["val_fraction"])
    dataset = lib.BilingualDataset(kept[:n_train], tok_src, tok_tgt, "en", "it", full["seq_len"])
    sampler = lib.LengthGroupedBatchSampler(dataset.lengths, full["batch_size"], max_tokens=full["max_tokens"])
    steps_per_epoch = len(sampler)
    return (min(1.0, full["warmup_steps"] / (full["num_epochs"] * steps_per_epoch)), steps_per_epoch,
            mean_batch8_tokens(dataset))


def mean_batch8_tokens(dataset, seed: int = 0) -> float:
    """Mean padded tokens (source + target side, trimmed to the longest item) of random batches of 8."""
    lengths = dataset.lengths
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i : i + 8] for i in range(0, len(order) - 7, 8)]
    return sum(8 * max(lengths[i] for i in b) for b in batches) / len(batches)


class SmoothedAndPlainCE(torch.nn.CrossEntropyLoss):
    """The training loss (label-smoothed); while `tracking`, it also sums the plain cross-entropy it sees."""

    tracking, plain_sum, plain_count = False, 0.0, 0

    def forward(self, logits, labels):
        if self.tracking:
            keep = labels != self.ignore_index
            self.plain_sum += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            self.plain_count += int(keep.sum())
        return super().forward(logits, labels)


def validation_losses(lib, model, loader, loss_fn: SmoothedAndPlainCE) -> tuple[float, float]:
    """(label-smoothed loss as the notebook reports it, plain cross-entropy) per validation target token."""
    loss_fn.tracking, loss_fn.plain_sum, loss_fn.plain_count = True, 0.0, 0
    try:
        smoothed = lib.evaluate_loss(model, loader, loss_fn, "cpu", contextlib.nullcontext)
    finally:
        loss_fn.tracking = False
    return smoothed, loss_fn.plain_sum / max(loss_fn.plain_count, 1)


def train(lib, name, model, loader, loss_fn, val_loader, lr, warmup, decay, budget, total_steps, log, beta2=0.999):
    """Train until `budget` target tokens; val loss at each checkpoint. Returns one row per checkpoint."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-9, betas=(0.9, beta2))
    thresholds = [math.ceil(f * budget) for f in CHECKPOINTS]
    rows, step, seen, train_seconds, loss_sum, window_seen = [], 0, 0, 0.0, 0.0, 0
    epoch = 0
    while seen < budget:
        if hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            started = time.perf_counter()
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = lr * lib.learning_rate_factor(step, warmup, total_steps, decay)
            loss, n = lib.compute_loss(model, batch, loss_fn, "cpu")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - started
            step, seen, loss_sum, window_seen = step + 1, seen + n, loss_sum + loss.item() * n, window_seen + n
            while thresholds and seen >= thresholds[0]:
                thresholds.pop(0)
                val, val_ce = validation_losses(lib, model, val_loader, loss_fn)
                rows.append({"share": seen / budget, "steps": step, "tokens": seen, "seconds": train_seconds,
                             "lr": optimizer.param_groups[0]["lr"], "val_loss": val, "val_ce": val_ce,
                             "train_loss": loss_sum / max(window_seen, 1)})
                loss_sum, window_seen = 0.0, 0
                log(f"  {name:5s} {seen / budget:5.0%} of tokens: step {step:6,d}, {seen:9,d} target tokens, "
                    f"lr {rows[-1]['lr']:.2e}, {train_seconds:6.1f} s | train loss {rows[-1]['train_loss']:.3f} (since the last "
                    f"checkpoint), val loss {val:.3f} "
                    f"(plain CE {val_ce:.3f}, ppl {math.exp(val_ce):6.1f})")
            if seen >= budget:
                break
        epoch += 1
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--max-pairs", type=int, default=4000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=20.0,
                        help="target tokens seen, in epochs of the training split (default: full's 20)")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=None,
                        help="(b): padded tokens per batch, one run each (default: full's)")
    parser.add_argument("--peak-lr", type=float, nargs="+", default=None,
                        help="(b): peak lr, one run per value and --max-tokens (default: full's)")
    parser.add_argument("--beta2", type=float, nargs="+", default=None,
                        help="(b): Adam's beta2, one run per value (default: full's; the seed's is 0.999)")
    parser.add_argument("--decay", choices=("cosine", "linear", "none"), default="cosine",
                        help="(b): the decay after warm-up")
    parser.add_argument("--skip-seed", action="store_true", help="exploration only: no (a) run, no verdict")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42,
                        help="the data subset, split, initial weights and batch order (default: the notebook's)")
    parser.add_argument("--quick", action="store_true", help="seconds-long run: 1,200 pairs, a tiny model")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_pairs, args.seq_len, args.epochs, args.max_tokens = 1000, 32, 0.5, [512]
        args.d_model, args.layers, args.heads, args.d_ff = 32, 1, 2, 64
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)

    lib = load_lib_cells(args.notebook)
    full = lib.TRANSLATION_PROFILES["full"]
    pairs, _ = lib.drop_empty_pairs(lib.load_bible_pairs("en", "it"), "en", "it")
    if args.quick:
        pairs = pairs[:2000]  # the warm-up share is computed on a slice too: seconds, not the whole Bible
    warmup_share, full_steps_per_epoch, full_batch8 = full_warmup_fraction(lib, pairs)
    config = lib.get_config(datasource="bible", max_pairs=args.max_pairs, seq_len=args.seq_len, seed=args.seed,
                            d_model=args.d_model, N=args.layers, h=args.heads, d_ff=args.d_ff, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        config["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        train_loader, val_loader, tok_src, tok_tgt = lib.get_ds(config, allow_downloads=False)
    train_ds, val_ds = train_loader.dataset, val_loader.dataset
    val_loss_loader = lib.length_grouped_loader(val_ds, config["eval_batch_size"], shuffle=False)
    epoch_tokens = target_tokens(train_ds)
    budget = int(args.epochs * epoch_tokens)
    full_config = lib.get_config(**full)
    peak_lrs = args.peak_lr or [full["lr"] * math.sqrt(full_config["d_model"] / args.d_model)]  # lr ~ d_model^-0.5
    args.max_tokens = args.max_tokens or [full_config["max_tokens"]]
    args.beta2 = args.beta2 or [full_config["adam_betas"][1]]
    batch8 = mean_batch8_tokens(train_ds)

    lib.set_seed(config["seed"])
    model = lib.get_model(config, tok_src.get_vocab_size(), tok_tgt.get_vocab_size())
    init = copy.deepcopy(model.state_dict())
    loss_fn = SmoothedAndPlainCE(ignore_index=tok_src.token_to_id("[PAD]"), label_smoothing=config["label_smoothing"])
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Bible KJV->Diodati, {len(train_ds):,} training "
        f"/ {len(val_ds):,} validation pairs (max_pairs {args.max_pairs}, seq_len {args.seq_len}, seed {args.seed}); vocab "
        f"{tok_src.get_vocab_size():,} en / {tok_tgt.get_vocab_size():,} it")
    log(f"model d_model {args.d_model}, N {args.layers}, h {args.heads}, d_ff {args.d_ff}, dropout 0.1, label "
        f"smoothing 0.1: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, the same initial "
        "weights and dropout seed for every run")
    log(f"`full` on the whole Bible (seq_len 350, 20 epochs): {full_steps_per_epoch} steps/epoch of <= "
        f"{full['max_tokens']} padded tokens = {full['max_tokens'] / full_batch8:.0f}x a random batch of 8 "
        f"({full_batch8:.0f} padded tokens); warm-up {full['warmup_steps']} of {20 * full_steps_per_epoch} steps "
        f"= {warmup_share:.1%}")
    log(f"here: a random batch of 8 = {batch8:.0f} padded tokens; budget {budget:,} target tokens = "
        f"{args.epochs:g} epoch(s) of {epoch_tokens:,}")

    runs = [("seed", DataLoader(train_ds, batch_size=8, shuffle=True, collate_fn=lib.trim_to_longest,
                                generator=torch.Generator().manual_seed(config["seed"])), 1e-4, "none", 0.999)]
    if args.skip_seed:
        runs.clear()
        log("(a) seed: skipped (--skip-seed)")
    else:
        log(f"(a) seed: random batches of 8 sentences, lr 1e-4 constant, no warm-up ({len(runs[0][1]):,} steps/epoch)")
    for max_tokens in args.max_tokens:
        loader = lib.length_grouped_loader(train_ds, full["batch_size"], shuffle=True, seed=config["seed"],
                                           max_tokens=max_tokens)
        for peak_lr in peak_lrs:
            for beta2 in args.beta2:
                name = (f"full@{max_tokens}" + (f",lr{peak_lr:g}" if len(peak_lrs) > 1 else "")
                        + (f",b2={beta2:g}" if len(args.beta2) > 1 else ""))
                runs.append((name, loader, peak_lr, args.decay, beta2))
                log(f"(b) {name}: length-grouped batches of <= {max_tokens} padded tokens ({max_tokens / batch8:.0f}x "
                    f"a batch of 8), peak lr {peak_lr:g}, warm-up {warmup_share:.1%} of the steps, "
                    + ("then constant" if args.decay == "none" else f"{args.decay} to 0")
                    + f", Adam beta2 {beta2:g} ({len(loader):,} steps/epoch)")

    warm = copy.deepcopy(model)  # one untimed step first: thread pools and allocators start up outside the timings
    lib.compute_loss(warm, next(iter(runs[-1][1])), loss_fn, "cpu")[0].backward()
    del warm

    results = {}
    for name, loader, lr, decay, beta2 in runs:
        total_steps = math.ceil(args.epochs * len(loader))  # the schedule ends where the token budget does
        warmup = 0 if name == "seed" else max(1, round(warmup_share * total_steps))
        model.load_state_dict(init)
        torch.manual_seed(config["seed"])  # the same dropout stream
        started = time.perf_counter()
        log(f"{name}: {total_steps:,} steps planned" + (f", warm-up {warmup}" if warmup else ""))
        results[name] = train(lib, name, model, loader, loss_fn, val_loss_loader, lr, warmup, decay, budget,
                              total_steps, log, beta2)
        log(f"  {name}: {time.perf_counter() - started:.0f} s wall including evaluations")

    log("")
    log("validation loss (label-smoothed, as the notebook reports it) / plain cross-entropy, at equal target tokens")
    names = list(results)
    log(f"{'tokens':>8} | " + " | ".join(f"{n:^31}" for n in names))
    log(f"{'seen':>8} | " + " | ".join(f"{'steps':>6} {'train s':>7} {'val loss':>8} {'CE':>6}" for _ in names))
    for i, share in enumerate(CHECKPOINTS):
        cells = [results[n][i] for n in names]
        log(f"{share:>8.0%} | " + " | ".join(
            f"{c['steps']:6,d} {c['seconds']:7.1f} {c['val_loss']:8.3f} {c['val_ce']:6.3f}" for c in cells))
    if "seed" not in results:
        return results
    seed_end = results["seed"][-1]
    seed_best = min(row["val_loss"] for row in results["seed"])
    for name in names[1:]:
        end = results[name][-1]
        best = min(row["val_loss"] for row in results[name])
        verdict = "at least as well as" if end["val_loss"] <= seed_end["val_loss"] else "WORSE than"
        log(f"{name} learns {verdict} the seed at equal target tokens ({end['tokens']:,} vs {seed_end['tokens']:,}): "
            f"val loss {end['val_loss']:.3f} vs {seed_end['val_loss']:.3f} ({end['val_loss'] - seed_end['val_loss']:+.3f}), "
            f"{end['steps']:,} vs {seed_end['steps']:,} steps, {end['seconds']:.0f} vs {seed_end['seconds']:.0f} s "
            f"of training; best of the checkpoints {best:.3f} vs {seed_best:.3f} ({best - seed_best:+.3f})")
    return results


if __name__ == "__main__":
    main()
