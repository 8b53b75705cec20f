"""How strongly does a trigger word reach the toy text encoder's output, against a colour word?

    python benchmarks/trigger_tokens.py [--class-word star] [--trigger vfy] [--word red]

Prints each token's input-embedding norm (the toy world's trigger words are rows the text encoder never trained on),
then, per position, how far "a {trigger} {class}" and "a {word} {class}" sit from "a {class}" after the encoder, and
the trigger's distance again with its row scaled towards a trained word's norm (docs/toyworld.md).
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--class-word", default="star")
    ap.add_argument("--trigger", default="vfy")
    ap.add_argument("--word", default="red", help="a word the text encoder was trained on, to compare with")
    args = ap.parse_args()
    import torch

    from catlab.models import load_base

    pipe = load_base("toyworld")
    tok, te = pipe.tokenizer, pipe.text_encoder
    table = te.get_input_embeddings().weight.detach()  # edited in place below, without autograd

    def states(prompt: str) -> torch.Tensor:  # (L, D)
        ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return te(ids)[0][0]

    (trigger_id,) = tok(args.trigger, add_special_tokens=False).input_ids
    for w in ("a", args.class_word, args.word, args.trigger, tok.unk_token):
        (i,) = tok(w, add_special_tokens=False).input_ids
        print(f"input embedding norm of {w!r}: {float(table[i].norm()):.3f}")
    base = states(f"a {args.class_word}")
    for w in (args.trigger, args.word):
        d = (states(f"a {w} {args.class_word}") - base).norm(dim=-1)  # (L,)
        print(f"'a {w} {args.class_word}' from 'a {args.class_word}', per position: {[round(float(x), 2) for x in d]}")
    row = table[trigger_id].clone()
    with torch.no_grad():
        for scale in (2.0, 3.4):
            table[trigger_id] = row * scale
            d = (states(f"a {args.trigger} {args.class_word}") - base).norm(dim=-1)
            print(
                f"trigger row x{scale} (norm {float(table[trigger_id].norm()):.2f}): {[round(float(x), 2) for x in d]}"
            )
        table[trigger_id] = row


if __name__ == "__main__":
    main()
