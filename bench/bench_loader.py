"""Host cost of Section 1's training, on the CPU: the DataLoader's ms per batch and the host syncs per step.

(a) `lib.get_ds`'s training DataLoader (--profile; full: seq_len 350, <= 2048 padded tokens) iterated here on
    --threads cores: this thread's CPU ms per batch (other processes do not change it) and wall ms, iter() included.
(b) `lib.train_model`, smoke sizes, --steps steps, progress bar on: per step and after the steps (validation,
    checkpoint), the calls a GPU makes the host wait on: reads of a value (item, __int__, __float__, __bool__,
    __index__, __format__, tolist, cpu, .to() toward the CPU), value-dependent shapes (nonzero, masked_select, unique,
    boolean indexing), blocking uploads (.to(device)/.cuda() without non_blocking=True). Tensors are all on the CPU
    here, so a TorchFunctionMode tracks where a GPU run would hold each: a DataLoader's output, what is computed from
    host data only, and what is made without `device=` (or with a literal "cpu") are host data, whose reads ("host")
    cost a GPU nothing. Calls inside torch may differ on a GPU.

    python bench/bench_loader.py [--notebook PATH] [--profile full|cpu] [--batches N] [--steps N] [--threads 1]
"""
import argparse
import contextlib
import io
import sys
import tempfile
import time
import weakref
from pathlib import Path
from traceback import walk_stack

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.data.dataloader import _BaseDataLoaderIter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from nblib import NOTEBOOK, load_lib_cells  # noqa: E402

READS = {"item", "__int__", "__float__", "__bool__", "__index__", "__format__", "tolist", "numpy", "cpu", "nonzero",
         "masked_select", "unique"}  # the last three: shapes that depend on values
SKIP = (__file__, "torch/overrides.py", "torch/_tensor.py", "torch/utils/_device.py")  # not the caller


def tmp_config(lib, profile: str, tmp: str, **overrides) -> dict:
    return lib.get_config(**{**lib.TRANSLATION_PROFILES[profile], "datasource": "bible", "show_progress": False,
                             "model_folder": f"{tmp}/weights", "experiment_name": f"{tmp}/runs",
                             "tokenizer_file": f"{tmp}/tok_{{0}}.json", "num_epochs": 1, **overrides})


def loader_ms_per_batch(loader, batches: int) -> dict:
    """CPU ms (this thread) and wall ms per batch of the first `batches` batches of `loader`, iter() included."""
    n, wall, cpu = min(batches, len(loader)), time.perf_counter(), time.thread_time()
    for _, _batch in zip(range(n), loader):
        pass
    return {"batches": n, "cpu_ms_per_batch": 1e3 * (time.thread_time() - cpu) / n,
            "ms_per_batch": 1e3 * (time.perf_counter() - wall) / n}


class StepLoader:
    """A DataLoader cut to `limit` batches; on_step(i, batch) as each is handed out, on_end() after the last."""

    def __init__(self, loader, limit: int, on_step=lambda i, batch: None, on_end=lambda: None) -> None:
        self.loader, self.limit, self.on_step, self.on_end, self.fetch_s = loader, limit, on_step, on_end, 0.0

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)

    def __getattr__(self, name: str):  # batch_sampler, dataset, ...
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        iterator = iter(self.loader)
        for i in range(len(self)):
            fetched = time.perf_counter()
            batch = next(iterator)
            self.fetch_s += time.perf_counter() - fetched
            self.on_step(i, batch)
            yield batch
        self.on_end()


class SyncCounter(TorchFunctionMode):
    """rows[(bucket, kind, caller)] = [calls in the steps, after them]; bucket: "sync", "host" or "async"."""

    def __init__(self, device=None, paused: int = 0) -> None:
        super().__init__()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rows, self.host, self.after, self.steps, self.paused = {}, {}, False, 0, paused

    def taint(self, tree):  # host data, for as long as the tensor lives
        for t in tree_flatten(tree)[0]:
            if torch.is_tensor(t) and id(t) not in self.host:
                self.host[id(t)] = weakref.finalize(t, self.host.pop, id(t), None)
        return tree

    def is_host(self, device) -> bool:  # on a CPU run a literal "cpu" is the host, torch.device("cpu") the device
        return torch.device(device).type == "cpu" and (self.device.type != "cpu" or isinstance(device, str))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out, name = func(*args, **kwargs), getattr(func, "__name__", "")
        if self.paused:
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)]
        dest = next((a for a in args[1:] if isinstance(a, (str, torch.device))), kwargs.get("device"))  # of .to()
        made_on = kwargs.get("device") if name not in ("to", "cuda") else None  # a factory's or *_like's device=
        on_host = self.is_host(made_on) if made_on is not None else all(id(t) in self.host for t in tensors)
        upload = on_host and (name == "cuda" or name == "to" and dest is not None and torch.device(dest) == self.device)
        kind = bucket = None
        if upload:
            kind, bucket = f"{name}(device)", "async" if kwargs.get("non_blocking") else "sync"
            out = out.view_as(out) if out is args[0] else out  # on the CPU .to(cpu) returns the host tensor itself
        elif name == "to" and dest is not None and not on_host and self.is_host(dest):
            kind, bucket = "to(cpu)", "async" if kwargs.get("non_blocking") else "sync"
        elif name in READS or name == "__getitem__" and any(t.dtype == torch.bool for t in tensors[1:]):
            kind, bucket = name, "host" if on_host or name == "numpy" else "sync"  # numpy(): CPU tensors only
        if kind:
            code = next(f.f_code for f, _ in walk_stack(sys._getframe()) if not f.f_code.co_filename.endswith(SKIP))
            where = "notebook" if code.co_filename.endswith(".ipynb") else code.co_filename.split("site-packages/")[-1]
            self.rows.setdefault((bucket, kind, f"{where}:{code.co_name}"), [0, 0])[self.after] += 1
        if on_host and not upload or kind == "to(cpu)" or name == "cpu":
            self.taint(out)
        return out


def count_syncs(lib, tmp: str, steps: int, **overrides) -> dict:
    """The host syncs of `steps` steps of lib.train_model on the smoke sizes, from the first step on."""
    config = tmp_config(lib, "smoke", tmp, max_pairs=max(200, steps * 40), show_progress=True, **overrides)
    counter, get_ds, fetch_batch = SyncCounter(paused=1), lib.get_ds, _BaseDataLoaderIter.__next__

    def on_step(i, batch):
        counter.paused -= counter.steps == 0  # counted from the first step on: setting the model up is no step
        counter.steps += 1
        counter.taint(batch)

    def fetch(iterator):  # a DataLoader's own work is host work: not counted
        counter.paused += 1
        try:
            return counter.taint(fetch_batch(iterator))
        finally:
            counter.paused -= 1

    def cut_get_ds(config, allow_downloads=True):
        train, *rest = get_ds(config, allow_downloads)
        return (StepLoader(train, steps, on_step, lambda: setattr(counter, "after", True)), *rest)

    lib.get_ds, _BaseDataLoaderIter.__next__ = cut_get_ds, fetch
    try:
        with counter, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            lib.train_model(config, allow_downloads=False)
    finally:
        lib.get_ds, _BaseDataLoaderIter.__next__ = get_ds, fetch_batch
    rows = {key: (n / counter.steps, after) for key, (n, after) in sorted(counter.rows.items())}
    syncs = {key: row for key, row in rows.items() if key[0] == "sync"}
    return {"steps": counter.steps, "rows": rows, "syncs_per_step": sum(n for n, _ in syncs.values()),
            "notebook_syncs_per_step": sum(n for key, (n, _) in syncs.items() if key[2].startswith("notebook")),
            "syncs_after": sum(after for _, after in syncs.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--profile", choices=("full", "cpu"), default="full", help="(a)'s profile")
    parser.add_argument("--batches", type=int, default=200, help="(a): batches timed")
    parser.add_argument("--steps", type=int, default=60, help="(b): optimizer steps counted")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lib = load_lib_cells(args.notebook, "assignment5_lib_bench_loader")
    with tempfile.TemporaryDirectory() as tmp:
        config = tmp_config(lib, args.profile, tmp)
        a = loader_ms_per_batch(lib.get_ds(config, allow_downloads=False)[0], args.batches)
        print(f"(a) loader, profile {args.profile} (seq_len {config['seq_len']}, <= {config['max_tokens']} padded "
              f"tokens a batch), {args.threads} thread(s), {a['batches']} batches: {a['cpu_ms_per_batch']:.1f} ms of "
              f"CPU per batch (wall {a['ms_per_batch']:.1f} ms)")
        b = count_syncs(lib, tmp, args.steps)
    print(f"(b) host syncs of lib.train_model (smoke sizes), {b['steps']} steps: {b['syncs_per_step']:.2f} per step "
          f"({b['notebook_syncs_per_step']:.2f} from the notebook's code), {b['syncs_after']} after the steps\n"
          "    sync: a GPU makes the host wait there; host: a read of host data (no wait); async: a non-blocking copy\n"
          f"    {'bucket':6} {'kind':16} {'called from':44} {'per step':>9} {'after':>7}")
    for (bucket, kind, where), (n, after) in b["rows"].items():
        print(f"    {bucket:6} {kind:16} {where:44} {n:9.2f} {after:7d}")
    return {"loader": a, "syncs": b}


if __name__ == "__main__":
    main()
