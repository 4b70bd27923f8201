"""The `cpu` profile's Section 1 recipes, old and new, scored the same way on the same pairs.

    python bench/bench_cpu_recipe.py --recipe before     # 6 epochs, constant lr, 16,000-pair subset (28eb421)
    python bench/bench_cpu_recipe.py --recipe subset     # 12 epochs, cosine, the same subset (1c9565b)
    python bench/bench_cpu_recipe.py --recipe after      # TRANSLATION_PROFILES["cpu"] as it is now
    python bench/bench_cpu_recipe.py --recipe subset --held-out current   # old recipe, today's validation pairs

Each recipe trains with the notebook's own code (`train_model`), then `translate`s the whole validation
split, greedy and beam 4, scored with sacreBLEU (BLEU, chrF) and `loop_share`. By default a recipe is
scored on its own validation split: `before` and `subset` share one (the subset's), `after` has its own
(all pairs), so their scores compare models and splits at once. `--held-out current` removes that
doubt: it scores any recipe on the current profile's validation pairs, training it on the Bible pairs
minus those (written to a temporary jsonl that becomes the recipe's data source; a recipe with
`max_pairs` still draws its subset from what remains). The committed render is the `after` run of
record; this script exists so that old recipes are measured with today's code rather than quoted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
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
# The `cpu` profile of the render committed after issue 8 (git 1c9565b): 12 epochs, cosine decay, the same subset.
SUBSET = {**BEFORE, "num_epochs": 12, "lr_decay": "cosine", "bleu_every": 0}


def current_validation_pairs(lib, tmp: str) -> list[tuple[str, str]]:
    """(source, target) of the validation split that TRANSLATION_PROFILES["cpu"] trains against today."""
    config = lib.get_config(**lib.TRANSLATION_PROFILES["cpu"], datasource="bible", seed=42, show_progress=False,
                            tokenizer_file=f"{tmp}/current-tokenizer-{{0}}.json")
    with contextlib.redirect_stdout(io.StringIO()):
        _, val_loader, _, _ = lib.get_ds(config, allow_downloads=False)
    return list(zip(val_loader.dataset.src_texts, val_loader.dataset.tgt_texts))


def pairs_without(lib, held_out: list[tuple[str, str]], path: Path) -> int:
    """Write every Bible pair that is not held out to `path` (jsonl, opus_books' layout); return how many."""
    excluded = set(held_out)
    kept = [p for p in lib.load_bible_pairs("en", "it")
            if (p["translation"]["en"], p["translation"]["it"]) not in excluded]
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in kept), encoding="utf-8")
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("before", "subset", "after"), required=True)
    parser.add_argument("--held-out", choices=("own", "current"), default="own",
                        help="score on the recipe's own validation split, or on the current profile's")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--epochs", type=int, default=None, help="override num_epochs (for a quick check)")
    args = parser.parse_args()

    lib = load_lib_cells(args.notebook)
    recipe = {"before": BEFORE, "subset": SUBSET, "after": lib.TRANSLATION_PROFILES["cpu"]}[args.recipe]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"bleu_every": 0, **({"num_epochs": args.epochs} if args.epochs else {})}  # scored once, below
        datasource, held_out = "bible", None
        if args.held_out == "current":
            held_out = current_validation_pairs(lib, tmp)
            datasource = f"{tmp}/bible-without-held-out.jsonl"
            n_kept = pairs_without(lib, held_out, Path(datasource))
            print(f"held out: the current profile's {len(held_out):,} validation pairs; the recipe draws from the "
                  f"other {n_kept:,} Bible pairs", flush=True)
        config = lib.get_config(**{**recipe, **overrides},
                                datasource=datasource, seed=42, show_progress=False, model_folder=f"{tmp}/weights",
                                experiment_name=f"{tmp}/runs", tokenizer_file=f"{tmp}/tokenizer-{{0}}.json")
        print(f"recipe {args.recipe}: {recipe}; torch {torch.__version__}, {torch.get_num_threads()} threads",
              flush=True)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as log:
            result = lib.train_model(config, allow_downloads=False)
        train_minutes = (time.perf_counter() - started) / 60
        print("\n".join(line for line in log.getvalue().splitlines() if line.startswith(("epoch", "Using"))))
        own = result["val_dataloader"].dataset
        sources, references = (own.src_texts, own.tgt_texts) if held_out is None else map(list, zip(*held_out))
        print(f"training {train_minutes:.1f} min; scored on {len(sources):,} validation pairs "
              f"({'its own split' if held_out is None else 'the current profile split'})")
        for name, beam in (("greedy", 1), ("beam 4", 4)):
            started = time.perf_counter()
            outputs = lib.translate(result["model"], sources, result["tokenizer_src"], result["tokenizer_tgt"],
                                    config["seq_len"], result["device"], beam_size=beam)
            seconds = time.perf_counter() - started
            bleu = sacrebleu.corpus_bleu(outputs, [references]).score
            chrf = sacrebleu.corpus_chrf(outputs, [references]).score
            print(f"CLAIM {args.recipe} {name}: BLEU {bleu:.2f} | chrF {chrf:.2f} | "
                  f"loops {lib.loop_share(outputs):.1f}% | decode {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
