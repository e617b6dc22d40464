"""The page, driven in headless Chromium (Debian's `chromium` package) through Playwright: upload a photo, see
the overlay, move the threshold slider, read the crack table, download the CSV, and fit a phone's width."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from crackseg.images import write_image
from crackseg.serve import create_app
from tests.test_serve import darkness_segmenter, drawn_cracks_photo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """The real server (uvicorn, HTTP on 127.0.0.1) in a thread, with the darkness stand-in model."""
    port = free_port()
    config = uvicorn.Config(create_app(darkness_segmenter()), host="127.0.0.1", port=port, log_level="warning")
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


def test_upload_threshold_table_downloads_and_phone_width(page, server_url, tmp_path: Path):
    photo = tmp_path / "wall.png"
    write_image(photo, drawn_cracks_photo(300, 360))
    (tmp_path / "notes.txt").write_text("not a photo")

    page.goto(server_url)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('darkness')")

    # A file that is not an image: the server's reason is shown.
    page.set_input_files("#file-input", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#status.error")
    assert "415" in page.inner_text("#status") and "not an image" in page.inner_text("#status")

    # Drop the photo on the page: the overlay is drawn on the photo and the table lists the two dark cracks.
    drop_file(page, photo)
    page.wait_for_selector("body[data-state='ready']")
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

    # A pixel size turns the table into millimetres.
    page.fill("#pixel-size", "0.5")
    page.wait_for_function("document.querySelector('#cracks thead').textContent.includes('(mm)')")
    assert float(rows.first.locator("td").nth(1).inner_text()) == pytest.approx(80, rel=0.1)  # 160 px × 0.5
    assert "mm" in page.inner_text("#total-length")

    # Downloads follow the current threshold and pixel size.
    assert "threshold=0.2" in page.get_attribute("#download-mask", "href")
    with page.expect_download() as download:
        page.click("#download-csv")
    csv_lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(csv_lines) == 4 and "length_mm" in csv_lines[0]
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.getElementById('view').getBoundingClientRect().width") <= 390
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert (tmp_path / "desktop.png").stat().st_size > 0 and (tmp_path / "phone.png").stat().st_size > 0
    print(f"screenshots: {tmp_path / 'desktop.png'} {tmp_path / 'phone.png'}")
