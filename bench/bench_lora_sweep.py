"""A measured sweep of LoRA's rank, target modules and learning rate for Section 2 (the `cpu` profile's split).

One factor at a time around the centre r=16 / query,key,value,dense / lr 2e-3 (7 configurations, not the
27 of the full grid): r in {8, 16, 32} (lora_alpha = 2r, so alpha/r stays 2; dropout 0.1), target modules in
{query+value, query+key+value, query+key+value+dense} and learning rate in {1e-3, 2e-3, 5e-3}. Every
configuration uses the notebook's own code: load_lora_base (offline: all-MiniLM-L6-v2), LoraConfig,
get_peft_model, make_optimizer (AdamW, linear warmup/decay), train_classifier and make_loader, and is scored
by macro-F1 on the whole validation split of the `cpu` profile (its best epoch); the test split is never used.

The budget is reduced so the sweep fits in about 12 minutes on 2 cores: a stratified subset of the
training complaints (--train-size), max_len 128, 1 epoch, batch 16, seed 42 for everything. The
ranking, not the absolute score, is what the sweep measures; the notebook trains the winner longer.

    python bench/bench_lora_sweep.py                  # the sweep (about 12 min on 2 cores)
    python bench/bench_lora_sweep.py --train-size 800 --epochs 1
    python bench/bench_lora_sweep.py --quick          # tiny sizes, seconds: proves it runs

Reads the notebook named by A5_NOTEBOOK (default assignment5.ipynb) and data/cfpb_complaints_narratives.csv.gz
and splits it with the notebook's own prepare_complaints and split_complaints. Writes nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from nblib import load_lib_cells  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

SEED = 42
PROFILE = "cpu"
TARGETS = {
    "q,v": ("query", "value"),
    "q,k,v": ("query", "key", "value"),
    "q,k,v,dense": ("query", "key", "value", "dense"),
}
RANKS = (8, 16, 32)
LEARNING_RATES = (1e-3, 2e-3, 5e-3)
CENTRE = {"r": 16, "targets": "q,k,v,dense", "lr": 2e-3}
LORA_DROPOUT = 0.1
QUICK = {"train_size": 32, "test_size": 64, "max_len": 32, "batch_size": 16, "epochs": 1}


def sweep_configs() -> list[dict]:
    """The centre first, then one factor changed at a time: rank, then target modules, then learning rate."""
    configs = [dict(CENTRE)]
    configs += [{**CENTRE, "r": r} for r in RANKS if r != CENTRE["r"]]
    configs += [{**CENTRE, "targets": t} for t in TARGETS if t != CENTRE["targets"]]
    configs += [{**CENTRE, "lr": lr} for lr in LEARNING_RATES if lr != CENTRE["lr"]]
    return configs


def prepare_split(lib: types.ModuleType, path: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The notebook's own data preparation for the `cpu` profile (prepare_complaints, split_complaints):
    (train_df, val_df, class_names). The test split is never touched."""
    prepared = lib.prepare_complaints(lib.load_complaints(path or lib.EMBEDDED_COMPLAINTS),
                                      lib.CLASSIFICATION_PROFILES[PROFILE]["sample_size"], SEED)
    train_df, val_df, _, _ = lib.split_complaints(prepared["clean"], lib.TEST_SIZE, lib.VAL_SIZE, SEED)
    return train_df, val_df, prepared["class_names"]


def stratified_subset(df: pd.DataFrame, n: int | None, seed: int = SEED) -> pd.DataFrame:
    """n rows stratified by label, as the notebook draws LoRA's training subset (all rows when n is None or >= len)."""
    if n is None or n >= len(df):
        return df
    subset, _ = train_test_split(df, train_size=n, random_state=seed, stratify=df["label"])
    return subset.reset_index(drop=True)


def run_config(lib: types.ModuleType, config: dict, train_loader, val_loader, class_names: list[str],
               epochs: int) -> dict:
    """Train one LoRA configuration from the same seeded start; its score is the best validation epoch's."""
    device = torch.device("cpu")
    lib.set_seed(SEED)
    base, _, _ = lib.load_lora_base(len(class_names), allow_downloads=False)
    lora_config = lib.LoraConfig(task_type=lib.TaskType.SEQ_CLS, r=config["r"], lora_alpha=2 * config["r"],
                                 lora_dropout=LORA_DROPOUT, target_modules=list(TARGETS[config["targets"]]))
    with warnings.catch_warnings():  # peft calls a transformers method deprecated for v6
        warnings.simplefilter("ignore", FutureWarning)
        model = lib.get_peft_model(base, lora_config)
    trainable, total = lib.model_parameter_counts(model)
    lib.set_seed(SEED)
    optimizer, scheduler = lib.make_optimizer(model, config["lr"], total_steps=epochs * len(train_loader))
    name = f"r={config['r']} {config['targets']} lr={config['lr']:g}"
    history = lib.train_classifier(model, train_loader, val_loader, optimizer, scheduler, epochs, device,
                                   lib.choose_precision(device), show_progress=False, name=name)
    best = max(history, key=lambda h: h["val_f1"])
    return {**config, "trainable": trainable, "total": total,
            "train_s": sum(h["epoch_time_s"] for h in history), "accuracy": float(best["val_acc"]),
            "f1_macro": float(best["val_f1"])}


def best_config(rows: list[dict]) -> dict:
    """Highest macro-F1 (compared at the 3 printed decimals); a tie goes to fewer trainable parameters."""
    return min(rows, key=lambda row: (-round(row["f1_macro"], 3), row["trainable"]))


def format_table(rows: list[dict]) -> str:
    lines = [f"{'r':>3} {'alpha':>5} {'targets':<12} {'lr':>6} {'trainable':>10} {'train s':>8} "
             f"{'accuracy':>8} {'macro-F1':>8}"]
    for row in rows:
        lines.append(f"{row['r']:>3} {2 * row['r']:>5} {row['targets']:<12} {row['lr']:>6g} {row['trainable']:>10,} "
                     f"{row['train_s']:>8.1f} {row['accuracy']:>8.3f} {row['f1_macro']:>8.3f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1200,
                        help="stratified subset of the training complaints (0 = all)")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny run for tests: {QUICK['train_size']} training / {QUICK['test_size']} validation "
                             f"complaints, max_len {QUICK['max_len']}")
    return parser.parse_args(argv)


def main(argv=None, lib: types.ModuleType | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    os.chdir(REPO)  # the lib cells resolve data paths from the working directory
    lib = lib or load_lib_cells(Path(os.environ.get("A5_NOTEBOOK", REPO / "assignment5.ipynb")))
    if args.quick:
        args.train_size, args.max_len, args.batch_size, args.epochs = (
            QUICK["train_size"], QUICK["max_len"], QUICK["batch_size"], QUICK["epochs"])

    train_df, val_df, class_names = prepare_split(lib)
    split = {"train": len(train_df), "validation": len(val_df), "classes": len(class_names)}
    sweep_train = stratified_subset(train_df, args.train_size or None)
    sweep_val = stratified_subset(val_df, QUICK["test_size"]) if args.quick else val_df

    lib.transformers.logging.set_verbosity_error()  # as the notebook: no load reports for each configuration
    tokenizer = lib.BertTokenizer.from_pretrained(str(lib.minilm_dir()))  # load_lora_base's own tokenizer
    train_ds = lib.ComplaintDataset(sweep_train["text"], sweep_train["label"], tokenizer, args.max_len)
    val_ds = lib.ComplaintDataset(sweep_val["text"], sweep_val["label"], tokenizer, args.max_len)
    train_loader = lib.make_loader(train_ds, args.batch_size, tokenizer.pad_token_id, shuffle=True, seed=SEED)
    val_loader = lib.make_loader(val_ds, 32, tokenizer.pad_token_id, shuffle=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} "
          f"({os.cpu_count()} logical CPUs); notebook lib from {Path(lib.__file__).name}")
    print(f"split (cpu profile, seed {SEED}): {split['train']:,} train / {split['validation']:,} validation "
          f"complaints, {split['classes']} classes; sweep trains on a stratified {len(train_ds):,} and scores on "
          f"{len(val_ds):,}{' (QUICK)' if args.quick else ' (the whole validation split; test is never used)'}")
    print(f"budget per config: {args.epochs} epoch(s), max_len {args.max_len}, batch {args.batch_size} "
          f"({args.epochs * len(train_loader)} steps), lora_alpha = 2r, dropout {LORA_DROPOUT}; base model "
          f"all-MiniLM-L6-v2 (offline)", flush=True)

    rows = []
    for config in sweep_configs():
        rows.append(run_config(lib, config, train_loader, val_loader, class_names, args.epochs))
    best = best_config(rows)
    centre_is_best = all(best[k] == CENTRE[k] for k in CENTRE)
    wall = time.perf_counter() - started
    print("\n" + format_table(rows))
    print(f"\nBEST by macro-F1 (ties -> fewer trainable params): r={best['r']}, targets {best['targets']}, "
          f"lr {best['lr']:g}: macro-F1 {best['f1_macro']:.3f}, accuracy {best['accuracy']:.3f}, "
          f"{best['trainable']:,} trainable parameters")
    print(f"centre r={CENTRE['r']} / {CENTRE['targets']} / lr {CENTRE['lr']:g} is "
          f"{'the best' if centre_is_best else 'NOT the best'}; sweep wall time {wall:.0f} s ({wall / 60:.1f} min)")
    return {"rows": rows, "best": best, "centre_is_best": centre_is_best, "split": split, "wall_s": wall}


if __name__ == "__main__":
    main()
