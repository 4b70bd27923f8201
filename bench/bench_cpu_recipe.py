"""Section 1's `cpu` recipe at equal CPU time: which levers teach the Transformer most per minute.

Every variant changes a few keys of one reference recipe (REFERENCE: the `cpu` profile's recipe before this
benchmark) and runs through the notebook's own code (get_ds, get_model, compute_loss, optimizer_step,
train_model). Two phases, in one process:

1. Timing. Each variant's training steps are timed alone, round-robin over the variants (a few steps of one,
   then of the next), so that a busy machine slows them all alike; the result is seconds per training step
   on that variant's own batches, and its steps per epoch.
2. Training. The budget is `--budget` steps of the reference, in seconds; each variant trains for the steps
   that this time buys at its own speed (lib.train_model with its loader cut, or cycled, to that many
   steps, so its schedule spans exactly them), then greedy-decodes the development split.

The development split is carved from the notebook's *training* pairs (the Bible stand-in, duplicates removed,
the notebook's own split by English sentence): the validation split the notebook reports is never touched.
Scores: sacreBLEU BLEU and chrF of greedy decoding on the whole development split, its loss, and the share of
outputs that loop.

    python bench/bench_cpu_recipe.py                       # the comparison (about 40 min on 2 cores)
    python bench/bench_cpu_recipe.py --variants reference tied_lr1e-3 --budget 300
    python bench/bench_cpu_recipe.py --quick               # tiny sizes, a minute: proves it runs

Prints a table; with --log, also writes it to that file.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import torch  # noqa: E402
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402

SEED = 42
DEV_FRACTION = 0.05  # of the training pairs
# The `cpu` profile's recipe before this benchmark.
REFERENCE = {"batch_size": 32, "lr": 5e-4, "warmup_steps": 300, "lr_decay": "cosine", "seq_len": 64,
             "d_model": 192, "N": 2, "h": 4, "d_ff": 768, "min_frequency": 3, "adam_betas": (0.9, 0.999),
             "dropout": 0.1, "tie_embeddings": False}
PROBE = {"tie_embeddings": True, "lr": 1e-3, "adam_betas": (0.9, 0.98)}  # the issue's probe
VARIANTS = {
    "reference": {},
    "tied_lr1e-3": PROBE,
    "tied_lr2e-3": {**PROBE, "lr": 2e-3},
    "tied_lr1e-3_minfreq5": {**PROBE, "min_frequency": 5},
    "tied_lr2e-3_minfreq5": {**PROBE, "lr": 2e-3, "min_frequency": 5},  # the two winners together
    "tied_tokens2048_lr2e-3": {**PROBE, "batch_size": 128, "max_tokens": 2048, "lr": 2e-3, "warmup_steps": 150},
    "tied_lr1e-3_d256": {**PROBE, "d_model": 256, "d_ff": 1024},
    "tied_lr1e-3_dropout0": {**PROBE, "dropout": 0.0},
    "reference_fused_attention": {"fused_attention": True},  # speed only (--timing-only): the opt-in switch
}
# The `cpu` profile's recipe after this benchmark and bench_cpu_horizon.py, and its shape at fixed time
CPU_RECIPE = {**PROBE, "lr": 2e-3, "min_frequency": 5, "dropout": 0.0}
VARIANTS.update({
    "cpu_recipe": CPU_RECIPE,
    "cpu_recipe_d256": {**CPU_RECIPE, "d_model": 256, "d_ff": 1024},
    "cpu_recipe_N3": {**CPU_RECIPE, "N": 3},
    "cpu_recipe_dff384": {**CPU_RECIPE, "d_ff": 384},
})
QUICK = {"max_pairs": 800, "seq_len": 32, "d_model": 32, "N": 1, "h": 2, "d_ff": 64}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def training_pairs_file(lib, folder: Path, max_pairs: int | None) -> tuple[Path, int]:
    """The training side of the notebook's own split of the Bible stand-in (get_ds's steps: empty pairs and exact
    duplicates removed, pairs longer than the `cpu` seq_len dropped, split by English sentence), as JSON lines."""
    config = lib.get_config(**lib.TRANSLATION_PROFILES["cpu"], datasource="bible", seed=SEED,
                            tokenizer_file=f"{folder}/tok-split-{{0}}.json")
    pairs = lib.load_translation_pairs(config, allow_downloads=False)[:max_pairs]
    pairs = [p for p in pairs if p["translation"]["en"].strip() and p["translation"]["it"].strip()]
    pairs = list({(p["translation"]["en"], p["translation"]["it"]): p for p in pairs}.values())
    tokenizers = [lib.build_tokenizer(config, pairs, lang) for lang in ("en", "it")]
    pairs = lib.drop_long_pairs(pairs, *tokenizers, "en", "it", config["seq_len"])[0]
    train, _validation = lib.split_by_source(pairs, "en", config["val_fraction"], SEED)
    path = folder / "train_side.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for pair in train:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return path, len(train)


def variant_config(lib, name: str, overrides: dict, data: Path, folder: Path, quick: bool) -> dict:
    recipe = {**REFERENCE, **overrides, **(QUICK if quick else {})}
    recipe.pop("max_pairs", None)
    tokenizer = f"{folder}/tok-mf{recipe['min_frequency']}-{{0}}.json"  # shared by the variants of one vocabulary
    return lib.get_config(**recipe, datasource=str(data), val_fraction=DEV_FRACTION, seed=SEED, num_epochs=1,
                          bleu_every=0, num_examples=0, show_progress=False, model_folder=f"{folder}/{name}",
                          experiment_name=f"{folder}/runs/{name}", tokenizer_file=tokenizer, preload=None)


class CycledLoader:
    """A training DataLoader cut, or cycled over further seeded epochs, to exactly `steps` batches."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps
        self.batch_sampler = type("NoEpochs", (), {"set_epoch": lambda self, epoch: None})()

    def __len__(self) -> int:
        return self.steps

    def __getattr__(self, name: str):  # dataset, ...
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        handed, epoch = 0, 0
        while handed < self.steps:
            self.loader.batch_sampler.set_epoch(epoch)
            for batch in self.loader:
                if handed == self.steps:
                    return
                handed += 1
                yield batch
            epoch += 1


def time_steps(lib, configs: dict[str, dict], rounds: int, steps_per_round: int, warmup: int) -> dict[str, dict]:
    """Seconds per training step of each variant, measured round-robin on its own shuffled batches."""
    state = {}
    for name, config in configs.items():
        train_loader, _, tokenizer_src, tokenizer_tgt = lib.get_ds(config, allow_downloads=False)
        torch.manual_seed(SEED)
        model = lib.get_model(config, tokenizer_src.get_vocab_size(), tokenizer_tgt.get_vocab_size())
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], betas=config["adam_betas"], eps=config["eps"])
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=lib.special_ids(tokenizer_tgt)[2],
                                            label_smoothing=config["label_smoothing"])
        batches = iter(CycledLoader(train_loader, warmup + rounds * steps_per_round))
        state[name] = {"model": model, "optimizer": optimizer, "loss_fn": loss_fn, "batches": batches,
                       "scaler": torch.amp.GradScaler("cpu", enabled=False), "seconds": 0.0, "steps": 0,
                       "steps_per_epoch": len(train_loader), "vocab_tgt": tokenizer_tgt.get_vocab_size(),
                       "params": lib.model_parameter_counts(model)[1]}

    def step(s) -> None:
        s["model"].train()
        loss = lib.compute_loss(s["model"], next(s["batches"]), s["loss_fn"], "cpu")
        lib.optimizer_step(loss, s["optimizer"], s["scaler"], s["model"].parameters())

    for s in state.values():
        for _ in range(warmup):
            step(s)
    for _ in range(rounds):
        for s in state.values():
            started = time.perf_counter()
            for _ in range(steps_per_round):
                step(s)
            s["seconds"] += time.perf_counter() - started
            s["steps"] += steps_per_round
    return {name: {"s_per_step": s["seconds"] / s["steps"], "steps_per_epoch": s["steps_per_epoch"],
                   "vocab_tgt": s["vocab_tgt"], "params": s["params"]} for name, s in state.items()}


def train_for_steps(lib, config: dict, steps: int) -> dict:
    """lib.train_model with its training loader cycled to `steps` batches; development scores at the end."""
    get_ds = lib.get_ds

    def cycled_get_ds(config, allow_downloads=True):
        train_loader, val_loader, tokenizer_src, tokenizer_tgt = get_ds(config, allow_downloads)
        return CycledLoader(train_loader, steps), val_loader, tokenizer_src, tokenizer_tgt

    lib.get_ds = cycled_get_ds
    try:
        started = time.perf_counter()
        result = lib.train_model(config, allow_downloads=False, precision=lib.choose_precision("cpu", "fp32"))
        seconds = time.perf_counter() - started
    finally:
        lib.get_ds = get_ds
    validation, history = result["validation"], result["history"][-1]
    loops = sum(lib.has_repetition_loop(text) for text in validation["predicted"]) / len(validation["predicted"])
    return {"bleu": validation["bleu"], "chrf": validation["chrf"], "dev_loss": history["val_loss"],
            "loops_pct": 100 * loops, "dev_pairs": len(validation["predicted"]), "wall_s": seconds,
            "train_s": history["train_seconds"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--budget", type=int, default=500, help="the budget, in training steps of the reference")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per variant")
    parser.add_argument("--steps-per-round", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--timing-only", action="store_true", help="phase 1 only: seconds per step of each variant")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves that the benchmark runs")
    parser.add_argument("--log", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.budget, args.rounds, args.steps_per_round = 6, 1, 2
    names = args.variants if "reference" in args.variants else ["reference", *args.variants]
    lib = load_lib_cells(args.notebook)
    lines = [f"# bench_cpu_recipe.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# reference recipe: {REFERENCE}"]
    for line in lines:
        log(line)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data, n_train = training_pairs_file(lib, folder, QUICK["max_pairs"] if args.quick else None)
        configs = {name: variant_config(lib, name, VARIANTS[name], data, folder, args.quick) for name in names}
        log(f"# {n_train:,} training-side pairs; {DEV_FRACTION:.0%} of their English sentences form the development split")
        timing = time_steps(lib, configs, args.rounds, args.steps_per_round, warmup=2)
        if args.timing_only:
            table = [f"{'variant':<28} {'ms/step':>8} {'vs ref':>7}"] + [
                f"{name:<28} {1e3 * t['s_per_step']:8.1f} {t['s_per_step'] / timing['reference']['s_per_step']:7.2f}"
                for name, t in timing.items()]
            for line in table:
                log(line)
            if args.log:
                args.log.write_text("\n".join(lines + table) + "\n", encoding="utf-8")
            return [{"variant": name, **t} for name, t in timing.items()]
        budget_s = args.budget * timing["reference"]["s_per_step"]
        log(f"# budget: {args.budget} reference steps = {budget_s:.0f} s at the measured speed")
        rows = []
        for name in names:
            steps = max(1, round(budget_s / timing[name]["s_per_step"]))
            log(f"# {name}: {VARIANTS[name]} -> {steps} steps ({steps / timing[name]['steps_per_epoch']:.2f} epochs)")
            scores = train_for_steps(lib, configs[name], steps)
            rows.append({"variant": name, "steps": steps, "epochs": steps / timing[name]["steps_per_epoch"],
                         **timing[name], **scores})
            log(json.dumps(rows[-1]))
    header = (f"{'variant':<26} {'ms/step':>8} {'vs ref':>7} {'steps':>6} {'epochs':>6} {'vocab it':>8} "
              f"{'params':>10} {'dev loss':>8} {'BLEU':>6} {'chrF':>6} {'loops%':>6}")
    table = [header] + [
        f"{r['variant']:<26} {1e3 * r['s_per_step']:8.1f} {r['s_per_step'] / timing['reference']['s_per_step']:7.2f} "
        f"{r['steps']:6d} {r['epochs']:6.2f} {r['vocab_tgt']:8,d} {r['params']:10,d} {r['dev_loss']:8.3f} "
        f"{r['bleu']:6.2f} {r['chrf']:6.2f} {r['loops_pct']:6.1f}" for r in rows]
    for line in table:
        log(line)
    if args.log:
        args.log.write_text("\n".join(lines + table + [json.dumps(r) for r in rows]) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
