"""A headless Chromium driven through the DevTools protocol, to read and use the docs site as a person would.

Debian's `chromium` (never a downloaded browser) runs with a fresh profile and `--remote-debugging-port=0`;
this module talks to its page over the DevTools websocket (aiohttp, which DVC already installs): navigate,
evaluate JavaScript, type keys, and record every URL the page requests. Used by tests/test_docs_site.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from mlflow_ui import HEADLESS_FLAGS, chromium

FLAGS = [*HEADLESS_FLAGS, "--remote-allow-origins=*", "--remote-debugging-port=0", "--window-size=1280,900"]


class Browser:
    """One headless Chromium with one page. Use as a context manager; it ends the browser it started."""

    def __init__(self, timeout_s: float = 60):
        self.timeout_s = timeout_s
        self.requested: list[str] = []  # every URL a page asked for, in order
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-docs-"))
        self._process = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._loop = asyncio.new_event_loop()
        self._id = 0
        self._events: list[dict] = []
        try:
            port = self._devtools_port()
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            [page] = [target for target in targets if target["type"] == "page"]
            self._session = self._loop.run_until_complete(self._open(page["webSocketDebuggerUrl"]))
            for domain in ("Page", "Network", "Runtime"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int:
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if active.is_file() and active.read_text().strip():
                return int(active.read_text().splitlines()[0])
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode} before listening")
            time.sleep(0.1)
        raise RuntimeError(f"chromium opened no DevTools port in {self.timeout_s} s")

    async def _open(self, url: str):
        session = aiohttp.ClientSession()
        return session, await session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        _, socket = self._session
        self._id += 1
        await socket.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads((await socket.receive(timeout=self.timeout_s)).data)
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        if message.get("method") == "Network.requestWillBeSent":
            self.requested.append(message["params"]["request"]["url"])
        self._events.append(message)

    def send(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"still false after {timeout_s or self.timeout_s} s: {expression}")

    def goto(self, url: str) -> None:
        """Load a page and wait until it has loaded."""
        self.send("Page.navigate", url=url)
        self.wait_for(
            f"location.href.split('#')[0] === {json.dumps(url.split('#')[0])} && document.readyState === 'complete'"
        )

    def type(self, text: str) -> None:
        """Key presses into the focused element, one character at a time, as a keyboard sends them."""
        for char in text:
            key = {"key": char, "text": char, "unmodifiedText": char}
            if char.isalpha():
                key |= {"code": f"Key{char.upper()}", "windowsVirtualKeyCode": ord(char.upper())}
            self.send("Input.dispatchKeyEvent", type="keyDown", **key)
            self.send(
                "Input.dispatchKeyEvent", type="keyUp", **{k: v for k, v in key.items() if "text" not in k.lower()}
            )

    def close(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            self._loop.run_until_complete(session[1].close())
            self._loop.run_until_complete(session[0].close())
        self._loop.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
