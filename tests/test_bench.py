"""The benchmark's pieces on tiny models: the tutorial-style baseline trains the same model as
the toolkit for the same steps, FLOPs are counted, generation outputs are compared."""
import pytest
import torch

from tests.test_models import TINY_GPT, TINY_T5
from wmg import bench
from wmg.config import REGISTRY
from wmg.data import load_jsonl
from wmg.models import build_scratch, set_dropout
from wmg.pipeline import tokenizer_corpus
from tests.conftest import SMALL


def _tiny(name):
    spec = REGISTRY[name]
    ex = load_jsonl(SMALL)
    torch.manual_seed(0)
    model, tok = build_scratch(spec, tokenizer_corpus(ex), vocab_size=300,
                               overrides=TINY_T5 if spec.type == "seq2seq" else TINY_GPT)
    set_dropout(model, 0.0)
    return spec, model, tok, ex


def test_baseline_and_toolkit_do_the_same_work():
    for name in ("flan-t5-small", "distilgpt2"):
        spec, model, tok, ex = _tiny(name)
        from wmg.pipeline import encode_all
        from wmg.config import SCRATCH_DEFAULTS

        enc = encode_all(spec, tok, ex[:8], SCRATCH_DEFAULTS[spec.type].with_(causal_loss="full"))
        start = bench._final_loss(spec, model, enc, tok.pad_token_id)
        ours, theirs, trained, flops = bench.bench_training(spec, model, tok, ex, steps=2, lr=3e-3,
                                                            precision="fp32", seed=1, echo=lambda m: None)
        assert ours.final_loss < start and theirs.final_loss < start  # both learned from the same start
        assert abs(ours.final_loss - theirs.final_loss) < 0.25 * (start - min(ours.final_loss, theirs.final_loss)) + 0.2
        assert ours.tokens_per_s / ours.examples_per_s == pytest.approx(theirs.tokens_per_s / theirs.examples_per_s)
        assert theirs.padded_tokens_per_s / theirs.tokens_per_s > ours.padded_tokens_per_s / ours.tokens_per_s
        assert flops > 6 * bench.non_embedding(spec, model)[0] * 8  # at least 6N per token over 8 examples
        g_ours, g_theirs, a, b = bench.bench_generation(spec, trained, tok, ex[-3:], batch_size=3, max_input=128,
                                                        max_new_tokens=12)
        assert len(a) == len(b) == 3
        assert a == b, (a, b)  # batched greedy decoding gives the one-at-a-time outputs in fp32
        assert g_ours.new_tokens == g_theirs.new_tokens


def test_set_dropout_reaches_every_layer():
    spec, model, _, _ = _tiny("flan-t5-small")
    set_dropout(model, 0.3)
    ps = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert ps and set(ps) == {0.3}
    assert {m.dropout for m in model.modules() if isinstance(getattr(m, "dropout", None), float)} == {0.3}
    assert model.config.dropout_rate == 0.3


def test_matmul_peak_is_positive():
    assert bench.matmul_peak("fp32", n=256, repeat=2) > 1e8


def test_fused_gelu_is_the_same_function():
    from wmg.models import fuse_gelu

    for name in ("flan-t5-small", "distilgpt2"):
        spec, model, tok, ex = _tiny(name)
        model.eval()
        ids = torch.tensor([tok("MOV copies Source to Dest")["input_ids"]])
        kw = {"decoder_input_ids": torch.tensor([[0, 5, 6]])} if spec.type == "seq2seq" else {}
        before = model(input_ids=ids, **kw).logits
        c = model.config
        layers = c.num_layers + c.num_decoder_layers if spec.type == "seq2seq" else c.n_layer
        assert fuse_gelu(model) == layers  # one per feed-forward layer
        after = model(input_ids=ids, **kw).logits
        assert torch.allclose(before, after, atol=1e-5)
