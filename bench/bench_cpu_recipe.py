"""The `cpu` profile's Section 1 before and after its retuning, scored the same way on the same pairs.

    python bench/bench_cpu_recipe.py --recipe before     # the recipe of the earlier committed render
    python bench/bench_cpu_recipe.py --recipe after      # TRANSLATION_PROFILES["cpu"] as it is now

Both recipes train on the same seeded 16,000-pair subset of the offline KJV -> Diodati pairs and are
validated on the same validation split (same seed, same tokenizer settings), with the notebook's own
code: `train_model`, then `translate` over the whole split, greedy and beam 4, scored with sacreBLEU
(BLEU, chrF) and `loop_share`. The committed render is the `after` run of record; this script
exists so that `before` can be measured with today's code rather than quoted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import sacrebleu
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402

# The `cpu` profile of the render committed before issues 8 and 9 (git 28eb421).
BEFORE = {"batch_size": 32, "num_epochs": 6, "lr": 5e-4, "warmup_steps": 300, "seq_len": 64, "d_model": 192,
          "N": 2, "h": 4, "d_ff": 768, "max_pairs": 16000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("before", "after"), required=True)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--epochs", type=int, default=None, help="override num_epochs (for a quick check)")
    args = parser.parse_args()

    lib = load_lib_cells(args.notebook)
    recipe = BEFORE if args.recipe == "before" else lib.TRANSLATION_PROFILES["cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"bleu_every": 0, **({"num_epochs": args.epochs} if args.epochs else {})}  # scored once, below
        config = lib.get_config(**{**recipe, **overrides},
                                datasource="bible", seed=42, show_progress=False, model_folder=f"{tmp}/weights",
                                experiment_name=f"{tmp}/runs", tokenizer_file=f"{tmp}/tokenizer-{{0}}.json")
        print(f"recipe {args.recipe}: {recipe}; torch {torch.__version__}, {torch.get_num_threads()} threads",
              flush=True)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as log:
            result = lib.train_model(config, allow_downloads=False)
        train_minutes = (time.perf_counter() - started) / 60
        print("\n".join(line for line in log.getvalue().splitlines() if line.startswith(("epoch", "Using"))))
        pairs = result["val_dataloader"].dataset
        print(f"training {train_minutes:.1f} min; {len(pairs):,} validation pairs")
        for name, beam in (("greedy", 1), ("beam 4", 4)):
            started = time.perf_counter()
            outputs = lib.translate(result["model"], pairs.src_texts, result["tokenizer_src"], result["tokenizer_tgt"],
                                    config["seq_len"], result["device"], beam_size=beam)
            seconds = time.perf_counter() - started
            bleu = sacrebleu.corpus_bleu(outputs, [pairs.tgt_texts]).score
            chrf = sacrebleu.corpus_chrf(outputs, [pairs.tgt_texts]).score
            print(f"CLAIM {args.recipe} {name}: BLEU {bleu:.2f} | chrF {chrf:.2f} | "
                  f"loops {lib.loop_share(outputs):.1f}% | decode {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
