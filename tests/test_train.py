"""The training loop: accumulation equals the full batch, runs are reproducible, the model learns."""
import torch

from wmg.batching import Collator, encode_causal, encode_seq2seq, fit
from wmg.config import REGISTRY, SCRATCH_DEFAULTS
from wmg.models import build_scratch
from wmg.train import token_loss_sum, train
from tests.test_models import CORPUS, TINY_GPT, TINY_T5


def _data(spec, tok, n=6):
    out = []
    for i in range(n):
        prompt = f"Task: find.\n\nExcerpt:\nTag_{i} MOV {'x ' * i}copies.\n\nAnswer:"
        answer = f"gadget_type: ReadWrite gadget; location: Tag_{i}; explanation: writes {i}."
        if spec.type == "seq2seq":
            out.append(encode_seq2seq(tok, prompt, answer, 64, 32))
        else:
            out.append(encode_causal(tok, prompt, " " + answer, 96, 32, "answer"))
    return out


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def test_accumulated_gradient_equals_full_batch_gradient():
    for name, over in (("flan-t5-small", TINY_T5), ("distilgpt2", TINY_GPT)):
        spec = REGISTRY[name]
        torch.manual_seed(0)
        model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(over, dropout_rate=0.0) if
                                   spec.type == "seq2seq" else dict(over, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
        model.train()
        data = _data(spec, tok)
        collate = Collator(spec.type, tok.pad_token_id)
        full = collate(data)
        loss, n = token_loss_sum(model, full, spec.type)
        (loss / n).backward()
        g_full = _grads(model)
        model.zero_grad(set_to_none=True)
        parts = [collate(data[:1]), collate(data[1:4]), collate(data[4:])]  # unequal micro-batches
        total = sum(token_loss_sum(model, b, spec.type)[1] for b in parts)
        for b in parts:
            (token_loss_sum(model, b, spec.type)[0] / total).backward()
        assert torch.allclose(_grads(model), g_full, atol=1e-6, rtol=1e-4), name


def _run(spec, over, seed, epochs=3):
    torch.manual_seed(seed)
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=over)
    cfg = SCRATCH_DEFAULTS[spec.type].with_(epochs=epochs, micro_batch_size=2, grad_accum=2, seed=seed,
                                            learning_rate=3e-3, optimizer="adamw")
    steps = []
    res = train(model, _data(spec, tok), cfg, spec.type, tok.pad_token_id, _data(spec, tok, 2),
                on_step=steps.append, progress=False)
    return res, [s.loss for s in steps]


def test_same_seed_same_losses_and_loss_falls():
    spec = REGISTRY["flan-t5-small"]
    a, la = _run(spec, TINY_T5, seed=3)
    b, lb = _run(spec, TINY_T5, seed=3)
    assert la == lb
    assert a.steps == 3 * 2  # 6 examples / micro-batch 2 = 3 micro-batches, accumulation 2 -> 2 steps per epoch
    assert len(a.epoch_val_losses) == 3 and all(v is not None for v in a.epoch_val_losses)
    c, _ = _run(spec, TINY_T5, seed=3, epochs=12)
    assert c.epoch_train_losses[-1] < c.epoch_train_losses[0] * 0.8


def test_causal_labels_mask_prompt_and_padding():
    spec = REGISTRY["distilgpt2"]
    _, tok = build_scratch(spec, CORPUS, vocab_size=300, overrides=TINY_GPT)
    e = encode_causal(tok, "Task: x\n\nAnswer:", " gadget_type: A", 64, 16, "answer")
    n_prompt = len(tok("Task: x\n\nAnswer:", add_special_tokens=False)["input_ids"])
    assert e.labels[:n_prompt] == [-100] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:] and e.input_ids[-1] == tok.eos_token_id
    full = encode_causal(tok, "Task: x\n\nAnswer:", " gadget_type: A", 64, 16, "full")
    assert full.labels == full.input_ids
    batch = Collator("causal", tok.pad_token_id)([e, encode_causal(tok, "T", " g", 64, 16, "answer")])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == -100).all()


def test_fit_keeps_head_and_tail():
    assert fit(list(range(10)), 4) == [0, 1, 8, 9]
    assert fit(list(range(3)), 4) == [0, 1, 2]
