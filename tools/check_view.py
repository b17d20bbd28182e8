"""Serve a pruned model with ``onnxprune.view``, load it in real headless Chromium, and check what Netron shows.

    .venv/bin/python tools/check_view.py [--keep DIR] [--model PRUNED.onnx]

1. Prunes ``fixtures/cnn_digits.onnx`` with ``onnxprune.prune_file``: the structural pass (30 %
   of each channel group) and 50 % unstructured sparsity, so the model carries every kind of
   provenance (``onnxprune.options``, ``.summary``, ``.structure``, ``.structure.options`` and
   ``onnxprune:`` lines on nodes). ``--model`` views a given model instead.
2. ``view.provenance`` must describe it (summary and structure lines, node lines).
3. ``view.serve(..., port=0, browse=False)``; over HTTP: the page is Netron's (200, HTML that
   names the model file), and the model bytes Netron hands the browser are the file's bytes,
   with the onnxprune metadata in them.
4. Drives headless Chromium over the DevTools protocol (``--remote-debugging-pipe``, no extra
   package): sets Netron's cookie-consent cookie (else a consent dialog covers the page), opens
   the page, waits for the graph, and takes screenshots:
   - ``graph.png``: the graph is drawn (one SVG node per ONNX node, non-background pixels, and
     the header colours Netron gives layers (Conv/Gemm) and activations (Relu) both present);
   - ``model-properties.png``: after a click on *Model Properties*, the sidebar lists every
     ``onnxprune.*`` metadata key and its value, and the sidebar is on screen (its grey);
   - ``node-properties.png``: after a click on a pruned node, its pane shows the node's
     ``onnxprune:`` doc_string line.
5. ``view.stop``: the port no longer answers.

Prints PASS/FAIL per check; exits 0 when all pass, 1 when one fails, 2 when Chromium or
Netron is missing. Install them with:  apt-get install -y chromium; pip install 'onnxprune[view]'
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from PIL import Image  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import view  # noqa: E402
from onnxprune.errors import OnnxPruneError  # noqa: E402

WIDTH, HEIGHT = 1400, 1000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Netron's node header colours (grapher.css): layer (Conv, Gemm) and activation (Relu).
LAYER, ACTIVATION = (51, 85, 136), (112, 41, 33)
SIDEBAR = (236, 236, 236)  # #ececec, the properties pane's background


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, browser: str, profile: Path, width: int, height: int) -> None:
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()

        def wire() -> None:  # in the child: commands on fd 3, replies on fd 4
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.process = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.process.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events (no id) are ignored
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply["result"]

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)[
            "sessionId"
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        return None

    def screenshot(self, png: Path) -> Image.Image:
        png.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return Image.open(io.BytesIO(png.read_bytes())).convert("RGB")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close", page=False)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)


def near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    """Pixels within ``tolerance`` (per channel) of ``colour``."""
    return sum(
        n
        for n, pixel in image.getcolors(maxcolors=1 << 24) or []
        if all(abs(p - c) <= tolerance for p, c in zip(pixel, colour, strict=True))
    )


def check(name: str, ok: bool, detail: str, results: list[bool]) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    results.append(ok)


def make_model(work: Path) -> Path:
    out = work / "cnn_digits.s30p50.onnx"
    onnxprune.prune_file(
        ROOT / "fixtures" / "cnn_digits.onnx",
        out,
        onnxprune.PruneConfig(sparsity=0.5),
        structure=onnxprune.StructureConfig(amount=0.3),
    )
    return out


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def check_browser(browser: str, address: view.Address, model: onnx.ModelProto, work: Path, results: list[bool]) -> None:
    keys = [e.key for e in model.metadata_props if e.key.startswith("onnxprune.")]
    stamped = {n.name: n.doc_string for n in model.graph.node if "onnxprune:" in n.doc_string}
    tools = DevTools(browser, work / "profile", WIDTH, HEIGHT)
    try:
        tools.open_page()
        # Netron asks for cookie consent on a fresh profile and waits: answer it as a user would once.
        tools.send("Network.enable")
        tools.send("Network.setCookie", {"name": "consent", "value": str(int(time.time() * 1000)), "url": address.url})
        tools.send("Page.enable")
        tools.send("Page.navigate", {"url": address.url})
        drawn = tools.wait_for("document.querySelectorAll('#canvas .graph-node').length") or 0
        time.sleep(0.5)  # let the layout settle before the screenshot
        shown = sum(node.op_type != "Constant" for node in model.graph.node)  # Netron inlines constants
        check(
            "graph drawn",
            drawn == shown,
            f"{drawn} node boxes in Netron's SVG, the model has {shown} nodes (not counting Constant)",
            results,
        )
        title = tools.evaluate("document.title") or ""
        check("model opened", address.url not in title and bool(title), f"page title {title!r}", results)

        graph = tools.screenshot(work / "graph.png")
        grey = graph.convert("L")
        histogram = grey.histogram()
        background = max(range(256), key=lambda v: histogram[v])
        ink = sum(n for v, n in enumerate(histogram) if abs(v - background) > 16)
        total = grey.width * grey.height
        check("graph not blank", ink > 0.01 * total, f"{100 * ink / total:.1f} % non-background pixels", results)
        layer, activation = near(graph, LAYER), near(graph, ACTIVATION)
        check(
            "node colours",
            layer > 500 and activation > 200,
            f"layer (Conv/Gemm) blue {layer:,} px, activation (Relu) red {activation:,} px",
            results,
        )

        tools.evaluate("document.getElementById('sidebar-model-button').click()")
        pane = tools.wait_for(
            "(document.getElementById('sidebar').style.width !== '0px' || null) && "
            "document.getElementById('sidebar-content').innerText"
        )
        pane = pane or ""
        time.sleep(0.5)  # the pane slides in
        props = tools.screenshot(work / "model-properties.png")
        names = tools.evaluate(  # Netron writes each property's name into a read-only <input>
            "[...document.querySelectorAll('#sidebar-content .sidebar-item-name input')].map(i => i.value)"
        )
        missing = [k for k in keys if k not in (names or [])]
        values = [e.key for e in model.metadata_props if e.key in keys and e.value[:40] not in pane]
        check(
            "model properties list the provenance",
            bool(keys) and not missing and not values,
            f"{len(keys)} onnxprune keys ({', '.join(keys)}); missing {missing or 'none'}, values not shown "
            f"{values or 'none'}",
            results,
        )
        right = props.crop((props.width * 2 // 3, 0, props.width, props.height))
        share = near(right, SIDEBAR, 2) / (right.width * right.height)
        check("properties pane on screen", share > 0.3, f"{share:.0%} of the right third is the pane's grey", results)

        if stamped:  # the node with the most onnxprune lines (structural and unstructured, when both ran)
            name, doc = max(stamped.items(), key=lambda item: item[1].count("onnxprune:"))
            tools.evaluate(
                f"document.getElementById('node-name-' + {json.dumps(name)}).querySelector('.node-item-type')"
                ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
            )
            lines = [line for line in doc.splitlines() if line.startswith("onnxprune:")]
            text = tools.wait_for(
                "(document.getElementById('sidebar-title').innerText.toLowerCase().includes('node') || null) && "
                "document.getElementById('sidebar-content').innerText",
                timeout=10,
            )
            time.sleep(0.5)
            tools.screenshot(work / "node-properties.png")
            absent = [line for line in lines if line not in (text or "")]
            check(
                "node properties show its onnxprune lines",
                bool(text) and not absent,
                f"{name}: {len(lines) - len(absent)} of {len(lines)} lines in its pane ({lines[0]!r} ...)",
                results,
            )
    finally:
        tools.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the screenshots (and the model) in this folder")
    parser.add_argument("--model", type=Path, help="view this model instead of pruning the fixture")
    args = parser.parse_args()

    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if browser is None:
        print(f"FAIL  chromium: none of {', '.join(BROWSERS)} found; apt-get install -y chromium")
        return 2
    try:
        view.require_netron()
    except OnnxPruneError as exc:
        print(f"FAIL  netron: {exc}")
        return 2

    results: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="check_view.") as tmp:
        work = Path(tmp)
        path = args.model or make_model(work)
        model = onnx.load(str(path), load_external_data=False)
        lines = view.provenance(path)
        print("\n".join(f"  | {line}" for line in lines))
        wanted = ("summary:", "structure:") if args.model is None else ("written by onnxprune",)
        check(
            "provenance printed",
            all(any(ln.startswith(w) for ln in lines) for w in wanted),
            f"{len(lines)} lines",
            results,
        )

        address = view.serve(path, port=0, browse=False)
        try:
            status, page = fetch(address.url)
            html = page.decode("utf-8", "replace")
            check(
                "page served",
                status == 200 and "netron" in html.lower() and f'content="/data/{path.name}"' in html,
                f"{address.url}: HTTP {status}, {len(page):,} bytes, names /data/{path.name}",
                results,
            )
            status, data = fetch(f"{address.url}data/{path.name}")
            served = onnx.load_from_string(data)
            keys = sorted(e.key for e in served.metadata_props if e.key.startswith("onnxprune."))
            check(
                "model bytes served",
                status == 200 and data == path.read_bytes() and bool(keys),
                f"{len(data):,} bytes, same as the file; metadata {', '.join(keys)}",
                results,
            )
            check_browser(browser, address, model, work, results)
        finally:
            view.stop(address)
        try:
            fetch(address.url)
            stopped = False
        except (urllib.error.URLError, OSError):
            stopped = True
        check("stopped", stopped and not view.is_serving(address), f"{address.url} no longer answers", results)

        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for png in sorted(work.glob("*.png")):
                shutil.copyfile(png, args.keep / png.name)
            if args.model is None:
                shutil.copyfile(path, args.keep / path.name)
            print(f"screenshots kept in {args.keep}: {', '.join(p.name for p in sorted(work.glob('*.png')))}")
    failed = results.count(False)
    print(f"{'FAIL' if failed else 'PASS'}: {len(results) - failed}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
