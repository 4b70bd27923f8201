"""Section 1: each part of the from-scratch Transformer against its contract."""
from __future__ import annotations

import math
import random

import pytest
import sacrebleu
import torch
import torch.nn as nn

torch.set_num_threads(2)


def toy_model(lib, vocab=20, seq_len=16, d_model=32, N=2, h=4, d_ff=64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return lib.build_transformer(vocab, vocab, seq_len, seq_len, d_model=d_model, N=N, h=h, dropout=dropout,
                                 d_ff=d_ff).eval()


# ---------------------------------------------------------------- Parts 1-9: the modules

def test_input_embeddings_scale(lib):
    emb = lib.InputEmbeddings(16, 10)
    x = torch.tensor([[1, 2, 3]])
    assert torch.allclose(emb(x), emb.embedding(x) * 4.0)


def test_positional_encoding_values_and_buffer(lib):
    d_model, seq_len = 8, 12
    pe = lib.PositionalEncoding(d_model, seq_len, dropout=0.5).eval()
    assert "pe" in dict(pe.named_buffers()) and not list(pe.parameters())
    for pos in (0, 3, 11):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert pe.pe[0, pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe.pe[0, pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    x = torch.randn(2, 5, d_model)
    assert torch.allclose(pe(x), x + pe.pe[:, :5])
    pe.train()
    assert (pe(torch.zeros(4, 12, d_model)) == 0).any()  # dropout is active in training


def test_layer_normalization_matches_torch(lib):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 4 + 2
    ours = lib.LayerNormalization(eps=1e-5, features=16)
    ref = nn.LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.alpha.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.alpha)
        ref.bias.copy_(ours.bias)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    scalar = lib.LayerNormalization(eps=1e-6)  # the seed's form: one alpha (=1), one bias (=0)
    assert scalar.alpha.shape == (1,) and scalar.alpha.item() == 1 and scalar.bias.item() == 0
    out = scalar(x)
    assert torch.allclose(out.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(3, 5), atol=1e-4)


def test_feed_forward_block(lib):
    ff = lib.FeedForwardBlock(8, 32, dropout=0.0)
    x = torch.randn(2, 3, 8)
    expected = ff.linear_2(torch.relu(ff.linear_1(x)))
    assert ff.linear_1.out_features == 32 and ff.linear_2.out_features == 8
    assert torch.allclose(ff(x), expected)


def test_multi_head_attention_requires_divisible_heads(lib):
    with pytest.raises(AssertionError):
        lib.MultiHeadAttentionBlock(10, 3, 0.0)


@pytest.mark.parametrize(("fused", "store_scores"), [(False, False), (False, True), (True, False), (True, True)],
                         ids=["static-attention", "static-attention-stored", "fused-sdpa", "fused-falls-back-stored"])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_torch(lib, fused, store_scores, causal):
    torch.manual_seed(0)
    d_model, h, batch, q_len = 16, 4, 3, 6
    block_class = lib.MultiHeadAttentionBlock
    if fused:
        block_class = lib.FusedMultiHeadAttentionBlock
    mha = block_class(d_model, h, dropout=0.0).eval()
    mha.store_attention_scores = store_scores
    ref = nn.MultiheadAttention(d_model, h, bias=False, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.w_q.weight, mha.w_k.weight, mha.w_v.weight]))
        ref.out_proj.weight.copy_(mha.w_o.weight)
    x = torch.randn(batch, q_len, d_model)
    lengths = torch.tensor([6, 4, 2])
    allowed = (torch.arange(q_len)[None, :] < lengths[:, None])  # (batch, k_len): real tokens
    mask = allowed[:, None, None, :].int()  # our convention: 1 = may attend
    if causal:
        mask = mask & lib.casual_mask(q_len).int()[:, None]
    ours = mha(x, x, x, mask)
    ref_mask = (mask[:, 0] == 0).repeat_interleave(h, dim=0)  # torch's convention: True = blocked
    if not causal:
        ref_mask = ref_mask.expand(-1, q_len, -1)
    expected, _ = ref(x, x, x, attn_mask=ref_mask, need_weights=False)
    assert torch.allclose(ours, expected, atol=1e-5)
    if not store_scores:
        assert mha.attention_scores is None
    if store_scores:
        assert mha.attention_scores.shape == (batch, h, q_len, q_len)
        assert torch.allclose(mha.attention_scores.sum(-1), torch.ones(batch, h, q_len))


def test_fused_path_equals_static_attention(lib):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    mask = (torch.rand(2, 1, 5, 5) > 0.3).int()
    mask[..., 0] = 1  # every query can see at least one key
    out, scores = lib.MultiHeadAttentionBlock.attention(q, k, v, mask, None)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask != 0)
    assert torch.allclose(out, fused, atol=1e-6)
    assert torch.allclose(scores.sum(-1), torch.ones(2, 4, 5))


def test_residual_connection_is_pre_norm(lib):
    res = lib.ResidualConnection(0.0, features=8)
    x = torch.randn(2, 3, 8)
    assert torch.allclose(res(x, lambda y: 2 * y), x + 2 * res.norm(x))


def test_transformer_shapes_and_log_probabilities(lib):
    model = toy_model(lib)
    src, tgt = torch.randint(4, 20, (2, 7)), torch.randint(4, 20, (2, 5))
    src_mask = torch.ones(2, 1, 1, 7, dtype=torch.int)
    out = model.project(model.decode(model.encode(src, src_mask), src_mask, tgt, lib.casual_mask(5).int()))
    assert out.shape == (2, 5, 20)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    n_params = sum(p.numel() for p in lib.build_transformer(100, 100, 10, 10).parameters())
    assert 40e6 < n_params < 50e6  # the paper's base model (d_model 512, N 6) with these small vocabularies


def test_decoder_has_no_future_leakage(lib):
    model = toy_model(lib)
    src = torch.randint(4, 20, (1, 6))
    src_mask = torch.ones(1, 1, 1, 6, dtype=torch.int)
    memory = model.encode(src, src_mask)
    tgt = torch.randint(4, 20, (1, 8))
    changed = tgt.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 20
    mask = lib.casual_mask(8).int()
    a = model.decode(memory, src_mask, tgt, mask)
    b = model.decode(memory, src_mask, changed, mask)
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6)  # positions before the change see nothing of it
    assert not torch.allclose(a[0, 5:], b[0, 5:])


@pytest.mark.parametrize("fused", [False, True], ids=["static-attention", "fused-attention"])
def test_cached_decode_step_equals_decode_over_the_prefix(lib, fused):
    """decode_step (the batched decoders' key/value cache) computes what model.decode computes over the whole prefix."""
    model = toy_model(lib)
    if fused:
        model = lib.apply_model_options(model, lib.get_config(fused_attention=True))
    src = torch.randint(4, 20, (2, 6))
    src_mask = torch.ones(2, 1, 1, 6, dtype=torch.int)
    src_mask[1, ..., 4:] = 0  # the second source is padded
    memory = model.encode(src, src_mask)
    tgt = torch.randint(4, 20, (2, 7))
    full = model.decode(memory, src_mask, tgt, lib.casual_mask(7).int())
    cache = lib.new_cache(model)
    steps = [lib.decode_step(model, memory, src_mask, tgt[:, t : t + 1], t, cache) for t in range(7)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert cache[0]["self"]["k"].shape[2] == 7 and cache[0]["cross"]["k"].shape[2] == 6


def test_casual_mask(lib):
    mask = lib.casual_mask(4)
    assert mask.shape == (1, 4, 4)
    assert torch.equal(mask[0].int(), torch.tril(torch.ones(4, 4)).int())
    assert torch.equal(mask, torch.triu(torch.ones(1, 4, 4), diagonal=1) == 0)  # the seed's textbook form


def test_batch_masks_equal_the_per_item_masks(lib, tokenizers):
    tok_src, tok_tgt, pairs = tokenizers
    ds = lib.BilingualBatches(pairs, tok_src, tok_tgt, "en", "it", 40)
    indices = [0, 5, 9]
    batch = ds.__getitems__(indices)
    encoder_mask, decoder_mask = lib.batch_masks(batch["encoder_input"], batch["decoder_input"], 1)
    src_len, tgt_len = batch["encoder_input"].shape[1], batch["decoder_input"].shape[1]
    for row, i in enumerate(indices):
        item = ds[i]
        assert torch.equal(batch["encoder_input"][row], item["encoder_input"][:src_len])
        assert torch.equal(batch["label"][row], item["label"][:tgt_len])
        assert torch.equal(encoder_mask[row, 0].int(), item["encoder_mask"][0, :, :src_len])
        assert torch.equal(decoder_mask[row, 0].int(), item["decoder_mask"][0, :tgt_len, :tgt_len].int())
    assert batch["tgt_tokens"] == int((batch["label"] != 1).sum())
    assert batch["src_tokens"] == int((batch["encoder_input"] != 1).sum())
    check = lib.batch_agrees_with_items(ds, indices)  # the notebook prints this check for a batch of its training run
    assert (check["source width"], check["target width"]) == (src_len, tgt_len)
    assert check["equal"] == dict.fromkeys(["encoder_input", "decoder_input", "label", "encoder_mask", "decoder_mask"], True)


def test_batch_check_notices_a_batch_that_differs_from_the_items(lib, tokenizers):
    tok_src, tok_tgt, pairs = tokenizers
    ds = lib.BilingualBatches(pairs, tok_src, tok_tgt, "en", "it", 40)
    indices = [0, 5, 9]
    built = ds.__getitems__(indices)
    ds.__getitems__ = lambda rows: built | {"label": built["label"].flip(0)}  # the labels of other rows
    equal = lib.batch_agrees_with_items(ds, indices)["equal"]
    assert not equal["label"]
    assert equal["encoder_input"] and equal["decoder_input"] and equal["encoder_mask"] and equal["decoder_mask"]


# ---------------------------------------------------------------- Parts 10-11: tokenizer and data

def synthetic_pairs(n=200, seed=0, vocab=30):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    pairs = []
    for i in range(n):
        sentence = [rng.choice(words) for _ in range(rng.randint(2, 8))]
        pairs.append({"id": str(i), "translation": {"en": " ".join(sentence),
                                                    "it": " ".join(w.upper() for w in reversed(sentence))}})
    return pairs


def write_tsv(path, pairs):
    lines = ["en\tit"] + [f"{p['translation']['en']}\t{p['translation']['it']}" for p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tokenizer_round_trip_and_corrupt_file(lib, tmp_path):
    config = lib.get_config(tokenizer_file=str(tmp_path / "tok_{0}.json"))
    pairs = synthetic_pairs()
    tokenizer = lib.build_tokenizer(config, pairs, "en")
    assert [tokenizer.token_to_id(t) for t in lib.SPECIAL_TOKENS] == [0, 1, 2, 3]
    reloaded = lib.build_tokenizer(config, [], "en")  # loads the saved file, no training data needed
    text = pairs[0]["translation"]["en"]
    assert reloaded.encode(text).ids == tokenizer.encode(text).ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert tokenizer.encode("neverseen").ids == [tokenizer.token_to_id("[UNK]")]
    (tmp_path / "tok_it.json").write_text("{ not json")
    with pytest.raises(ValueError, match="tok_it.json"):
        lib.build_tokenizer(config, pairs, "it")


@pytest.fixture()
def tokenizers(lib, tmp_path):
    config = lib.get_config(tokenizer_file=str(tmp_path / "tok_{0}.json"))
    pairs = synthetic_pairs()
    return lib.build_tokenizer(config, pairs, "en"), lib.build_tokenizer(config, pairs, "it"), pairs


def test_bilingual_dataset_layout_and_masks(lib, tokenizers):
    tok_src, tok_tgt, pairs = tokenizers
    seq_len = 12
    ds = lib.BilingualDataset(pairs, tok_src, tok_tgt, "en", "it", seq_len)
    item = ds[0]
    src_ids = tok_src.encode(pairs[0]["translation"]["en"]).ids
    tgt_ids = tok_tgt.encode(pairs[0]["translation"]["it"]).ids
    sos, eos, pad = 2, 3, 1
    assert item["encoder_input"].tolist() == [sos, *src_ids, eos] + [pad] * (seq_len - len(src_ids) - 2)
    assert item["decoder_input"].tolist() == [sos, *tgt_ids] + [pad] * (seq_len - len(tgt_ids) - 1)
    assert item["label"].tolist() == [*tgt_ids, eos] + [pad] * (seq_len - len(tgt_ids) - 1)
    assert item["encoder_mask"].shape == (1, 1, seq_len)
    assert item["encoder_mask"][0, 0].tolist() == [1] * (len(src_ids) + 2) + [0] * (seq_len - len(src_ids) - 2)
    n_real = len(tgt_ids) + 1
    expected = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.int)) * (torch.arange(seq_len) < n_real).int()
    assert item["decoder_mask"].shape == (1, seq_len, seq_len)
    assert torch.equal(item["decoder_mask"][0].int(), expected)
    assert item["src_text"] == pairs[0]["translation"]["en"] and item["tgt_text"] == pairs[0]["translation"]["it"]
    too_short = lib.BilingualDataset(pairs, tok_src, tok_tgt, "en", "it", seq_len=4)
    long_idx = next(i for i, p in enumerate(pairs) if len(p["translation"]["en"].split()) >= 5)
    with pytest.raises(ValueError, match="does not fit seq_len=4"):
        too_short[long_idx]


def test_length_grouped_batches_trim_without_losing_tokens(lib, tokenizers):
    tok_src, tok_tgt, pairs = tokenizers
    ds = lib.BilingualBatches(pairs, tok_src, tok_tgt, "en", "it", 40)
    loader = lib.pair_loader(ds, batch_size=16, shuffle=True, seed=3)
    seen = []
    for batch in loader:
        assert batch["encoder_input"].shape[1] <= 10 and batch["label"].shape[1] <= 9  # far below seq_len 40
        assert set(batch) >= {"encoder_input", "decoder_input", "label"} and "encoder_mask" not in batch
        assert (batch["encoder_input"][:, -1] != 1).any()  # trimmed to the longest item, no all-pad column
        seen += batch["src_text"]
    assert sorted(seen) == sorted(p["translation"]["en"] for p in pairs)
    sampler = loader.batch_sampler
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same order again after a resume


def test_get_ds_filters_and_counts_long_and_empty_pairs(lib, tmp_path, capsys):
    pairs = synthetic_pairs(100)
    pairs[3]["translation"]["en"] = "   "
    pairs[7]["translation"]["it"] = ""
    pairs[10]["translation"]["en"] = " ".join(["w1"] * 50)  # longer than seq_len
    pairs[20]["translation"] = dict(pairs[21]["translation"])  # an exact duplicate pair
    pairs[30]["translation"]["en"] = pairs[31]["translation"]["en"]  # one English sentence, two translations
    data = write_tsv(tmp_path / "pairs.tsv", pairs)
    config = lib.get_config(datasource=str(data), seq_len=20, batch_size=8, tokenizer_file=str(tmp_path / "t_{0}.json"))
    train, val, _, _ = lib.get_ds(config, allow_downloads=False)
    out = capsys.readouterr().out
    assert ("100 pairs loaded, 96 used: 2 dropped as empty, 1 as exact duplicates of another pair, "
            "1 as longer than seq_len=20") in out
    assert len(train.dataset) + len(val.dataset) == 96
    assert not set(train.dataset.src_texts) & set(val.dataset.src_texts)  # no validation source seen in training
    assert "validation sources also in training: 0" in out
    assert all(len(b["src_text"]) <= 8 for b in train)  # every batch builds, no ValueError mid-epoch


def test_bible_stand_in(lib):
    pairs = lib.load_bible_pairs("en", "it")
    assert len(pairs) == 31102
    john = next(p for p in pairs if p["id"] == "43.3.16")["translation"]
    assert john["en"].startswith("For God so loved the world") and "Iddio" in john["it"]
    with pytest.raises(ValueError, match="No Bible"):
        lib.load_bible_pairs("en", "xx")


def test_detokenize(lib):
    assert lib.detokenize("l ' uomo , disse : « vieni ! »") == "l'uomo, disse: «vieni!»"


def test_sacrebleu_identical_text_is_100():
    refs = ["Nel principio Iddio creò il cielo e la terra.", "E la terra era una cosa deserta e vacua."]
    assert sacrebleu.corpus_bleu(refs, [refs]).score == pytest.approx(100.0)
    assert sacrebleu.corpus_chrf(refs, [refs]).score == pytest.approx(100.0)


# ---------------------------------------------------------------- Part 12: decoding on a model that has learned

COPY_VOCAB, SOS, EOS, PAD = 14, 2, 3, 1


def copy_batch(n, rng, min_len=3, max_len=8):
    """Source: [SOS] digits [EOS] [PAD]...; target: the same digits. Tokens 4..13 are the 'digits'."""
    lengths = [rng.randint(min_len, max_len) for _ in range(n)]
    seqs = [[rng.randint(4, COPY_VOCAB - 1) for _ in range(k)] for k in lengths]
    width = max(lengths) + 2
    src = torch.tensor([[SOS, *s, EOS] + [PAD] * (width - len(s) - 2) for s in seqs])
    dec = torch.tensor([[SOS, *s] + [PAD] * (width - len(s) - 1) for s in seqs])
    lab = torch.tensor([[*s, EOS] + [PAD] * (width - len(s) - 1) for s in seqs])
    return src, dec, lab, seqs


class _CopyTokenizer:
    def token_to_id(self, token):
        return {"[UNK]": 0, "[PAD]": PAD, "[SOS]": SOS, "[EOS]": EOS}[token]


@pytest.fixture(scope="module")
def copy_model(lib):
    """The Annotated Transformer's sanity check: a tiny model learns to copy its input, on CPU, in seconds."""
    torch.manual_seed(0)
    rng = random.Random(0)
    model = lib.build_transformer(COPY_VOCAB, COPY_VOCAB, 16, 16, d_model=32, N=2, h=4, dropout=0.0, d_ff=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, eps=1e-9)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    model.train()
    for _ in range(800):
        src, dec, lab, _ = copy_batch(32, rng)
        src_mask = (src != PAD)[:, None, None, :].int()
        dec_mask = ((dec != PAD)[:, None, None, :] & lib.casual_mask(dec.size(1))[:, None]).int()
        out = model.project(model.decode(model.encode(src, src_mask), src_mask, dec, dec_mask))
        loss = loss_fn(out.reshape(-1, COPY_VOCAB), lab.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_tiny_model_learns_to_copy(lib, copy_model):
    src, _, _, seqs = copy_batch(64, random.Random(123))
    src_mask = (src != PAD)[:, None, None, :].int()
    out = lib.beam_search_decode_batch(copy_model, src, src_mask, SOS, EOS, PAD, 12, beam_size=1)
    exact = sum(row[1 : len(s) + 2] == [*s, EOS] for row, s in zip(out.tolist(), seqs))
    assert exact / len(seqs) >= 0.9


def test_batched_cached_greedy_equals_per_sentence_greedy(lib, copy_model):
    tok = _CopyTokenizer()
    src, _, _, seqs = copy_batch(12, random.Random(7))
    src_mask = (src != PAD)[:, None, None, :].int()
    batched = lib.beam_search_decode_batch(copy_model, src, src_mask, SOS, EOS, PAD, 12, beam_size=1)
    for i, s in enumerate(seqs):
        n = len(s) + 2
        single = lib.greedy_decode(copy_model, src[i : i + 1, :n], src_mask[i : i + 1, ..., :n], tok, tok, 12, "cpu")
        assert batched[i, : len(single)].tolist() == single.tolist()
        assert (batched[i, len(single) :] == PAD).all()
    # and on an untrained model, whose outputs never hit [EOS], every step of the cache must agree (its [PAD]
    # score is pushed down: a live hypothesis of the batched decoder never writes [PAD], the seed's greedy might)
    model = toy_model(lib, vocab=COPY_VOCAB)
    with torch.no_grad():
        model.projection_layer.proj.bias[PAD] = -1e4
    batched = lib.beam_search_decode_batch(model, src, src_mask, SOS, EOS, PAD, 10, beam_size=1)
    single = lib.greedy_decode(model, src[:1], src_mask[:1], tok, tok, 10, "cpu")
    assert batched[0, : len(single)].tolist() == single.tolist()


def test_beam_size_one_equals_greedy_and_beam_is_no_worse(lib, copy_model):
    tok = _CopyTokenizer()
    src, _, _, seqs = copy_batch(8, random.Random(11))
    src_mask = (src != PAD)[:, None, None, :].int()
    for i in range(len(seqs)):
        one_src, one_mask = src[i : i + 1], src_mask[i : i + 1]
        greedy = lib.greedy_decode(copy_model, one_src, one_mask, tok, tok, 12, "cpu")
        beam1 = lib.beam_search_decode_batch(copy_model, one_src, one_mask, SOS, EOS, PAD, 12, beam_size=1)[0]
        assert beam1[: len(greedy)].tolist() == greedy.tolist()
        beam4 = lib.beam_search_decode_batch(copy_model, one_src, one_mask, SOS, EOS, PAD, 12, beam_size=4)[0]
        assert beam4[0].item() == SOS and EOS in beam4.tolist()


def test_beam_search_returns_finished_hypothesis_on_untrained_model(lib):
    model = toy_model(lib, vocab=COPY_VOCAB)
    src = torch.tensor([[SOS, 5, 6, 7, EOS]])
    out = lib.beam_search_decode_batch(model, src, torch.ones(1, 1, 1, 5, dtype=torch.int), SOS, EOS, PAD, 9,
                                       beam_size=3)[0]
    assert out[0].item() == SOS and 2 <= len(out) <= 9



def test_batched_beam_search_equals_one_sentence_at_a_time(lib, copy_model):
    src, _, _, seqs = copy_batch(6, random.Random(5))
    src_mask = (src != PAD)[:, None, None, :].int()
    batched = lib.beam_search_decode_batch(copy_model, src, src_mask, SOS, EOS, PAD, 12, beam_size=3)
    for i, seq in enumerate(seqs):
        n = len(seq) + 2
        single = lib.beam_search_decode_batch(copy_model, src[i : i + 1, :n], src_mask[i : i + 1, ..., :n],
                                              SOS, EOS, PAD, 12, beam_size=3)[0]
        single = single[: int((single != PAD).sum())]  # [PAD] only follows [EOS]
        assert batched[i, : len(single)].tolist() == single.tolist()
        assert (batched[i, len(single) :] == PAD).all()


def test_decoders_can_ban_unk(lib):
    """allow_unk=False: greedy_decode and the batched decoder write the best known word where the model prefers
    [UNK] (id 0), and nothing else changes: the other steps are the plain decoder's."""
    tok = _CopyTokenizer()
    model = toy_model(lib, vocab=COPY_VOCAB)
    with torch.no_grad():
        model.projection_layer.proj.bias[0] = 50.0  # [UNK] wins every step unless banned
        model.projection_layer.proj.bias[PAD] = -1e4
    src = torch.tensor([[SOS, 5, 6, 7, EOS]])
    src_mask = torch.ones(1, 1, 1, 5, dtype=torch.int)
    assert 0 in lib.greedy_decode(model, src, src_mask, tok, tok, 8, "cpu").tolist()
    greedy = lib.greedy_decode(model, src, src_mask, tok, tok, 8, "cpu", allow_unk=False)
    assert 0 not in greedy.tolist()
    for beam_size in (1, 3):
        out = lib.beam_search_decode_batch(model, src, src_mask, SOS, EOS, PAD, 8, beam_size, banned_idx=0)[0]
        assert 0 not in out.tolist()
    banned_greedy = lib.beam_search_decode_batch(model, src, src_mask, SOS, EOS, PAD, 8, 1, banned_idx=0)[0]
    assert banned_greedy[: len(greedy)].tolist() == greedy.tolist()


def test_forbid_bans_unk_and_the_third_copy_in_a_row(lib):
    tokens = torch.tensor([[SOS, 5, 6, 5, 6, 5],  # "5 6" twice and a "5": a third "6" would loop
                           [SOS, 9, 9, 9, 7, 7],  # "7 7": a third 7 would loop
                           [SOS, 5, 6, 5, 7, 5]])  # nothing repeats in a row
    log_probs = torch.zeros(3, COPY_VOCAB)
    lib.forbid(log_probs, tokens, banned_idx=0, repeat_guard=2)
    banned = {(r, c) for r, c in (log_probs == float("-inf")).nonzero().tolist()}
    assert banned == {(0, 0), (1, 0), (2, 0), (0, 6), (1, 7)}
    log_probs = torch.zeros(3, COPY_VOCAB)
    lib.forbid(log_probs, tokens, repeat_guard=1)  # single tokens only: "5 6" may come a third time
    assert {(r, c) for r, c in (log_probs == float("-inf")).nonzero().tolist()} == {(1, 7)}


def test_repeat_guard_keeps_decoders_out_of_loops(lib):
    """A model that prefers one word at every step writes it at most twice in a row under the guard."""
    tok = _CopyTokenizer()
    model = toy_model(lib, vocab=COPY_VOCAB)
    with torch.no_grad():
        model.projection_layer.proj.bias[5] = 50.0
        model.projection_layer.proj.bias[PAD] = -1e4
    src = torch.tensor([[SOS, 5, 6, 7, EOS]])
    src_mask = torch.ones(1, 1, 1, 5, dtype=torch.int)
    plain = lib.greedy_decode(model, src, src_mask, tok, tok, 10, "cpu").tolist()
    assert plain[1:4] == [5, 5, 5]
    guarded = lib.greedy_decode(model, src, src_mask, tok, tok, 10, "cpu", repeat_guard=1).tolist()
    batched = lib.beam_search_decode_batch(model, src, src_mask, SOS, EOS, PAD, 10, 1, repeat_guard=1)[0].tolist()
    assert batched[: len(guarded)] == guarded
    for out in (guarded, lib.beam_search_decode_batch(model, src, src_mask, SOS, EOS, PAD, 10, 3, repeat_guard=1)[0].tolist()):
        assert not any(out[i] == out[i + 1] == out[i + 2] != PAD for i in range(len(out) - 2)), out


@pytest.mark.parametrize(("text", "looping"), [
    ("E, avendo per, per, e per, e per, e per, e le, e.", True),
    ("e disse: molto molto molto bene", True),
    ("il re il re disse al re", False),
    ("In principio Iddio creò il cielo e la terra.", False),
    ("", False),
])
def test_repetition_loop_detection(lib, text, looping):
    assert lib.has_repetition_loop(text) is looping


def test_ids_to_text_shows_unk_and_unk_share_counts_it(lib, tokenizers):
    _, tok, _ = tokenizers
    ids = [tok.token_to_id("[SOS]"), tok.token_to_id("[UNK]"), tok.token_to_id("[EOS]"), tok.token_to_id("[PAD]")]
    assert lib.ids_to_text(tok, ids) == "[UNK]"  # shown, and scored, as the model wrote it
    assert not hasattr(lib, "without_unk")  # no second form of the output: what is shown is what is scored
    assert lib.unk_share([lib.ids_to_text(tok, ids)], tok) == 1.0  # a written [UNK] is one unknown token
    assert lib.unk_share(["zzqx"], tok) == 1.0 and lib.unk_share([], tok) == 0.0
    assert lib.unk_share(["zzqx [UNK]"], tok, written_only=True) == 0.5  # only the written one counts


def test_training_loss_on_logits_equals_loss_on_log_probabilities(lib):
    model = toy_model(lib, dropout=0.0).train()
    x = torch.randn(3, 5, 32, requires_grad=True)
    labels = torch.randint(0, 20, (15,))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    logits_loss = loss_fn(model.projection_layer.logits(x).view(-1, 20), labels)
    (grad_logits,) = torch.autograd.grad(logits_loss, x)
    log_prob_loss = loss_fn(model.project(x).view(-1, 20), labels)
    (grad_log_probs,) = torch.autograd.grad(log_prob_loss, x)
    assert torch.allclose(logits_loss, log_prob_loss, atol=1e-6)
    assert torch.allclose(grad_logits, grad_log_probs, atol=1e-6)


@pytest.mark.parametrize("features", [16, None])
def test_layer_normalization_is_the_textbook_formula(lib, features):
    torch.manual_seed(1)
    norm = lib.LayerNormalization(eps=1e-6, features=features)
    with torch.no_grad():
        norm.alpha.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 7, 16, requires_grad=True)
    # the seed's formula, mean and standard deviation over the last dimension, against PyTorch's layer norm
    textbook = norm.alpha * torch.nn.functional.layer_norm(x, (16,), eps=0.0) + norm.bias
    ours = norm(x)
    assert torch.allclose(ours, textbook, atol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), [x, norm.alpha, norm.bias])
    expected = torch.autograd.grad(textbook.square().sum(), [x, norm.alpha, norm.bias])
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-4)


def test_token_budget_batches_cover_every_item_once(lib):
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(500)]
    sampler = lib.LengthGroupedBatchSampler(lengths, batch_size=64, shuffle=True, seed=1, max_tokens=400)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 400
    assert max(map(len, batches)) > 8  # short sentences travel in large batches


def test_learning_rate_schedule(lib):
    factor = lib.learning_rate_factor
    assert factor(0, 10, 100) == pytest.approx(0.1) and factor(9, 10, 100) == 1.0
    assert factor(50, 10, 100) == 1.0  # constant after warm-up, as in the seed
    assert factor(10, 10, 110, "cosine") == 1.0 and factor(60, 10, 110, "cosine") == pytest.approx(0.5)
    assert factor(110, 10, 110, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert factor(60, 10, 110, "linear") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        factor(60, 10, 110, "exponential")


# ---------------------------------------------------------------- Part 13: training, checkpoints, resume

def tiny_config(lib, tmp_path, data, **overrides):
    return lib.get_config(**{
        "datasource": str(data), "seq_len": 16, "d_model": 16, "N": 1, "h": 2, "d_ff": 32, "batch_size": 16,
        "num_epochs": 2, "lr": 1e-3, "model_folder": str(tmp_path / "weights"), "experiment_name": str(tmp_path / "runs"),
        "tokenizer_file": str(tmp_path / "tok_{0}.json"), "show_progress": False, "num_examples": 1, **overrides})


def test_get_config_defaults_and_overrides(lib):
    config = lib.get_config()
    assert (config["d_model"], config["N"], config["h"], config["d_ff"], config["seq_len"]) == (512, 6, 8, 2048, 350)
    assert config["datasource"] == "Helsinki-NLP/opus_books" and (config["lang_src"], config["lang_tgt"]) == ("en", "it")
    assert lib.get_config(batch_size=3)["batch_size"] == 3
    with pytest.raises(KeyError):
        lib.get_config(batch_sise=3)
    assert lib.get_weights_file_path(config, "07").endswith("weights/tmodel_07.pt")


def test_adam_betas_come_from_the_config(lib, tmp_path):
    assert lib.get_config()["adam_betas"] == (0.9, 0.999)  # the seed's optimizer: PyTorch's default
    assert lib.get_config(**lib.TRANSLATION_PROFILES["full"])["adam_betas"] == (0.9, 0.98)  # the paper's
    data = write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(60))
    lib.train_model(tiny_config(lib, tmp_path, data, num_epochs=1, adam_betas=(0.8, 0.95)))
    checkpoint = torch.load(tmp_path / "weights" / "tmodel_00.pt", weights_only=False)
    assert checkpoint["optimizer_state_dict"]["param_groups"][0]["betas"] == (0.8, 0.95)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_checkpoint_resume_is_exact(lib, tmp_path, precision):
    data = write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(120))
    chosen = lib.choose_precision("cpu", precision)  # fp16 runs the GPU's path: CPU autocast and a live GradScaler
    assert chosen.grad_scaler().is_enabled() == (precision == "fp16")
    straight = lib.train_model(tiny_config(lib, tmp_path / "a", data, log_every=2), precision=chosen)
    lib.train_model(tiny_config(lib, tmp_path / "b", data, num_epochs=1, log_every=2), precision=chosen)
    checkpoint = torch.load(tmp_path / "b" / "weights" / "tmodel_00.pt", weights_only=False)
    assert {"model_state_dict", "optimizer_state_dict", "scaler_state_dict", "scheduler_state_dict", "rng_states",
            "epoch", "global_step"} <= set(checkpoint)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == len(straight["train_dataloader"])
    resumed = lib.train_model(tiny_config(lib, tmp_path / "b", data, preload="latest", log_every=2), precision=chosen)
    assert resumed["val_dataloader"].dataset.src_texts == straight["val_dataloader"].dataset.src_texts
    for (name, a), (_, b) in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["train_loss"] == pytest.approx(straight["history"][1]["train_loss"], rel=1e-5)
    # the logged training losses travel in the checkpoint: the resumed run has the first epoch's too
    assert [step for step, _ in resumed["step_losses"]] == [step for step, _ in straight["step_losses"]]
    assert len(straight["step_losses"]) == straight["history"][-1]["steps"] // 2  # log_every=2
    assert [loss for _, loss in resumed["step_losses"]] == pytest.approx(
        [loss for _, loss in straight["step_losses"]], rel=1e-5)
    assert not list((tmp_path / "b" / "weights").glob("*.tmp"))  # atomic writes leave nothing behind
    assert sorted(p.name for p in (tmp_path / "b" / "weights").glob("*.pt")) == ["tmodel_01.pt"]  # only the latest


def test_rng_states_survive_a_checkpoint_loaded_to_another_device(lib, tmp_path):
    """A GPU run used to load checkpoints with map_location=device, which moved the RNG state off the CPU and
    made torch.set_rng_state raise. "meta" stands in for any non-CPU location on this machine."""
    lib.set_seed(3)
    path = tmp_path / "ckpt.pt"
    torch.save({"rng_states": lib.rng_states(), "tensor": torch.ones(2)}, path)
    expected = (random.random(), torch.rand(3))
    state = torch.load(path, map_location="meta", weights_only=False)
    assert state["tensor"].device.type == "meta"
    lib.restore_rng_states(state["rng_states"])
    again = (random.random(), torch.rand(3))
    assert again[0] == expected[0] and torch.equal(again[1], expected[1])
    assert lib.load_checkpoint(str(path))["tensor"].device.type == "cpu"


def test_optimizer_step_skips_the_schedule_with_the_skipped_fp16_step(lib, recwarn):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = lib.warmup_schedule(optimizer, warmup_steps=10, total_steps=100, decay="linear")
    scaler = lib.Precision("fp16", "cpu", "test").grad_scaler()
    before = model.weight.detach().clone()
    loss = model(torch.ones(1, 3)).sum() * float("inf")  # overflowing gradients: the scaler must skip this step
    assert lib.optimizer_step(loss, optimizer, scaler, model.parameters(), scheduler=scheduler) is False
    assert torch.equal(model.weight, before) and scheduler.last_epoch == 0
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert lib.optimizer_step(model(torch.ones(1, 3)).sum(), optimizer, scaler, model.parameters(), scheduler=scheduler)
    assert scheduler.last_epoch == 1 and not torch.equal(model.weight, before)


def test_forced_precision(lib):
    assert lib.choose_precision("cpu").name == "fp32"
    assert lib.choose_precision("cpu", "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="PRECISION"):
        lib.choose_precision("cpu", "fp8")


def test_near_duplicates_are_found_in_training(lib):
    train = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void.",
             "The LORD is my shepherd; I shall not want."]
    texts = ["In the beginning God created the heaven and the earth.",  # verbatim
             "In the beginning God made the heaven and the earth.",  # one word changed
             "Blessed are the meek: for they shall inherit it."]  # new
    similarity = lib.nearest_training_similarity(train, texts, chunk=2)  # chunks of 2: the last one is partial
    assert similarity.shape == (3,)
    assert similarity[0] == pytest.approx(1.0)
    assert similarity[1] >= lib.NEAR_DUPLICATE > similarity[2]


def test_tied_embeddings_share_one_matrix(lib):
    untied = lib.build_transformer(30, 40, 12, 12, d_model=16, N=1, h=2, d_ff=32)
    tied = lib.apply_model_options(lib.build_transformer(30, 40, 12, 12, d_model=16, N=1, h=2, d_ff=32),
                                   lib.get_config(tie_embeddings=True))
    assert tied.projection_layer.proj.weight is tied.tgt_embed.embedding.weight
    assert untied.projection_layer.proj.weight is not untied.tgt_embed.embedding.weight
    count = lib.model_parameter_counts
    assert count(untied)[1] - count(tied)[1] == 40 * 16  # one (vocab x d_model) matrix fewer
    config = lib.get_config(tie_embeddings=True, d_model=16, N=1, h=2, d_ff=32)
    model = lib.get_model(config, 30, 40)
    assert model.projection_layer.proj.weight is model.tgt_embed.embedding.weight


def test_config_reads_adam_epsilon(lib):
    assert lib.get_config()["eps"] == 1e-9
    assert lib.get_config(eps=1e-8)["eps"] == 1e-8


def test_checkpoint_of_another_model_is_not_preloaded(lib, tmp_path, capsys):
    data = write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(60))
    lib.train_model(tiny_config(lib, tmp_path, data, num_epochs=1))
    wider = lib.train_model(tiny_config(lib, tmp_path, data, num_epochs=1, d_ff=48, preload="latest"))
    assert "Not preloading" in capsys.readouterr().out and "d_ff 32 -> 48" in lib.changed_settings(
        lib.get_config(d_ff=32), lib.get_config(d_ff=48))
    assert [h["epoch"] for h in wider["history"]] == [1]  # trained from scratch, not resumed
    assert wider["model"].encoder.layers[0].feed_forward_block.linear_1.out_features == 48
    assert lib.changed_settings(lib.get_config(), lib.get_config(num_epochs=30)) == ""  # more epochs: resumable
