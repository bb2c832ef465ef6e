"""Inference settings: one frozen dataclass from every entry point to the model.

``asr transcribe``, ``asr decode`` and ``asr serve`` declare their decoding flags with
:func:`add_inference_arguments` and read them back with :func:`inference_config_from_args`; a server
session's ``start`` message overrides single fields with :meth:`InferenceConfig.override`. Every
value, whatever its source, is checked by one rule per field (:func:`check_field`), and an error
names the field and what was expected.

    p = argparse.ArgumentParser(); add_inference_arguments(p)
    cfg = inference_config_from_args(p.parse_args(["--block-ms", "full"]))   # cfg.block_ms is None
    session = cfg.override({"beam": 4, "block_ms": 320})
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

# No torch at import time: the command line builds its parsers from this module, and `asr --help`
# must not wait seconds for torch. The model code is imported by load_inference only.

__all__ = ["DECODERS", "DEFAULT_MODEL_DIR", "FRAME_MS", "SESSION_FIELDS", "InferenceConfig", "SettingsError",
           "add_inference_arguments", "add_session_arguments", "check_field", "check_model_files",
           "check_session_context", "flag_type",
           "inference_config_from_args", "load_inference", "parse_block_ms", "resolve_device",
           "session_overrides_from_args"]

# = asr.encoder.conformer.FRAME_MS (10 ms features, x4 subsampling), repeated here so that this module
# does not import the encoder (torch); tests/test_cli_start.py checks that the two agree.
FRAME_MS = 40
# = asr.models.io.default_model_dir() (checked by the same test), for the same reason.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"
_MODEL_FILES = ("config.yaml", "model.pt", "tokenizer.model")

DECODERS = ("ctc", "sar", "bsbs", "offline")
LM_DECODERS = ("bsbs", "offline")  # the decoders that fuse an external LM

# --lm on the command line: a directory, "auto" (the default: the model directory's own LM, its
# lm/ folder, for the decoders that fuse one) or "none".
LM_AUTO, LM_NONE = "auto", "none"
# The fusion weight when an LM is used and --lm-weight is not given: the best of 0.2/0.4/0.6/0.8 on
# speechocean762 dev-test and librispeech-mini dev with BSBS (benchmarks/results/lm_fusion.md:
# 34.8 -> 30.8 % and 46.4 -> 36.1 %; an4 3.2 -> 2.9 %).
DEFAULT_LM_WEIGHT = 0.4

# The fields a server session may set in its start message; the others (model, LM, device,
# threads) are the server's, fixed when it loads the model.
SESSION_FIELDS = ("decoder", "block_ms", "left_blocks", "beam", "ctc_beam", "ctc_weight", "length_bonus",
                  "lm_weight", "tentative_frames")


class SettingsError(ValueError):
    """A bad inference setting; ``field`` names it, the message says what was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class InferenceConfig:
    """Args:
        model: model directory (None = the shipped ``models/default``).
        decoder: ``ctc`` (streaming greedy CTC), ``sar`` (semi-autoregressive greedy), ``bsbs``
            (blockwise synchronous beam search) or ``offline`` (full-context joint beam search per
            segment; no partials).
        block_ms: encoder block (latency) in ms, a multiple of the encoder frame; None = full
            context (``full`` on the command line): the whole stream is one block, decoded at its end.
        left_blocks: encoder left context in blocks (None = unlimited; bounded keeps memory flat).
        beam, ctc_weight, length_bonus: the beam searches (bsbs, offline).
        ctc_beam: the ctc decoder's final result by CTC prefix beam search of this width (1 = greedy).
        lm: LM directory (``asr train-lm``) for shallow fusion (bsbs, offline).
        lm_weight: shallow-fusion weight of the LM.
        session_context: tokens of the earlier segments' finals of the same stream carried into the
            next segment (None or 0 = none, each segment alone): the LM fusion context (bsbs,
            offline; needs ``lm``, kept in paged caches with PagedEviction) or the SAR decoder's label
            context (its last N tokens). See :mod:`asr.models.lm_session`.
        tentative_frames: SAR boundary rule ``g`` (0 = naive).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when present).
        threads: CPU threads of torch's intra-op pool (None = torch's default, one per core). The
            default is 1: on a busy 2-core machine 2 threads gave the same text for 3.4x the CPU
            time (``benchmarks/results/cli_start.md``); inter-op threads are always 1.
    """

    model: str | None = None
    decoder: str = "sar"
    block_ms: int | None = 640
    left_blocks: int | None = 4
    beam: int = 10
    ctc_beam: int = 1
    ctc_weight: float = 0.3
    length_bonus: float = 0.0
    lm: str | None = None
    lm_weight: float = 0.0
    session_context: int | None = None
    tentative_frames: int = 2
    device: str = "cpu"
    threads: int | None = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name))

    @property
    def block_size(self) -> int | None:
        """Encoder frames per block (None = full context)."""
        return None if self.block_ms is None else self.block_ms // FRAME_MS

    def override(self, overrides: Mapping[str, Any]) -> "InferenceConfig":
        """A server session's settings: these defaults with ``overrides`` (JSON values) applied.

        Only :data:`SESSION_FIELDS` may be set; ``block_ms`` also takes ``"full"``. Raises
        :class:`SettingsError` naming the first bad field.
        """
        fields = {}
        for name, value in overrides.items():
            if name not in SESSION_FIELDS:
                if name in _FIELDS:
                    raise SettingsError(name, "is set by the server (asr serve --" + name.replace("_", "-")
                                        + "), not per session")
                raise SettingsError(name, f"unknown setting; a session may set {', '.join(SESSION_FIELDS)}")
            fields[name] = parse_block_ms(value) if name == "block_ms" else value
        return dataclasses.replace(self, **fields) if fields else self


# ---------------------------------------------------------------------------------- the rules
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v  # not NaN


def _device_ok(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    return v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit())


# field -> (test, what is expected)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: v is None or isinstance(v, str), "a model directory"),
    "decoder": (lambda v: v in DECODERS, "one of " + ", ".join(DECODERS)),
    "block_ms": (lambda v: v is None or (_is_int(v) and v >= FRAME_MS and v % FRAME_MS == 0),
                 f"a positive multiple of {FRAME_MS} ms (the encoder frame) or \"full\""),
    "left_blocks": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0, or none (unlimited)"),
    "beam": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "ctc_beam": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (1 = greedy)"),
    "ctc_weight": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number from 0 to 1"),
    "length_bonus": (_is_number, "a number"),
    "lm": (lambda v: v is None or isinstance(v, str), "an LM directory"),
    "lm_weight": (lambda v: _is_number(v) and v >= 0.0, "a number >= 0"),
    "session_context": (lambda v: v is None or (_is_int(v) and v >= 0),
                        "an integer >= 0 (tokens of context; 0 or none = none)"),
    "tentative_frames": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "device": (_device_ok, "cpu, cuda, cuda:N or auto"),
    "threads": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1"),
}
_FIELDS = tuple(_RULES)


def check_field(name: str, value: Any) -> None:
    """The one rule for field ``name``; raises :class:`SettingsError` naming it."""
    test, expected = _RULES[name]
    if not test(value):
        raise SettingsError(name, f"expected {expected}, got {value!r}")


def check_session_context(decoder: str, session_context: int | None, has_lm: bool) -> None:
    """``session_context`` fits ``decoder``: sar carries its label context; bsbs and offline carry
    the fusion LM's context, so they need an LM; ctc has no context. Raises :class:`SettingsError`."""
    if not session_context:
        return
    if decoder == "ctc":
        raise SettingsError("session_context", "--session-context works with the sar, bsbs and offline decoders; "
                                               "ctc has no label context to carry")
    if decoder in ("bsbs", "offline") and not has_lm:
        raise SettingsError("session_context", f"--session-context with --decoder {decoder} needs --lm DIR "
                                               "(the context is the fusion LM's)")


def parse_block_ms(value: Any) -> int | None:
    """``"full"`` / None -> None (full context); ``640`` / ``"640"`` -> 640, checked by the block_ms rule."""
    if value is None or value == "full":
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise SettingsError("block_ms", f"expected {_RULES['block_ms'][1]}, got {value!r}") from None
    check_field("block_ms", value)
    return value


# ---------------------------------------------------------------------------------- command line
def _none_or(convert: Callable[[str], Any], none: str) -> Callable[[str], Any]:
    return lambda text: None if text == none else convert(text)


# field -> how its command-line text becomes a value ("full" / "none" are the None of some fields)
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "model": str, "decoder": str, "block_ms": _none_or(int, "full"), "left_blocks": _none_or(int, "none"),
    "beam": int, "ctc_beam": int, "ctc_weight": float, "length_bonus": float, "lm": str, "lm_weight": float,
    "session_context": _none_or(int, "none"), "tentative_frames": int, "device": str,
    "threads": _none_or(int, "none"),
}


def flag_type(name: str, check: bool = True) -> Callable[[str], Any]:
    """argparse ``type=`` for field ``name``: the text converted, then checked by the field's rule
    (``check=False``: converted only, for values that a server checks)."""
    convert = _FROM_TEXT[name]

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = text
        if not check:
            return value
        try:
            check_field(name, value)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


# field -> (flag help, with {default} filled in)
_HELP = {
    "model": "model directory (default: the shipped models/default)",
    "decoder": "ctc: streaming greedy CTC; sar: semi-autoregressive; bsbs: blockwise synchronous beam search; "
               "offline: full-context joint beam search per segment (default {default})",
    "block_ms": f"encoder block in ms, a multiple of {FRAME_MS}, or 'full' (the whole stream is one block, "
                "full context) (default {default})",
    "left_blocks": "encoder left context in blocks, or 'none' for unlimited (default {default})",
    "beam": "beam size for bsbs/offline (default {default})",
    "ctc_beam": "ctc decoder: final result by CTC prefix beam search of this width (default {default} = greedy)",
    "ctc_weight": "CTC weight in joint searches (default {default})",
    "length_bonus": "per-token score bonus in the beam searches (default {default})",
    "lm": "LM directory (asr train-lm) for shallow fusion in bsbs/offline, same tokenizer as the model; "
          "'auto': the model directory's own LM (its lm/ folder, as models/default has) when the decoder "
          "is bsbs or offline; 'none': no LM (default {default})",
    "lm_weight": f"shallow-fusion weight (default {DEFAULT_LM_WEIGHT} with an LM)",
    "session_context": "carry up to N tokens of the earlier segments' finals of the same stream into the next "
                       "segment: the LM's fusion context for bsbs/offline (needs --lm; PagedEviction keeps it "
                       "bounded), the label context of the SAR decoder (default: none, each segment alone)",
    "tentative_frames": "SAR boundary rule g; 0 = naive (default {default})",
    "device": "cpu, cuda, cuda:N or auto (cuda when present) (default {default})",
    "threads": "CPU threads of torch, or 'none' for torch's own choice (one per core) (default {default}; "
               "inter-op threads are always 1). On a busy 2-core machine --threads 2 gave the same text "
               "for 3.4x the CPU time and 4.7x the wall time of 1 (benchmarks/results/cli_start.md)",
}


_METAVAR = {"model": "DIR", "decoder": "|".join(DECODERS), "block_ms": "MS|full", "left_blocks": "N|none",
            "ctc_weight": "W", "length_bonus": "B", "lm": "DIR|auto|none", "lm_weight": "W", "device": "DEVICE"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_inference_arguments(p: argparse.ArgumentParser, defaults: InferenceConfig = InferenceConfig()) -> None:
    """The model and decoding flags shared by ``asr transcribe``, ``asr decode`` and ``asr serve``,
    one per :class:`InferenceConfig` field; read them back with :func:`inference_config_from_args`."""
    g = p.add_argument_group("model and decoding (the same flags for asr transcribe, decode and serve)")
    for f in dataclasses.fields(InferenceConfig):
        default = {"lm_weight": None, "lm": LM_AUTO}.get(f.name, getattr(defaults, f.name))  # see from_args
        # "%(default)s" also keeps ArgumentDefaultsHelpFormatter from adding a second default
        shown = "%(default)s"
        if default is None:
            shown = {"block_ms": "full", "left_blocks": "none"}.get(f.name, shown)
        g.add_argument(_flag(f.name), dest=f.name, type=flag_type(f.name), default=default,
                       metavar=_METAVAR.get(f.name, "N"),
                       help=_HELP[f.name].format(default=shown))


def add_session_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for the session fields a streaming client may ask a server for; absent flags are not
    in the namespace (the server's defaults apply), and the server checks the values.
    See :func:`session_overrides_from_args`."""
    g = p.add_argument_group("inference settings asked of the server (default: the server's)")
    for name in SESSION_FIELDS:
        g.add_argument(_flag(name), dest=name, type=flag_type(name, check=False), default=argparse.SUPPRESS,
                       metavar=_METAVAR.get(name, "N"), help=_HELP[name].split(" (default")[0])


def session_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The start-message fields of :func:`add_session_arguments` flags (JSON values; ``"full"`` blocks)."""
    out = {name: getattr(args, name) for name in SESSION_FIELDS if hasattr(args, name)}
    if "block_ms" in out and out["block_ms"] is None:
        out["block_ms"] = "full"
    return out


def model_lm_dir(model: str | None) -> Path | None:
    """The model directory's own LM (``<model>/lm`` holding an LM directory's files), or None."""
    lm = Path(model or DEFAULT_MODEL_DIR) / "lm"
    return lm if all((lm / f).is_file() for f in _MODEL_FILES) else None


def resolve_lm(text: str | None, model: str | None, decoder: str, serving: bool = False) -> str | None:
    """The LM directory that ``--lm TEXT`` means: a directory as given; ``none`` (or None): no LM;
    ``auto``: the model's own LM (:func:`model_lm_dir`) when ``decoder`` fuses one, or always when
    ``serving`` (a server's sessions may ask for bsbs or offline whatever its default decoder)."""
    if text is None or text == LM_NONE:
        return None
    if text != LM_AUTO:
        return text
    if not serving and decoder not in LM_DECODERS:
        return None
    found = model_lm_dir(model)
    return None if found is None else str(found)


def inference_config_from_args(args: argparse.Namespace, serving: bool = False) -> InferenceConfig:
    """The :class:`InferenceConfig` of parsed :func:`add_inference_arguments` flags.

    ``--lm`` is resolved by :func:`resolve_lm` (``serving``: for ``asr serve``). ``--lm-weight``
    defaults to :data:`DEFAULT_LM_WEIGHT` with an LM and 0 without; a weight without an LM is an
    error, and so is ``--session-context`` where the decoder has no context to carry
    (:func:`check_session_context`).
    """
    lm = resolve_lm(args.lm, args.model, args.decoder, serving)
    if lm is None and args.lm_weight:
        why = "none" if args.lm == LM_NONE else f"auto, and {Path(args.model or DEFAULT_MODEL_DIR) / 'lm'} holds no LM"
        raise SettingsError("lm_weight", f"--lm-weight needs an LM: --lm DIR (here --lm {why})")
    weight = 0.0 if lm is None else (DEFAULT_LM_WEIGHT if args.lm_weight is None else args.lm_weight)
    check_session_context(args.decoder, args.session_context, has_lm=lm is not None)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(InferenceConfig)}
    return InferenceConfig(**{**values, "lm": lm, "lm_weight": weight})


# ---------------------------------------------------------------------------------- loading
def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; a missing GPU is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError("device", f"{device} asked for, but torch sees no CUDA device (use --device cpu)")
    return device


def check_model_files(cfg: InferenceConfig) -> None:
    """The model (and LM) directories exist and hold their files; raises :class:`SettingsError` naming
    the field and the missing file. Cheap (no torch), so that commands can check before they load."""
    for name, path, what in (("model", cfg.model or DEFAULT_MODEL_DIR, "model"), ("lm", cfg.lm, "LM")):
        if path is None:
            continue
        path = Path(path)
        if not path.is_dir():
            raise SettingsError(name, f"{path}: no such {what} directory" if not path.exists()
                                else f"{path}: not a directory (a {what} directory holds {', '.join(_MODEL_FILES)})")
        missing = [f for f in _MODEL_FILES if not (path / f).is_file()]
        if missing:
            raise SettingsError(name, f"{path}: not a {what} directory (no {', '.join(missing)})")


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work already started in this process: its pool stays
            pass


def load_inference(cfg: InferenceConfig):
    """Set the threads, load the model directory and the LM on ``cfg.device``: ``(LoadedModel, lm | None)``."""
    from asr.models.io import load_model_dir
    from asr.models.lm_io import load_lm_dir

    check_model_files(cfg)
    _set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    loaded = load_model_dir(cfg.model or DEFAULT_MODEL_DIR, device)
    lm = None if cfg.lm is None else load_lm_dir(cfg.lm, device, tokenizer=loaded.tokenizer).lm
    return loaded, lm
