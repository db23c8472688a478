"""Model construction: published parameter counts, scratch tokenizers, save/load round trip."""
import torch

from wmg.config import REGISTRY
from wmg.models import build_config, build_scratch, load_trained, model_from_config


def test_published_configs_have_the_tutorial_parameter_counts():
    counts = {}
    for name in ("flan-t5-small", "distilgpt2"):
        spec = REGISTRY[name]
        pad, eos = (0, 1) if spec.type == "seq2seq" else (50256, 50256)
        model = model_from_config(spec, build_config(spec, spec.published_vocab_size, pad, eos))
        counts[name] = sum(p.numel() for p in model.parameters())
        del model
    assert counts == {"flan-t5-small": 76_961_152, "distilgpt2": 81_912_576}


CORPUS = ["Task: Identify any weird machine gadget.\n\nExcerpt:\nMOV copies Source to Dest each scan.\n\nAnswer: "
          "gadget_type: ReadWrite gadget; location: MOV copies; explanation: It writes memory.",
          "Task: Identify any weird machine gadget.\n\nExcerpt:\nTON counts while EN is true.\n\nAnswer: "
          "gadget_type: Timing/Synchronization gadget; location: TON counts; explanation: It paces."] * 5
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4)
TINY_GPT = dict(n_layer=1, n_embd=32, n_head=4)


def test_scratch_t5_keeps_published_untied_head_and_special_ids(tmp_path):
    spec = REGISTRY["flan-t5-small"]
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=TINY_T5)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert model.lm_head.weight is not model.shared.weight  # FLAN-T5 is published with an untied head
    ids = tok("MOV copies Source")["input_ids"]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "MOV copies Source"
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_trained(spec, tmp_path)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    x, y = torch.tensor([ids]), torch.tensor([[0, 5, 6]])
    model.eval(), again.eval()
    assert torch.allclose(model(input_ids=x, decoder_input_ids=y).logits, again(input_ids=x, decoder_input_ids=y).logits,
                          atol=1e-5)  # the loaded model runs the fused GELU: equal up to rounding
    assert tok2("MOV copies Source")["input_ids"] == ids



def test_scratch_t5_with_tied_embeddings_saves_and_loads_tied(tmp_path):
    """--tie-embeddings (the pipeline's scratch overrides): one matrix for input and output, the decoder's
    output scaled by d_model^-0.5 as T5 v1.0 did, and the same model after a save and a load."""
    from wmg.pipeline import TINY, TrainOptions, scratch_overrides

    spec = REGISTRY["flan-t5-small"]
    opts = TrainOptions("d.jsonl", "flan-t5-small", tiny=True, overrides={"tie_embeddings": True})
    span = {"copy_head": "span"}  # the scratch default for T5 (tests/test_copyhead.py)
    assert scratch_overrides(spec, opts) == dict(TINY["seq2seq"], tie_word_embeddings=True, **span)
    gpt_head = {"copy_head": "span", "copy_scope": "location"}  # GPT-2's scratch default (tests/test_copyhead.py)
    assert scratch_overrides(REGISTRY["distilgpt2"], opts) == dict(TINY["causal"], **gpt_head)  # tied either way
    assert scratch_overrides(spec, TrainOptions("d.jsonl", "flan-t5-small", tiny=True)) == dict(TINY["seq2seq"], **span)
    assert scratch_overrides(spec, TrainOptions("d.jsonl", "flan-t5-small")) == span
    published = TrainOptions("d.jsonl", "flan-t5-small", overrides={"copy_head": "off"})
    assert scratch_overrides(spec, published) is None  # the published architecture
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(TINY["seq2seq"], tie_word_embeddings=True))
    untied, _ = build_scratch(spec, CORPUS, vocab_size=200, overrides=TINY["seq2seq"])
    assert model.lm_head.weight is model.shared.weight and model.config.scale_decoder_outputs
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(model) == model.shared.weight.numel()  # one matrix fewer
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_trained(spec, tmp_path)
    assert again.lm_head.weight is again.shared.weight and again.config.scale_decoder_outputs
    x, y = torch.tensor([tok("MOV copies Source")["input_ids"]]), torch.tensor([[0, 5, 6]])
    model.eval(), again.eval()
    assert torch.allclose(model(input_ids=x, decoder_input_ids=y).logits, again(input_ids=x, decoder_input_ids=y).logits,
                          atol=1e-5)


def test_scratch_gpt2_bytelevel_roundtrip():
    spec = REGISTRY["distilgpt2"]
    model, tok = build_scratch(spec, CORPUS, vocab_size=300, overrides=TINY_GPT)
    assert tok.pad_token_id == tok.eos_token_id
    assert model.lm_head.weight is model.transformer.wte.weight  # GPT-2 ties its head
    text = "Ünïcode never seen: ∑ 日本"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte level: nothing is unknown


def test_init_modes_offline(tmp_path, monkeypatch):
    """pretrained loads a local folder through from_pretrained; auto falls back to scratch, and says so."""
    import pytest

    from wmg.config import ConfigError
    from wmg.models import build

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = REGISTRY["flan-t5-small"]
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=TINY_T5)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    got = build(spec, "pretrained", CORPUS, source=str(tmp_path))
    assert got.init == "pretrained" and str(tmp_path) in got.note
    assert torch.equal(got.model.lm_head.weight, model.lm_head.weight)
    assert build(spec, "auto", CORPUS, source=str(tmp_path)).init == "pretrained"
    said = []
    fallback = build(spec, "auto", CORPUS, vocab_size=200, overrides=TINY_T5, echo=said.append)
    assert fallback.init == "scratch" and "not reachable" in fallback.note
    assert any("RANDOM weights" in s for s in said)
    with pytest.raises(ConfigError, match="cannot load pretrained flan-t5-small"):
        build(spec, "pretrained", CORPUS)


def test_tied_embeddings_with_pretrained_weights_is_one_line(tmp_path):
    from click.testing import CliRunner

    from wmg.cli import main

    r = CliRunner().invoke(main, ["train", "--init", "pretrained", "--tie-embeddings", "--db", str(tmp_path / "r.db")])
    assert r.exit_code == 2 and "--tie-embeddings changes the architecture" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r.db").exists()  # refused before the store is opened
