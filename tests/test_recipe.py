"""The scratch recipe's pieces: span corruption, open-form copies, the development slice,
label-token weights and keeping the best epoch."""
import random
from collections import Counter

import pytest
import torch

from wmg.batching import Collator, encode_causal, encode_seq2seq, type_weights
from wmg.config import REGISTRY, SCRATCH_DEFAULTS
from wmg.data import Example, instruction_form, load_jsonl
from wmg.models import build_scratch
from wmg.recipe import (OPEN_INSTRUCTION, dev_score, dev_slice, names_its_label, open_copies, sentinel_tokens,
                        span_corrupt, tapt_examples)
from wmg.train import token_loss_sum, train

from wmg.data import bundled_data

BUNDLED = bundled_data()

SENT = list(range(1000, 1100))
EOS = 1


def _reconstruct(inp, tgt, sentinels=frozenset(SENT)):
    """The original sequence from a span-corrupted pair: each sentinel replaced by what follows it in the target."""
    spans, cur = {}, None
    for t in tgt[:-1]:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inp[:-1]:
        out += spans[t] if t in sentinels else [t]
    return out


@pytest.mark.parametrize("n", [2, 3, 7, 20, 100, 257])
def test_span_corruption_hides_15_percent_behind_sentinels_and_loses_nothing(n):
    ids = list(range(10, 10 + n))
    for seed in range(20):
        inp, tgt = span_corrupt(ids, SENT, EOS, random.Random(seed))
        assert inp[-1] == EOS and tgt[-1] == EOS
        assert _reconstruct(inp, tgt) == ids
        used = [t for t in inp if t in SENT]
        assert used == SENT[:len(used)] and [t for t in tgt if t in SENT] == used  # in order, each once
        hidden = len(tgt) - 1 - len(used)
        assert hidden == min(max(1, round(n * 0.15)), n - 1)
        assert not any(a in SENT and b in SENT for a, b in zip(inp, inp[1:]))  # spans are separated


def test_span_corruption_mean_span_is_three_and_masks_move():
    ids = list(range(10, 310))
    lengths, masks = [], set()
    for seed in range(50):
        inp, tgt = span_corrupt(ids, SENT, EOS, random.Random(seed))
        masks.add(tuple(inp))
        run = 0
        for t in tgt[1:]:
            if t in SENT or t == EOS:
                lengths.append(run)
                run = 0
            else:
                run += 1
    assert len(masks) == 50
    assert 2.7 <= sum(lengths) / len(lengths) <= 3.3 and min(lengths) >= 1


def test_tapt_examples_use_only_the_given_texts_and_the_tokenizers_sentinels():
    spec = REGISTRY["flan-t5-small"]
    texts = ["The scan cycle reads inputs, runs the program and writes outputs.",
             "A retentive timer keeps its elapsed time across a power failure."]
    _, tok = build_scratch(spec, texts * 3, vocab_size=300, overrides={"num_layers": 1, "num_decoder_layers": 1,
                                                                        "d_model": 16, "d_ff": 16, "num_heads": 2, "d_kv": 8})
    sentinels = set(tok.convert_tokens_to_ids(sentinel_tokens()))
    assert len(sentinels) == 100 and tok.unk_token_id not in sentinels
    data = tapt_examples(tok, texts, "seq2seq", 3, seed=1, max_len=64)
    assert len(data) == 6  # a fresh mask per epoch
    bodies = {tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in texts}
    for e in data:
        assert any(t in sentinels for t in e.input_ids) and e.labels[0] in sentinels
        assert tuple(_reconstruct(e.input_ids, e.labels, sentinels)) in bodies
    causal = tapt_examples(tok, texts, "causal", 3, seed=1, max_len=64)
    assert len(causal) == 6 and all(e.labels == e.input_ids for e in causal)
    quotes = tapt_examples(tok, texts, "seq2seq", 2, seed=1, max_len=96, denoise=False, quotes=2)
    assert len(quotes) == 8
    for e in quotes:
        answer = tok.decode(e.labels, skip_special_tokens=True)
        assert answer.startswith("location: ") and answer[len("location: "):] in " ".join(texts)
        assert 3 <= len(answer.split()) - 1 <= 10


def test_pipeline_pretrains_on_the_training_split_only_and_records_the_kept_epoch(tmp_path, monkeypatch):
    import wmg.recipe as recipe
    from wmg.pipeline import TrainOptions, train_run
    from wmg.store import Store

    seen = []
    real = recipe.tapt_examples

    def spy(tok, texts, *a, **k):
        seen.append(list(texts))
        return real(tok, texts, *a, **k)

    monkeypatch.setattr(recipe, "tapt_examples", spy)
    db = str(tmp_path / "r.db")
    opts = TrainOptions(data=str(BUNDLED), models="flan-t5-small,distilgpt2", examples=60, tiny=True,
                        checkpoints=str(tmp_path / "ck"), progress=False, folds=3, fold=2,
                        overrides={"epochs": 3, "tapt_epochs": 2, "dev_fraction": 0.2})
    store = Store(db)
    run_id = train_run(store, opts, echo=lambda *a: None)
    held_out = {x.input for x in store.run_examples(run_id, "validation")}
    train_inputs = {x.input for x in store.run_examples(run_id, "train")}
    assert len(seen) == 2
    for texts in seen:
        assert texts and not set(texts) & held_out and set(texts) < train_inputs  # the dev slice is left out too
    import sqlite3

    with sqlite3.connect(db) as conn:
        peaks = [p for (p,) in conn.execute("SELECT peak_rss_mb FROM run_models")]
        assert len(peaks) == 2 and all(100 < p < 24_000 for p in peaks)  # torch alone holds more than 100 MB
        for rm_id, chosen in conn.execute("SELECT id, chosen_epoch FROM run_models").fetchall():
            rows = conn.execute("SELECT epoch, dev_accuracy, dev_format FROM epoch_losses WHERE run_model_id = ? "
                                "ORDER BY epoch", (rm_id,)).fetchall()
            assert [r[0] for r in rows] == [1, 2, 3] and all(r[1] is not None for r in rows)
            best = max(rows, key=lambda r: (r[1], r[2], r[0]))  # accuracy, then format, then the later epoch
            assert chosen == best[0]


def test_open_copies_add_the_open_form_only_where_the_instruction_names_the_label():
    ex = load_jsonl(BUNDLED)
    out = open_copies(ex)
    copies = out[len(ex):]
    named = [e for e in ex if names_its_label(e)]
    assert out[:len(ex)] == ex and len(copies) == len(named) > 200
    assert all(c.instruction == OPEN_INSTRUCTION and instruction_form(c.instruction) == "open" for c in copies)
    assert [(c.index, c.input, c.output) for c in copies] == [(e.index, e.input, e.output) for e in named]
    assert not any(names_its_label(e) for e in ex if instruction_form(e.instruction) == "open")


def test_dev_slice_is_a_stratified_disjoint_tenth_and_reproducible():
    ex = load_jsonl(BUNDLED)
    rest, dev = dev_slice(ex, 0.1, 42)
    assert sorted(e.index for e in rest + dev) == [e.index for e in ex]
    assert abs(len(dev) - len(ex) / 10) <= 4 and dev_slice(ex, 0.1, 42) == (rest, dev) and dev_slice(ex, 0.1, 43)[1] != dev
    full, part = Counter(e.gold_type for e in ex), Counter(e.gold_type for e in dev)
    assert all(abs(part[k] - full[k] / 10) <= 1 for k in full)
    assert dev_slice(ex[:10], 0.1, 1) == (ex[:10], [])  # too few to spare one


def test_dev_score_is_gold_accuracy_then_format():
    dev = [Example(0, "i", "x", "gadget_type: ReadWrite gadget; location: a; explanation: b"),
           Example(1, "i", "y", "gadget_type: Composition gadget; location: a; explanation: b")]
    outs = ["gadget_type: Read/Write gadget; location: q; explanation: r", "gadget_type: Composition gadget"]
    assert dev_score(outs, dev) == (1.0, 0.5)
    assert dev_score(["nonsense", "gadget_type: ReadWrite gadget; location: q; explanation: r"], dev) == (0.0, 0.5)


def test_type_weights_fall_on_the_label_tokens_of_both_tokenizers():
    corpus = [l.input + " " + l.output for l in load_jsonl(BUNDLED)[:80]]
    answer = "gadget_type: Control-Flow gadget; location: RETURN; explanation: skips the checks"
    for name in ("flan-t5-small", "distilgpt2"):
        _, tok = build_scratch(REGISTRY[name], corpus, vocab_size=400,
                               overrides={"num_layers": 1, "num_decoder_layers": 1, "d_model": 16, "d_ff": 16,
                                          "num_heads": 2, "d_kv": 8} if name == "flan-t5-small" else
                               {"n_layer": 1, "n_embd": 16, "n_head": 2})
        ids = tok(answer, add_special_tokens=False)["input_ids"]
        w = type_weights(tok, answer, len(ids), 7.0, False)
        heavy = tok.decode([i for i, x in zip(ids, w) if x == 7.0]).strip()
        assert heavy == "Control-Flow gadget" and set(w) == {1.0, 7.0}
        assert type_weights(tok, answer, len(ids), 1.0, False) is None
        w = type_weights(tok, answer, len(ids), 7.0, False, location_weight=3.0)
        assert tok.decode([i for i, x in zip(ids, w) if x == 3.0]).strip() == "RETURN"
        assert tok.decode([i for i, x in zip(ids, w) if x == 7.0]).strip() == "Control-Flow gadget"
        w = type_weights(tok, answer, len(ids), 1.0, False, location_weight=3.0)
        assert set(w) == {1.0, 3.0}
    c = encode_causal(tok, "Task: x\n\nAnswer:", " " + answer, 128, 64, "answer", 7.0)
    assert len(c.weights) == len(c.input_ids) and c.weights[-1] == 1.0


def test_weighted_loss_is_the_weighted_mean_and_accumulates_exactly():
    spec = REGISTRY["flan-t5-small"]
    corpus = [l.input + " " + l.output for l in load_jsonl(BUNDLED)[:60]]
    model, tok = build_scratch(spec, corpus, vocab_size=400, overrides={"num_layers": 1, "num_decoder_layers": 1,
                                                                         "d_model": 16, "d_ff": 32, "num_heads": 2,
                                                                         "d_kv": 8})
    model.eval()  # no dropout: the two computations below must see the same network
    ex = load_jsonl(BUNDLED)[:6]
    enc = [encode_seq2seq(tok, e.instruction + " " + e.input, e.output, 64, 48, 4.0) for e in ex]
    collate = Collator("seq2seq", tok.pad_token_id)
    batch = collate(enc)
    loss, n = token_loss_sum(model, batch, "seq2seq")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   labels=batch["labels"]).logits
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                           ignore_index=-100, reduction="none")
    w = torch.tensor([x for e in enc for x in e.weights + (0.0,) * (batch["labels"].size(1) - len(e.weights))])
    assert n == pytest.approx(float(w.sum())) and float(loss.detach()) == pytest.approx(float((ce * w).sum().detach()), rel=1e-5)
    parts = [collate(enc[:2]), collate(enc[2:])]
    assert sum(token_loss_sum(model, b, "seq2seq")[1] for b in parts) == pytest.approx(n)


def test_the_kept_epoch_is_the_best_scored_and_its_weights_are_restored():
    spec = REGISTRY["distilgpt2"]
    corpus = [l.input + " " + l.output for l in load_jsonl(BUNDLED)[:40]]
    model, tok = build_scratch(spec, corpus, vocab_size=300, overrides={"n_layer": 1, "n_embd": 16, "n_head": 2})
    enc = [encode_causal(tok, e.input, " " + e.output, 96, 32, "answer") for e in load_jsonl(BUNDLED)[:16]]
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=4, micro_batch_size=8, copy_vocab_loss=0.0)  # no head here
    scores = iter([(0.2, 1.0), (0.6, 0.5), (0.6, 0.4), (0.4, 1.0)])
    snaps = []

    def select(m, should_stop):
        snaps.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    result = train(model, enc, cfg, "causal", tok.pad_token_id, select=select, progress=False)
    assert result.chosen_epoch == 2 and result.epoch_scores[1] == (0.6, 0.5)
    assert all(torch.equal(v, snaps[1][k]) for k, v in model.state_dict().items())
    assert not torch.equal(snaps[1]["transformer.h.0.mlp.c_fc.weight"], snaps[3]["transformer.h.0.mlp.c_fc.weight"])
    tie = iter([(0.5, 1.0), (0.5, 1.0)])
    again = train(model, enc, cfg.with_(epochs=2), "causal", tok.pad_token_id, select=lambda m, _: next(tie),
                  progress=False)
    assert again.chosen_epoch == 2  # a later epoch wins a tie


def test_adamw_scale_moves_each_weight_by_the_learning_rate_times_its_rms():
    from wmg.optim import AdamWScale

    torch.manual_seed(0)
    big, small, zero = (torch.nn.Parameter(torch.randn(64, 64) * s) for s in (1.0, 0.005, 0.0))
    opt = AdamWScale([{"params": [big, small, zero], "weight_decay": 0.0}], lr=1e-2)
    before = [p.detach().clone() for p in (big, small, zero)]
    for p in (big, small, zero):
        p.grad = torch.randn_like(p)
    opt.step()
    for p, b in zip((big, small, zero), before):
        rms = max(1e-3, float(b.pow(2).mean().sqrt()))
        step = (p.detach() - b).abs()
        # Adam's first step is the gradient's sign (|m / sqrt(v)| = 1) times the learning rate
        assert torch.allclose(step, torch.full_like(step, 1e-2 * rms), rtol=1e-2)  # fp32 differences
    decayed = torch.nn.Parameter(torch.ones(4))
    opt = AdamWScale([{"params": [decayed], "weight_decay": 0.5}], lr=0.1)
    decayed.grad = torch.zeros(4)
    opt.step()
    assert torch.allclose(decayed.detach(), torch.full((4,), 0.95))  # decoupled decay: lr x weight decay


def _tiny_gpt2(seed):
    spec = REGISTRY["distilgpt2"]
    corpus = [l.input + " " + l.output for l in load_jsonl(BUNDLED)[:40]]
    torch.manual_seed(seed)
    model, tok = build_scratch(spec, corpus, vocab_size=300, overrides={"n_layer": 1, "n_embd": 16, "n_head": 2,
                                                                         "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                                                         "attn_pdrop": 0.0})
    enc = [encode_causal(tok, e.input, " " + e.output, 96, 32, "answer") for e in load_jsonl(BUNDLED)[:24]]
    return model, tok, enc


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "on-disk"])
@pytest.mark.parametrize("resume_from", ["interrupt", "epoch"])
def test_a_resumed_training_keeps_the_same_best_epoch_and_weights(resume_from, on_disk, tmp_path):
    """The kept epoch's weights travel in the checkpoint (or are the checkpoint's own), so a run
    stopped in epoch 3 and resumed ends with the weights an uninterrupted run kept; the same when
    they wait in a file instead of memory (`keep_dir`, as the pipeline trains), which is removed
    when training ends."""
    import copy

    keep = {"keep_dir": tmp_path / "kept"} if on_disk else {}

    model, tok, enc = _tiny_gpt2(3)
    start = copy.deepcopy(model.state_dict())
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=4, micro_batch_size=8, copy_vocab_loss=0.0)  # no head here
    table = [(0.5,), (0.9,), (0.1,), (0.2,)]

    def scorer(first_epoch):
        n = iter(range(first_epoch, 5))
        return lambda m, _: table[next(n)]

    full = train(model, enc, cfg, "causal", tok.pad_token_id, select=scorer(0), progress=False, **keep)
    assert full.chosen_epoch == 2
    assert not (tmp_path / "kept" / "kept.pt").exists()
    kept = copy.deepcopy(model.state_dict())

    model.load_state_dict(start)
    saved = []
    asked = {"stop": False}  # a stop request stays asked for, as a signal's does

    def step_done(st):
        asked["stop"] |= st.step == 7  # asked during step 8, the 2nd of epoch 3's 3 steps

    from wmg.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(model, enc, cfg, "causal", tok.pad_token_id, select=scorer(0), progress=False,
              should_stop=lambda: asked["stop"], on_step=step_done, **keep,
              checkpoint=lambda st, why: saved.append((why, copy.deepcopy(st), copy.deepcopy(model.state_dict()))))
    why, state, weights = [s for s in saved if s[0] == resume_from][-1]
    assert state["best_epoch"] == 2 and (state["best_weights"] is None) == (resume_from == "epoch")
    model.load_state_dict(weights)
    again = train(model, enc, cfg, "causal", tok.pad_token_id, select=scorer(state["epoch"]), progress=False,
                  resume=state, **keep)
    assert again.chosen_epoch == 2 and again.epoch_scores == table
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())


def test_a_stop_during_the_development_slices_generation_is_obeyed_and_resumed_as_never_stopped():
    """A stop asked for while the epoch's end generates for the development slice (minutes on a
    CPU) stops the training within one generation batch, from a checkpoint at the epoch's last
    step; the resume does that epoch's end again and ends as a training that never stopped."""
    import copy

    from wmg.generate import GenerationStopped
    from wmg.pipeline import dev_selector
    from wmg.train import TrainingInterrupted

    spec = REGISTRY["distilgpt2"]
    lines = load_jsonl(BUNDLED)
    model, tok, enc = _tiny_gpt2(4)
    start = copy.deepcopy(model.state_dict())
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=3, micro_batch_size=8, copy_vocab_loss=0.0, max_target_length=24,
                                           max_causal_length=160, precision="fp32")
    real = dev_selector(tok, spec, cfg, lines[40:80], "cpu")  # 40 prompts: 3 generation batches of 16
    full = train(model, enc, cfg, "causal", tok.pad_token_id, select=real, progress=False)
    full_weights = copy.deepcopy(model.state_dict())

    model.load_state_dict(start)
    asked, scored, polls, saved = {"stop": False}, [], [], []

    def select(m, should_stop):
        scored.append(m)

        def poll():  # generate asks before each batch; the request arrives during epoch 2's first batch
            polls.append(len(scored))
            asked["stop"] |= polls.count(2) == 2
            return should_stop()

        return real(m, poll)

    with pytest.raises(TrainingInterrupted):
        train(model, enc, cfg, "causal", tok.pad_token_id, select=select, progress=False,
              should_stop=lambda: asked["stop"],
              checkpoint=lambda st, why: saved.append((why, copy.deepcopy(st), copy.deepcopy(model.state_dict()))))
    steps_per_epoch = full.steps // cfg.epochs
    why, state, weights = saved[-1]
    assert why == "interrupt" and state["epoch"] == 1 and state["next_group"] == steps_per_epoch
    assert state["step"] == 2 * steps_per_epoch  # every step of epoch 2 done, its end not
    assert len(state["epoch_train"]) == 1 and len(state["epoch_scores"]) == 1
    assert len(scored) == 2 and polls.count(2) == 2  # stopped after one of the pass's three batches

    model.load_state_dict(weights)
    again = train(model, enc, cfg, "causal", tok.pad_token_id, select=real, progress=False, resume=state)
    assert again.epoch_scores == full.epoch_scores and again.chosen_epoch == full.chosen_epoch
    assert again.epoch_train_losses == pytest.approx(full.epoch_train_losses, abs=1e-6)
    assert again.epoch_val_losses == pytest.approx(full.epoch_val_losses, abs=1e-6)
    assert all(torch.allclose(v, full_weights[k], atol=1e-6) for k, v in model.state_dict().items())
    with pytest.raises(GenerationStopped):  # asked before its first batch, generate does nothing
        real(model, lambda: True)


def test_kept_weights_in_a_file_are_a_copy_that_later_training_does_not_change(tmp_path):
    from wmg.train import KeptWeights

    w = torch.nn.Linear(3, 2)
    kept = KeptWeights(tmp_path / "k")
    kept.keep(w.state_dict())
    before = {k: v.clone() for k, v in w.state_dict().items()}
    with torch.no_grad():
        w.weight.add_(1.0)
    back = kept.weights()
    assert back.keys() == before.keys() and all(torch.equal(back[k], before[k]) for k in before)
    assert (tmp_path / "k" / "kept.pt").exists() and not list((tmp_path / "k").glob(".*tmp*"))
    del back
    kept.clear()
    assert not (tmp_path / "k" / "kept.pt").exists() and kept.weights() is None


def test_cue_quotes_ask_for_a_span_by_its_ends_and_answer_it_verbatim():
    from wmg.recipe import cue_quotes
    from wmg.parse import location_in_excerpt, parse_output

    lines = load_jsonl(BUNDLED)[:40]
    quotes = cue_quotes(lines, 2, seed=3)
    assert len(quotes) == 80 and quotes == cue_quotes(lines, 2, seed=3)  # seeded
    assert quotes != cue_quotes(lines, 2, seed=4)
    for q, e in zip(quotes, [e for e in lines for _ in range(2)]):
        assert q.input == e.input and q.index == e.index  # only the training line's own excerpt
        loc = parse_output(q.output).location
        words = loc.split()
        assert q.output == f"location: {loc}" and 3 <= len(words) <= 10 and ";" not in loc
        assert location_in_excerpt(loc, e.input)
        assert f'from "{" ".join(words[:2])}" to "{" ".join(words[-2:])}"' in q.instruction
    assert cue_quotes(lines, 0, seed=3) == []


def test_shuffled_cue_quotes_copy_from_a_reordering_of_the_same_words():
    from collections import Counter

    from wmg.parse import location_in_excerpt, parse_output
    from wmg.recipe import cue_quotes

    lines = load_jsonl(BUNDLED)[:40]
    quotes = cue_quotes(lines, 2, seed=3, shuffle=True)
    assert len(quotes) == 80 and quotes == cue_quotes(lines, 2, seed=3, shuffle=True)
    reordered = 0
    for q, e in zip(quotes, [e for e in lines for _ in range(2)]):
        assert Counter(q.input.split()) == Counter(e.input.split()) and q.index == e.index  # the same words
        reordered += q.input != " ".join(e.input.split())
        loc = parse_output(q.output).location
        assert location_in_excerpt(loc, q.input) and 3 <= len(loc.split()) <= 10  # a span of what the model reads
    assert reordered == 80


@pytest.mark.parametrize("average_score, kept", [((0.6, 0.5), True), ((0.6, 0.4), False), ((0.5, 1.0), False)],
                         ids=["tie-keeps-the-average", "worse-format", "worse-accuracy"])
def test_the_average_of_the_last_epochs_is_kept_when_it_scores_at_least_as_well_as_the_best_epoch(average_score, kept):
    """With average_epochs 3 of 4, the model scored after the last epoch holds the mean of the weights
    at the ends of epochs 2 to 4; it is kept if its score is at least the best epoch's, else the best
    epoch's weights are restored. Training itself is the same as without averaging."""
    import copy

    model, tok, enc = _tiny_gpt2(5)
    start = copy.deepcopy(model.state_dict())
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=4, micro_batch_size=8, copy_vocab_loss=0.0, average_epochs=3)
    scores = iter([(0.2, 1.0), (0.6, 0.5), (0.5, 1.0), (0.4, 1.0), average_score])
    snaps = []

    def select(m, should_stop):
        snaps.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    result = train(model, enc, cfg, "causal", tok.pad_token_id, enc[:8], select=select, progress=False)
    assert len(snaps) == 5 and result.chosen_epoch == 2 and result.kept_average is kept
    assert result.average_score == average_score and result.average_val_loss is not None
    for k, v in snaps[4].items():
        if v.is_floating_point():  # the candidate scored last is the mean of epochs 2, 3 and 4
            assert torch.allclose(v, (snaps[1][k] + snaps[2][k] + snaps[3][k]) / 3, atol=1e-6), k
    name = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.allclose(snaps[4][name], snaps[1][name])  # the epochs differ, so the mean is new weights
    final = model.state_dict()
    assert all(torch.equal(v, (snaps[4] if kept else snaps[1])[k]) for k, v in final.items())

    model.load_state_dict(start)  # the same training without averaging: the same epochs, the same scores
    plain = iter([(0.2, 1.0), (0.6, 0.5), (0.5, 1.0), (0.4, 1.0)])
    same = train(model, enc, cfg.with_(average_epochs=0), "causal", tok.pad_token_id, enc[:8],
                 select=lambda m, _: next(plain), progress=False)
    assert same.epoch_train_losses == result.epoch_train_losses and same.epoch_val_losses == result.epoch_val_losses
    assert same.chosen_epoch == 2 and not same.kept_average and same.average_score is None


def test_without_a_development_slice_the_average_is_kept(tmp_path):
    model, tok, enc = _tiny_gpt2(6)
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=3, micro_batch_size=8, copy_vocab_loss=0.0, average_epochs=2)
    seen = []
    result = train(model, enc, cfg, "causal", tok.pad_token_id, progress=False, keep_dir=tmp_path / "k",
                   on_epoch=lambda *a: seen.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert result.kept_average and result.chosen_epoch is None and result.average_score is None
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, (seen[1][k] + seen[2][k]) / 2, atol=1e-6), k
    assert not any((tmp_path / "k").iterdir())  # the averaged file is gone with the training
    with pytest.raises(ValueError, match="average_epochs is 4"):
        train(model, enc, cfg.with_(average_epochs=4), "causal", tok.pad_token_id, progress=False)


@pytest.mark.parametrize("stop_at", ["in-the-window", "while-the-average-is-scored"])
def test_a_resumed_averaging_training_ends_with_the_uninterrupted_ones_weights(stop_at, tmp_path):
    """The running mean travels in the checkpoint; a stop asked for while the average is scored on
    the development slice is a phase of its own, done again on resume. Either way the resumed run
    keeps what the uninterrupted one kept."""
    import copy

    from wmg.train import TrainingInterrupted

    model, tok, enc = _tiny_gpt2(7)
    start = copy.deepcopy(model.state_dict())
    cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=4, micro_batch_size=8, copy_vocab_loss=0.0, average_epochs=3)
    table = [(0.5,), (0.9,), (0.1,), (0.2,), (0.95,)]  # the average beats epoch 2

    def scorer(first):
        n = iter(range(first, 5))
        return lambda m, _: table[next(n)]

    full = train(model, enc, cfg, "causal", tok.pad_token_id, select=scorer(0), progress=False,
                 keep_dir=tmp_path / "a")
    assert full.kept_average and full.chosen_epoch == 2
    kept = copy.deepcopy(model.state_dict())

    model.load_state_dict(start)
    saved, asked, calls = [], {"stop": False}, []

    def select(m, should_stop):
        calls.append(1)
        if stop_at == "while-the-average-is-scored" and len(calls) == 5:
            asked["stop"] = True
            should_stop()
            from wmg.generate import GenerationStopped
            raise GenerationStopped()
        return table[len(calls) - 1]

    def step_done(st):  # epoch 3's second of 3 steps
        asked["stop"] |= stop_at == "in-the-window" and st.step == 7

    with pytest.raises(TrainingInterrupted):
        train(model, enc, cfg, "causal", tok.pad_token_id, select=select, progress=False,
              should_stop=lambda: asked["stop"], on_step=step_done, keep_dir=tmp_path / "b",
              checkpoint=lambda st, why: saved.append((copy.deepcopy(st), copy.deepcopy(model.state_dict()))))
    state, weights = saved[-1]
    assert state["average_count"] == (1 if stop_at == "in-the-window" else 3)
    assert state["epoch"] == (2 if stop_at == "in-the-window" else 4) and state["best_weights"] is not None
    model.load_state_dict(weights)
    again = train(model, enc, cfg, "causal", tok.pad_token_id, select=scorer(len(state["epoch_scores"])),
                  progress=False, resume=state, keep_dir=tmp_path / "b")
    assert again.kept_average and again.chosen_epoch == 2 and again.average_score == (0.95,)
    assert all(torch.allclose(v, kept[k], atol=1e-6) for k, v in model.state_dict().items())


def test_a_run_with_checkpoint_averaging_records_what_it_kept(tmp_path):
    """`wmg train --average-epochs K`: each model's run_models row says whether the saved weights are
    the average and how the average scored on the development slice; `wmg show` shows both; the
    saved model holds the kept weights (its comparison is the run's own)."""
    import json
    import sqlite3

    from click.testing import CliRunner

    from wmg.cli import main

    db = str(tmp_path / "r.db")
    r = CliRunner().invoke(main, ["train", "--data", str(BUNDLED), "--tiny", "--examples", "60", "--epochs", "3",
                                  "--average-epochs", "2", "--dev-fraction", "0.2", "--no-compare",
                                  "--max-target-length", "48",  # the dev slice's generations stay short
                                  "--checkpoints", str(tmp_path / "ck"), "--db", db, "--no-progress"])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, name, chosen_epoch, kept_average, average_dev_accuracy, average_dev_format, "
                            "hyperparams_json FROM run_models ORDER BY position").fetchall()
        assert len(rows) == 2
        for rm_id, name, chosen, kept, acc, fmt, hp in rows:
            assert json.loads(hp)["average_epochs"] == 2 and kept in (0, 1) and 0 <= acc <= 1 and 0 <= fmt <= 1
            best = conn.execute("SELECT dev_accuracy, dev_format FROM epoch_losses WHERE run_model_id = ? AND epoch = ?",
                                (rm_id, chosen)).fetchone()
            assert bool(kept) == ((acc, fmt) >= best), name  # the average wins a tie
            verb = "Kept the average of epochs 2 to 3" if kept else f"Kept epoch {chosen} of 3"
            assert verb in r.output
    show = CliRunner().invoke(main, ["show", "--run-id", "1", "--table", "models", "--format", "json", "--db", db])
    assert show.exit_code == 0, show.output
    models = json.loads(show.output)
    assert [(m["kept_average"], m["average_dev_accuracy"], m["average_epochs"]) for m in models] == \
        [(bool(k), a, 2) for _, _, _, k, a, _, _ in rows]
