"""Train a sentencepiece tokenizer on manifest transcripts, or encode text with one.

Ids 0, 1, 2 are always <blk>, <unk>, <sos/eos>.

Examples:
  asr tokenizer train --manifest data/train.jsonl --vocab-size 256 --out data/lang/tokenizer
  asr tokenizer encode --model data/lang/tokenizer.model "HELLO WORLD"
"""

from __future__ import annotations

import argparse

from asr.cli import require


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train from the texts of one or more manifests / text files")
    t.add_argument("--manifest", nargs="*", default=[], help="JSONL manifests whose 'text' to use")
    t.add_argument("--text", nargs="*", default=[], help="plain text files, one sentence per line")
    t.add_argument("--vocab-size", type=int, default=256, help="pieces including specials (default 256)")
    t.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    t.add_argument("--out", required=True, help="output prefix; writes OUT.model")
    e = sub.add_parser("encode", help="print the pieces and ids of a sentence")
    e.add_argument("--model", required=True)
    e.add_argument("text")


def run(args: argparse.Namespace) -> int:
    if args.action == "encode":
        require("--model", args.model)
    else:
        for path in args.manifest:
            require("--manifest", path)
        for path in args.text:
            require("--text", path)
        if not args.manifest and not args.text:
            raise ValueError("tokenizer train: give --manifest and/or --text")
    from asr.tokenizer import Tokenizer, train_tokenizer

    if args.action == "encode":
        tok = Tokenizer(args.model)
        ids = tok.encode(args.text)
        print(" ".join(tok.id_to_piece(i) for i in ids))
        print(" ".join(map(str, ids)))
        return 0
    from asr.data.manifest import read_manifest

    texts = [row["text"] for m in args.manifest for row in read_manifest(m)]
    for path in args.text:
        with open(path) as f:
            texts.extend(f)
    tok = train_tokenizer(texts, args.out, vocab_size=args.vocab_size, model_type=args.model_type)
    print(f"wrote {tok.path} ({tok.vocab_size} pieces from {len(texts)} lines)")
    return 0
