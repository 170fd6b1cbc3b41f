"""Fixtures: a real TensorBoard server on loopback, and headless Chromium driven through
chromedriver's WebDriver HTTP API (plain JSON over HTTP: no browser-automation package needed)."""

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base, path, data=None, *, method=None, timeout=30):
    """``data`` (a dict) goes as JSON; the JSON answer comes back decoded, other bodies as bytes."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        raw = response.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _wait(proc, ready, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout} s")
        time.sleep(0.3)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def last_image_step(base, run, tag):
    """The last step of image ``tag`` of ``run`` that the server has loaded, or None."""
    query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
    try:
        entries = request(base, f"/data/plugin/images/images?{query}")
    except urllib.error.HTTPError:  # not loaded yet
        return None
    return entries[-1]["step"] if entries else None


@contextlib.contextmanager
def tensorboard(logdir, n_runs, ready=None):
    """``http://127.0.0.1:<port>`` of a TensorBoard serving ``logdir`` once it lists ``n_runs``
    runs with scalars and ``ready(base_url)`` holds (TensorBoard loads big logs in the
    background, for many seconds after it starts answering)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(
            proc,
            lambda: (
                len(request(base, "/data/plugin/scalars/tags")) >= n_runs
                and (ready is None or ready(base))
            ),
            "tensorboard",
            timeout=180,
        )
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def served_image_step():
    """``served_image_step(base_url, run, tag)``: the last step of an image the server loaded."""
    return last_image_step


def find_chromium():
    """Paths of chromium and chromedriver, or ``None`` when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


# Text and image elements of the whole page: open shadow roots and same-origin frames included
# (TensorBoard's dashboards are web components).
_DEEP_PAGE = """
const out = {text: [], images: [], titles: []};
const visit = (node) => {
  if (node.nodeType === Node.TEXT_NODE) {
    const parent = node.parentElement;
    if (parent && ['STYLE', 'SCRIPT', 'TEMPLATE'].includes(parent.tagName)) return;
    const text = node.textContent.trim();
    if (text) {
      out.text.push(text);
      const box = parent && parent.getBoundingClientRect();
      if (box) out.titles.push([text, box.top, box.bottom]);
    }
    return;
  }
  if (node.tagName === 'IMG') {
    const box = node.getBoundingClientRect();
    out.images.push({src: node.src, width: node.naturalWidth, top: box.top});
  }
  if (node.shadowRoot) visit(node.shadowRoot);
  if (node.tagName === 'IFRAME') { try { visit(node.contentDocument); } catch (e) {} }
  for (const child of node.childNodes) visit(child);
};
visit(document);
out.viewport = window.innerHeight;
return out;
"""


class Browser:
    """One headless Chromium session."""

    def __init__(self, browser, driver, *, width=1400, height=1000):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        port = free_port()
        self.proc = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.base = f"http://127.0.0.1:{port}"
        _wait(self.proc, lambda: request(self.base, "/status")["value"]["ready"], "chromedriver")
        args = [
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
        ]
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": args},
        }
        answer = request(self.base, "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{answer['value']['sessionId']}"

    def resize(self, width, height):
        request(self.base, f"{self.session}/window/rect", {"width": width, "height": height})

    def open(self, url):
        request(self.base, f"{self.session}/url", {"url": url}, timeout=60)

    def page(self):
        """Visible text (in document order), images and text positions of the whole page."""
        script = {"script": _DEEP_PAGE, "args": []}
        return request(self.base, f"{self.session}/execute/sync", script)["value"]

    def wait_for(self, check, timeout=60):
        """The page once ``check(page)`` holds; the last page seen otherwise."""
        deadline = time.monotonic() + timeout
        page = self.page()
        while not check(page) and time.monotonic() < deadline:
            time.sleep(0.5)
            page = self.page()
        return page

    def screenshot(self):
        return base64.b64decode(request(self.base, f"{self.session}/screenshot")["value"])

    def close(self):
        with contextlib.suppress(OSError, urllib.error.URLError):
            request(self.base, self.session, method="DELETE")
        _stop(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_tensorboard():
    """``with serve_tensorboard(logdir, n_runs, ready=None) as base_url: ...``"""
    return tensorboard


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium session; the test is skipped, saying why, only where chromium or
    chromedriver cannot be found (CI installs both: ``.ci/run``)."""
    found = find_chromium()
    if found is None:
        pytest.skip(
            "chromium and chromedriver are needed for the browser test and were not found on "
            "PATH; install them with `apt-get install -y chromium chromium-driver` (.ci/run does)"
        )
    browser = Browser(*found)
    try:
        yield browser
    finally:
        browser.close()
