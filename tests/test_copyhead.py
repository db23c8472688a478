"""The copy head (wmg.copyhead, `--copy-head`): a pointer-generator mixture over the excerpt's
tokens (T5) or the tokens before each position (GPT-2), with greedy decoding (with and without
a static cache), saving and loading, and the pipeline's scratch build."""
import pytest
import torch
from click.testing import CliRunner

from tests.test_models import CORPUS
from wmg.config import REGISTRY
from wmg.copyhead import GPT2WithCopy, T5WithCopy
from wmg.models import build_scratch, load_trained

SPEC = REGISTRY["flan-t5-small"]
GPT = REGISTRY["distilgpt2"]


def tiny(spec=SPEC, mode="pointer"):
    from wmg.pipeline import TINY

    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(TINY[spec.type], copy_head=mode))
    model.eval()
    return model, tok


def set_gate(model, value):
    """pointer: g = sigmoid(0 . h + value), 1 for a large value (vocabulary only), 0 for a small one
    (copy only); span: a gate of three, `value` a (vocabulary, pointer, continuation) triple."""
    with torch.no_grad():
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.copy_(torch.tensor(value, dtype=torch.float).reshape(model.copy_gate.bias.shape))


SRC = torch.tensor([[5, 7, 5, 9, 0, 0], [11, 12, 13, 14, 15, 1]])
MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
DEC = torch.tensor([[0, 5, 7], [0, 11, 12]])


def test_the_output_is_a_distribution_and_all_vocabulary_when_the_gate_is_open():
    model, _ = tiny()
    p = model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits.exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 3), atol=1e-5)
    set_gate(model, 40.0)
    mixed = model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits
    plain = super(T5WithCopy, model).forward(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits
    assert torch.allclose(mixed, plain.float().log_softmax(-1), atol=1e-4)


def test_a_closed_gate_copies_only_unpadded_excerpt_tokens_by_the_pointer():
    """With the query zeroed the pointer is uniform over the unmasked positions, so each token's
    probability is its share of them: 5 twice in four, 7 and 9 once, the padding's 0 never."""
    model, _ = tiny()
    set_gate(model, -40.0)
    with torch.no_grad():
        model.copy_query.weight.zero_()
    p = model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits.exp()
    first = p[0, 0]
    assert first[5].item() == pytest.approx(0.5, abs=1e-5)
    assert first[7].item() == pytest.approx(0.25, abs=1e-5) and first[9].item() == pytest.approx(0.25, abs=1e-5)
    assert first[0].item() < 1e-12 and first.sum().item() == pytest.approx(1, abs=1e-5)
    assert torch.allclose(p[1, 2, 11:16], torch.full((5,), 1 / 6), atol=1e-5)  # the row without padding
    assert p[1, 2, 1].item() == pytest.approx(1 / 6, abs=1e-5)


@pytest.mark.parametrize("mode", ["pointer", "span"])
def test_generation_with_the_cache_equals_greedy_steps_without_it(mode):
    model, tok = tiny(mode=mode)
    set_gate(model, -1.0 if mode == "pointer" else (-1.0, 0.0, 0.5))  # mostly copying, not only
    out = model.generate(input_ids=SRC, attention_mask=MASK, copy_ids=SRC, max_new_tokens=6, do_sample=False,
                         num_beams=1, pad_token_id=0, eos_token_id=1)
    dec = torch.zeros(2, 1, dtype=torch.long)
    done = torch.zeros(2, dtype=torch.bool)
    for _ in range(6):
        with torch.no_grad():
            nxt = model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=dec, use_cache=False).logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.zeros_like(nxt), nxt)
        done |= nxt == 1
        dec = torch.cat([dec, nxt[:, None]], 1)
    assert out.tolist() == dec[:, :out.size(1)].tolist()
    copied = set(SRC[MASK.bool()].tolist())
    assert any(t in copied for t in out[:, 1:].flatten().tolist())  # a copying model writes excerpt tokens


def test_the_head_is_saved_and_loaded_with_the_model(tmp_path):
    from wmg.checkpoint import save_model_folder

    model, tok = tiny()
    with torch.no_grad():
        model.copy_gate.bias.fill_(-0.5)
    save_model_folder(tmp_path / "m", model, tok)
    again, _ = load_trained(SPEC, tmp_path / "m")
    again.eval()
    assert type(again) is T5WithCopy and again.config.copy_head == "pointer"
    assert torch.equal(again.copy_key.weight, model.copy_key.weight)
    a = model(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits
    b = again(input_ids=SRC, attention_mask=MASK, decoder_input_ids=DEC).logits
    assert torch.allclose(a, b, atol=1e-4)  # the loaded model runs the fused GELU: equal up to rounding


@pytest.mark.parametrize("spec,cls", [(SPEC, T5WithCopy), (GPT, GPT2WithCopy)])
def test_the_pipeline_builds_the_head_and_counts_its_parameters(spec, cls):
    from wmg.pipeline import TINY, TrainOptions, scratch_overrides

    opts = TrainOptions("d.jsonl", spec.name, tiny=True, overrides={"copy_head": "pointer"})
    scope = {} if spec.type == "seq2seq" else {"copy_scope": "location"}  # GPT-2's default scope stays
    assert scratch_overrides(spec, opts) == dict(TINY[spec.type], copy_head="pointer", **scope)
    default = scratch_overrides(spec, TrainOptions("d.jsonl", spec.name))  # the scratch defaults' head
    assert default == dict(copy_head="span", **scope)
    with_head, _ = build_scratch(spec, CORPUS, vocab_size=200, overrides=scratch_overrides(spec, opts))
    plain, _ = build_scratch(spec, CORPUS, vocab_size=200, overrides=TINY[spec.type])
    assert type(with_head) is cls and type(plain) is not cls
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    d = with_head.config.hidden_size
    assert n(with_head) - n(plain) == 2 * d * d + d + 1
    span, _ = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(TINY[spec.type], copy_head="span"))
    assert type(span) is cls and n(span) - n(plain) == 2 * d * d + 3 * d + 3  # a gate of three


# ---------------------------------------------------------------- GPT-2: a pointer over the text before
LEFT = torch.tensor([[0, 0, 5, 7, 5, 9], [11, 12, 13, 14, 15, 16]])  # left padding, as generation pads
LEFT_MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def test_gpt2_pointer_covers_the_positions_up_to_each_token_and_never_padding():
    model, _ = tiny(GPT)
    p = model(input_ids=LEFT, attention_mask=LEFT_MASK, use_cache=False).logits.exp()
    assert torch.allclose(p[0, 2:].sum(-1), torch.ones(4), atol=1e-5) and torch.allclose(p[1].sum(-1), torch.ones(6),
                                                                                          atol=1e-5)
    set_gate(model, -40.0)
    with torch.no_grad():
        model.copy_query.weight.zero_()
    p = model(input_ids=LEFT, attention_mask=LEFT_MASK, use_cache=False).logits.exp()
    # row 0, position 4 (token 5): the unpadded positions 2..4 hold 5, 7, 5
    assert p[0, 4, 5].item() == pytest.approx(2 / 3, abs=1e-5) and p[0, 4, 7].item() == pytest.approx(1 / 3, abs=1e-5)
    assert p[0, 4, 9].item() < 1e-12 and p[0, 4, 0].item() < 1e-12  # later token, padding token
    assert torch.allclose(p[1, 3, 11:15], torch.full((4,), 0.25), atol=1e-5) and p[1, 3, 15].item() < 1e-12
    set_gate(model, 40.0)
    mixed = model(input_ids=LEFT, attention_mask=LEFT_MASK, use_cache=False).logits
    plain = model.lm_head(model.transformer(LEFT, attention_mask=LEFT_MASK).last_hidden_state)
    assert torch.allclose(mixed[1], plain[1].float().log_softmax(-1), atol=1e-4)


@pytest.mark.parametrize("mode", ["pointer", "span"])
@pytest.mark.parametrize("cache", [None, "static"])
def test_gpt2_generation_with_either_cache_equals_greedy_steps_without_it(cache, mode):
    from wmg.config import GenerateConfig
    from wmg.generate import generate

    model, tok = tiny(GPT, mode)
    torch.manual_seed(3)
    with torch.no_grad():
        model.copy_gate.bias.copy_(torch.tensor([-0.5] if mode == "pointer" else [0.0, -0.5, 0.5]))
        model.copy_query.weight.normal_(std=0.5)
    extra = {"cache_implementation": cache} if cache else {}
    out = model.generate(input_ids=LEFT, attention_mask=LEFT_MASK, max_new_tokens=6, do_sample=False, num_beams=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)[:, LEFT.size(1):]
    cur, mask = LEFT.clone(), LEFT_MASK.clone()
    for _ in range(6):
        with torch.no_grad():
            logits = model(input_ids=cur, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                           use_cache=False).logits[:, -1]
        cur = torch.cat([cur, logits.argmax(-1)[:, None]], 1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    steps = cur[:, LEFT.size(1):]
    eos = tok.eos_token_id
    for row_out, row_steps in zip(out.tolist(), steps.tolist()):  # equal up to the first end of text
        n = row_steps.index(eos) + 1 if eos in row_steps else len(row_steps)
        assert row_out[:n] == row_steps[:n]
    assert len({tuple(r) for r in steps.tolist()}) == 2  # the rows do differ: the check is not vacuous
    # and wmg's own generation loop (static cache for GPT-2) runs the head end to end
    texts = generate(model, tok, ["MOV copies Source to Dest"], "causal", GenerateConfig(max_new_tokens=4), 64)
    assert len(texts) == 1 and texts[0].new_tokens <= 4


def test_excerpt_region_lies_between_the_markers_whatever_the_padding():
    from wmg.copyhead import excerpt_region

    ids = torch.tensor([[0, 0, 8, 1, 2, 5, 6, 7, 3, 4, 9],  # left padding, the excerpt 5 6 7
                        [8, 1, 2, 5, 3, 4, 1, 2, 6, 3, 4],  # a second opening later is part of the excerpt
                        [8, 5, 6, 7, 3, 4, 9, 9, 9, 9, 9],  # no opening: every position
                        [8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0]])  # an empty excerpt: every position
    region, found = excerpt_region(ids, [1, 2], [3, 4])
    assert found.flatten().tolist() == [True, True, False, False]
    assert region[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert region[1].nonzero().flatten().tolist() == [3]  # up to the first closing after the opening
    assert region[2].all() and region[3].all()


def test_gpt2_pointer_points_only_into_the_prompts_excerpt():
    """Built by the pipeline, GPT-2's head knows the tokens around the excerpt; its pointer and its
    continuation never go to the instruction or the answer written so far, on every line of the
    bundled data the region is exactly the excerpt, and generation with a cache agrees."""
    from wmg.batching import encode_causal
    from wmg.copyhead import excerpt_region
    from wmg.data import bundled_data, load_jsonl
    from wmg.prompts import causal_answer, seq2seq_prompt

    model, tok = tiny(GPT, "span")
    opens, closes = model.config.copy_region
    for e in load_jsonl(bundled_data())[:200]:
        enc = encode_causal(tok, seq2seq_prompt(e.instruction, e.input), causal_answer(e.output), 10 ** 5, 256,
                            "answer")  # no truncation: a 200-piece vocabulary makes long prompts
        region, found = excerpt_region(torch.tensor([enc.input_ids]), opens, closes)
        assert found.item() and tok.decode(torch.tensor(enc.input_ids)[region[0]].tolist()) == e.input
    prompt = seq2seq_prompt("Identify any weird machine gadget.", "MOV copies Source to Dest each scan.")
    ids = tok(prompt + " gadget_type: MOV copies", add_special_tokens=False, return_tensors="pt")["input_ids"]
    region, _ = excerpt_region(ids, opens, closes)
    set_gate(model, (-40.0, 40.0, -40.0))  # the pointer alone
    with torch.no_grad():
        model.copy_query.weight.zero_()  # uniform over where it may point
        p = model(input_ids=ids, use_cache=False).logits.exp()[0, -1]
    excerpt = ids[0][region[0]].tolist()
    assert set((p > 1e-12).nonzero().flatten().tolist()) == set(excerpt)  # the excerpt's tokens, nothing else
    for t in set(excerpt):
        assert p[t].item() == pytest.approx(excerpt.count(t) / len(excerpt), abs=1e-5)
    set_gate(model, (0.0, -0.5, 0.5))
    with torch.no_grad():
        model.copy_query.weight.normal_(std=0.5)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             cache_implementation="static")[0, ids.size(1):].tolist()
        cur = ids
        for _ in range(len(out)):
            cur = torch.cat([cur, model(input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out == cur[0, ids.size(1):].tolist()


def test_gpt2_head_is_saved_and_loaded_with_the_model(tmp_path):
    from wmg.checkpoint import save_model_folder

    model, tok = tiny(GPT)
    save_model_folder(tmp_path / "m", model, tok)
    again, _ = load_trained(GPT, tmp_path / "m")
    again.eval()
    assert type(again) is GPT2WithCopy and again.config.copy_head == "pointer"
    a = model(input_ids=LEFT, attention_mask=LEFT_MASK, use_cache=False).logits
    b = again(input_ids=LEFT, attention_mask=LEFT_MASK, use_cache=False).logits
    assert torch.allclose(a[1], b[1], atol=1e-4)


def test_copy_head_with_pretrained_weights_is_one_line(tmp_path):
    from wmg.cli import main

    r = CliRunner().invoke(main, ["train", "--init", "pretrained", "--copy-head", "span", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 2 and "--copy-head changes the architecture" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r.db").exists()


# ---------------------------------------------------------------- span: continuing the text
def test_continuation_follows_the_longest_match_of_the_last_tokens():
    from wmg.copyhead import MATCH, continuation

    text = torch.tensor([[3, 5, 7, 9, 4, 5, 7, 11]])
    allowed = torch.ones(1, 4, 8, dtype=torch.bool)
    asked = torch.tensor([[[7, 5, 3, -1], [7, 5, 4, -1], [7, 8, 8, -1], [6, 5, 3, -1]]])[..., :MATCH]
    weights, found = continuation(asked, text, allowed)
    assert weights[0, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # after 3 5 7: the 9
    assert weights[0, 1].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # after 4 5 7: the 11
    assert weights[0, 2].tolist() == [0, 0, 0, 0.5, 0, 0, 0, 0.5]  # after 7 alone: both
    assert found[0, :, 0].tolist() == [True, True, True, False] and weights[0, 3].sum() == 0  # no 6 in the text
    blocked = allowed.clone()
    blocked[0, 0, 3] = False  # a place the asker may not see is never continued from
    weights, _ = continuation(asked, text, blocked)
    assert weights[0, 0].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # the next-longest match, 5 7, after 4


def test_span_t5_copies_a_contiguous_run_of_the_excerpt_with_and_without_the_cache():
    """All weight on continuing: after the pointer's first token every next one is the excerpt's
    next token, so the output is a run of the excerpt, the same with the cache as without."""
    model, tok = tiny(mode="span")
    set_gate(model, (-40.0, -40.0, 40.0))
    src = torch.tensor([[21, 22, 23, 24, 25, 26, 27, 28, 1, 0], [31, 32, 33, 34, 35, 36, 37, 38, 39, 1]])
    mask = (torch.arange(10)[None] < torch.tensor([[9], [10]])).long()
    out = model.generate(input_ids=src, attention_mask=mask, copy_ids=src, max_new_tokens=5, do_sample=False,
                         num_beams=1, pad_token_id=0, eos_token_id=1)[:, 1:]
    for row, text in zip(out.tolist(), src.tolist()):
        row = row[:row.index(1) + 1] if 1 in row else row  # up to its end (padding follows an early one)
        first = text.index(row[0])
        assert row == text[first:first + len(row)], (row, text)
    with torch.no_grad():  # teacher-forced: after 33, 34 comes with probability 1
        p = model(input_ids=src, attention_mask=mask, decoder_input_ids=torch.tensor([[0, 23], [0, 33]])).logits.exp()
    assert p[0, 1, 24].item() == pytest.approx(1, abs=1e-4) and p[1, 1, 34].item() == pytest.approx(1, abs=1e-4)


def test_span_gpt2_continues_the_prompt_after_the_place_it_matches():
    model, tok = tiny(GPT, "span")
    set_gate(model, (-40.0, -40.0, 40.0))
    prompt = torch.tensor([[0, 0, 41, 42, 43, 44, 45, 46, 47, 43, 44], [51, 52, 53, 54, 55, 56, 57, 58, 52, 53, 54]])
    mask = (prompt != 0).long()
    out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=3, do_sample=False, num_beams=1,
                         pad_token_id=0, eos_token_id=0, cache_implementation="static")[:, prompt.size(1):]
    assert out.tolist() == [[45, 46, 47], [55, 56, 57]]  # after "43 44": 45 ...; after "52 53 54": 55 ...


# ---------------------------------------------------------------- --copy-scope location
def test_location_field_runs_from_the_marker_to_the_token_that_closes_it():
    """Position t is inside when its next token is part of the location's value or closes it:
    after the marker (7, 8) up to, not including, the closing token (9)."""
    from wmg.copyhead import location_field

    ids = torch.tensor([[1, 7, 8, 3, 4, 9, 7, 8, 5], [7, 8, 3, 3, 3, 3, 3, 3, 3]])
    field = location_field(ids, [7, 8], [9])
    assert field[0].nonzero().flatten().tolist() == [2, 3, 4, 7, 8]
    assert field[1].nonzero().flatten().tolist() == list(range(1, 9))  # never closed
    later = location_field(ids, [7, 8], [9], start=torch.tensor([[3], [0]]))  # the answer begins at 3
    assert later[0].nonzero().flatten().tolist() == [7, 8] and torch.equal(later[1], field[1])


def scoped(spec):
    from wmg.pipeline import TINY

    model, tok = build_scratch(spec, CORPUS, vocab_size=200,
                               overrides=dict(TINY[spec.type], copy_head="span", copy_scope="location"))
    model.eval()
    return model, tok


ANSWER = "gadget_type: ReadWrite gadget; location: MOV copies Source; explanation: It writes memory."


@pytest.mark.parametrize("spec", [SPEC, GPT])
def test_a_scoped_head_copies_inside_the_location_field_only(spec):
    """Outside the field every output distribution is the plain model's; inside, with the gate
    set to copy only, the head can only write the excerpt's tokens."""
    from wmg.copyhead import location_field
    from wmg.prompts import causal_answer, seq2seq_prompt

    model, tok = scoped(spec)
    marker, closers = model.config.copy_field
    assert tok.decode(marker).strip() == "location:" and all(";" in tok.convert_ids_to_tokens(i) for i in closers)
    prompt = seq2seq_prompt("Identify any weird machine gadget.", "MOV copies Source to Dest each scan.")
    enc = lambda text: tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # noqa: E731
    set_gate(model, (-40.0, 40.0, -40.0))  # the pointer alone, wherever it is allowed
    with torch.no_grad():
        if spec is SPEC:
            src, dec = enc(prompt), torch.cat([torch.zeros(1, 1, dtype=torch.long), enc(ANSWER)], 1)
            out = model(input_ids=src, decoder_input_ids=dec, use_cache=False).logits[0]
            plain = super(T5WithCopy, model).forward(input_ids=src, decoder_input_ids=dec).logits[0]
            field, excerpt = location_field(dec, marker, closers)[0], set(src[0].tolist())
            answer = dec[0]
        else:
            ids = enc(prompt + causal_answer(ANSWER))
            out = model(input_ids=ids, use_cache=False).logits[0]
            plain = super(GPT2WithCopy, model).forward(input_ids=ids, use_cache=False).logits[0]
            start = enc(prompt).size(1)
            field = location_field(ids, marker, closers)[0]
            assert not field[:start].any()  # nothing in the prompt
            region, _ = __import__("wmg.copyhead", fromlist=["excerpt_region"]).excerpt_region(ids, *model.config.copy_region)
            excerpt, answer = set(ids[0][region[0]].tolist()), ids[0]
    inside = field.nonzero().flatten().tolist()
    # the field: from `location:` to the token before `;`
    assert tok.decode(answer[inside[0] + 1:inside[-1] + 2]).strip() == "MOV copies Source;"
    outside = ~field
    assert torch.allclose(out[outside], plain[outside].float().log_softmax(-1), atol=1e-4)
    p = out[field].exp()
    assert set((p > 1e-12).nonzero()[:, 1].tolist()) <= excerpt


@pytest.mark.parametrize("spec", [SPEC, GPT])
def test_a_scoped_head_generates_with_the_cache_as_without_and_is_saved(spec, tmp_path):
    from wmg.checkpoint import save_model_folder
    from wmg.prompts import seq2seq_prompt

    model, tok = scoped(spec)
    set_gate(model, (0.0, 0.5, 0.5))
    with torch.no_grad():
        model.copy_query.weight.normal_(std=0.5)
    save_model_folder(tmp_path / "m", model, tok)
    again, _ = load_trained(spec, tmp_path / "m")
    assert again.config.copy_field == model.config.copy_field
    prompt = seq2seq_prompt("Identify any weird machine gadget.", "MOV copies Source to Dest each scan.")
    src = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    forced = tok(" gadget_type: ReadWrite gadget; location:" if spec is GPT else "gadget_type: ReadWrite gadget; location:",
                 add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        if spec is SPEC:
            start = torch.cat([torch.zeros(1, 1, dtype=torch.long), forced], 1)
            out = model.generate(input_ids=src, copy_ids=src, decoder_input_ids=start, max_new_tokens=6, do_sample=False,
                                 pad_token_id=0, eos_token_id=tok.eos_token_id)[0, start.size(1):].tolist()
            cur = start
            for _ in range(len(out)):
                step = model(input_ids=src, decoder_input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                cur = torch.cat([cur, step], 1)
            assert out == cur[0, start.size(1):].tolist()
        else:
            ids = torch.cat([src, forced], 1)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, ids.size(1):].tolist()
            cur = ids
            for _ in range(len(out)):
                cur = torch.cat([cur, model(input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
            assert out == cur[0, ids.size(1):].tolist()


@pytest.mark.parametrize("scope", ["everywhere", "location"])
@pytest.mark.parametrize("spec,cls", [(SPEC, T5WithCopy), (GPT, GPT2WithCopy)])
def test_copy_vocab_loss_scores_the_vocabulary_alone_where_the_head_may_copy(spec, cls, scope):
    """`--copy-vocab-loss W` adds W times the cross-entropy of the plain model's distribution
    (the head's vocabulary share before mixing) on the scored tokens where the mixture applies:
    the location field under `--copy-scope location`, every scored token otherwise. The main
    loss is the mixture's either way."""
    from wmg.batching import IGNORE, Collator, encode_causal, encode_seq2seq
    from wmg.copyhead import location_field
    from wmg.pipeline import TINY
    from wmg.train import token_losses

    torch.manual_seed(0)
    model, tok = build_scratch(spec, CORPUS, vocab_size=200,
                               overrides=dict(TINY[spec.type], copy_head="span", copy_scope=scope))
    model.eval()
    set_gate(model, (0.0, 0.5, 0.5))
    data = []
    for i in range(3):  # the type's tokens weigh 3 and the location's 2 in either loss
        prompt, answer = f"Excerpt:\nTag_{i} MOV {'x ' * i}copies.\n\nAnswer:", \
            f"gadget_type: ReadWrite gadget; location: Tag_{i} MOV; explanation: writes {i}."
        data.append(encode_seq2seq(tok, prompt, answer, 64, 128, 3.0, 2.0) if spec is SPEC else
                    encode_causal(tok, prompt, " " + answer, 192, 128, "answer", 3.0, 2.0))
    batch = Collator(spec.type, tok.pad_token_id)(data)
    with torch.no_grad():
        ce, extra, n = token_losses(model, batch, spec.type, vocab_loss=2.0)
        alone, none, n2 = token_losses(model, batch, spec.type)
        if spec is SPEC:
            dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
            plain = super(cls, model).forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                              decoder_input_ids=dec).logits
            target, ids = batch["labels"], dec
        else:
            plain = super(cls, model).forward(input_ids=batch["input_ids"],
                                              attention_mask=batch["attention_mask"]).logits[:, :-1]
            target, ids = batch["labels"][:, 1:], batch["input_ids"]
    assert torch.equal(ce, alone) and none is None and n == n2
    scored = target != IGNORE
    if scope == "location":
        field = location_field(ids, *model.config.copy_field)
        field = field[:, :-1] if spec is GPT else field
        assert 0 < (field & scored).sum() < scored.sum()  # the location's tokens, not the type's or explanation's
    else:
        field = torch.ones_like(scored)
    w = batch["weights"][:, 1:] if spec is GPT else batch["weights"]
    per = torch.nn.functional.cross_entropy(plain.float().transpose(1, 2), target.clamp_min(0), reduction="none")
    want = 2.0 * (per * w * (scored & field)).sum()
    assert torch.allclose(extra, want, rtol=1e-5) and (w[scored & field] == 2.0).any()
    assert not torch.allclose(ce, want / 2)  # the mixture's loss is another figure


def test_copy_vocab_loss_changes_the_training_step_not_the_logged_loss():
    """In the training loop the term is added to the objective (the weights move otherwise), while
    the logged training loss stays the mixture's cross-entropy."""
    from tests.test_train import _data
    from wmg.config import SCRATCH_DEFAULTS
    from wmg.pipeline import TINY
    from wmg.train import train

    runs = {}
    for w in (0.0, 5.0):
        torch.manual_seed(1)
        model, tok = build_scratch(GPT, CORPUS, vocab_size=200, overrides=dict(TINY["causal"], copy_head="span",
                                                                               resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
        cfg = SCRATCH_DEFAULTS["causal"].with_(epochs=1, micro_batch_size=2, grad_accum=1, seed=1, learning_rate=1e-2,
                                               warmup_ratio=0.0, copy_head="span", copy_vocab_loss=w, dev_fraction=0.0)
        steps = []
        train(model, _data(GPT, tok, 4), cfg, GPT.type, tok.pad_token_id, _data(GPT, tok, 2), on_step=steps.append,
              progress=False)
        runs[w] = (steps[0].loss, model.lm_head.weight.detach().clone())
    assert runs[5.0][0] == pytest.approx(runs[0.0][0], rel=1e-6)  # the first step's loss: the same weights, the mixture
    assert not torch.allclose(runs[5.0][1], runs[0.0][1])  # but another gradient


@pytest.mark.parametrize("mode", ["pointer", "span"])
def test_the_scoped_mixture_made_at_the_field_alone_equals_the_full_one_there(mode):
    """`_mix` with a field builds the mixture only at the field's positions (to save memory); its
    log p and its gradients equal the mixture made everywhere, kept inside the field, and the
    vocabulary's log-softmax outside."""
    from wmg.copyhead import _histories, _mix

    model, _ = tiny(GPT, mode)
    set_gate(model, 0.0 if mode == "pointer" else (0.0, 0.5, 0.5))
    torch.manual_seed(0)
    B, n, V, d = 3, 7, model.config.vocab_size, model.config.n_embd
    ids = torch.randint(3, 12, (B, n))  # few distinct tokens, so that the continuation finds matches
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None].expand(B, -1, -1).clone()
    allowed[2, :, 0] = False  # some position no one may point at
    field = torch.rand(B, n) < 0.4
    field[1] = False  # a row with no position in the field
    field[0, 0] = True
    asked = _histories(ids, -1) if mode == "span" else None
    text = ids if mode == "span" else None

    def run(scoped):
        logits = torch.randn(B, n, V, generator=torch.Generator().manual_seed(1)).requires_grad_()
        h = torch.randn(B, n, d, generator=torch.Generator().manual_seed(2)).requires_grad_()
        keys = torch.randn(B, n, d, generator=torch.Generator().manual_seed(3)).requires_grad_()
        model.zero_grad()
        if scoped:
            out = _mix(model, logits, h, keys, ids, allowed, asked, text, field)
        else:
            out = torch.where(field[..., None], _mix(model, logits, h, keys, ids, allowed, asked, text),
                              logits.float().log_softmax(-1))
        target = torch.randint(3, 12, (B, n), generator=torch.Generator().manual_seed(4))  # tokens it can copy
        out.gather(-1, target[..., None]).sum().backward()
        grads = [x.grad for x in (logits, h, keys)] + [model.copy_query.weight.grad.clone(),
                                                       model.copy_gate.weight.grad.clone()]
        return out.detach(), logits.detach().log_softmax(-1), grads

    (a, plain, grads_a), (b, _, grads_b) = run(True), run(False)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a[~field], plain[~field]) and not torch.allclose(a[field], plain[field], atol=1e-3)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.allclose(ga, gb, atol=1e-6)
    assert grads_a[3].abs().sum() > 0  # the pointer's query learns from the field


def test_gpt2s_default_head_turned_off_takes_its_scope_and_vocabulary_loss_with_it():
    """distilgpt2's scratch default is the span head scoped to the location with the vocabulary
    term; `--copy-head off` gives the plain model, not a refusal of the head's own defaults."""
    from wmg.pipeline import TrainOptions, hyperparams, record_model_configs, scratch_overrides

    default = hyperparams(GPT, "scratch", TrainOptions("d.jsonl", "distilgpt2"))
    assert (default.copy_head, default.copy_scope, default.copy_vocab_loss) == ("span", "location", 1.0)
    assert scratch_overrides(GPT, TrainOptions("d.jsonl", "distilgpt2")) == {"copy_head": "span", "copy_scope": "location"}
    off = TrainOptions("d.jsonl", "distilgpt2", overrides={"copy_head": "off"})
    cfg = hyperparams(GPT, "scratch", off)
    assert (cfg.copy_head, cfg.copy_scope, cfg.copy_vocab_loss) == ("off", "everywhere", 0.0)
    assert scratch_overrides(GPT, off) is None  # the published architecture
    assert record_model_configs([GPT], {"distilgpt2": "scratch"}, off)["distilgpt2"]["hyperparams"]["copy_vocab_loss"] == 0.0
