"""The training loop: accumulation equals the full batch, runs are reproducible, the model learns."""
import pytest
import torch

from wmg.batching import Collator, encode_causal, encode_seq2seq, fit
from wmg.config import REGISTRY, SCRATCH_DEFAULTS
from wmg.models import build_scratch
from wmg.train import token_loss_sum, token_losses, train, unlikelihood_sum
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
                                            learning_rate=3e-3, optimizer="adamw", copy_vocab_loss=0.0)
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


def test_prompt_loss_weight_scores_the_prompt_at_its_weight():
    """Under `full` loss the prompt's tokens are scored with weight W (the answer's keep theirs, the
    label's included), so the loss is the weighted mean over both: W = 1 is the plain full loss.
    Under `answer` loss the prompt stays unscored whatever W is."""
    spec = REGISTRY["distilgpt2"]
    torch.manual_seed(0)
    model, tok = build_scratch(spec, CORPUS, vocab_size=300, overrides=dict(TINY_GPT, resid_pdrop=0, embd_pdrop=0,
                                                                            attn_pdrop=0))
    model.eval()
    prompt, answer = "Task: x\n\nExcerpt:\nTag_1 MOV.\n\nAnswer:", " gadget_type: ReadWrite gadget; location: Tag_1;"
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    plain = encode_causal(tok, prompt, answer, 96, 32, "full")
    light = encode_causal(tok, prompt, answer, 96, 32, "full", prompt_weight=0.25)
    both = encode_causal(tok, prompt, answer, 96, 32, "full", 3.0, prompt_weight=0.25)
    assert plain.weights is None and light.labels == plain.labels
    assert light.weights[:n_prompt] == (0.25,) * n_prompt and set(light.weights[n_prompt:]) == {1.0}
    assert both.weights[:n_prompt] == (0.25,) * n_prompt and 3.0 in both.weights[n_prompt:]
    assert encode_causal(tok, prompt, answer, 96, 32, "answer", prompt_weight=0.25).weights is None
    with torch.no_grad():
        per_token = []
        for e in (plain, light):
            batch = Collator("causal", tok.pad_token_id)([e])
            loss, _, n = token_losses(model, batch, "causal")
            per_token.append((loss, n))
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], reduction="none")[:len(plain.input_ids) - 1]
    w = torch.tensor([0.25] * (n_prompt - 1) + [1.0] * (len(plain.input_ids) - n_prompt))
    assert torch.allclose(per_token[0][0], ce.sum(), rtol=1e-5) and per_token[0][1] == len(plain.input_ids) - 1
    assert torch.allclose(per_token[1][0], (ce * w).sum(), rtol=1e-5)
    assert abs(per_token[1][1] - float(w.sum())) < 1e-4


def test_fit_keeps_head_and_tail():
    assert fit(list(range(10)), 4) == [0, 1, 8, 9]
    assert fit(list(range(3)), 4) == [0, 1, 2]


def test_unlikelihood_penalises_earlier_answer_tokens_only():
    """Candidates at t: the distinct tokens of earlier scored positions, the gold at t excluded; the
    prompt's positions (-100) are never candidates, and a token seen twice counts once."""
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    p = logits.softmax(-1)
    # two prompt positions (ignored; clamped they would read as token 0), then the answer 5 7 5 5
    target = torch.tensor([[-100, -100, 5, 7, 5, 5]])
    term = lambda t, c: -torch.log1p(-p[0, t, c])  # noqa: E731
    expected = term(3, 5) + term(4, 7) + term(5, 7)  # t=2: none; t=4 and t=5: 5 is gold, so only 7
    assert torch.allclose(unlikelihood_sum(logits, target), expected)
    # the same answer with the prompt tokens scored as token 0 would add 0 as a candidate
    assert not torch.allclose(unlikelihood_sum(logits, torch.tensor([[0, 0, 5, 7, 5, 5]])), expected)
    # a loop of one token: nothing to penalise when the gold repeats it, something once it changes
    assert unlikelihood_sum(logits, torch.tensor([[4, 4, 4, 4, 4, 4]])) == 0
    assert unlikelihood_sum(logits, torch.tensor([[4, 4, 4, 4, 4, 2]])) == term(5, 4)


def test_unlikelihood_lowers_a_repeated_token_in_a_real_model():
    """One gradient step on the unlikelihood term alone makes the tiny GPT-2 less likely to
    repeat an answer token it has already written, at a position where the gold does not."""
    spec = REGISTRY["distilgpt2"]
    torch.manual_seed(0)
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(TINY_GPT, resid_pdrop=0, embd_pdrop=0,
                                                                            attn_pdrop=0))
    batch = Collator(spec.type, tok.pad_token_id)(_data(spec, tok, 2))
    ce, ul, n = token_losses(model, batch, spec.type, unlikelihood=True)
    assert token_losses(model, batch, spec.type)[1] is None and torch.equal(ce, token_loss_sum(model, batch, spec.type)[0])
    assert ul > 0 and n > 0

    def repeat_prob():
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch["labels"][:, 1:]
        return float(torch.exp(-unlikelihood_sum(logits, target)))  # product of (1 - p) over candidates

    before = repeat_prob()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ul.backward()
    opt.step()
    assert repeat_prob() > before


def test_a_process_pinned_to_one_cpu_gets_one_thread_and_one_loader_process():
    """Two wmg processes side by side, each pinned to its own core (`taskset -c 0` / `-c 1`), must
    not each start loader processes for two cores on their one."""
    import subprocess
    import sys

    code = ("import os; os.sched_getaffinity = lambda pid: {0}\n"
            "from wmg.device import setup\n"
            "info = setup('cpu', 'unix', echo=lambda *a: None, precision='fp32')\n"
            "import torch; print(info.threads, info.workers, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "1"]


def test_a_run_continued_elsewhere_takes_the_loader_processes_of_the_process_that_continues_it(monkeypatch):
    """A study recorded by a process with two CPUs holds `workers: 2`; a worker pinned to one CPU
    that makes (or resumes) one of its runs must use one loader process, as its setup prints, and
    on windows none."""
    import os

    from wmg.pipeline import options_from_config

    recorded = {"data": "d.jsonl", "models": "distilgpt2", "workers": 2, "platform": "unix", "seed": 7}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    opts = options_from_config(recorded)
    assert opts.workers == 1 and opts.seed == 7 and opts.models == "distilgpt2"
    assert options_from_config(dict(recorded, platform="windows")).workers == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert options_from_config(dict(recorded, workers=0)).workers == 2


def test_peak_memory_is_restarted_per_phase():
    """Each model's training and each comparison get their own peak: a large buffer freed before
    the measurement starts is not counted, one allocated after it is."""
    import subprocess
    import sys

    code = ("from wmg.device import PeakMemory\n"
            "big = bytearray(400 * 2**20); big[::4096] = b'x' * len(big[::4096])\n"
            "before = PeakMemory().mb(); del big\n"
            "m = PeakMemory(); base = m.mb()\n"
            "other = bytearray(200 * 2**20); other[::4096] = b'x' * len(other[::4096])\n"
            "print(before, base, m.mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, base, after = map(float, out.stdout.split())
    assert before > 400 and base < before - 300  # the freed 400 MB is not in the new measurement
    assert after > base + 190  # the 200 MB touched after the restart is


def test_label_smoothing_spreads_eps_of_each_target_over_the_vocabulary():
    """The smoothed loss is, per scored token, (1 - eps) * -log p(gold) + eps * the mean over the
    vocabulary of -log p, with the label-token weights as before; eps 0 is the plain loss. In
    training it changes the objective (the logged loss), never the validation loss's definition."""
    from wmg.batching import IGNORE

    for name, over in (("flan-t5-small", dict(TINY_T5, dropout_rate=0.0)),
                       ("distilgpt2", dict(TINY_GPT, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))):
        spec = REGISTRY[name]
        torch.manual_seed(0)
        model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=over)
        model.eval()
        data = [encode_seq2seq(tok, "Excerpt:\nTag_1 MOV.\n\nAnswer:", "gadget_type: ReadWrite gadget; location: "
                               "Tag_1; explanation: x.", 64, 32, 3.0)] if spec.type == "seq2seq" else \
            [encode_causal(tok, "Excerpt:\nTag_1 MOV.\n\nAnswer:", " gadget_type: ReadWrite gadget; location: Tag_1; "
                           "explanation: x.", 96, 32, "answer", 3.0)]
        batch = Collator(spec.type, tok.pad_token_id)(data)
        with torch.no_grad():
            plain, _, n = token_losses(model, batch, spec.type)
            smooth, _, n2 = token_losses(model, batch, spec.type, label_smoothing=0.2)
            if spec.type == "seq2seq":
                dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=dec).logits.float().log_softmax(-1)
                target, w = batch["labels"], batch["weights"]
            else:
                logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1] \
                    .float().log_softmax(-1)
                target, w = batch["labels"][:, 1:], batch["weights"][:, 1:]
        keep = target != IGNORE
        gold = -logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        spread = -logp.mean(-1)
        want = ((0.8 * gold + 0.2 * spread) * w * keep).sum()
        assert n == n2 and torch.allclose(smooth, want, rtol=1e-5), name
        assert torch.allclose(plain, (gold * w * keep).sum(), rtol=1e-5) and not torch.allclose(plain, smooth)
        assert (w[keep] == 3.0).any()  # the label tokens' weight is in play


def test_label_smoothing_changes_the_training_objective_not_the_validation_loss():
    spec = REGISTRY["flan-t5-small"]
    runs = {}
    for eps in (0.0, 0.2):
        torch.manual_seed(1)
        model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=dict(TINY_T5, dropout_rate=0.0))
        cfg = SCRATCH_DEFAULTS[spec.type].with_(epochs=1, micro_batch_size=2, grad_accum=1, seed=1, learning_rate=0.0,
                                                label_smoothing=eps, optimizer="adamw", warmup_ratio=0.0)
        steps = []
        res = train(model, _data(spec, tok), cfg, spec.type, tok.pad_token_id, _data(spec, tok, 2),
                    on_step=steps.append, progress=False)
        runs[eps] = (steps[0].loss, res.epoch_val_losses[0])
    assert runs[0.2][0] != runs[0.0][0]  # the same weights, another objective
    assert runs[0.2][1] == runs[0.0][1]  # learning rate 0: the same weights, the same plain validation loss


@pytest.mark.parametrize("flags, needs", [
    (["--copy-head", "off", "--copy-scope", "location"], "--copy-scope location needs a copy head"),
    (["--copy-head", "off", "--copy-vocab-loss", "1"], "--copy-vocab-loss needs a copy head"),
    (["--prompt-loss-weight", "0.1"], "--prompt-loss-weight needs the prompt in the loss (--causal-loss full)"),
    (["--average-epochs", "1"], "--average-epochs 1 must be between 2 and the epochs (6), or 0"),
    (["--epochs", "3", "--average-epochs", "4"], "--average-epochs 4 must be between 2 and the epochs (3), or 0"),
])
def test_an_option_without_the_option_it_needs_is_one_line(tmp_path, flags, needs):
    """Refused when the run's configs are resolved, before a run is stored or a model built."""
    import json

    from click.testing import CliRunner

    from wmg.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Identify any weird machine gadget.", "input": f"MOV {i} copies.",
                                        "output": f"gadget_type: ReadWrite gadget; location: MOV {i}; explanation: x"}) + "\n"
                            for i in range(12)))
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--models", "distilgpt2", "--tiny", *flags,
                                  "--db", str(tmp_path / "r.db"), "--checkpoints", str(tmp_path / "ck")])
    assert r.exit_code != 0 and needs in r.output
    assert "Traceback" not in r.output and "TRAINING MODEL" not in r.output


def test_heap_trimmer_trims_every_n_steps_every_step_by_default(monkeypatch):
    import wmg.device as device

    calls = []

    class Libc:
        def malloc_trim(self, pad):
            calls.append(pad)

    monkeypatch.setattr(device, "glibc", lambda: Libc())
    monkeypatch.delenv("WMG_TRIM_STEPS", raising=False)
    trim = device.heap_trimmer()  # by default after every step
    trim(1), trim(2)
    assert calls == [0, 0]
    calls.clear()
    assert device.heap_trimmer(0) is None
    monkeypatch.setenv("WMG_TRIM_STEPS", "0")  # turned off
    assert device.heap_trimmer() is None
    trim = device.heap_trimmer(3)
    for step in range(1, 8):
        trim(step)
    assert calls == [0, 0]  # after the 3rd and the 6th step
    trim()  # an epoch's end: at once, whatever the step
    trim(8), trim(9)
    assert calls == [0, 0, 0, 0]  # the epoch's end, then after the 9th step
    monkeypatch.setattr(device, "glibc", lambda: None)  # not glibc: nothing to trim with
    assert device.heap_trimmer(1) is None


def test_trimming_the_heap_changes_no_number_of_a_training(monkeypatch):
    spec = REGISTRY["distilgpt2"]
    monkeypatch.setenv("WMG_TRIM_STEPS", "0")
    plain, plain_losses = _run(spec, TINY_GPT, seed=5, epochs=2)
    monkeypatch.setenv("WMG_TRIM_STEPS", "1")
    trimmed, trimmed_losses = _run(spec, TINY_GPT, seed=5, epochs=2)
    assert trimmed_losses == plain_losses and trimmed.epoch_val_losses == plain.epoch_val_losses


def test_a_skipping_sampler_leaves_out_the_epochs_first_batches_only():
    from wmg.batching import LengthGroupedBatches

    s = LengthGroupedBatches([5, 1, 9, 3, 7, 2, 8], batch_size=2, seed=4)
    s.set_epoch(1)
    whole = list(s)
    s.set_epoch(1, skip=3)
    assert list(s) == whole[3:] and s.batches() == whole and len(s) == 4
    s.set_epoch(2)  # a new epoch starts from its first batch
    assert list(s) == s.batches_for(2) != whole


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_a_stop_between_accumulation_groups_resumes_to_the_uninterrupted_losses_and_weights(workers):
    """The loop feeds an epoch's micro-batches from the loader as it steps, from the first one not yet
    trained: a run stopped after step 6, the second of epoch 2's four (7 micro-batches in groups of
    2, so each epoch's last group is partial), and resumed ends with the losses and weights of a run
    never stopped, with or without a loader process."""
    import copy

    from wmg.train import TrainingInterrupted

    spec = REGISTRY["distilgpt2"]
    torch.manual_seed(5)
    model, tok = build_scratch(spec, CORPUS, vocab_size=200, overrides=TINY_GPT)
    data = _data(spec, tok, n=13)
    start = copy.deepcopy(model.state_dict())
    cfg = SCRATCH_DEFAULTS[spec.type].with_(epochs=3, micro_batch_size=2, grad_accum=2, seed=2, learning_rate=3e-3,
                                            optimizer="adamw", copy_vocab_loss=0.0, num_workers=workers,
                                            dev_fraction=0.0)
    losses = []
    torch.manual_seed(7)  # dropout's masks
    full = train(model, data, cfg, spec.type, tok.pad_token_id, on_step=lambda s: losses.append(s.loss), progress=False)
    assert full.steps == 3 * 4
    done = copy.deepcopy(model.state_dict())

    model.load_state_dict(start)
    torch.manual_seed(7)
    saved, first = [], []
    train_kwargs = dict(progress=False, checkpoint=lambda st, why: saved.append((why, copy.deepcopy(st),
                                                                                copy.deepcopy(model.state_dict()))))
    with pytest.raises(TrainingInterrupted):
        train(model, data, cfg, spec.type, tok.pad_token_id, should_stop=lambda: len(first) >= 5,
              on_step=lambda s: first.append(s.loss), **train_kwargs)
    why, state, weights = saved[-1]
    assert why == "interrupt" and (state["epoch"], state["next_group"], state["step"]) == (1, 2, 6)
    model.load_state_dict(weights)
    rest = []
    again = train(model, data, cfg, spec.type, tok.pad_token_id, resume=state,
                  on_step=lambda s: rest.append(s.loss), progress=False)
    assert again.steps == full.steps and first[:6] + rest == losses
    assert all(torch.equal(v, done[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_state_from_before_epoch_scores_and_averaging_reads_with_their_defaults():
    from wmg.train import TrainState

    older = dict(step=3, epoch=1, next_group=1, total_steps=8, batches=[[0, 1]], epoch_losses=[2.0],
                 all_losses=[3.0, 2.5, 2.0], epoch_train=[2.7], epoch_val=[None], examples_seen=6, tokens_seen=90,
                 seconds=1.5, optimizer={}, scheduler={}, rng={})
    st = TrainState.from_dict(older)
    assert (st.best_epoch, st.best_weights, st.epoch_scores, st.average_weights, st.average_count) == (None, None, [], None, 0)
    assert st.as_dict() == {**older, "epoch_scores": [], "best_epoch": None, "best_weights": None,
                            "average_weights": None, "average_count": 0}
    assert TrainState.from_dict(st) is st
    with pytest.raises(TypeError):  # a state without its position is not a checkpoint
        TrainState.from_dict({k: v for k, v in older.items() if k != "step"})
