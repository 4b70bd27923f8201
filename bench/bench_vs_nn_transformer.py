"""Our from-scratch Transformer (Section 1) against PyTorch's own nn.Transformer, on CPU, fp32.

The reference, `TorchTransformer`, wraps `nn.Transformer(batch_first=True, norm_first=True)` with the
notebook's own embeddings, positional encoding and projection, so that the notebook's compute_loss,
evaluate_loss and run_validation (greedy_decode_batch) run on it unchanged.

Parts (--parts, comma-separated; --profile adds `profile`):
  profile  torch.profiler table (top 15 ops by self CPU time) of a few training steps of each model, cpu sizes;
  steps    median ms per training step (forward + backward + clip + Adam), the SAME batches, the two models
           alternating step by step in one process: cpu sizes (d_model 192, N 2, h 4, d_ff 768, batch 32)
           and paper sizes (d_model 512, N 6, h 8, d_ff 2048, batch 8), on the cpu profile's KJV->Diodati split;
  quality  each model trained for --equal-time-minutes of its own training time with the cpu profile's recipe
           (same seed and dropout stream, same batch order; warm-up 300 steps, then cosine decay whose progress
           is elapsed time / budget), then scored on the whole validation split: loss (evaluate_loss), greedy
           BLEU and chrF (run_validation). By default the two trainings alternate step by step, each on its own
           clock, so that other load on a shared machine slows both alike (--quality-mode sequential: one
           model after the other). Validation time is not counted.

    python bench/bench_vs_nn_transformer.py --profile                      # profile + steps + quality (8 min each)
    python bench/bench_vs_nn_transformer.py --parts steps
    python bench/bench_vs_nn_transformer.py --parts quality --equal-time-minutes 8
    python bench/bench_vs_nn_transformer.py --quick                        # tiny sizes, seconds: proves it runs

Reads the notebook named by A5_NOTEBOOK (default assignment5.ipynb). Writes nothing but a temporary tokenizer.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from nblib import load_lib_cells  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

PAPER_SIZES = {"d_model": 512, "N": 6, "h": 8, "d_ff": 2048, "batch_size": 8}
QUICK_PROFILE = {"batch_size": 16, "seq_len": 32, "d_model": 32, "N": 1, "h": 2, "d_ff": 64, "max_pairs": 600,
                 "lr": 1e-3, "warmup_steps": 5, "lr_decay": "cosine"}
QUICK_PAPER_SIZES = {"d_model": 64, "N": 2, "h": 4, "d_ff": 128, "batch_size": 8}


class _PrefixCacheFactory:
    """What `model.decoder` is for TorchTransformer: only `new_cache()`, which greedy_decode_batch calls."""

    @staticmethod
    def new_cache() -> dict:
        return {"tokens": None}


class TorchTransformer(nn.Module):
    """nn.Transformer (pre-norm, batch_first) behind our Transformer's interface.

    Same InputEmbeddings, PositionalEncoding and ProjectionLayer classes as ours (taken from `lib`), the same
    LayerNorm eps (1e-6) and Xavier-uniform init of every >1-dim parameter, as build_transformer does.
    Differences that nn.Transformer imposes: its attention projections have biases (ours have none) and
    self-attention's Q, K, V are one fused (3*d_model, d_model) matrix.

    Masks: ours are src_mask (B, 1, 1, S), 1 = real token, and tgt_mask (B, 1, T, T) = causal & real
    (or (1, T, T) from greedy_decode, or None while decoding with a cache). They become
    src/memory_key_padding_mask (B, S) and tgt_key_padding_mask (B, T) (True = ignore; the real target
    tokens are the last row of tgt_mask) plus a (T, T) causal mask with tgt_is_causal=True.

    Cached decoding: nn.Transformer has no key/value cache. Here the "cache" holds the prefix of tokens
    decoded so far; each call appends the new tokens, re-runs the decoder over the whole prefix and returns
    only the new positions. The result equals uncached decoding; it costs O(T^2) decoder positions instead
    of O(T). Beam search (which reorders per-layer K/V caches) is not supported.
    """

    decoder = _PrefixCacheFactory()  # a class attribute, not a submodule: nn.Transformer's decoder is inside

    def __init__(self, lib: types.ModuleType, src_vocab_size: int, tgt_vocab_size: int, src_seq_len: int,
                 tgt_seq_len: int, d_model: int = 512, N: int = 6, h: int = 8, dropout: float = 0.1,
                 d_ff: int = 2048) -> None:
        super().__init__()
        self.src_embed = lib.InputEmbeddings(d_model, src_vocab_size)
        self.tgt_embed = lib.InputEmbeddings(d_model, tgt_vocab_size)
        self.src_pos = lib.PositionalEncoding(d_model, src_seq_len, dropout)
        self.tgt_pos = lib.PositionalEncoding(d_model, tgt_seq_len, dropout)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ... norm_first was True"
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d_model, nhead=h, num_encoder_layers=N, num_decoder_layers=N, dim_feedforward=d_ff,
                dropout=dropout, layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        self.projection_layer = lib.ProjectionLayer(d_model, tgt_vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @staticmethod
    def _source_padding(src_mask: torch.Tensor) -> torch.Tensor:
        return src_mask.reshape(src_mask.shape[0], src_mask.shape[-1]) == 0  # (B, S), True = [PAD]

    @staticmethod
    def _causal(size: int, device) -> torch.Tensor:
        return torch.triu(torch.ones(size, size, dtype=torch.bool, device=device), diagonal=1)  # True = future

    def encode(self, src, src_mask):
        x = self.src_pos(self.src_embed(src))
        return self.transformer.encoder(x, src_key_padding_mask=self._source_padding(src_mask))

    def decode(self, encoder_output, src_mask, tgt, tgt_mask, cache: dict | None = None, start: int = 0):
        tgt_padding, new = None, tgt.size(1)
        if cache is not None:
            if cache["tokens"] is not None:
                if cache["tokens"].size(1) != start:
                    raise ValueError(f"cache holds {cache['tokens'].size(1)} tokens but start={start}")
                tgt = torch.cat([cache["tokens"], tgt], dim=1)
            cache["tokens"], start = tgt, 0
        elif tgt_mask is not None:
            real = tgt_mask[..., -1, :].reshape(-1, tgt_mask.shape[-1]) != 0  # last row of causal & real
            tgt_padding = (~real).expand(tgt.size(0), -1)
        x = self.tgt_pos(self.tgt_embed(tgt), start=start)
        out = self.transformer.decoder(
            x, encoder_output, tgt_mask=self._causal(x.size(1), x.device), tgt_key_padding_mask=tgt_padding,
            memory_key_padding_mask=self._source_padding(src_mask), tgt_is_causal=True)
        return out if cache is None else out[:, -new:]

    def project(self, x):
        return self.projection_layer(x)


@torch.no_grad()
def copy_weights_from_ours(ref: TorchTransformer, ours: nn.Module) -> None:
    """Give `ref` our model's weights (its extra attention biases set to 0): then both compute the same function."""
    sd = {f"{k}.{n}": t for k in ("src_embed", "tgt_embed", "projection_layer")
          for n, t in getattr(ours, k).state_dict().items()}

    def attention(prefix: str, block) -> None:
        sd[f"{prefix}.in_proj_weight"] = torch.cat([block.w_q.weight, block.w_k.weight, block.w_v.weight])
        sd[f"{prefix}.in_proj_bias"] = torch.zeros(3 * block.d_model)
        sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"] = block.w_o.weight, torch.zeros(block.d_model)

    def norm(prefix: str, layer_norm) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = layer_norm.alpha, layer_norm.bias

    def feed_forward(prefix: str, block) -> None:
        for i, linear in ((1, block.linear_1), (2, block.linear_2)):
            sd[f"{prefix}.linear{i}.weight"], sd[f"{prefix}.linear{i}.bias"] = linear.weight, linear.bias

    for side in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(ours, side).layers):
            prefix = f"transformer.{side}.layers.{i}"
            attention(f"{prefix}.self_attn", layer.self_attention_block)
            if side == "decoder":
                attention(f"{prefix}.multihead_attn", layer.cross_attention_block)
            feed_forward(prefix, layer.feed_forward_block)
            for j, residual in enumerate(layer.residual_connections):
                norm(f"{prefix}.norm{j + 1}", residual.norm)
        norm(f"transformer.{side}.norm", getattr(ours, side).norm)
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"src_pos.pe", "tgt_pos.pe"}, (missing, unexpected)


def build_reference(lib, config: dict, vocab_src: int, vocab_tgt: int) -> TorchTransformer:
    return TorchTransformer(lib, vocab_src, vocab_tgt, config["seq_len"], config["seq_len"], d_model=config["d_model"],
                            N=config["N"], h=config["h"], dropout=config["dropout"], d_ff=config["d_ff"])


# ------------------------------------------------------------------------------------------------ training

def train_step(lib, model, optimizer, batch, loss_fn) -> torch.Tensor:
    """One step exactly as train_model takes it in fp32 on CPU."""
    loss, _ = lib.compute_loss(model, batch, loss_fn, "cpu")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def make_pair(lib, config: dict, vocab_src: int, vocab_tgt: int, seed: int):
    lib.set_seed(seed)
    ours = lib.get_model(config, vocab_src, vocab_tgt)
    lib.set_seed(seed)
    ref = build_reference(lib, config, vocab_src, vocab_tgt)
    return {"ours": ours, "nn.Transformer": ref}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def take_batches(loader, n: int) -> list[dict]:
    batches, epoch = [], 0
    while len(batches) < n:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
        epoch += 1
    return batches


def part_profile(lib, data, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    config, loss_fn = data["config"], data["loss_fn"]
    batches = take_batches(data["train_loader"], steps + 2)
    models = make_pair(lib, config, data["vocab_src"], data["vocab_tgt"], config["seed"])
    tables = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], eps=1e-9)
        for batch in batches[:2]:  # warm-up
            train_step(lib, model, optimizer, batch, loss_fn)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches[2:]:
                train_step(lib, model, optimizer, batch, loss_fn)
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                                 max_name_column_width=48)
        print(f"\n== profile: {name}, {steps} training steps at cpu sizes (batch {config['batch_size']}), "
              f"top 15 ops by self CPU time ==\n{tables[name]}", flush=True)
    return tables


def part_steps(lib, data, sizes: dict[str, dict], warmup: int, timed: int) -> dict:
    config, loss_fn = data["config"], data["loss_fn"]
    results = {}
    print(f"\n== step time: ms per training step (forward+backward+clip+Adam), fp32, train mode, same batches, "
          f"models alternating step by step; {warmup} warm-up + {timed} timed steps each ==")
    print(f"{'sizes':34}{'params ours/ref':>18}{'ours ms':>10}{'ref ms':>10}{'ours/ref':>10}")
    for label, overrides in sizes.items():
        cfg = {**config, **overrides}
        loader = lib.length_grouped_loader(data["train_ds"], cfg["batch_size"], shuffle=True, seed=cfg["seed"])
        batches = take_batches(loader, warmup + timed)
        models = make_pair(lib, cfg, data["vocab_src"], data["vocab_tgt"], cfg["seed"])
        optimizers = {name: torch.optim.Adam(m.parameters(), lr=cfg["lr"], eps=1e-9) for name, m in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for m in models.values():
            m.train()
        for i, batch in enumerate(batches):
            order = list(models) if i % 2 == 0 else list(models)[::-1]  # alternate who goes first
            for name in order:
                started = time.perf_counter()
                train_step(lib, models[name], optimizers[name], batch, loss_fn)
                if i >= warmup:
                    times[name].append(1000 * (time.perf_counter() - started))
        ours, ref = statistics.median(times["ours"]), statistics.median(times["nn.Transformer"])
        desc = f"{label}: d{cfg['d_model']} N{cfg['N']} h{cfg['h']} ff{cfg['d_ff']} b{cfg['batch_size']}"
        params = f"{n_params(models['ours']) / 1e6:.2f}M/{n_params(models['nn.Transformer']) / 1e6:.2f}M"
        print(f"{desc:34}{params:>18}{ours:10.1f}{ref:10.1f}{ours / ref:10.2f}", flush=True)
        results[label] = {"ours": ours, "ref": ref, "ratio": ours / ref}
    return results


class TimedTrainer:
    """Trains one model until `budget_s` of its own training time (fetching batches included) is spent.

    Linear warm-up over warmup_steps, then cosine decay of the learning rate whose progress is the elapsed
    time (from the end of warm-up) over the rest of the budget, so that the rate reaches 0 when time is up.
    Its own copy of the global RNG state (seeded with config['seed']) is swapped in for each step: dropout
    draws the same stream whether the two models are trained one after the other or step by step in turn.
    """

    def __init__(self, lib, model, loader, config: dict, loss_fn, budget_s: float) -> None:
        self.lib, self.model, self.loader, self.config, self.loss_fn = lib, model, loader, config, loss_fn
        self.budget_s, self.elapsed, self.steps, self.warm_end = budget_s, 0.0, 0, None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], eps=1e-9)
        self.batches = self._batches()
        self.losses: list[torch.Tensor] = []
        self.step_ms: list[float] = []
        self.data_ms: list[float] = []
        lib.set_seed(config["seed"])
        self.rng = torch.get_rng_state()

    def _batches(self):
        epoch = 0
        while True:
            self.loader.batch_sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    @property
    def done(self) -> bool:
        return self.elapsed >= self.budget_s

    def step(self) -> None:
        torch.set_rng_state(self.rng)
        self.model.train()
        started = time.perf_counter()
        batch = next(self.batches)
        fetched = time.perf_counter()
        if self.steps < self.config["warmup_steps"]:
            factor = (self.steps + 1) / self.config["warmup_steps"]
        else:
            self.warm_end = self.elapsed if self.warm_end is None else self.warm_end
            progress = min(1.0, (self.elapsed - self.warm_end) / max(self.budget_s - self.warm_end, 1e-9))
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))  # learning_rate_factor's cosine
        for group in self.optimizer.param_groups:
            group["lr"] = self.config["lr"] * factor
        self.losses = [*self.losses[-99:], train_step(self.lib, self.model, self.optimizer, batch, self.loss_fn)]
        finished = time.perf_counter()
        self.elapsed += finished - started
        self.steps += 1
        self.data_ms.append(1000 * (fetched - started))
        self.step_ms.append(1000 * (finished - fetched))
        self.rng = torch.get_rng_state()

    def stats(self) -> dict:
        tenth = max(1, len(self.step_ms) // 10)
        return {"steps": self.steps, "epochs": self.steps / len(self.loader), "train_s": self.elapsed,
                "train_loss": float(torch.stack(self.losses).mean()),
                "step_ms": statistics.median(self.step_ms), "step_ms_first": statistics.median(self.step_ms[:tenth]),
                "step_ms_last": statistics.median(self.step_ms[-tenth:]), "data_ms": statistics.median(self.data_ms)}


def part_quality(lib, data, budget_s: float, mode: str = "interleaved") -> dict:
    """mode: 'interleaved' (a step of one model, then a step of the other, each on its own clock: a busy
    machine slows both alike), 'sequential' (ours, then the reference) or 'sequential-ref-first'."""
    config, loss_fn = data["config"], data["loss_fn"]
    models = make_pair(lib, config, data["vocab_src"], data["vocab_tgt"], config["seed"])
    val_loss_loader = lib.length_grouped_loader(data["val_ds"], config["eval_batch_size"], shuffle=False)
    print(f"\n== quality at equal time: {budget_s / 60:g} min of training each ({mode}), cpu recipe (batch "
          f"{config['batch_size']}, lr {config['lr']:g}, warm-up {config['warmup_steps']} steps, cosine over the "
          f"time budget), then the whole validation split ({len(data['val_ds']):,} pairs) ==", flush=True)
    trainers = {name: TimedTrainer(lib, model, data["train_loader"], config, loss_fn, budget_s)
                for name, model in models.items()}
    names = list(trainers)[::-1] if mode == "sequential-ref-first" else list(trainers)
    if mode == "interleaved":
        while not all(t.done for t in trainers.values()):
            for name in names:
                if not trainers[name].done:
                    trainers[name].step()
    else:
        for name in names:
            while not trainers[name].done:
                trainers[name].step()
    results = {}
    for name in names:
        model, stats = models[name], trainers[name].stats()
        started = time.perf_counter()
        stats["val_loss"] = lib.evaluate_loss(model, val_loss_loader, loss_fn, "cpu", contextlib.nullcontext)
        scores = lib.run_validation(model, data["val_loader"], data["tok_src"], data["tok_tgt"], config["seq_len"],
                                    "cpu", lambda *a, **k: None, stats["steps"], None, num_examples=1,
                                    batch_size=config["eval_batch_size"])
        stats.update(bleu=scores["bleu"], chrf=scores["chrf"], val_s=time.perf_counter() - started)
        results[name] = stats
        print(f"  {name}: {stats['steps']} steps ({stats['epochs']:.2f} epochs) in {stats['train_s']:.0f}s; median ms "
              f"per step {stats['step_ms']:.0f} (first tenth {stats['step_ms_first']:.0f}, last tenth "
              f"{stats['step_ms_last']:.0f}), per batch fetched {stats['data_ms']:.1f}; validation {stats['val_s']:.0f}s",
              flush=True)
    print(f"{'model':16}{'steps':>8}{'epochs':>8}{'ms/step':>9}{'train loss':>12}{'val loss':>10}{'BLEU':>8}{'chrF':>8}")
    for name in models:
        s = results[name]
        print(f"{name:16}{s['steps']:8d}{s['epochs']:8.2f}{s['step_ms']:9.0f}{s['train_loss']:12.3f}"
              f"{s['val_loss']:10.3f}{s['bleu']:8.2f}{s['chrf']:8.2f}")
    return results


# ------------------------------------------------------------------------------------------------ setup

def load_data(lib, config: dict, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr if quick else sys.stdout):
        config["tokenizer_file"] = f"{tmp}/tokenizer_{{0}}.json"
        train_loader, val_loader, tok_src, tok_tgt = lib.get_ds(config, allow_downloads=False)
    val_ds = val_loader.dataset
    if quick:  # a few validation sentences
        pairs = [val_ds.ds[i] for i in range(min(8, len(val_ds)))]
        val_ds = lib.BilingualDataset(pairs, tok_src, tok_tgt, config["lang_src"], config["lang_tgt"],
                                      config["seq_len"])
        val_loader = DataLoader(val_ds, batch_size=1, shuffle=False, collate_fn=lib.trim_to_longest)
    loss_fn = nn.CrossEntropyLoss(ignore_index=tok_src.token_to_id("[PAD]"), label_smoothing=config["label_smoothing"])
    return {"config": config, "train_loader": train_loader, "train_ds": train_loader.dataset, "val_loader": val_loader,
            "val_ds": val_ds, "tok_src": tok_src, "tok_tgt": tok_tgt, "loss_fn": loss_fn,
            "vocab_src": tok_src.get_vocab_size(), "vocab_tgt": tok_tgt.get_vocab_size()}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="steps,quality", help="comma-separated: profile, steps, quality")
    parser.add_argument("--profile", action="store_true", help="add the torch.profiler part")
    parser.add_argument("--equal-time-minutes", type=float, default=None, help="training budget per model (8)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps per model and size (3)")
    parser.add_argument("--timed-steps", type=int, default=None, help="timed steps per model and size (30)")
    parser.add_argument("--profile-steps", type=int, default=None, help="profiled steps per model (5)")
    parser.add_argument("--quality-mode", default="interleaved", choices=["interleaved", "sequential",
                                                                          "sequential-ref-first"],
                        help="quality: alternate the two trainings step by step (default; each on its own clock) "
                             "or train one model after the other")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps, 5 s budget: proves it runs")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.profile and "profile" not in args.parts:
        args.parts.insert(0, "profile")
    unknown = set(args.parts) - {"profile", "steps", "quality"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    defaults = {"equal_time_minutes": (5 / 60, 8.0), "warmup_steps": (1, 3), "timed_steps": (3, 30),
                "profile_steps": (2, 5)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def main(argv=None, lib: types.ModuleType | None = None) -> dict:
    args = parse_args(argv)
    os.chdir(REPO)
    lib = lib or load_lib_cells(Path(os.environ.get("A5_NOTEBOOK", REPO / "assignment5.ipynb")))
    profile = QUICK_PROFILE if args.quick else lib.TRANSLATION_PROFILES["cpu"]
    config = lib.get_config(**profile, datasource="bible", seed=42, show_progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_name()} "
          f"({os.cpu_count()} logical CPUs); notebook lib loaded from {lib.__file__}")
    data = load_data(lib, config, args.quick)
    print(f"data: KJV->Diodati, {'quick' if args.quick else 'cpu'} profile split: {len(data['train_ds']):,} training / "
          f"{len(data['val_ds']):,} validation pairs, seq_len {config['seq_len']}, vocabularies "
          f"{data['vocab_src']:,} / {data['vocab_tgt']:,}", flush=True)
    results: dict = {}
    if "profile" in args.parts:
        results["profile"] = part_profile(lib, data, args.profile_steps)
    if "steps" in args.parts:
        cpu_sizes = {k: config[k] for k in ("d_model", "N", "h", "d_ff", "batch_size")}
        sizes = {"cpu": cpu_sizes, "paper": QUICK_PAPER_SIZES if args.quick else PAPER_SIZES}
        results["steps"] = part_steps(lib, data, sizes, args.warmup_steps, args.timed_steps)
    if "quality" in args.parts:
        results["quality"] = part_quality(lib, data, 60 * args.equal_time_minutes, args.quality_mode)

    print("\n== claims ==")
    for label, r in results.get("steps", {}).items():
        verdict = "faster" if r["ratio"] < 1 else "slower"
        print(f"CLAIM step time, {label} sizes: ours {r['ours']:.1f} ms vs nn.Transformer {r['ref']:.1f} ms per step; "
              f"ours/ref = {r['ratio']:.2f} (ours {abs(1 - r['ratio']) * 100:.0f}% {verdict})")
    if "quality" in results:
        q = results["quality"]
        o, r = q["ours"], q["nn.Transformer"]
        print(f"CLAIM equal time ({args.equal_time_minutes:g} min each): ours {o['steps']} steps, val loss "
              f"{o['val_loss']:.3f}, BLEU {o['bleu']:.2f}, chrF {o['chrf']:.2f} | nn.Transformer {r['steps']} steps, "
              f"val loss {r['val_loss']:.3f}, BLEU {r['bleu']:.2f}, chrF {r['chrf']:.2f}")
    return results


if __name__ == "__main__":
    main()
