"""bench/bench_vs_nn_transformer.py: the nn.Transformer reference behaves like ours, and --quick runs."""
from __future__ import annotations

import pytest
import torch
from conftest import load_bench

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_vs_nn_transformer")


def test_reference_cached_greedy_decode_equals_uncached(lib, bench):
    torch.manual_seed(0)
    vocab, seq_len, pad, sos, eos = 30, 16, 1, 2, 3
    model = bench.TorchTransformer(lib, vocab, vocab, seq_len, seq_len, d_model=32, N=2, h=4, dropout=0.0,
                                   d_ff=64).eval()
    lengths = [7, 4, 9]
    source = torch.full((len(lengths), max(lengths)), pad)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randint(4, vocab, (n,))
    source_mask = (source != pad).unsqueeze(1).unsqueeze(1).int()

    with torch.no_grad():  # the decoder's outputs, one position at a time through the cache == all at once
        memory = model.encode(source, source_mask)
        tgt = torch.randint(4, vocab, (len(lengths), 6))
        full = model.decode(memory, source_mask, tgt, lib.casual_mask(6).int().unsqueeze(0))
        cache = model.decoder.new_cache()
        stepped = torch.cat([model.decode(memory, source_mask, tgt[:, t : t + 1], None, cache=cache, start=t)
                             for t in range(6)], dim=1)
    assert torch.allclose(full, stepped, atol=1e-5)

    cached = lib.greedy_decode_batch(model, source, source_mask, sos, eos, pad, max_len=seq_len)
    tokenizer = type("Tok", (), {"token_to_id": staticmethod({"[SOS]": sos, "[EOS]": eos}.__getitem__)})()
    for i, n in enumerate(lengths):  # the notebook's uncached one-sentence decoder
        uncached = lib.greedy_decode(model, source[i : i + 1, :n], source_mask[i : i + 1, ..., :n], None, tokenizer,
                                     seq_len, "cpu")
        row = cached[i][: len(uncached)]
        assert torch.equal(row, uncached)
        assert (cached[i][len(uncached) :] == pad).all()


def test_reference_computes_our_function_given_our_weights(lib, bench):
    torch.manual_seed(0)
    vocab, seq_len, pad = 40, 20, 1
    sizes = {"d_model": 32, "N": 2, "h": 4, "dropout": 0.0, "d_ff": 64}
    ours = lib.build_transformer(vocab, vocab, seq_len, seq_len, **sizes).eval()
    ref = bench.TorchTransformer(lib, vocab, vocab, seq_len, seq_len, **sizes).eval()
    bench.copy_weights_from_ours(ref, ours)
    src, tgt = torch.randint(4, vocab, (3, 9)), torch.randint(4, vocab, (3, 7))
    src[0, 6:], src[2, 4:], tgt[1, 5:] = pad, pad, pad  # padded sources and target
    src_mask = (src != pad).unsqueeze(1).unsqueeze(1).int()
    tgt_mask = ((tgt != pad).unsqueeze(1).int() & lib.casual_mask(7)).unsqueeze(1)
    with torch.no_grad():
        a = ours.decode(ours.encode(src, src_mask), src_mask, tgt, tgt_mask)
        b = ref.decode(ref.encode(src, src_mask), src_mask, tgt, tgt_mask)
    real = tgt != pad  # outputs at [PAD] queries are never used
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_quick_run(lib, bench, capsys):
    results = bench.main(["--quick", "--parts", "steps,quality", "--equal-time-minutes", "0.02"], lib=lib)
    out = capsys.readouterr().out
    assert set(results["steps"]) == {"cpu", "paper"} and all(r["ours"] > 0 and r["ref"] > 0
                                                           for r in results["steps"].values())
    quality = results["quality"]
    assert quality["ours"]["steps"] > 0 and quality["nn.Transformer"]["steps"] > 0
    assert out.count("CLAIM") == 3


def test_cpu_recipe_held_out_pairs_never_reach_training(lib, tmp_path):
    recipe = load_bench("bench_cpu_recipe")
    pairs = lib.load_bible_pairs("en", "it")
    held_out = [(p["translation"]["en"], p["translation"]["it"]) for p in pairs[100:110]]
    path = tmp_path / "rest.jsonl"
    n_kept = recipe.pairs_without(lib, held_out, path)
    rest = lib.load_local_pairs(path, "en", "it")  # read back the way the recipe's datasource is
    assert n_kept == len(rest) == len(pairs) - 10
    assert not set(held_out) & {(p["translation"]["en"], p["translation"]["it"]) for p in rest}
    assert recipe.SUBSET["num_epochs"] == 12 and recipe.SUBSET["max_pairs"] == recipe.BEFORE["max_pairs"]
