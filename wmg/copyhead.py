"""A copy head for scratch T5 (`--copy-head`): the pointer-generator of See et al. (2017, "Get To
The Point: Summarization with Pointer-Generator Networks"), after Vinyals et al.'s (2015) pointer
networks.

A gadget's location is a span quoted from the excerpt, and a transformer trained from random
weights on a thousand lines does not learn to copy (README "Scratch recipe": given the first two
words of the gold location, scratch T5 wrote the next one in about 1 case of 10). With the head,
every output token is drawn from a mixture: with probability g the decoder's vocabulary
distribution, with 1 - g a pointer's attention over the excerpt's token positions, each
position voting for the token that stands there:

    p(w) = g * softmax(lm_logits)(w) + (1 - g) * sum_{j: x_j = w} a_j
    a = softmax(q(h) . k(e_j) / sqrt(d)),  g = sigmoid(w_g . h + b_g)

h is the decoder's last hidden state, e_j the encoder's output at source position j (padding
masked out). Copying a token is then one attention lookup, which the model can learn from few
examples, instead of a circuit (induction heads) that needs billions of tokens. The head adds
2 d^2 + d + 1 parameters (524,801 for flan-t5-small, d = 512). `logits` returns log p, so the
training loss (cross-entropy of logits, whose log-softmax is log p itself) and greedy decoding
work unchanged; generation passes the source ids as `copy_ids` at every step (wmg.generate).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import T5ForConditionalGeneration


class T5WithCopy(T5ForConditionalGeneration):
    """T5ForConditionalGeneration with a pointer-generator head; `config.copy_head` is True."""

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        self.copy_query = nn.Linear(d, d, bias=False)
        self.copy_key = nn.Linear(d, d, bias=False)
        self.copy_gate = nn.Linear(d, 1)
        std = config.initializer_factor * d ** -0.5  # T5's scale for its attention projections
        for layer in (self.copy_query, self.copy_key):
            nn.init.normal_(layer.weight, std=std)
        nn.init.normal_(self.copy_gate.weight, std=std)
        nn.init.zeros_(self.copy_gate.bias)  # half copy, half vocabulary at the start

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                labels=None, copy_ids=None, **kwargs):
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
        kwargs["output_hidden_states"] = True
        out = super().forward(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                              encoder_outputs=encoder_outputs, **kwargs)
        h = out.decoder_hidden_states[-1]  # after the decoder's final layer norm, as lm_head reads it
        enc = encoder_outputs[0]
        scores = torch.matmul(self.copy_query(h), self.copy_key(enc).transpose(1, 2)).float()
        scores = scores * self.config.d_model ** -0.5
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        pointer = scores.softmax(-1)  # (batch, target, source)
        gate = torch.sigmoid(self.copy_gate(h).float())  # (batch, target, 1)
        p = gate * out.logits.float().softmax(-1)
        p = p.scatter_add(-1, src[:, None, :].expand(-1, p.size(1), -1), (1 - gate) * pointer)
        out.logits = torch.log(p.clamp_min(1e-30))
        out.loss = None
        if labels is not None:
            out.loss = nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), labels.reshape(-1),
                                                   ignore_index=-100)
        return out

    def copy_gate_values(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        """1 - g per target position (the probability of copying), for inspection and tests."""
        with torch.no_grad():
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=decoder_input_ids, output_hidden_states=True, use_cache=False)
            return 1 - torch.sigmoid(self.copy_gate(out.decoder_hidden_states[-1]).float())[..., 0]
