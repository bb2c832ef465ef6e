"""One set of inference settings: the rules, the shared flags of transcribe / decode / serve, and the
per-session overrides of the server."""

import argparse
import asyncio
import dataclasses
import json

import pytest
from websockets.asyncio.client import connect

from asr.inference import (DEFAULT_LM_WEIGHT, SESSION_FIELDS, InferenceConfig, SettingsError,
                           add_inference_arguments, inference_config_from_args, model_lm_dir, parse_block_ms,
                           resolve_lm)
from test_server_fake import FakeFactory, make_audio, direct_finals, random_frames, run, running


BLOCK_RULE = 'expected a positive multiple of 40 ms (the encoder frame) or "full"'


def _parser(module) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asr x", exit_on_error=False)
    module.add_arguments(p)
    return p


def _commands():
    from server.cli import build_serve_parser
    from streaming.cli import decode, transcribe

    return {"transcribe": (_parser(transcribe), ["a.wav"]), "decode": (_parser(decode), ["--data", "d", "--out", "o"]),
            "serve": (build_serve_parser(), [])}


def test_block_ms_rule():
    assert parse_block_ms("full") is None and parse_block_ms(None) is None
    assert parse_block_ms("640") == 640 and parse_block_ms(320) == 320
    for bad in ("100", "abc", 0, -40, 100, True, 64.0):
        with pytest.raises(SettingsError, match=r"^block_ms: expected a positive multiple of 40 ms .* or \"full\", got"):
            parse_block_ms(bad)
    assert InferenceConfig(block_ms=None).block_size is None and InferenceConfig(block_ms=320).block_size == 8


@pytest.mark.parametrize("field,value,expected", [
    ("decoder", "beam", "one of ctc, sar, bsbs, offline"),
    ("left_blocks", -1, "an integer >= 0, or none (unlimited)"),
    ("beam", 0, "an integer >= 1"), ("beam", True, "an integer >= 1"), ("ctc_weight", 1.5, "a number from 0 to 1"),
    ("lm_weight", -1.0, "a number >= 0"), ("tentative_frames", "2", "an integer >= 0"),
    ("device", "gpu", "cpu, cuda, cuda:N or auto"), ("threads", 0, "an integer >= 1")])
def test_every_field_has_one_rule(field, value, expected):
    with pytest.raises(SettingsError) as e:
        InferenceConfig(**{field: value})
    assert str(e.value) == f"{field}: expected {expected}, got {value!r}" and e.value.field == field


def test_transcribe_decode_and_serve_share_the_flags():
    flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(InferenceConfig)}
    argv = ["--decoder", "bsbs", "--block-ms", "full", "--left-blocks", "none", "--beam", "3", "--ctc-weight", "0.5",
            "--tentative-frames", "1", "--threads", "1", "--device", "cpu"]
    configs = {}
    for name, (parser, required) in _commands().items():
        assert flags <= set(parser._option_string_actions), name
        configs[name] = inference_config_from_args(parser.parse_args(required + argv))
    assert configs["transcribe"] == configs["decode"] == configs["serve"]
    assert configs["serve"] == InferenceConfig(decoder="bsbs", block_ms=None, left_blocks=None, beam=3, ctc_weight=0.5,
                                               tentative_frames=1, threads=1, lm=str(model_lm_dir(None)),
                                               lm_weight=DEFAULT_LM_WEIGHT)  # --lm auto: the shipped model's LM


@pytest.mark.parametrize("argv,message", [
    (["--block-ms", "100"], f"argument --block-ms: {BLOCK_RULE}, got 100"),
    (["--block-ms", "fast"], f"argument --block-ms: {BLOCK_RULE}, got 'fast'"),
    (["--beam", "0"], "argument --beam: expected an integer >= 1, got 0"),
    (["--decoder", "nope"], "argument --decoder: expected one of ctc, sar, bsbs, offline, got 'nope'"),
])
def test_a_bad_flag_is_one_clear_message_in_every_command(argv, message, capsys):
    from server.cli import serve_main

    from blockasr.cli import main

    for command in (["transcribe", "a.wav"], ["decode", "--data", "d", "--out", "o"]):
        with pytest.raises(SystemExit):
            main(command + argv)
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == f"asr {command[0]}: error: {message}"
    with pytest.raises(SystemExit):
        serve_main(argv)
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"asr serve: error: {message}"


def test_lm_weight_default_and_rule():
    p = argparse.ArgumentParser()
    add_inference_arguments(p)
    assert inference_config_from_args(p.parse_args([])).lm_weight == 0.0  # sar: --lm auto finds no use for one
    assert inference_config_from_args(p.parse_args(["--lm", "x"])).lm_weight == DEFAULT_LM_WEIGHT
    assert inference_config_from_args(p.parse_args(["--lm", "x", "--lm-weight", "0"])).lm_weight == 0.0
    with pytest.raises(SettingsError, match=r"--lm-weight needs an LM: --lm DIR \(here --lm auto, and .* holds no LM\)"):
        inference_config_from_args(p.parse_args(["--lm-weight", "0.5"]))
    with pytest.raises(SettingsError, match=r"--lm-weight needs an LM: --lm DIR \(here --lm none\)"):
        inference_config_from_args(p.parse_args(["--decoder", "bsbs", "--lm", "none", "--lm-weight", "0.5"]))


def _model_dir(root, with_lm: bool):
    for d in [root] + ([root / "lm"] if with_lm else []):
        d.mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "model.pt", "tokenizer.model"):
            (d / f).write_text("")
    return str(root)


def test_lm_auto_is_the_model_directory_s_own_lm_for_the_decoders_that_fuse_one(tmp_path):
    p = argparse.ArgumentParser()
    add_inference_arguments(p)
    with_lm, without = _model_dir(tmp_path / "a", True), _model_dir(tmp_path / "b", False)
    cfg = lambda *argv, serving=False: inference_config_from_args(p.parse_args(list(argv)), serving=serving)
    for decoder in ("bsbs", "offline"):
        got = cfg("--model", with_lm, "--decoder", decoder)
        assert (got.lm, got.lm_weight) == (str(tmp_path / "a" / "lm"), DEFAULT_LM_WEIGHT)
        assert cfg("--model", with_lm, "--decoder", decoder, "--lm", "none").lm is None
        assert cfg("--model", without, "--decoder", decoder).lm is None
    for decoder in ("ctc", "sar"):
        assert cfg("--model", with_lm, "--decoder", decoder).lm is None  # nothing to fuse: not loaded
        assert cfg("--model", with_lm, "--decoder", decoder, serving=True).lm == str(tmp_path / "a" / "lm")
    assert resolve_lm("elsewhere", with_lm, "sar") == "elsewhere" and resolve_lm(None, with_lm, "bsbs") is None
    assert model_lm_dir(without) is None


def test_override_session_fields_only():
    base = InferenceConfig(model="m", decoder="sar", lm="l", lm_weight=0.2)
    got = base.override({"decoder": "bsbs", "beam": 4, "block_ms": "full", "left_blocks": None, "ctc_weight": 0})
    assert got == dataclasses.replace(base, decoder="bsbs", beam=4, block_ms=None, left_blocks=None, ctc_weight=0)
    assert base.override({}) is base
    with pytest.raises(SettingsError, match=r"^device: is set by the server \(asr serve --device\), not per session$"):
        base.override({"device": "cuda"})
    with pytest.raises(SettingsError, match="^colour: unknown setting; a session may set decoder, block_ms"):
        base.override({"colour": "red"})
    with pytest.raises(SettingsError, match="^beam: expected an integer >= 1, got 'wide'$"):
        base.override({"beam": "wide"})
    assert set(SESSION_FIELDS) < {f.name for f in dataclasses.fields(InferenceConfig)}


async def _native(url: str, start: dict, frames) -> list[dict]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", **start}))
        first = json.loads(await ws.recv())
        if first["type"] != "ready":
            return [first]
        for f in frames:
            await ws.send(f.tobytes())
        await ws.send(json.dumps({"type": "end"}))
        out = []
        async for m in ws:
            out.append(json.loads(m))
        return [first] + out


def test_sessions_get_the_server_defaults_with_their_overrides():
    factory = FakeFactory()
    pcm = make_audio(2.0, 4)
    frames = random_frames(pcm, 5)

    async def main():
        async with running(factory) as server:
            defaults = server.config.inference
            good = asyncio.ensure_future(_native(server.url + "/asr", {"beam": 4, "block_ms": "full", "left_blocks": 2},
                                                 frames))
            bad = await _native(server.url + "/asr", {"left_blocks": -1}, frames)
            plain = await _native(server.url + "/asr", {}, frames)
            return defaults, await good, bad, plain

    defaults, good, bad, plain = run(main())
    message = "left_blocks: expected an integer >= 0, or none (unlimited), got -1"
    assert bad == [{"type": "error", "code": "bad_option", "message": message}]
    assert sorted(factory.settings, key=repr) == sorted(
        [dataclasses.replace(defaults, beam=4, block_ms=None, left_blocks=2), defaults], key=repr)
    finals = [t for t in direct_finals(pcm) if t]
    for session in (good, plain):  # the bad session disturbed neither
        assert [m["text"] for m in session if m["type"] == "final" and m["text"]] == finals
        assert session[-1]["type"] == "done" and set(session[-1]) <= {"type", "audio_s"}
