"""Can a trained model continue a location once it has started one?

For every held-out example of a run whose gold location has at least K+2 words, the model is
given the prompt and, teacher-forced, the start of the gold answer up to the first K words of
the gold location ("gadget_type: <gold>; location: w1 .. wK"); greedy decoding then writes
up to 10 tokens. Counted: how often the next word is the gold location's word K+1, and how
often the location so continued (to its `;`) is still a span of the excerpt. A model that
has learned to copy scores high on both whatever it would have chosen as a start.

    python benchmarks/copy_probe.py --db results.db --run-id 6 --model flan-t5-small [--words 2]
"""
from __future__ import annotations

import argparse

import torch

from wmg.config import REGISTRY
from wmg.models import load_trained
from wmg.parse import location_in_excerpt, parse_output
from wmg.prompts import seq2seq_prompt
from wmg.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="results.db")
    ap.add_argument("--run-id", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--words", type=int, default=2, help="gold location words given (K)")
    a = ap.parse_args()
    store = Store(a.db)
    run = store.get_run(a.run_id)
    info = next(m for m in run.models if m.name == a.model)
    spec = REGISTRY[a.model]
    model, tok = load_trained(spec, info.checkpoint_path)
    model.eval()
    n = next_right = still_span = 0
    for x in store.run_examples(a.run_id, "validation"):
        gold = parse_output(x.gold_output)
        words = (gold.location or "").split()
        if len(words) < a.words + 2:
            continue
        n += 1
        head = f"gadget_type: {gold.gadget_type}; location: {' '.join(words[:a.words])}"
        prompt = seq2seq_prompt(x.instruction, x.input)
        with torch.inference_mode():
            if spec.type == "seq2seq":
                enc = tok(prompt, return_tensors="pt")
                dec = tok(head, add_special_tokens=False, return_tensors="pt").input_ids
                dec = torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), dec], 1)
                out = model.generate(**enc, decoder_input_ids=dec, max_new_tokens=10, do_sample=False)
                text = tok.decode(out[0, dec.size(1):], skip_special_tokens=True)
            else:
                ids = tok(prompt + " " + head, return_tensors="pt").input_ids
                out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tok.eos_token_id)
                text = tok.decode(out[0, ids.size(1):], skip_special_tokens=True)
        next_right += text.split()[:1] == words[a.words:a.words + 1]
        continued = " ".join(words[:a.words]) + " " + text.split(";")[0]
        still_span += bool(location_in_excerpt(continued.strip(), x.input))
    print(f"{a.model} (run {a.run_id}): given the first {a.words} gold location words, next word right "
          f"{next_right}/{n}; continued location still a span of the excerpt {still_span}/{n}")


if __name__ == "__main__":
    main()
