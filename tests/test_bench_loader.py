"""bench/bench_loader.py: the host-sync counter on tensors made here, and both measurements on tiny configs."""
from __future__ import annotations

import pytest
import torch
from conftest import load_bench


@pytest.fixture(scope="module")
def bench_loader():
    return load_bench("bench_loader", "bench_loader_under_test")


def reads_twice(t: torch.Tensor) -> float:
    return t.item() + t.item()


def test_sync_counter_counts_reads_of_device_data_and_blocking_uploads(bench_loader):
    counter = bench_loader.SyncCounter(device="cpu")
    with counter:
        on_device = torch.ones((), device=counter.device)  # device= : where a GPU run would hold it
        reads_twice(on_device)
        float(on_device * 2)
        host = torch.tensor([1, 2, 3])  # no device= : host data, as a DataLoader's output
        int(host.sum())  # a read of host data: no GPU sync
        uploaded = host.to(counter.device)  # blocking upload
        host.to(counter.device, non_blocking=True)
        int(uploaded.sum())  # the upload is device data
        assert uploaded[uploaded > 1].numel() == 2  # boolean indexing: a value-dependent shape
    here = "test_sync_counter_counts_reads_of_device_data_and_blocking_uploads"
    rows = {(bucket, kind, where.rsplit(":", 1)[1]): n for (bucket, kind, where), (n, _) in counter.rows.items()}
    assert rows == {("sync", "item", "reads_twice"): 2, ("sync", "__float__", here): 1, ("host", "__int__", here): 1,
                    ("sync", "to(device)", here): 1, ("async", "to(device)", here): 1, ("sync", "__int__", here): 1,
                    ("sync", "__getitem__", here): 1}
    assert all(where.split(":")[0].endswith("test_bench_loader.py") for _, _, where in counter.rows)


def test_loader_timing_needs_no_particular_batch_keys(bench_loader, lib, tmp_path):
    plain = torch.utils.data.DataLoader(list(range(10)), batch_size=4, collate_fn=lambda xs: {"x": torch.tensor(xs)})
    assert bench_loader.loader_ms_per_batch(plain, 100)["batches"] == 3  # capped at the loader's length
    config = bench_loader.tmp_config(lib, "smoke", str(tmp_path), max_pairs=200)
    timing = bench_loader.loader_ms_per_batch(lib.get_ds(config, allow_downloads=False)[0], 3)
    assert timing["batches"] == 3 and timing["ms_per_batch"] > 0 and timing["cpu_ms_per_batch"] > 0


def test_count_syncs_sees_one_more_read_per_step(bench_loader, lib, tmp_path, monkeypatch):
    base = bench_loader.count_syncs(lib, str(tmp_path / "a"), steps=4)
    assert base["steps"] == 4 and base["syncs_after"] > 0  # validation and checkpoint read values after the steps
    compute_loss = lib.compute_loss

    def compute_loss_and_read(*args, **kwargs):
        out = compute_loss(*args, **kwargs)
        (out[0] if isinstance(out, tuple) else out).item()  # one more sync per step (and per validation batch)
        return out

    monkeypatch.setattr(lib, "compute_loss", compute_loss_and_read)
    more = bench_loader.count_syncs(lib, str(tmp_path / "b"), steps=4)
    assert more["steps"] == 4
    assert more["syncs_per_step"] == pytest.approx(base["syncs_per_step"] + 1)
    assert more["rows"][("sync", "item", f"{__file__}:compute_loss_and_read")][0] == 1
