"""A copy head for scratch models (`--copy-head`): the pointer-generator of See et al. (2017, "Get
To The Point: Summarization with Pointer-Generator Networks"), after Vinyals et al.'s (2015)
pointer networks; for GPT-2, the pointer runs over the positions before each token, as in the
pointer sentinel mixture models of Merity et al. (2017).

A gadget's location is a span quoted from the excerpt, and a transformer trained from random
weights on a thousand lines does not learn to copy (README "Scratch recipe": given the first two
words of the gold location, scratch T5 wrote the next one in about 1 case of 10). With the head,
every output token is drawn from a mixture: with probability g the decoder's vocabulary
distribution, with 1 - g a pointer's attention over the excerpt's token positions, each
position voting for the token that stands there:

    p(w) = g * softmax(lm_logits)(w) + (1 - g) * sum_{j: x_j = w} a_j
    a = softmax(q(h) . k(e_j) / sqrt(d)),  g = sigmoid(w_g . h + b_g)

T5: h is the decoder's last hidden state, e_j the encoder's output at source position j (padding
masked out). GPT-2: h and e are both the last hidden states (after the final layer norm), the
pointer of position t over the positions s <= t of the prompt's excerpt (found between the
tokens of wmg.prompts' EXCERPT_OPENS and EXCERPT_CLOSES; padding, instruction and answer masked
out), each voting for its token. Copying a token is then one attention lookup, which the model can learn from few
examples, instead of a circuit (induction heads) that needs billions of tokens. `span` adds a
third share, the continuation of the text after the place matching the last tokens written
(`continuation`). The head adds 2 d^2 + d + 1 parameters with `pointer` (524,801 for
flan-t5-small, d = 512; 1,180,417 for distilgpt2, d = 768), 2 d^2 + 3 d + 3 with `span`.
`logits` returns log p, so the training loss (cross-entropy of logits, whose log-softmax is log
p itself) and greedy decoding work unchanged. T5's generation passes the source ids as
`copy_ids` at every step (wmg.generate); GPT-2's keeps the keys and ids of the positions
decoded so far beside its KV cache, started afresh by every prompt.

With `config.copy_field` ([the tokens of `location:`, the ids of every token containing `;`], set
by wmg.models.build_scratch from the tokenizer for `--copy-scope location`) the mixture applies
only inside the answer's location field, from the token after `location:` up to the token that
closes the field; every other output token, the gadget type among them, is the vocabulary's
distribution alone, as without the head, and the head's gate and pointer learn from the location
alone (`location_field`). A config without it (models saved before) copies everywhere.

Every forward also returns the vocabulary's own logits and where the mixture applied
(`vocab_logits`, `copy_field`): with `--copy-vocab-loss W` training adds W times the
vocabulary's cross-entropy on those positions, so the trunk still learns to write the copied
tokens itself, as it must without a head, while the mixture learns to copy them.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2LMHeadModel, T5ForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions, Seq2SeqLMOutput


MATCH = 4  # tokens of context on which `span` matches a continuation in the text


def _copy_layers(model, d: int, initializer_std: float) -> None:
    model.copy_query = nn.Linear(d, d, bias=False)
    model.copy_key = nn.Linear(d, d, bias=False)
    span = model.config.copy_head == "span"
    model.copy_gate = nn.Linear(d, 3 if span else 1)
    for layer in (model.copy_query, model.copy_key, model.copy_gate):
        nn.init.normal_(layer.weight, std=initializer_std)
    nn.init.zeros_(model.copy_gate.bias)  # equal shares at the start


def _histories(ids, fill: int):
    """(B, L) -> (B, L, MATCH): at each position its token and the MATCH - 1 before it, most
    recent first; `fill` before the start."""
    cols = [ids] + [torch.cat([torch.full_like(ids[:, :i], fill), ids[:, :-i]], 1) for i in range(1, MATCH)]
    return torch.stack(cols, -1)


def continuation(asked, text, allowed):
    """The `span` component: for each asking position, the positions j of the text whose MATCH
    tokens before j match the asker's last tokens longest (at least its last one), as weights
    summing to 1, and whether there was any such j. asked (B, n, MATCH): each asker's history
    (`_histories`; -1 never matches); text (B, T): the tokens pointed at (-3 never matches);
    allowed (B, n, T). Matching the recent past and continuing from there is what an induction
    head learns to do (Olsson et al., 2022); here it is given, as CopyNet's selective read
    (Gu et al., 2016) gives the position of the token just copied."""
    before = _histories(text, -2)
    before = torch.cat([torch.full_like(before[:, :1], -2), before[:, :-1]], 1)  # j: the tokens at j-1, j-2, ...
    run = (asked[:, :, None, :] == before[:, None, :, :]).long().cumprod(-1).sum(-1)  # (B, n, T)
    run = run.masked_fill(~allowed, 0)
    best = run.max(-1, keepdim=True).values
    weights = ((run == best) & (best > 0)).float()
    return weights / weights.sum(-1, keepdim=True).clamp_min(1), best > 0


def _mix(model, logits, h, keys, ids, allowed, asked=None, text=None, field=None):
    """log p of the mixture: logits (B, n, V) of the vocabulary, h (B, n, d) the states that ask,
    keys (B, T, d) the pointer's keys (`copy_key` of the states pointed at), ids (B, T) their
    tokens, allowed (B, n, T) where the pointer may go; for `span`, asked and text as
    `continuation` takes them; field (B, n), where given: the positions that may copy (elsewhere
    log p is the vocabulary's log-softmax). The mixture's (positions, vocabulary) tensors are made
    for the field's positions alone: under `--copy-scope location` a GPT-2 batch asks at every
    prompt and answer position, and the location is a few of them."""
    scores = torch.matmul(model.copy_query(h), keys.transpose(1, 2)).float() * h.size(-1) ** -0.5
    if field is None:
        return _mixed(model, logits, h, scores, ids, allowed, asked, text)
    plain = logits.float().log_softmax(-1)
    rows, at = field.nonzero(as_tuple=True)  # (N,): the batch row and position of each asker
    if rows.numel() == 0:
        return plain
    # each asker as a batch row of its own, asking once (n = 1)
    one = lambda x: None if x is None else x[rows, at][:, None]  # noqa: E731
    mixed = _mixed(model, one(logits), one(h), one(scores), ids[rows], one(allowed), one(asked),
                   None if text is None else text[rows])
    return plain.index_put((rows, at), mixed[:, 0])


def _mixed(model, logits, h, scores, ids, allowed, asked=None, text=None):
    """`_mix` at every position given, from the pointer's scores (B, n, T): log p (B, n, V)."""
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    pointer = scores.softmax(-1)
    if model.config.copy_head == "span":
        gate = model.copy_gate(h).float().softmax(-1)  # vocabulary, pointer, continuation
        follow, found = continuation(asked, text, allowed)
        follow = torch.where(found, follow, pointer)  # nothing to continue: the pointer's choice
        vocab, copied = gate[..., :1], gate[..., 1:2] * pointer + gate[..., 2:] * follow
    else:
        vocab = torch.sigmoid(model.copy_gate(h).float())
        copied = (1 - vocab) * pointer
    p = vocab * logits.float().softmax(-1)
    p = p.scatter_add(-1, ids[:, None, :].expand(-1, p.size(1), -1), copied)
    return torch.log(p.clamp_min(1e-30))


def _with_vocab(out, vocab, field):
    """The model's output with, beside the mixture's log p, the vocabulary's own logits
    (`vocab_logits`) and where the mixture applied (`copy_field`, (B, n) bool; None: every
    position), for `--copy-vocab-loss` (wmg.train.token_losses)."""
    out.vocab_logits, out.copy_field = vocab, field
    return out


def location_field(ids, marker, closers, start=None):
    """(B, L) bool: the positions inside the location field, those whose next token belongs to the
    location's value or closes it. A position is inside when the last run of `marker` tokens
    ending at or before it (at or after `start` (B, 1), where given: the answer's first position)
    came after the last token of `closers` (every token containing `;`, which ends a field)."""
    k = len(marker)
    pos = torch.arange(ids.size(1), device=ids.device)[None, :]
    ends = nn.functional.pad(_occurs(ids, marker), (k - 1, 0), value=False)[:, :ids.size(1)]
    if start is not None:
        ends = ends & (pos >= start)
    closed = torch.isin(ids, torch.tensor(closers, device=ids.device, dtype=ids.dtype))
    opened_at = torch.where(ends, pos, -1).cummax(-1).values
    closed_at = torch.where(closed, pos, -1).cummax(-1).values
    return opened_at > closed_at


class T5WithCopy(T5ForConditionalGeneration):
    """T5ForConditionalGeneration with a copy head; `config.copy_head` is "pointer" or "span"."""

    def __init__(self, config):
        super().__init__(config)
        # T5's scale for its attention projections
        _copy_layers(self, config.d_model, config.initializer_factor * config.d_model ** -0.5)
        self._decoded = None  # `span`, generating with a cache: the decoder's tokens so far
        self._keys = None  # generating: (the encoder's outputs, the pointer's keys of them)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                labels=None, copy_ids=None, use_cache=None, **kwargs):
        src = copy_ids if copy_ids is not None else input_ids
        if src is None:
            raise ValueError("the copy head needs the source token ids (input_ids or copy_ids)")
        if attention_mask is None:
            attention_mask = torch.ones_like(src)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=kwargs.pop("inputs_embeds", None))
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels=labels)
        cache = kwargs.pop("cache", None)
        past = cache.get_seq_length() if cache is not None else 0  # decoder positions before this call
        enc = encoder_outputs[0]
        # T5ForConditionalGeneration.forward's decoding, keeping the decoder's last hidden state (after
        # its final layer norm) for the head; a hidden-state capture is not relied upon, since it came
        # back empty under DistributedDataParallel
        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=kwargs.pop("decoder_attention_mask", None),
                           inputs_embeds=kwargs.pop("decoder_inputs_embeds", None), cache=cache,
                           encoder_hidden_states=enc, encoder_attention_mask=attention_mask,
                           use_cache=use_cache, **kwargs)
        h = dec[0]
        lm = h * self.model_dim ** -0.5 if self.config.scale_decoder_outputs else h
        allowed = (attention_mask != 0)[:, None, :].expand(-1, h.size(1), -1)
        asked = text = field = None
        scope = getattr(self.config, "copy_field", None)
        if self.config.copy_head == "span" or scope:
            n = decoder_input_ids.size(1)
            decoded = decoder_input_ids
            if past and self._decoded is not None:  # generating: the decoder's tokens so far, then this one
                decoded = torch.cat([self._decoded, decoder_input_ids], 1)
            self._decoded = decoded if use_cache else None
            if scope:
                field = location_field(decoded, *scope)[:, -n:]
        if self.config.copy_head == "span":
            asked = _histories(decoded.masked_fill(decoded == self.config.decoder_start_token_id, -1), -1)[:, -n:]
            text = src.masked_fill(attention_mask == 0, -3)
        if past and self._keys is not None and self._keys[0] is enc:  # generating: the excerpt's keys once
            keys = self._keys[1]
        else:
            keys = self.copy_key(enc)
        self._keys = (enc, keys) if use_cache and not torch.is_grad_enabled() else None
        vocab = self.lm_head(lm)
        logits = _mix(self, vocab, h, keys, src, allowed, asked, text, field)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        return _with_vocab(Seq2SeqLMOutput(loss=loss, logits=logits, cache=dec.cache, encoder_last_hidden_state=enc),
                           vocab, field)


def _occurs(ids, marker):
    """(B, L) bool: where a run of tokens equal to `marker` starts."""
    k = len(marker)
    if ids.size(1) < k:
        return torch.zeros_like(ids, dtype=torch.bool)
    hits = (ids.unfold(1, k, 1) == torch.tensor(marker, device=ids.device)).all(-1)
    return nn.functional.pad(hits, (0, k - 1), value=False)


def excerpt_region(ids, opens, closes, with_end=False):
    """(B, L) bool, and (B, 1) whether it was found: the positions after the first run of the
    `opens` tokens and before the first run of the `closes` tokens after it (the prompt's
    excerpt, wmg.prompts). A row lacking either gets every position. With `with_end`, also
    (B, 1) the first position after the `closes` tokens (where the answer begins; 0 where not
    found)."""
    pos = torch.arange(ids.size(1), device=ids.device)[None, :]
    big = ids.size(1) + 1
    start = torch.where(_occurs(ids, opens), pos, big).min(-1, keepdim=True).values + len(opens)
    end = torch.where(_occurs(ids, closes) & (pos >= start), pos, big).min(-1, keepdim=True).values
    found = (start < end) & (end < big)
    region = ((pos >= start) & (pos < end)) | ~found
    if with_end:
        return region, found, torch.where(found, end + len(closes), 0)
    return region, found


class GPT2WithCopy(GPT2LMHeadModel):
    """GPT2LMHeadModel with a copy head over the preceding positions; `config.copy_head` is "pointer" or
    "span". With `config.copy_region` ([the tokens that open the excerpt, those that close it], set by
    wmg.models.build_scratch from the tokenizer) the head points only into the prompt's excerpt, as
    T5's points into its encoder's input, not at the instruction or the answer written so far; a
    config without it (models saved before) points at every position before the token."""

    def __init__(self, config):
        super().__init__(config)
        _copy_layers(self, config.n_embd, config.initializer_range)
        # while generating with a cache: (the pointer's keys, ids, where it may point) of the positions so
        # far, and per row whether the prompt's excerpt was found (else every position is pointable)
        self._decoded = None

    def forward(self, input_ids=None, cache=None, attention_mask=None, position_ids=None, labels=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        if input_ids is None:
            raise ValueError("the copy head needs the token ids")
        out = self.transformer(input_ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=use_cache, **kwargs)
        h = out.last_hidden_state  # after ln_f, as lm_head reads it
        n = input_ids.size(1)
        region = getattr(self.config, "copy_region", None)
        if use_cache and n == 1 and self._decoded is not None:  # one more decoding step: an answer token
            *before, found, answer = self._decoded
            new = (self.copy_key(h), input_ids, ~found)
            keys, ids, pointable = (torch.cat([prev, x], 1) for prev, x in zip(before, new))
        else:  # training, or a prompt (the start of a generation)
            keys, ids = self.copy_key(h), input_ids
            answer = None  # where the answer begins (B, 1); None: nowhere found, every position
            if region:
                pointable, found, answer = excerpt_region(ids, *region, with_end=True)
            else:
                pointable, found = torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids[:, :1], dtype=torch.bool)
        self._decoded = (keys, ids, pointable, found, answer) if use_cache else None
        total = keys.size(1)
        kept = min(logits_to_keep, n) if isinstance(logits_to_keep, int) and logits_to_keep > 0 else n
        asking = h[:, n - kept:]
        if attention_mask is not None and attention_mask.dim() == 4:
            # generation with a static cache hands the prepared mask (batch, 1, queries, cache slots):
            # causal and padding already, True or 0.0 where a position may be attended to
            m = attention_mask[:, 0, -kept:, :total]
            allowed = m if m.dtype == torch.bool else m == 0
            padded = ~allowed[:, -1, :]  # what the last position may not attend to
            allowed = allowed & pointable[:, None, :]
        else:  # position t may point at every s <= t that is not padding
            padded = (attention_mask[:, -total:] == 0) if attention_mask is not None else \
                torch.zeros_like(ids, dtype=torch.bool)
            t = torch.arange(total - kept, total, device=h.device)[:, None]
            s = torch.arange(total, device=h.device)[None, :]
            allowed = (s <= t)[None] & ~padded[:, None, :] & pointable[:, None, :]
        asked = text = field = None
        if self.config.copy_head == "span":
            asked = _histories(ids.masked_fill(padded, -1), -1)[:, total - kept:]
            text = ids.masked_fill(padded, -3)
        scope = getattr(self.config, "copy_field", None)
        if scope:  # the answer begins after the prompt's excerpt, found once per prompt
            field = location_field(ids, *scope, start=answer)[:, total - kept:]
        vocab = self.lm_head(asking)
        logits = _mix(self, vocab, asking, keys, ids, allowed, asked, text, field)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return _with_vocab(CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, cache=out.cache), vocab, field)
