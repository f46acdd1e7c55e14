"""Open an HTML file in headless Chromium and report what a reader's browser would see go wrong.

Why the DevTools protocol (over ``--remote-debugging-pipe``, the same protocol as ``--remote-debugging-port`` without
a port or a websocket client): ``--dump-dom`` shows neither a failed image nor a script error, while the protocol
reports console errors (``Runtime.consoleAPICalled``), uncaught exceptions (``Runtime.exceptionThrown``), browser
log errors such as failed loads (``Log.entryAdded``), every network request (so a CDN or any non-local fetch is
caught), and lets us ask the page which images failed to decode (``complete && naturalWidth > 0``). The screenshot
is the full page, taken through the same protocol (``Page.captureScreenshot``; ``--screenshot`` only captures the
first viewport).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """Chromium's path, installing Debian's package when missing and running as root; else (None, why)."""
    path = find_chromium()
    if path:
        return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed and this user cannot install it (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                              capture_output=True, text=True, timeout=900)
    path = find_chromium()
    return (path, "") if path else (None, f"apt-get install chromium failed: {proc.stderr.strip()[-300:]}")


@dataclass
class PageCheck:
    """What went wrong (or right) when the page loaded."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    n_images: int = 0
    sections: dict[str, str] = field(default_factory=dict)  # section id -> data-status
    #: section id -> the text a reader sees in it (innerText: closed <details> and hidden parts left out), without
    #: citations and code (years, file names, versions and seeds are labels, not measured numbers)
    visible_text: dict[str, str] = field(default_factory=dict)
    findings: list[dict[str, str]] = field(default_factory=list)  # per li.finding: analysis, status, headline
    qc_verdicts: list[dict[str, str]] = field(default_factory=list)  # per li.qc-verdict: analysis, verdict
    items: list[str] = field(default_factory=list)  # data-item keys with a figure or a table
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors] + [f"exception: {m}" for m in self.exceptions]
                + [f"log error: {m}" for m in self.log_errors] + [f"failed request: {m}" for m in self.failed_requests]
                + [f"external request: {m}" for m in self.external_requests]
                + [f"broken image: {m}" for m in self.broken_images])


class _Pipe:
    """Chromium's DevTools protocol over fds 3 (commands in) and 4 (messages out), NUL-separated JSON."""

    def __init__(self, chromium: str, user_data_dir: str):
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # keep our ends away from fds 3 and 4, which the child needs
        self._to_child_w = _high_fd(self._to_child_w)
        self._from_child_r = _high_fd(self._from_child_r)
        to_child_r, from_child_w = _high_fd(to_child_r), _high_fd(from_child_w)

        def wire_fds() -> None:
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
             "--window-size=1280,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds=False: our fds are non-inheritable (closed at exec) except 3 and 4, which dup2 made
            # inheritable in the child; close_fds=True would close them after preexec_fn
            preexec_fn=wire_fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive during ``seconds`` (late errors after load)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            pass

    def _read(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium in time")
            ready, _, _ = select.select([self._from_child_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        for fd in (self._to_child_w, self._from_child_r):
            try:
                os.close(fd)
            except OSError:
                pass


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


_PAGE_STATE = """(() => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => (i.getAttribute('alt') || '') + ' <'
                                 + (i.getAttribute('src') || '').slice(0, 60) + '>');
  const sections = {};
  document.querySelectorAll('section[id]').forEach(s => { sections[s.id] = s.dataset.status || ''; });
  const items = Array.from(document.querySelectorAll('[data-item]'))
                     .filter(d => d.querySelector('img, table')).map(d => d.dataset.item);
  return JSON.stringify({n: images.length, broken: broken, sections: sections, items: items,
                         height: document.documentElement.scrollHeight});
})()"""

#: Read after the screenshot: hides citations and code to take each section's visible text.
_PAGE_TEXT = """(() => {
  const findings = Array.from(document.querySelectorAll('li.finding')).map(li => ({
    analysis: li.dataset.analysis, status: li.dataset.status,
    verdict: (li.querySelector('.verdict') || {}).innerText || '',
    headline: (li.querySelector('.headline') || {}).innerText || ''}));
  const qc = Array.from(document.querySelectorAll('li.qc-verdict')).map(li => ({
    analysis: li.dataset.analysis, verdict: li.dataset.verdict}));
  const style = document.createElement('style');
  style.textContent = 'cite, code { display: none !important; }';
  document.head.appendChild(style);
  const texts = {};
  document.querySelectorAll('section[id]').forEach(s => { texts[s.id] = s.innerText; });
  style.remove();
  return JSON.stringify({texts: texts, findings: findings, qc: qc});
})()"""


def check_page(chromium: str, html_path: Path, screenshot: Path | None = None, *, max_height: int = 12000,
               settle_s: float = 0.5) -> PageCheck:
    """Load ``html_path`` in headless Chromium; collect errors, broken images, sections; take a screenshot."""
    result = PageCheck()
    with tempfile.TemporaryDirectory(prefix="bk-chromium-") as profile:
        pipe = _Pipe(chromium, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": Path(html_path).absolute().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=120)
            pipe.drain(settle_s)
            state = json.loads(pipe.send("Runtime.evaluate", {"expression": _PAGE_STATE, "returnByValue": True},
                                         session=session)["result"]["value"])
            result.n_images, result.broken_images = state["n"], state["broken"]
            result.sections, result.items = state["sections"], state["items"]
            if screenshot is not None:
                height = int(min(max(state["height"], 600), max_height))
                shot = pipe.send("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}}, session=session,
                    timeout=120)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                result.screenshot = screenshot
            text = json.loads(pipe.send("Runtime.evaluate", {"expression": _PAGE_TEXT, "returnByValue": True},
                                        session=session)["result"]["value"])
            result.visible_text, result.findings, result.qc_verdicts = text["texts"], text["findings"], text["qc"]
            pipe.drain(0.1)
        finally:
            pipe.close()
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                  for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            result.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            result.log_errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed":
            result.failed_requests.append(f"{params.get('errorText', '')} ({params.get('type', '')})")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "about:")):
                result.external_requests.append(url)
    return result
