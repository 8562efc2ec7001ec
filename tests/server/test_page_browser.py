"""The page at `/` in a real browser: Debian's Chromium, driven by Playwright, against a real
`qgn serve` on loopback with the shipped weights.

Every test watches its page: no script error, no failed request, no request leaving the
machine, and no error answer (nor the console line Chromium writes for one) but those the
test expects. `playwright install` is never run: the browser is /usr/bin/chromium, which
.ci/run installs; where it is missing or cannot start, these tests skip and say why.
Screenshots go to a temporary folder, or to $QGN_SCREENSHOT_DIR (docs/ holds the README's).
"""

from __future__ import annotations

import base64
import io
import os
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.scheme_request import MIB
from tests.server.test_e2e import RunningServer

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "qgn_small_synthetic.safetensors"
EXAMPLES = files("server") / "static" / "examples"
WAIT_MS = 180_000  # a request on 2 shared cores can take seconds; never a timing assertion
FAILED_LOAD = "Failed to load resource: the server responded with a status of "


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (the dev extra)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's `chromium` package")
    sync_api.expect.set_options(timeout=WAIT_MS)
    try:
        playwright = sync_api.sync_playwright().start()
    except Exception as error:
        pytest.skip(f"Playwright's driver does not start: {error}")
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=FLAGS
        )
    except Exception as error:
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} does not start: {error}")
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    running = RunningServer(WEIGHTS, tmp_path_factory.mktemp("page") / "server.log")
    yield running
    running.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("QGN_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class WatchedPage:
    """A page of its own browser context, with everything it asked and heard recorded."""

    def __init__(self, browser, base_url: str, width: int, height: int):
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.route("**/*", self._only_this_server)
        self.foreign: list[str] = []
        self.failed: list[str] = []
        self.script_errors: list[str] = []
        self.console_errors: list[str] = []
        self.refused: list[tuple[int, str]] = []
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        self.page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        self.page.on(
            "response",
            lambda r: self.refused.append((r.status, r.url)) if r.status >= 400 else None,
        )

    def _only_this_server(self, route):
        if route.request.url.startswith(self.base_url + "/"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def assert_clean(self, refused: tuple[int, ...] = ()) -> None:
        assert not self.script_errors
        assert not self.foreign, "requests left the machine"
        assert not self.failed
        assert sorted(status for status, _ in self.refused) == sorted(refused), self.refused
        assert sorted(self.console_errors) == sorted(
            f"{FAILED_LOAD}{status} ({reason})"
            for status, reason in (
                (s, {400: "Bad Request", 422: "Unprocessable Entity"}[s]) for s in refused
            )
        ), self.console_errors


@pytest.fixture
def watched(browser, server):
    page = WatchedPage(browser, server.url, 1280, 800)
    yield page
    page.context.close()


def canvas_rgba(page, selector: str) -> np.ndarray:
    """A canvas's pixels, read back losslessly as PNG."""
    url = page.eval_on_selector(selector, "canvas => canvas.toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def screenshot(target, path: Path) -> None:
    """A screenshot, as a palette PNG (small enough to commit)."""
    png = target.screenshot()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(path, optimize=True)


def peak_as_shown(body: dict) -> str:
    return f"{body['stats']['peak_memory_bytes'] / MIB:.2f} MiB"


def open_page(watched: WatchedPage, server) -> None:
    from playwright.sync_api import expect

    watched.page.goto(server.url + "/")
    expect(watched.page.locator("#legend-list input")).to_have_count(12)


def test_an_upload_shows_the_overlay_and_tau_asks_again(watched, server, shots):
    from playwright.sync_api import expect

    page = watched.page
    open_page(watched, server)
    with page.expect_response(lambda r: "/v1/segment" in r.url) as answer:
        page.set_input_files("#file", str(EXAMPLES / "street-1.png"))
    body = answer.value.json()
    expect(page.locator("#peak")).to_have_text(peak_as_shown(body))
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#latency")).to_have_text(f"{body['stats']['latency_ms']:.1f} ms")
    expect(page.locator("#leaves")).to_have_text(str(len(body["quadtree"]["leaves"])))
    expect(page.locator("#ran")).to_have_text("pc on cpu")
    expect(page.locator("#flags")).to_have_text("none")
    expect(page.locator("#sites-chart rect.bar")).to_have_count(6)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # The overlay is the API's mask in the palette's colours, pixel for pixel.
    model = server.http.get("/v1/model").json()
    palette = np.array(model["palette"], dtype=np.uint8)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
    overlay = canvas_rgba(page, "#mask-canvas")
    assert overlay.shape == (256, 512, 4) and (overlay[..., 3] == 255).all()
    assert np.array_equal(overlay[..., :3], palette[mask])
    # A class switched off in the legend leaves the image visible where it was.
    hidden = int(np.bincount(mask.ravel()).argmax())
    page.get_by_role("checkbox", name=model["classes"][hidden], exact=True).uncheck()
    assert np.array_equal(canvas_rgba(page, "#mask-canvas")[..., 3] == 0, mask == hidden)
    # The leaves' outlines are drawn, and go with their toggle.
    assert canvas_rgba(page, "#leaf-canvas")[..., 3].any()
    page.get_by_role("checkbox", name="Quadtree leaves as block outlines").uncheck()
    expect(page.locator("#leaf-canvas")).to_be_hidden()
    page.get_by_role("checkbox", name="Quadtree leaves as block outlines").check()
    page.locator("#opacity").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#mask-canvas")).to_have_css("opacity", "0.55")
    page.get_by_role("checkbox", name=model["classes"][hidden], exact=True).check()

    # Moving τ (here with the keyboard) asks again, and the page shows the new cost.
    page.locator("#tau").focus()
    with page.expect_response(lambda r: "scheme=threshold" in r.url) as answer:
        page.keyboard.press("ArrowRight")
    assert "threshold=0.55" in answer.value.url
    body = answer.value.json()
    expect(page.locator("#ran")).to_have_text("τ 0.55 on cpu")
    expect(page.locator("#peak")).to_have_text(peak_as_shown(body))
    expect(page.get_by_role("radio", name=re.compile("^threshold"))).to_be_checked()
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
    page.evaluate("window.scrollTo(0, 0)")  # clicking the legend scrolled it down
    screenshot(page, shots / "page-result.png")

    # auto: the server picks the setting; the page says which and why.
    with page.expect_response(lambda r: "scheme=auto" in r.url) as answer:
        page.get_by_role("radio", name=re.compile("^auto")).check()
    body = answer.value.json()
    expect(page.locator("#auto-why")).to_contain_text(f"{body['auto']['setting']}: ")
    expect(page.locator("#auto-why")).to_contain_text(f"{body['auto']['free_memory_mb']} MiB free")
    watched.assert_clean()


def test_the_sweep_plots_one_point_per_setting(watched, server, shots):
    from playwright.sync_api import expect

    page = watched.page
    open_page(watched, server)
    page.get_by_role("button", name="Street 2").click()
    expect(page.locator("#peak")).to_have_text(re.compile(r"MiB$"))
    page.get_by_role("button", name="Run the sweep").click()
    expect(page.locator("#sweep-status")).to_have_text(re.compile(r"^Done: \d+ settings\.$"))
    settings = int(page.locator("#sweep-status").text_content().split()[1])
    assert settings == 14  # τ 0.9 … 0.1, pc, all, three budgets
    expect(page.locator("#sweep-memory circle")).to_have_count(settings)
    expect(page.locator("#sweep-latency circle")).to_have_count(settings)
    rows = [
        [cell.strip() for cell in row.split("\t")]
        for row in page.locator("#sweep-body tr").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent).join('\\t'))"
        )
    ]
    labels = [row[0] for row in rows]
    assert labels[:11] == [f"τ {t / 10:g}" for t in range(9, 0, -1)] + ["pc", "all"]
    assert rows[10][3] == "100.00"  # all agrees with itself
    minimum = server.http.post(
        "/v1/segment?scheme=budget&budget_mb=0.001",
        files={"image": ("s.png", (EXAMPLES / "street-2.png").read_bytes())},
    ).json()["error"]["min_budget_mb"]
    for label, peak_mib, *_ in rows[11:]:
        budget = float(label.split()[1])
        assert minimum <= budget and float(peak_mib) <= budget
    expect(page.locator("#budget")).to_be_enabled()
    assert float(page.locator("#budget").get_attribute("min")) == minimum
    # The range tops at twice what τ 0.1 holds (above, a budget runs τ 0.1), not at `all`'s.
    top = float(page.locator("#budget").get_attribute("max"))
    assert abs(top - 2 * float(rows[8][1])) <= 0.02 and top < float(rows[10][1])
    expect(page.get_by_text("An upload has no ground truth")).to_be_visible()
    page.wait_for_function(  # the strip chart holds the sweep's requests, and those before
        f"document.querySelectorAll('#recent-chart rect.request').length > {settings}"
    )
    screenshot(page.locator("#sweep"), shots / "page-sweep.png")
    watched.assert_clean(refused=(422,))  # the page asks the API for the image's minimum


def test_a_dropped_text_file_shows_the_apis_message(watched, server):
    from playwright.sync_api import expect

    page = watched.page
    open_page(watched, server)
    text = "this is not an image\n"
    dropped = page.evaluate_handle(
        """text => {
            const data = new DataTransfer();
            data.items.add(new File([text], "notes.txt", { type: "text/plain" }));
            return data;
        }""",
        text,
    )
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": dropped})
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    error = server.http.post(
        "/v1/segment", files={"image": ("notes.txt", text.encode(), "text/plain")}
    ).json()["error"]
    expect(page.get_by_role("alert")).to_have_text(f"400 {error['code']}: {error['message']}")
    expect(page.locator("#status")).to_have_text("notes.txt: the server refused this request.")
    expect(page.locator("#stage")).to_be_hidden()
    watched.assert_clean(refused=(400,))


def test_at_phone_width_with_the_keyboard_only(browser, server, shots):
    from playwright.sync_api import expect

    watched = WatchedPage(browser, server.url, 390, 844)
    try:
        page = watched.page
        open_page(watched, server)
        for _ in range(30):  # tab to the third example and press it
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.textContent") == "Street 3":
                break
        else:
            pytest.fail("Tab never reached the example buttons")
        with page.expect_response(lambda r: "/v1/segment" in r.url):
            page.keyboard.press("Enter")
        expect(page.locator("#peak")).to_have_text(re.compile(r"MiB$"))
        expect(page.locator("#result")).to_have_attribute("aria-busy", "false")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.locator("#result").scroll_into_view_if_needed()
        screenshot(page, shots / "page-phone.png")
        watched.assert_clean()
    finally:
        watched.context.close()


def test_docs_render_their_operations_with_nothing_from_outside(watched, server):
    from playwright.sync_api import expect

    page = watched.page
    page.goto(server.url + "/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert {"/v1/segment", "/v1/model", "/v1/recent", "/healthz"} <= {p.strip() for p in paths}
    watched.assert_clean()
