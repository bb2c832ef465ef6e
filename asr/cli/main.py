"""``asr``: one entry point, one subcommand per module.

Each subcommand module offers ``add_arguments(parser)`` and ``run(args) -> int``; the modules import
heavy libraries (torch) inside ``run`` only, so ``asr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import asr

__all__ = ["main"]

# (subcommand, module, one-line help). Order is the order of a recipe.
_COMMANDS = [
    ("prepare", "asr.cli.prepare", "prepare a corpus into a JSONL manifest"),
    ("tokenizer", "asr.cli.tokenizer_cmd", "train or apply a sentencepiece tokenizer"),
    ("cmvn", "asr.cli.cmvn_cmd", "estimate global CMVN statistics from a manifest"),
    ("train", "asr.cli.train", "train a model from an experiment YAML (resumes automatically)"),
    ("train-lm", "asr.cli.train_lm", "train a transformer LM on text (SAR LM init, shallow fusion)"),
    ("average", "asr.cli.average", "average the last N checkpoints"),
    ("export", "asr.cli.export", "export weights to a model directory"),
    ("transcribe", "asr.cli.transcribe", "transcribe audio files (text, json, srt, vtt)"),
    ("decode", "asr.cli.decode", "decode and score a data set: WER, RTF, latency"),
]

# Subcommands with their own argument parser (the server package): argv is handed over as is.
_PASSTHROUGH = {
    "serve": ("server.cli", "serve_main", "WebSocket streaming server (native, Vosk, WeNet) + browser page"),
    "stream": ("server.cli", "stream_main", "stream a file or the microphone to a server"),
}


def _build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="asr", description="blockasr: streaming speech recognition with blockwise conformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'asr COMMAND --help' for the options of one command.")
    parser.add_argument("--version", action="version", version=f"blockasr {asr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name, help_text in _COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        modules[name] = module
    for name, (_, _, help_text) in _PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASSTHROUGH:
        module_name, func, _ = _PASSTHROUGH[argv[0]]
        return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
    parser, modules = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # user-facing errors: one clear line
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
