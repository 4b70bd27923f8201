"""Section 1 at the render's horizon: the `cpu` profile's whole schedule on the development split, then its decoders.

bench_cpu_recipe.py compares recipes at half an epoch, where BLEU is still below 1 and only the loss can rank
them. This benchmark trains one variant of the `cpu` profile for its whole schedule (`--epochs`, 5 as in the
profile) through the notebook's own train_model, on the training side of the notebook's split with 5% of its
English sentences held out as the development split (bench_cpu_recipe.training_pairs_file: the validation
split the notebook reports is never touched), then scores on that development split:

- greedy decoding, as run_validation does (the decoder may write [UNK]);
- greedy decoding with [UNK] banned (translate(..., allow_unk=False): the best known word instead);
- beam search (4), with and without [UNK];
- both with the repeat guard (translate(..., repeat_guard=4): never a third copy in a row of an n-gram of
  up to 4 tokens, the repetition loops that the notebook counts);
- greedy decoding of the mean of the last two epochs' weights (checkpoint averaging).

Each row: sacreBLEU BLEU and chrF, the share of outputs that loop and of tokens that are [UNK]; the rows
against plain greedy also get a paired bootstrap p-value (sacreBLEU, 1,000 resamples). Variants differ by
a few config keys (VARIANTS); run two at once with --threads 1 each to compare them.

    python bench/bench_cpu_horizon.py --variant cpu --threads 1 --log bench/results/cpu_horizon_cpu.txt
    python bench/bench_cpu_horizon.py --variant dropout0 --threads 1 --log bench/results/cpu_horizon_dropout0.txt
    python bench/bench_cpu_horizon.py --variant dropout0 --threads 1 --workdir /tmp/d0   # keeps the model: a
                                                # second run with the same --workdir only decodes
    python bench/bench_cpu_horizon.py --quick        # tiny sizes: proves that it runs
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "bench"))

import sacrebleu  # noqa: E402
import torch  # noqa: E402
from bench_cpu_recipe import DEV_FRACTION, QUICK, SEED, training_pairs_file  # noqa: E402
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402
from sacrebleu.significance import PairedTest  # noqa: E402

VARIANTS = {  # the `cpu` profile's training recipe with ...
    "cpu": {"dropout": 0.1},  # ... dropout 0.1, the profile before this benchmark
    "dropout0": {"dropout": 0.0},  # ... no dropout: the run under-fits (training loss with dropout ~ validation loss)
    "dropout0_warmup100": {"dropout": 0.0, "warmup_steps": 100},  # ... and a third of the warm-up
    "dropout0_dff384": {"dropout": 0.0, "d_ff": 384},  # ... and half the feed-forward width (led at fixed time)
}
PLAIN_DECODING = {"allow_unk": True, "repeat_guard": 0}  # the "greedy" row: the decoder as the seed has it


def horizon_config(lib, name: str, epochs: int, data: Path, folder: Path, quick: bool) -> dict:
    recipe = {**lib.TRANSLATION_PROFILES["cpu"], **VARIANTS[name], **PLAIN_DECODING, "num_epochs": epochs,
              "bleu_every": 0}
    if quick:
        recipe = {**recipe, **QUICK}
        recipe.pop("max_pairs")
    return lib.get_config(**recipe, datasource=str(data), val_fraction=DEV_FRACTION, seed=SEED, num_examples=0,
                          show_progress=False, keep_every_checkpoint=True, model_folder=f"{folder}/{name}", experiment_name=f"{folder}/runs/{name}",
                          tokenizer_file=f"{folder}/tok-{{0}}.json", preload="latest")


def averaged_model(lib, config: dict, model, epochs: list[int]):
    """A copy of `model` holding the mean of the weights saved after `epochs` (0-based, as the files are named)."""
    states = [lib.load_checkpoint(lib.get_weights_file_path(config, f"{e:02d}"))["model_state_dict"] for e in epochs]
    mean = {key: sum(state[key].float() for state in states) / len(states) for key in states[0]}
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(mean)
    return averaged


def score_rows(outputs: dict[str, list[str]], references: list[str], lib, tokenizer_tgt) -> list[dict]:
    """BLEU/chrF of each decoder, with the paired bootstrap against the first (plain greedy)."""
    metrics = {"BLEU": sacrebleu.metrics.BLEU(), "chrF": sacrebleu.metrics.CHRF()}
    _, paired = PairedTest(list(outputs.items()), metrics, references=[references], test_type="bs", n_samples=1000)()
    bleu, chrf = paired["BLEU"], paired[next(key for key in paired if key.startswith("chrF"))]
    rows = []
    for i, (name, texts) in enumerate(outputs.items()):
        loops = sum(lib.has_repetition_loop(text) for text in texts) / len(texts)
        rows.append({"decoder": name, "bleu": bleu[i].score, "chrf": chrf[i].score, "p_bleu": bleu[i].p_value,
                     "p_chrf": chrf[i].p_value, "loops_pct": 100 * loops,
                     "unk_pct": 100 * lib.unk_share(texts, tokenizer_tgt, written_only=True)})
    return rows


def p_value(p: float | None) -> str:
    """The paired bootstrap's p-value; blank for the baseline row (plain greedy), which has none."""
    if p is None:
        return ""
    return f"{p:.3f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="cpu", choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="default: the `cpu` profile's num_epochs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data, tokenizers and checkpoints here (default: a temporary folder); a run that "
                             "finds the last epoch's checkpoint there decodes without training")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves that the benchmark runs")
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lib = load_lib_cells(args.notebook)
    epochs = args.epochs or lib.TRANSLATION_PROFILES["cpu"]["num_epochs"]
    if args.quick:
        epochs = 2
    lines = [f"# bench_cpu_horizon.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# variant {args.variant}: the cpu profile {lib.TRANSLATION_PROFILES['cpu']} with {VARIANTS[args.variant]}, "
             f"{epochs} epochs"]
    for line in lines:
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.workdir:  # kept: a second run with the same workdir reloads the trained model and only decodes
            folder = args.workdir
            folder.mkdir(parents=True, exist_ok=True)
        max_pairs = None
        if args.quick:
            max_pairs = QUICK["max_pairs"]
        data, n_train = training_pairs_file(lib, folder, max_pairs)
        config = horizon_config(lib, args.variant, epochs, data, folder, args.quick)
        started = time.perf_counter()
        result = lib.train_model(config, allow_downloads=False, precision=lib.choose_precision("cpu", "fp32"))
        train_s = time.perf_counter() - started
        model, dev = result["model"], result["val_dataloader"].dataset
        tokenizers = (result["tokenizer_src"], result["tokenizer_tgt"])

        def decode(decoder, beam_size: int = 1, allow_unk: bool = True, repeat_guard: int = 0) -> list[str]:
            return lib.translate(decoder, dev.src_texts, *tokenizers, config["seq_len"], "cpu", beam_size=beam_size,
                                 batch_size=config["eval_batch_size"], allow_unk=allow_unk, repeat_guard=repeat_guard)

        outputs = {"greedy": result["validation"]["predicted"], "greedy, [UNK] banned": decode(model, allow_unk=False),
                   "beam 4": decode(model, 4), "beam 4, [UNK] banned": decode(model, 4, allow_unk=False),
                   "greedy, repeat guard 4": decode(model, repeat_guard=4),
                   "greedy, [UNK] banned, repeat guard 4": decode(model, allow_unk=False, repeat_guard=4),
                   "beam 4, [UNK] banned, repeat guard 4": decode(model, 4, allow_unk=False, repeat_guard=4)}
        last_two = averaged_model(lib, config, model, [epochs - 2, epochs - 1])
        outputs["greedy, last 2 epochs averaged"] = decode(last_two)
        outputs["greedy, last 2 averaged, [UNK] banned"] = decode(last_two, allow_unk=False)
        rows = score_rows(outputs, dev.tgt_texts, lib, tokenizers[1])
    history = result["history"]
    lines.append(f"# {n_train:,} training-side pairs; {len(dev):,} development pairs; {train_s:.0f} s; "
                 f"dev loss by epoch {[round(h['val_loss'], 3) for h in history]}; "
                 f"train loss by epoch {[round(h['train_loss'], 3) for h in history]}")
    table = [f"{'decoder':<42} {'BLEU':>6} {'chrF':>6} {'p BLEU':>7} {'p chrF':>7} {'loops%':>6} {'[UNK]%':>6}"]
    for row in rows:
        table.append(f"{row['decoder']:<42} {row['bleu']:6.2f} {row['chrf']:6.2f} {p_value(row['p_bleu']):>7} "
                     f"{p_value(row['p_chrf']):>7} "
                     f"{row['loops_pct']:6.1f} {row['unk_pct']:6.1f}")
    for line in [lines[-1], *table]:
        print(line, flush=True)
    if args.log:
        args.log.write_text("\n".join(lines + table + [json.dumps(r) for r in rows]) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
