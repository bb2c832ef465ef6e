"""The browser page end to end: headless Chromium with a fake microphone playing a WAV file,
driven over the DevTools protocol (plain WebSocket, no Selenium), talking to the server with the
fake recognizer. Needs `chromium` (Debian: apt-get install chromium)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import make_audio, run, running  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")]


class _DevTools:
    """Minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params):
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, userGesture=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 120.0):  # a hang guard, generous under load
        for _ in range(int(timeout / 0.2)):
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}: state {await self.evaluate('JSON.stringify(window.asrState)')}")


def _launch(wav: str, profile: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stderr:
        found = re.search(r"DevTools listening on (ws://\S+)", line)
        if found:  # keep draining stderr so a chatty browser never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
    raise RuntimeError("chromium did not start its DevTools endpoint")


def test_browser_page_streams_microphone(tmp_path) -> None:
    import soundfile as sf

    wav = str(tmp_path / "speech.wav")
    sf.write(wav, np.concatenate([make_audio(4.0, 1)] * 2), 16000, subtype="PCM_16")
    proc, browser_url = _launch(wav, str(tmp_path / "profile"))
    try:
        port = browser_url.split(":")[2].split("/")[0]

        async def main():
            async with running() as server:
                page_url = server.url.replace("ws://", "http://") + "/"
                targets = await asyncio.to_thread(
                    lambda: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
                )
                page = next(t for t in targets if t["type"] == "page")
                async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                    tab = _DevTools(ws)
                    await tab.call("Page.navigate", url=page_url)
                    await tab.wait_for("document.readyState === 'complete' && !!window.asrState")
                    await tab.evaluate("document.getElementById('start').click()")
                    await tab.wait_for("window.asrState.status === 'listening' || window.asrState.errors.length")
                    partial = await tab.wait_for("window.asrState.partial || window.asrState.finals.length")
                    await tab.wait_for("window.asrState.finals.length > 0 || window.asrState.errors.length")
                    await tab.evaluate("document.getElementById('stop').click()")
                    await tab.wait_for("window.asrState.status === 'done' || window.asrState.errors.length")
                    state = await tab.evaluate("window.asrState")
                    shown = await tab.evaluate("document.getElementById('finals').textContent")
                    return partial, state, shown, server.metrics.audio_seconds

        partial, state, shown, audio_s = run(main())
        assert state["errors"] == [] and state["status"] == "done"
        assert partial and state["finals"] and all(re.fullmatch(r"(w\d+ ?)+", f) for f in state["finals"])
        assert state["finals"][0] in shown and audio_s > 0.5
    finally:
        proc.kill()
        proc.wait()
