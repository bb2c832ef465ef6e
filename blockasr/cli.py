"""``asr``: one entry point, one subcommand per module.

Each subcommand module offers ``add_arguments(parser)`` and ``run(args) -> int``; the modules import
heavy libraries (torch) inside ``run`` only, and the dispatcher imports a subcommand's module only
when that subcommand is asked for, so ``asr --help`` and every ``asr CMD --help`` start in well under
a second (``benchmarks/cli_start.py``). The dispatcher lives above all the packages, so the library
(``asr``) never imports the streaming, server or recipe layers, and each of those owns its commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

import asr

__all__ = ["build_parser", "main"]

# (subcommand, module, one-line help). Order is the order of a recipe.
_COMMANDS = [
    ("prepare", "recipes.cli", "prepare a corpus into a JSONL manifest"),
    ("tokenizer", "asr.cli.tokenizer_cmd", "train or apply a sentencepiece tokenizer"),
    ("cmvn", "asr.cli.cmvn_cmd", "estimate global CMVN statistics from a manifest"),
    ("train", "asr.cli.train", "train a model from an experiment YAML (resumes automatically)"),
    ("train-lm", "asr.cli.train_lm", "train a transformer LM on text (SAR LM init, shallow fusion)"),
    ("average", "asr.cli.average", "average the last N checkpoints"),
    ("export", "asr.cli.export", "export weights to a model directory"),
    ("transcribe", "streaming.cli.transcribe", "transcribe audio files (text, json, srt, vtt)"),
    ("decode", "streaming.cli.decode", "decode and score a data set: WER, RTF, latency"),
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


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``asr`` parser; the options of ``commands`` only (None = all), so that a run imports the
    module of its own subcommand alone (the others are listed with their one-line help)."""
    parser = argparse.ArgumentParser(
        prog="asr", description="blockasr: streaming speech recognition with blockwise conformers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'asr COMMAND --help' for the options of one command.")
    parser.add_argument("--version", action="version", version=f"blockasr {asr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in _COMMANDS:
        if commands is not None and name not in commands:
            sub.add_parser(name, help=help_text)
            continue
        module: ModuleType = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    for name, (_, help_text) in _PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the deepest subcommand in ``args`` (``asr prepare kaldi`` -> the kaldi parser)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, actions[0].dest, None) if actions else None
        if chosen is None or chosen not in actions[0].choices:
            return parser
        parser = actions[0].choices[chosen]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASSTHROUGH:
        return int(_PASSTHROUGH[argv[0]][0](argv[1:]) or 0)
    names = {name for name, _, _ in _COMMANDS}
    parser = build_parser([argv[0]] if argv and argv[0] in names else [])
    # parse_known_args + the subcommand's own error(): an unknown flag prints that subcommand's usage
    # (parse_args would report it at the top level, with the usage of `asr`)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
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
