"""Headless chromium driven over the DevTools protocol, for the dashboard's browser test
and its screenshot: a websocket (aiohttp's client) to Debian's ``chromium``, no driver
binary and no browser-automation package.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from streams.cli.localstack import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Headless chromium over the DevTools protocol: navigate, evaluate, read cookies."""

    def __init__(self, profile: Path, *, width: int = 1300, height: int = 1800) -> None:
        self.profile = profile
        self.size = f"{width},{height}"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.next_id = 0

    async def __aenter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}", f"--window-size={self.size}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.http = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            try:
                async with self.http.get(f"http://127.0.0.1:{self.port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("chromium's DevTools endpoint did not answer")
            await asyncio.sleep(0.1)
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {timeout}s: {expression}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.eval("window.leaving = true")
        await self.send("Page.navigate", url=url)
        await self.loaded()

    async def loaded(self) -> None:
        """Wait for the page that replaces the one marked ``window.leaving``."""
        await self.wait_for("!window.leaving && document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> None:
        """The viewport as a PNG."""
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def sign_in(self, base_url: str, token: str) -> None:
        """The dashboard's login form, typed into: the token goes in the POST body, never a URL."""
        await self.goto(base_url + "/dashboard")
        await self.eval(f"window.leaving = true; document.querySelector('input[name=token]').value = {json.dumps(token)};"
                        "document.querySelector('form#login').submit()")
        await self.loaded()
