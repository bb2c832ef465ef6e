"""``asr``: one entry point, one subcommand per module.

Each subcommand module offers ``add_arguments(parser)`` and ``run(args) -> int``; the modules import
heavy libraries (torch) inside ``run`` only. The dispatcher lives above all the packages, so the
library (``asr``) never imports the streaming, server or recipe layers, and each of those owns its
commands.
"""

from __future__ import annotations

import argparse
import sys

import asr
from asr.cli import average, cmvn_cmd, export, tokenizer_cmd, train, train_lm
from recipes import cli as prepare
from streaming.cli import decode, transcribe

__all__ = ["main"]

# (subcommand, module, one-line help). Order is the order of a recipe.
_COMMANDS = [
    ("prepare", prepare, "prepare a corpus into a JSONL manifest"),
    ("tokenizer", tokenizer_cmd, "train or apply a sentencepiece tokenizer"),
    ("cmvn", cmvn_cmd, "estimate global CMVN statistics from a manifest"),
    ("train", train, "train a model from an experiment YAML (resumes automatically)"),
    ("train-lm", train_lm, "train a transformer LM on text (SAR LM init, shallow fusion)"),
    ("average", average, "average the last N checkpoints"),
    ("export", export, "export weights to a model directory"),
    ("transcribe", transcribe, "transcribe audio files (text, json, srt, vtt)"),
    ("decode", decode, "decode and score a data set: WER, RTF, latency"),
]


def _serve(argv: list[str]) -> int:
    from server.cli import serve_main

    return serve_main(argv)


def _stream(argv: list[str]) -> int:
    from server.cli import stream_main

    return stream_main(argv)


# Subcommands with their own argument parser (the server package): argv is handed over as is.
_PASSTHROUGH = {
    "serve": (_serve, "WebSocket streaming server (native, Vosk, WeNet) + browser page"),
    "stream": (_stream, "stream a file or the microphone to a server"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr", description="blockasr: streaming speech recognition with blockwise conformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'asr COMMAND --help' for the options of one command.")
    parser.add_argument("--version", action="version", version=f"blockasr {asr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    for name, (_, help_text) in _PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASSTHROUGH:
        return int(_PASSTHROUGH[argv[0]][0](argv[1:]) or 0)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # user-facing errors: one clear line
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
