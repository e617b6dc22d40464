"""The page, driven in headless Chromium (Debian's `chromium` package) through Playwright: upload a photo, see
the overlay, move the threshold slider, read the crack table, download the CSV, refuse a bad pixel size, show
an error without the previous result, fit a phone's width, and cancel a slow photo. Also the real server's
Host and Origin checks (no browser needed)."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from crackseg.inference import CrackSegmenter
from crackseg.io.images import write_image
from crackseg.models.networks import ModelConfig
from crackseg.serve import create_app
from tests.test_serve import DarknessBackend, drawn_cracks_photo, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GATE = threading.Event()  # the stand-in network runs only while set: cleared, a photo stays "in progress"
GATE.set()


class GatedBackend(DarknessBackend):
    def __call__(self, batch):
        GATE.wait(timeout=60)
        return super().__call__(batch)


def gated_segmenter() -> CrackSegmenter:
    config = ModelConfig(train_size=256, name="darkness", threshold=0.5)
    return CrackSegmenter(None, config, backend=GatedBackend(config))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """The real server (uvicorn, HTTP on 127.0.0.1) in a thread, with the darkness stand-in model."""
    port = free_port()
    app = create_app(gated_segmenter(), host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright  # a dev dependency: fails loudly when missing

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def pixel(page, x: int, y: int) -> list[int]:
    """RGB of the result canvas at image coordinates (x, y)."""
    return page.evaluate(
        "([x, y]) => [...document.getElementById('view').getContext('2d').getImageData(x, y, 1, 1).data]",
        [x, y],
    )[:3]


def drop_file(page, path: Path) -> None:
    """Drag-and-drop of a file onto the drop zone, as a browser delivers it."""
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type: "image/png" }));
            const event = new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true });
            document.getElementById("drop-zone").dispatchEvent(event);
        }""",
        [base64.b64encode(path.read_bytes()).decode(), path.name],
    )


def is_red(rgb) -> bool:
    return rgb[0] > rgb[1] + 60 and rgb[0] > rgb[2] + 60


def visible_in_viewport(page, selector: str) -> bool:
    """Whether every element matching `selector` is displayed and lies within the window's width (not cut off
    by an edge, nor by a scrolling container that clips it)."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)].every((el) => {
            const box = el.getBoundingClientRect();
            if (box.width === 0 || box.height === 0) return false;
            for (let p = el.parentElement; p; p = p.parentElement) {  // clipped by an overflow container?
                const style = getComputedStyle(p);
                if (style.overflowX === "visible") continue;
                const clip = p.getBoundingClientRect();
                if (box.left < clip.left - 0.5 || box.right > clip.right + 0.5) return false;
            }
            return box.left >= 0 && box.right <= window.innerWidth;
        })""",
        selector,
    )


def wait_idle(server_url: str) -> dict:
    """The server's health once no photo is in progress."""
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{server_url}api/health").json())["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return health


def test_upload_threshold_table_downloads_errors_and_phone_width(page, server_url, tmp_path: Path):
    photo = tmp_path / "wall.png"
    write_image(photo, drawn_cracks_photo(300, 360))
    (tmp_path / "notes.txt").write_text("not a photo")

    page.goto(server_url)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('darkness')")

    # A file that is not an image: the server's reason is shown.
    page.set_input_files("#file-input", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#status.error")
    assert "415" in page.inner_text("#status") and "not an image" in page.inner_text("#status")
    assert page.is_hidden("#result-panel")

    # A pixel size of 0 or below is refused in the page, with a message, and nothing is sent.
    for bad in ("-1", "0"):
        page.fill("#pixel-size", bad)
        assert page.is_visible("#pixel-size-error") and "above 0" in page.inner_text("#pixel-size-error")
        assert page.get_attribute("#pixel-size", "aria-invalid") == "true"
    sent = []
    page.on("request", lambda request: sent.append(request.url) if "api/predict" in request.url else None)
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("document.getElementById('status').textContent.includes('not sent')")
    assert page.is_visible("#status.error") and "pixel size" in page.inner_text("#status") and not sent
    page.fill("#pixel-size", "")
    assert page.is_hidden("#pixel-size-error")

    # Drop the photo on the page: the overlay is drawn on the photo and the table lists the two dark cracks.
    # The browser sends the page's origin with the POST, which the server accepts.
    with page.expect_request("**/api/predict") as predict:
        drop_file(page, photo)
    assert predict.value.header_value("origin") == server_url.rstrip("/")
    page.wait_for_selector("body[data-state='ready']")
    assert page.is_hidden("#status.error")
    assert is_red(pixel(page, 100, 40)) and is_red(pixel(page, 120, 150))  # on the two cracks
    assert not is_red(pixel(page, 10, 10)) and not is_red(pixel(page, 60, 150))  # surface, faint crack
    assert page.get_attribute("#cracks", "data-count") == "2"
    fraction_at_default = page.inner_text("#crack-fraction")

    # Slider down to 0.20 with the keyboard: the faint crack appears in the overlay (drawn in the browser) and
    # in the table (re-measured by the server from the kept probabilities).
    page.focus("#threshold")
    for _ in range(30):
        page.keyboard.press("ArrowLeft")
    assert page.input_value("#threshold") == "0.2"
    page.wait_for_selector("#cracks[data-threshold='0.20'][data-count='3']")
    assert is_red(pixel(page, 60, 150))
    assert page.inner_text("#crack-fraction") != fraction_at_default
    rows = page.locator("#cracks tbody tr")
    assert rows.count() == 3
    assert all(rows.nth(i).locator("td").count() == 6 for i in range(3))
    assert page.inner_text("#cracks thead").count("(px)") == 3

    # A pixel size turns the table into millimetres; an invalid one leaves it as it was, with the message.
    page.fill("#pixel-size", "0.5")
    page.wait_for_function("document.querySelector('#cracks thead').textContent.includes('(mm)')")
    assert float(rows.first.locator("td").nth(1).inner_text()) == pytest.approx(80, rel=0.1)  # 160 px × 0.5
    assert "mm" in page.inner_text("#total-length")
    page.fill("#pixel-size", "-0.5")
    assert page.is_visible("#pixel-size-error")
    page.wait_for_timeout(500)  # past the re-measure delay: nothing was asked with the bad value
    assert "(mm)" in page.inner_text("#cracks thead") and "pixel_size_mm=0.5" in page.get_attribute(
        "#download-csv", "href"
    )
    page.fill("#pixel-size", "0.5")
    assert page.is_hidden("#pixel-size-error")

    # Downloads follow the current threshold and pixel size.
    assert "threshold=0.2" in page.get_attribute("#download-mask", "href")
    with page.expect_download() as download:
        page.click("#download-csv")
    csv_lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(csv_lines) == 4 and "len_mm" in csv_lines[0]
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)

    # Phone width (390 px): one column, nothing wider than the screen, every cell of the table (the class
    # column last) inside the window, and the controls too.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.getElementById('view').getBoundingClientRect().width") <= 390
    assert visible_in_viewport(page, "#cracks th")
    assert visible_in_viewport(page, "#cracks td")
    assert page.locator("#cracks tbody td:last-child").all_inner_texts() and all(
        text in ("longitudinal", "transverse", "diagonal", "branched")
        for text in page.locator("#cracks tbody td:last-child").all_inner_texts()
    )
    assert visible_in_viewport(page, "#drop-zone, #threshold, #pixel-size, .downloads .button")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)

    # An upload that fails after a result was shown: the error is shown, the previous result is gone from
    # the page (and from the server), at phone width too.
    old_mask = page.evaluate("document.getElementById('download-mask').href")  # absolute
    assert httpx.get(old_mask).status_code == 200
    page.set_input_files("#file-input", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#status.error")
    assert "415" in page.inner_text("#status")
    assert visible_in_viewport(page, "#status")
    assert page.is_hidden("#result-panel") and page.is_hidden("#view")
    assert page.locator("#cracks tbody tr").count() == 0
    assert page.get_attribute("body", "data-state") == "error"
    page.wait_for_timeout(300)
    assert httpx.get(old_mask).status_code == 404
    page.screenshot(path=str(tmp_path / "phone-error.png"), full_page=True)
    for shot in ("desktop.png", "phone.png", "phone-error.png"):
        assert (tmp_path / shot).stat().st_size > 0
    print(f"screenshots: {tmp_path}")


def test_busy_spinner_elapsed_time_and_cancel(page, server_url, tmp_path: Path):
    photo = tmp_path / "wall.png"
    write_image(photo, drawn_cracks_photo(300, 360))
    page.goto(server_url)
    drop_file(page, photo)
    page.wait_for_selector("body[data-state='ready']")
    kept = wait_idle(server_url)["results_kept"]

    # A photo the server takes its time over: spinner (drawn by CSS, no font glyph), seconds, Cancel.
    GATE.clear()
    try:
        drop_file(page, photo)
        page.wait_for_selector("body[data-state='busy']")
        assert page.is_visible("#busy") and page.is_visible("#cancel") and page.is_visible(".spinner")
        spinner = page.evaluate(
            """() => {
                const el = document.querySelector(".spinner");
                const box = el.getBoundingClientRect();
                const status = getComputedStyle(document.getElementById("status"), "::before").content;
                return [box.width, box.height, getComputedStyle(el).animationName, el.textContent, status];
            }"""
        )
        assert spinner[0] > 8 and spinner[1] > 8 and spinner[2] == "spin" and spinner[3] == ""
        assert spinner[4] in ("none", "normal", "")  # no glyph that a font may lack
        assert page.inner_text("#elapsed") == "0 s" and "Segmenting wall.png" in page.inner_text("#status")
        page.wait_for_function("parseInt(document.getElementById('elapsed').textContent) >= 1", timeout=5000)
        assert page.is_visible("#result-panel")  # the previous result stays until replaced
        page.click("#cancel")
        page.wait_for_function("document.getElementById('status').textContent.includes('Cancelled')")
        assert page.is_hidden("#busy") and page.is_hidden("#status.error")
        assert page.get_attribute("body", "data-state") == "ready" and page.is_visible("#result-panel")
    finally:
        GATE.set()
    # The server finishes the abandoned photo but does not keep a result nobody can fetch.
    assert wait_idle(server_url)["results_kept"] == kept


def test_real_server_refuses_foreign_hosts_and_cross_origin_posts(server_url):
    """Through uvicorn (not the test client): DNS rebinding (a foreign Host) and a cross-site form post."""
    port = server_url.rstrip("/").rsplit(":", 1)[1]
    files = {"file": ("wall.png", png_bytes(drawn_cracks_photo()), "image/png")}
    assert httpx.get(f"{server_url}api/health", headers={"host": f"attacker.example:{port}"}).status_code == 400
    assert httpx.get(server_url, headers={"host": f"attacker.example:{port}"}).status_code == 400
    foreign = httpx.post(f"{server_url}api/predict", files=files, headers={"origin": "http://attacker.example"})
    assert foreign.status_code == 403
    other_port = httpx.post(f"{server_url}api/predict", files=files, headers={"origin": "http://127.0.0.1:1"})
    assert other_port.status_code == 403
    # The page's own origin, and no Origin at all (curl, scripts): segmented.
    same = httpx.post(f"{server_url}api/predict", files=files, headers={"origin": server_url.rstrip("/")})
    assert same.status_code == 200 and same.json()["measurements"]["summary"]["count"] == 2
    assert httpx.post(f"{server_url}api/predict", files=files).status_code == 200
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{server_url}api/health", headers={"host": host}).status_code == 200
