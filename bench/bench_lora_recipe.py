"""LoRA's recipe for Section 2, chosen on the validation split: head, learning rate, rank, LoRA+, epochs, warm-up,
max_len; and the cause of the r=16 collapse.

Stage 1 compares configurations at one small budget (a stratified subset of the `cpu` profile's training
complaints, one epoch): the classification head ([CLS] + pooler, or the mean of the token vectors, which is
how all-MiniLM-L6-v2 was trained), the learning rate, the rank, LoRA+ (peft's create_loraplus_optimizer: B
learns `loraplus_lr_ratio` times faster than A), and a test of why r=16 collapsed to one class in the earlier
sweep (bench/results/lora_sweep.txt): the same configuration with the pooler's `dense` left without adapter.
Stage 2 trains the best stage-1 configuration on the whole training split for --final-epochs epochs and
prints the validation macro-F1 after each, which says how many epochs the notebook's `cpu` run needs.

Everything runs through the notebook's own code (prepare_complaints, split_complaints, ComplaintDataset,
make_loader, load_lora_base, make_optimizer, train_classifier) with the class-weighted loss, and is scored by
macro-F1 on the whole validation split (its best epoch); the test split is never used.

    python bench/bench_lora_recipe.py [--train-size 1200] [--final-epochs 2] [--log FILE]
    python bench/bench_lora_recipe.py --full-epoch SET [--epochs 2] [--max-len 128]   # whole training split
    python bench/bench_lora_recipe.py --collapse [causes|scale]   # why r=16 collapsed with the unweighted loss
    python bench/bench_lora_recipe.py --quick       # tiny sizes: proves it runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_lora_sweep import PROFILE, SEED, prepare_split, stratified_subset  # noqa: E402
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402

ENCODER_TARGETS = r".*encoder.*\.(query|key|value|dense)$"  # every layer's, but not the pooler's dense
CENTRE = {"pooling": "mean", "r": 8, "lr": 2e-3, "targets": "q,k,v,dense", "loraplus": None, "warmup": 0.1,
          "loss": "weighted"}
CONFIGS = [
    {**CENTRE, "pooling": "cls"},  # the notebook's recipe before this benchmark
    {**CENTRE, "pooling": "cls", "r": 16},  # the earlier sweep's collapse ...
    {**CENTRE, "pooling": "cls", "r": 16, "targets": "encoder only"},  # ... with the pooler left as pretrained
    CENTRE,
    {**CENTRE, "r": 16},
    {**CENTRE, "lr": 1e-3},
    {**CENTRE, "lr": 5e-3},
    {**CENTRE, "loraplus": 16},
]
# --full-epoch SET: one epoch on the whole training split, which is what the `cpu` profile can afford;
# (configuration, batch size) pairs. Each set is one run; two sets can run side by side with --threads 1.
FULL_EPOCH = [(CENTRE, 16), ({**CENTRE, "lr": 4e-3}, 16), (CENTRE, 8)]
FULL_EPOCH_SETS = {
    "batch": FULL_EPOCH,  # batch size and learning rate
    "loraplus-a": [({**CENTRE, "loraplus": 4}, 8)],  # LoRA+: B learns 4x faster than A, at the notebook's lr
    "loraplus-b": [({**CENTRE, "lr": 1e-3, "loraplus": 16}, 8)],  # LoRA+ at the paper's ratio, half the lr
    "lr1e-3": [({**CENTRE, "lr": 1e-3}, 8)],  # B learning faster hurt (loraplus-a): both learning slower
    "notebook": [(CENTRE, 8)],  # the notebook's recipe; with --epochs 2: does a second epoch pay for its time?
    "warmup": [({**CENTRE, "warmup": 0.0}, 8), ({**CENTRE, "warmup": 0.25}, 8)],  # the notebook warms up for 10%
}
# --collapse: the earlier sweep's r=16 collapse (lora_sweep.txt: unweighted loss, [CLS] + pooler, lr 2e-3) on the
# stage-1 subset, one epoch, with one factor changed at a time; each run also reports its most predicted class's share.
COLLAPSE = [
    {**CENTRE, "pooling": "cls", "r": 16, "loss": "plain"},  # the sweep's configuration
    {**CENTRE, "pooling": "cls", "r": 8, "loss": "plain"},  # the rank alone
    {**CENTRE, "pooling": "cls", "r": 16, "loss": "plain", "targets": "encoder only"},  # the pooler without adapter
    {**CENTRE, "pooling": "cls", "r": 16, "loss": "plain", "lr": 1e-3},  # the learning rate alone
    {**CENTRE, "pooling": "cls", "r": 16},  # the class-weighted loss alone
]
# --collapse scale: with lora_alpha = 2r, Adam moves each of the r rank-one terms of B·A by about lr a step, so the
# update of W grows with r x lr. If that product decides the collapse, r=8 at 4e-3 and r=32 at 1e-3 collapse like
# r=16 at 2e-3, and r=32 at 5e-4 does not.
COLLAPSE_SCALE = [
    {**CENTRE, "pooling": "cls", "r": 8, "loss": "plain", "lr": 4e-3},
    {**CENTRE, "pooling": "cls", "r": 32, "loss": "plain", "lr": 1e-3},
    {**CENTRE, "pooling": "cls", "r": 32, "loss": "plain", "lr": 5e-4},
]
COLLAPSE_SETS = {"causes": COLLAPSE, "scale": COLLAPSE_SCALE}
QUICK = {"train_size": 32, "val_size": 64, "max_len": 32}


def target_modules(targets: str):
    return ENCODER_TARGETS if targets == "encoder only" else ["query", "key", "value", "dense"]


def describe(config: dict) -> str:
    extras = []
    if config["loraplus"]:
        extras.append(f"LoRA+ x{config['loraplus']}")
    if config["warmup"] != CENTRE["warmup"]:
        extras.append(f"warm-up {config['warmup']:.0%}")
    if config["loss"] != CENTRE["loss"]:
        extras.append(f"{config['loss']} loss")
    return " ".join([f"{config['pooling']} r={config['r']} lr={config['lr']:g} {config['targets']}", *extras])


def run_config(lib, config: dict, loaders: tuple, num_labels: int, epochs: int, class_weights) -> dict:
    """One configuration from the same seeded start; scored by its best validation epoch."""
    train_loader, val_loader = loaders
    lib.set_seed(SEED)
    base, _, _ = lib.load_lora_base(num_labels, allow_downloads=False, pooling=config["pooling"])
    lora_config = lib.LoraConfig(task_type=lib.TaskType.SEQ_CLS, r=config["r"], lora_alpha=2 * config["r"],
                                 lora_dropout=0.1, target_modules=target_modules(config["targets"]))
    with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        model = lib.get_peft_model(base, lora_config)
    trainable, _ = lib.model_parameter_counts(model)
    lib.set_seed(SEED)
    total_steps = epochs * len(train_loader)
    optimizer, scheduler = lib.make_optimizer(model, config["lr"], total_steps, warmup_fraction=config["warmup"])
    if config["loraplus"]:  # peft's optimizer with its own learning rate for B, on the notebook's schedule
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=config["lr"], weight_decay=0.01,
                                              loraplus_lr_ratio=config["loraplus"])
        scheduler = lib.warmup_schedule(optimizer, int(config["warmup"] * total_steps), total_steps, "linear")
    weights = class_weights if config["loss"] == "weighted" else None
    history = train(lib, model, train_loader, val_loader, optimizer, scheduler, epochs, describe(config), weights)
    best = max(history, key=lambda h: h["val_f1"])
    return {**config, "trainable": trainable, "train_s": sum(h["epoch_time_s"] for h in history),
            "best_epoch": best["epoch"], "accuracy": best["val_acc"], "f1_macro": best["val_f1"],
            "val_f1_by_epoch": [round(h["val_f1"], 4) for h in history],
            "top_class_share": top_class_share(lib, model, val_loader)}


def top_class_share(lib, model, val_loader) -> float:
    """The share of validation complaints given the most predicted class: 1.0 is a collapse to one class."""
    predictions = lib.predict_classifier(model, val_loader, torch.device("cpu"), lib.choose_precision("cpu", "fp32"))["y_pred"]
    return round(float(np.bincount(predictions).max() / len(predictions)), 3)


def train(lib, model, train_loader, val_loader, optimizer, scheduler, epochs, name, class_weights) -> list[dict]:
    """lib.train_classifier with the class-weighted criterion the notebook uses."""
    return lib.train_classifier(model, train_loader, val_loader, optimizer, scheduler, epochs, torch.device("cpu"),
                                lib.choose_precision("cpu", "fp32"), show_progress=False, name=name,
                                criterion=torch.nn.CrossEntropyLoss(weight=class_weights))


def report(header: list[str], table: list[str], rows: list[dict], log: Path | None) -> list[dict]:
    """Print the table; write the header, the table and each row as JSON to the log when one is given."""
    for line in table:
        print(line, flush=True)
    if log:
        log.write_text("\n".join(header + table + [json.dumps(r) for r in rows]) + "\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1200, help="stage 1: stratified training subset")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--final-epochs", type=int, default=2, help="stage 2 epochs on the whole training split")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full-epoch", nargs="?", const="batch", default=None, choices=list(FULL_EPOCH_SETS),
                        help="instead of stages 1-2: that set's configurations (FULL_EPOCH_SETS), one epoch on the whole "
                             "training split")
    parser.add_argument("--epochs", type=int, default=1, help="--full-epoch runs: epochs on the whole training split "
                        "(the schedule spans them all; each epoch's validation macro-F1 is logged)")
    parser.add_argument("--collapse", nargs="?", const="causes", default=None, choices=list(COLLAPSE_SETS),
                        help="instead of stages 1-2: the COLLAPSE (causes) or COLLAPSE_SCALE (scale) configurations")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--notebook", type=Path, default=Path(os.environ.get("A5_NOTEBOOK", NOTEBOOK)))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_size, args.max_len, args.final_epochs = QUICK["train_size"], QUICK["max_len"], 1
    os.chdir(REPO)
    lib = load_lib_cells(args.notebook)
    lib.transformers.logging.set_verbosity_error()
    lib.transformers.logging.disable_progress_bar()
    train_df, val_df, class_names = prepare_split(lib)
    if args.quick:
        val_df = stratified_subset(val_df, QUICK["val_size"])
    class_weights = lib.balanced_class_weights(train_df["label"], len(class_names))
    tokenizer = lib.BertTokenizer.from_pretrained(str(lib.minilm_dir()))

    def loaders(frame, batch_size=args.batch_size):
        datasets = [lib.ComplaintDataset(f["text"], f["label"], tokenizer, args.max_len) for f in (frame, val_df)]
        return (lib.make_loader(datasets[0], batch_size, tokenizer.pad_token_id, shuffle=True, seed=SEED),
                lib.make_loader(datasets[1], 32, tokenizer.pad_token_id, shuffle=False))

    lines = [f"# bench_lora_recipe.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; profile {PROFILE}: {len(train_df):,} training / "
             f"{len(val_df):,} validation complaints, {len(class_names)} classes; class-weighted loss; "
             f"max_len {args.max_len}, batch {args.batch_size} (--full-epoch: each run's own), lora_alpha = 2r, dropout 0.1; all-MiniLM-L6-v2"]
    for line in lines:
        print(line, flush=True)
    subset = stratified_subset(train_df, args.train_size)
    if args.full_epoch:
        frame = subset if args.quick else train_df
        rows = [{**run_config(lib, config, loaders(frame, batch), len(class_names), args.epochs, class_weights),
                 "batch": batch}
                for config, batch in FULL_EPOCH_SETS[args.full_epoch]]
        table = [f"{args.epochs} epoch(s) on all {len(frame):,} training complaints; scores of the best epoch",
                 f"{'configuration':<36} {'batch':>5} {'train s':>8} {'accuracy':>8} {'macro-F1':>8}  by epoch"]
        table += [f"{describe(r):<36} {r['batch']:>5} {r['train_s']:>8.1f} {r['accuracy']:>8.3f} {r['f1_macro']:>8.3f}"
                  f"  {r['val_f1_by_epoch']}"
                  for r in rows]
        return report(lines, table, rows, args.log)
    if args.collapse:
        rows = [run_config(lib, c, loaders(subset), len(class_names), 1, class_weights)
                for c in COLLAPSE_SETS[args.collapse]]
        table = [f"{len(subset):,} training complaints, 1 epoch, batch {args.batch_size}",
                 f"{'configuration':<50} {'accuracy':>8} {'macro-F1':>8} {'top class':>9}"]
        table += [f"{describe(r):<50} {r['accuracy']:>8.3f} {r['f1_macro']:>8.3f} {r['top_class_share']:>9.1%}"
                  for r in rows]
        return report(lines, table, rows, args.log)
    stage1 = [run_config(lib, c, loaders(subset), len(class_names), 1, class_weights) for c in CONFIGS]
    best = max(stage1, key=lambda row: row["f1_macro"])
    stage2_df = subset if args.quick else train_df
    stage2 = run_config(lib, {k: best[k] for k in CENTRE}, loaders(stage2_df), len(class_names), args.final_epochs,
                        class_weights)
    table = [f"stage 1: {len(subset):,} training complaints, 1 epoch",
             f"{'configuration':<36} {'trainable':>10} {'train s':>8} {'accuracy':>8} {'macro-F1':>8}"]
    table += [f"{describe(r):<36} {r['trainable']:>10,} {r['train_s']:>8.1f} {r['accuracy']:>8.3f} {r['f1_macro']:>8.3f}"
              for r in stage1]
    table += [f"stage 2: {describe(stage2)} on all {len(stage2_df):,} training complaints, {args.final_epochs} epochs: "
              f"validation macro-F1 by epoch {stage2['val_f1_by_epoch']}, {stage2['train_s']:.0f} s"]
    return report(lines, table, [*stage1, stage2], args.log)


if __name__ == "__main__":
    main()
