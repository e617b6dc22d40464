"""The page, driven in headless Chromium (Debian's `chromium` package) through Playwright: upload a photo, see
the overlay (checked in screenshots), move the threshold slider, read the crack table, download the mask and CSV,
refuse a bad pixel size, work from the keyboard, show an error without the previous result, fit a phone's width,
and cancel a slow photo. Also the real server's
Host and Origin checks (no browser needed)."""

from __future__ import annotations

import base64
import contextlib
import io
import math
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from crackseg.inference import CrackSegmenter
from crackseg.io.images import write_image
from crackseg.models.networks import ModelConfig
from crackseg.serve import create_app
from tests.fakes import DarknessBackend
from tests.test_serve import decode, drawn_cracks_photo, png_bytes

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


@contextlib.contextmanager
def serving(app):
    """`app` on the real server (uvicorn, HTTP on 127.0.0.1) in a thread: its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url():
    """The real server with the darkness stand-in model."""
    with serving(create_app(gated_segmenter(), host="127.0.0.1")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright  # a dev dependency: fails loudly when missing

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))  # an exception in the page fails the test
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """The drawn cracks (see drawn_cracks_photo) on a 360×300 photo: two dark ones and a faint one."""
    path = tmp_path_factory.mktemp("photo") / "wall.png"
    write_image(path, drawn_cracks_photo(300, 360))
    return path


@pytest.fixture(scope="module")
def not_a_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text("not a photo")
    return path


# Where the drawn cracks lie in the 300×360 photo (rows, columns): the middle line of each.
DARK_CRACKS = [(slice(40, 41), slice(50, 190)), (slice(80, 180), slice(120, 121))]
FAINT_CRACK = (slice(150, 152), slice(30, 90))
SURFACE = (slice(0, 30), slice(0, 360))
DRAWN_PIXELS = 160 * 3 + 120 * 5  # the dark cracks' pixels; the faint one adds 80 × 2 at lower thresholds
COLUMNS = ["#", "length", "mean width", "max width", "angle", "width class", "class", "below res."]


def pixel(page, x: int, y: int) -> list[int]:
    """RGB of the result canvas at image coordinates (x, y)."""
    return page.evaluate(
        "([x, y]) => [...document.getElementById('view').getContext('2d').getImageData(x, y, 1, 1).data]",
        [x, y],
    )[:3]


def red_share(shot: np.ndarray, rows: slice, cols: slice, size=(300, 360)) -> float:
    """The share of red pixels in the part of a screenshot of the result canvas that shows image rows × cols
    (the canvas is scaled to the page's width)."""
    sy, sx = shot.shape[0] / size[0], shot.shape[1] / size[1]
    part = shot[int(rows.start * sy) : math.ceil(rows.stop * sy), int(cols.start * sx) : math.ceil(cols.stop * sx)]
    return float(is_red(np.moveaxis(part[..., :3], -1, 0)).mean())


def canvas_shot(page) -> np.ndarray:
    return decode(page.locator("#view").screenshot()).astype(int)


def photo_surface(shot: np.ndarray) -> np.ndarray:
    """The screenshot's pixels of the drawn photo's surface grey, a colour the page itself does not use."""
    return (shot == 200).all(axis=-1)


def page_shot(page) -> np.ndarray:
    shot = decode(page.screenshot(full_page=True))[..., :3].astype(int)
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 50 and shot.std() > 20, "the page looks blank"
    return shot


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


def open_page(page, server_url: str) -> None:
    page.goto(server_url)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('darkness')")


def show_result(page, server_url: str, photo: Path) -> None:
    open_page(page, server_url)
    drop_file(page, photo)
    page.wait_for_selector("body[data-state='ready']")


def slide_threshold_to(page, value: str) -> None:
    """Moves the threshold slider with the arrow keys, as a keyboard user does (steps of 0.01)."""
    page.focus("#threshold")
    steps = round((float(page.input_value("#threshold")) - float(value)) * 100)
    for _ in range(abs(steps)):
        page.keyboard.press("ArrowLeft" if steps > 0 else "ArrowRight")
    assert page.input_value("#threshold") == value


def is_red(rgb):
    return (rgb[0] > rgb[1] + 60) & (rgb[0] > rgb[2] + 60)


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


def test_a_dropped_photo_shows_the_cracks_in_red_and_lists_them(page, server_url, photo):
    open_page(page, server_url)
    # The browser sends the page's origin with the POST, which the server accepts.
    with page.expect_request("**/api/predict") as predict:
        drop_file(page, photo)
    assert predict.value.header_value("origin") == server_url.rstrip("/")
    page.wait_for_selector("body[data-state='ready']")
    assert page.is_hidden("#status.error")
    assert is_red(pixel(page, 100, 40)) and is_red(pixel(page, 120, 150))  # on the two cracks
    assert not is_red(pixel(page, 10, 10)) and not is_red(pixel(page, 60, 150))  # surface, faint crack
    # what the user sees: red over the drawn cracks, none over the surface or the faint crack
    shot = canvas_shot(page)
    assert all(red_share(shot, *crack) > 0.9 for crack in DARK_CRACKS)
    assert red_share(shot, *SURFACE) == 0 and red_share(shot, *FAINT_CRACK) == 0
    assert page.get_attribute("#cracks", "data-count") == "2" and page.inner_text("#crack-count") == "2"
    assert page.inner_text("#crack-fraction") == f"{100 * DRAWN_PIXELS / (300 * 360):.2f} %"
    lengths = [float(row.locator("td").nth(1).inner_text()) for row in page.locator("#cracks tbody tr").all()]
    assert sorted(lengths, reverse=True) == pytest.approx([160, 120], rel=0.1)
    whole = page_shot(page)  # the photo on the page, at least as large as it is
    assert photo_surface(whole).sum() >= 0.9 * 300 * 360 and is_red(np.moveaxis(whole, -1, 0)).sum() >= DRAWN_PIXELS


def test_files_and_pixel_sizes_that_cannot_be_used_are_refused_with_the_reason(page, server_url, photo, not_a_photo):
    open_page(page, server_url)
    # A file that is not an image: the server's reason is shown.
    page.set_input_files("#file-input", str(not_a_photo))
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


def open_file_chooser_with_space(page):
    """The chooser Space opens on the focused file field. Opening it is Chromium's own doing, which a busy machine
    sometimes drops (one in several full runs here): a second press is the user's remedy too."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            return chooser.value
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            assert page.evaluate("document.activeElement.id") == "file-input"


def test_the_page_works_from_the_keyboard(page, server_url, photo):
    # Tab to the file field, Space opens the file chooser; the arrow keys move the threshold; Space hides the overlay.
    open_page(page, server_url)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    open_file_chooser_with_space(page).set_files(str(photo))
    page.wait_for_selector("body[data-state='ready']")
    before = canvas_shot(page)
    fraction_at_default = page.inner_text("#crack-fraction")
    # Down to 0.20: the faint crack appears in the overlay (drawn in the browser) and in the table (re-measured by
    # the server from the kept probabilities).
    slide_threshold_to(page, "0.2")
    page.wait_for_selector("#cracks[data-threshold='0.20'][data-count='3']")
    page.wait_for_selector("#view[data-threshold='0.20']")
    after = canvas_shot(page)
    assert red_share(before, *FAINT_CRACK) == 0 and red_share(after, *FAINT_CRACK) > 0.9
    assert all(red_share(after, *crack) > 0.9 for crack in DARK_CRACKS) and red_share(after, *SURFACE) == 0
    assert page.inner_text("#crack-fraction") == f"{100 * (DRAWN_PIXELS + 160) / (300 * 360):.2f} %"
    assert page.inner_text("#crack-fraction") != fraction_at_default
    rows = page.locator("#cracks tbody tr")
    assert rows.count() == 3 and all(rows.nth(i).locator("td").count() == len(COLUMNS) for i in range(3))
    assert page.inner_text("#cracks thead").count("(px)") == 3
    page.focus("#show-overlay")
    page.keyboard.press("Space")
    assert not page.is_checked("#show-overlay")
    page.wait_for_function("!document.getElementById('show-overlay').checked")
    page.wait_for_timeout(100)  # the next animation frame redraws the canvas
    hidden = canvas_shot(page)
    assert all(red_share(hidden, *crack) == 0 for crack in [*DARK_CRACKS, FAINT_CRACK])


def show_in_mm_at_a_low_threshold(page, server_url, photo) -> None:
    """The result at threshold 0.2 (three cracks), measured at 0.5 mm per pixel."""
    show_result(page, server_url, photo)
    slide_threshold_to(page, "0.2")
    page.wait_for_selector("#cracks[data-threshold='0.20'][data-count='3']")
    page.fill("#pixel-size", "0.5")
    page.wait_for_function("document.querySelector('#cracks thead').textContent.includes('(mm)')")


def test_pixel_size_and_downloads_follow_the_current_settings(page, server_url, photo):
    # A pixel size turns the table into millimetres; an invalid one leaves it as it was, with the message.
    show_in_mm_at_a_low_threshold(page, server_url, photo)
    rows = page.locator("#cracks tbody tr")
    assert float(rows.first.locator("td").nth(1).inner_text()) == pytest.approx(80, rel=0.1)  # 160 px × 0.5
    assert "mm" in page.inner_text("#total-length")
    page.fill("#pixel-size", "-0.5")
    assert page.is_visible("#pixel-size-error")
    page.wait_for_timeout(500)  # past the re-measure delay: nothing was asked with the bad value
    assert "(mm)" in page.inner_text("#cracks thead")
    assert "pixel_size_mm=0.5" in page.get_attribute("#download-csv", "href")
    page.fill("#pixel-size", "0.5")
    assert page.is_hidden("#pixel-size-error")
    # The downloaded files are the current threshold's: the mask holds the faint crack, the CSV its three cracks.
    with page.expect_download() as download:
        page.click("#download-mask")
    mask = decode(Path(download.value.path()).read_bytes()) > 0
    assert mask.shape == (300, 360) and mask.sum() == DRAWN_PIXELS + 160 and mask[150:152, 20:100].all()
    with page.expect_download() as download:
        page.click("#download-csv")
    csv_lines = Path(download.value.path()).read_text().strip().splitlines()
    assert len(csv_lines) == 4 and "len_mm" in csv_lines[0]
    lengths_mm = sorted(float(line.split(",")[csv_lines[0].split(",").index("len_mm")]) for line in csv_lines[1:])
    assert lengths_mm == pytest.approx([40, 60, 80], rel=0.1)  # 80, 120 and 160 px × 0.5 mm


def test_at_phone_width_everything_fits_the_screen(page, server_url, photo):
    show_result(page, server_url, photo)
    # 390 px: one column, nothing wider than the screen, every cell of the table (the class column last) inside
    # the window, and the controls too.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.getElementById('view').getBoundingClientRect().width") <= 390
    assert visible_in_viewport(page, "#cracks th")
    assert visible_in_viewport(page, "#cracks td")
    classes = page.locator(f"#cracks tbody td:nth-child({COLUMNS.index('class') + 1})").all_inner_texts()
    assert sorted(classes) == ["longitudinal", "transverse"]
    controls = "#drop-zone, #threshold, #pixel-size, #min-length, #zoom-fit, .downloads .button:not([hidden])"
    assert visible_in_viewport(page, controls)
    shot = page_shot(page)
    assert shot.shape[1] == 390
    canvas = canvas_shot(page)
    assert all(red_share(canvas, *crack) > 0.5 for crack in DARK_CRACKS)  # scaled down, still drawn


def test_a_failed_upload_clears_the_previous_result(page, server_url, photo, not_a_photo):
    show_result(page, server_url, photo)
    page.set_viewport_size({"width": 390, "height": 844})
    # The error is shown; the previous result is gone from the page, and from the server.
    old_mask = page.evaluate("document.getElementById('download-mask').href")  # absolute
    assert httpx.get(old_mask).status_code == 200
    page.set_input_files("#file-input", str(not_a_photo))
    page.wait_for_selector("#status.error")
    assert "415" in page.inner_text("#status")
    assert visible_in_viewport(page, "#status")
    assert page.is_hidden("#result-panel") and page.is_hidden("#view")
    assert page.locator("#cracks tbody tr").count() == 0
    assert page.get_attribute("body", "data-state") == "error"
    page.wait_for_timeout(300)
    assert httpx.get(old_mask).status_code == 404
    assert photo_surface(page_shot(page)).sum() < 20  # no trace of the photo left (a few text edges share its grey)


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
        assert page.is_visible("#result-panel")  # the new photo, shown while it is segmented
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


# --- an inspector's tools: zoom, picking, the table's columns, units, expiry, one ZIP, progress --------------


def on_screen(page, x: float, y: float) -> tuple[float, float]:
    """Where the image point (x, y) is in the window (CSS px), through the viewer's zoom and move."""
    return tuple(
        page.evaluate(
            """([x, y]) => {
                const view = document.getElementById("view");
                const box = view.getBoundingClientRect();
                return [box.left + (x * box.width) / view.width, box.top + (y * box.height) / view.height];
            }""",
            [x, y],
        )
    )


def settled(page) -> None:
    """Waits for the browser to paint what the last change drew (a screenshot may otherwise show the frame before)."""
    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


def colour_at(page, x: float, y: float) -> np.ndarray:
    """The colour the page shows at window point (x, y) (CSS px): the photo, the red layer and the marks over it."""
    settled(page)
    left, top = page.evaluate("[window.scrollX, window.scrollY]")
    clip = {"x": round(x + left) - 1, "y": round(y + top) - 1, "width": 3, "height": 3}
    return decode(page.screenshot(clip=clip, full_page=True))[1, 1, :3].astype(int)


def red_run(page, x: float, y: float, half: int = 120) -> int:
    """How many screen pixels of red a vertical line through image point (x, y) crosses, within `half` px and the
    photo viewer (its red focus ring left out)."""
    settled(page)
    sx, sy = on_screen(page, x, y)
    box = page.locator("#viewport").bounding_box()
    top, bottom = max(round(sy) - half, box["y"] + 4), min(round(sy) + half, box["y"] + box["height"] - 4)
    shot = decode(page.screenshot(clip={"x": round(sx), "y": top, "width": 1, "height": bottom - top}))
    return int(is_red(np.moveaxis(shot[..., :3].astype(int), -1, 0)).sum())


def click_image(page, x: float, y: float) -> None:
    """A click on the image point (x, y) of the photo viewer, scrolled into view first."""
    page.locator("#viewport").scroll_into_view_if_needed()
    sx, sy = on_screen(page, x, y)
    page.mouse.click(sx, sy)


def is_cyan(rgb) -> bool:
    return rgb[0] < 80 and rgb[1] > 180 and rgb[2] > 200


def row_of(page, crack_class: str):
    """The table row of the crack of a class (the drawn cracks: one transverse, one longitudinal)."""
    column = COLUMNS.index("class") + 1
    return page.locator(f"#cracks tbody tr:has(td:nth-child({column}):text-is('{crack_class}'))")


def zoom(page) -> float:
    return float(page.get_attribute("#viewport", "data-zoom"))


def column_values(page, name: str) -> list[str]:
    return page.locator(f"#cracks tbody td:nth-child({COLUMNS.index(name) + 1})").all_inner_texts()


def test_zoom_and_pan_bring_a_crack_closer(page, server_url, photo):
    show_result(page, server_url, photo)
    scale = page.evaluate("document.getElementById('view').getBoundingClientRect().width") / 360
    assert red_run(page, 100, 40.5) == pytest.approx(3 * scale, abs=2)  # the 3 px crack at the page's width
    # The wheel zooms in around the pointer: the point under it stays, the crack grows by the zoom.
    point = on_screen(page, 100, 40.5)
    page.mouse.move(*point)
    page.mouse.wheel(0, -300)
    page.wait_for_function("Number(document.getElementById('viewport').dataset.zoom) > 1.5")
    assert on_screen(page, 100, 40.5) == pytest.approx(point, abs=1)
    wheel_zoom = zoom(page)
    assert red_run(page, 100, 40.5) == pytest.approx(3 * scale * wheel_zoom, abs=3)
    assert page.inner_text("#zoom-level") == f"{round(100 * wheel_zoom)} %"
    # The keyboard: + zooms further, the arrows move the photo, 0 fits it again.
    page.focus("#viewport")
    page.keyboard.press("+")
    assert zoom(page) == pytest.approx(wheel_zoom * 1.5, rel=0.01)
    before = on_screen(page, 100, 40.5)
    page.keyboard.press("ArrowRight")  # look further right: the photo moves left
    page.keyboard.press("ArrowDown")
    after = on_screen(page, 100, 40.5)
    assert after[0] < before[0] - 20 and after[1] < before[1] - 20
    page.keyboard.press("0")
    assert zoom(page) == 1 and red_run(page, 100, 40.5) == pytest.approx(3 * scale, abs=2)
    # The buttons, and a drag to move when zoomed in.
    page.click("#zoom-in")
    page.click("#zoom-in")
    assert zoom(page) == pytest.approx(2.25) and page.inner_text("#zoom-level") == "225 %"
    start = on_screen(page, 150, 150)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] - 60, start[1] - 40, steps=5)
    page.mouse.up()
    assert on_screen(page, 150, 150) == pytest.approx((start[0] - 60, start[1] - 40), abs=1)
    # What the screen shows zoomed in: the vertical crack, now 5 px × the zoom wide, in red.
    settled(page)
    shot = decode(page.locator("#viewport").screenshot())[..., :3].astype(int)
    box = page.locator("#viewport").bounding_box()
    x, y = on_screen(page, 120.5, 130)
    assert box["x"] < x < box["x"] + box["width"] and box["y"] < y < box["y"] + box["height"]
    across = shot[round(y - box["y"]), 4:-4]
    assert is_red(np.moveaxis(across, -1, 0)).sum() == pytest.approx(5 * scale * 2.25, abs=3)
    page.click("#zoom-fit")
    assert zoom(page) == 1


def test_picking_a_crack_in_the_table_or_the_photo_marks_it_in_both(page, server_url, photo):
    show_result(page, server_url, photo)
    vertical, horizontal = (120.5, 130), (170, 40.5)  # on each drawn crack, away from its id
    assert is_red(colour_at(page, *on_screen(page, *vertical))) and is_red(
        colour_at(page, *on_screen(page, *horizontal))
    )
    # A row clicked: its crack turns to the highlight colour in the photo, the other stays red.
    row_of(page, "longitudinal").click()
    assert row_of(page, "longitudinal").get_attribute("aria-selected") == "true"
    assert "selected" in row_of(page, "longitudinal").get_attribute("class")
    assert is_cyan(colour_at(page, *on_screen(page, *vertical)))
    assert is_red(colour_at(page, *on_screen(page, *horizontal)))
    # The crack clicked in the photo: its row is picked, and the highlight moves to it.
    click_image(page, *horizontal)
    assert row_of(page, "transverse").get_attribute("aria-selected") == "true"
    assert row_of(page, "longitudinal").get_attribute("aria-selected") == "false"
    assert is_cyan(colour_at(page, *on_screen(page, *horizontal)))
    assert is_red(colour_at(page, *on_screen(page, *vertical)))
    # The arrow keys move the pick along the table's rows; a click on bare surface picks none.
    page.focus("#cracks tbody tr.selected")
    key = "ArrowDown" if page.locator("#cracks tbody tr").first.get_attribute("aria-selected") == "true" else "ArrowUp"
    page.keyboard.press(key)
    assert row_of(page, "longitudinal").get_attribute("aria-selected") == "true"
    assert is_cyan(colour_at(page, *on_screen(page, *vertical)))
    click_image(page, 300, 250)
    assert page.locator("#cracks tbody tr.selected").count() == 0
    assert is_red(colour_at(page, *on_screen(page, *vertical)))
    # Each crack's id is written on the photo beside it, in a dark box that leaves the crack visible.
    ids = page.inner_text("#cracks tbody").split()
    assert set(ids) >= {"1", "2"}
    label = on_screen(page, 120.5, 130)  # the vertical crack's id: right of and above its middle
    shot = decode(page.screenshot(clip={"x": label[0] + 6, "y": label[1] - 22, "width": 12, "height": 16}))
    assert (shot[..., :3].astype(int).sum(axis=-1) < 200).mean() > 0.4  # mostly the dark box


def test_the_table_sorts_filters_and_classes_in_the_units_given(page, server_url, photo):
    show_result(page, server_url, photo)
    heads = [
        text.split(" (")[0].replace("\n", " ").rstrip(" ▲▼") for text in page.locator("#cracks th").all_inner_texts()
    ]
    assert heads == COLUMNS
    # Sorting: by length, shortest first, then longest first.
    page.click("#cracks th:nth-child(2) button")
    lengths = [float(v) for v in column_values(page, "length")]
    assert lengths == sorted(lengths) and page.get_attribute("#cracks th:nth-child(2)", "aria-sort") == "ascending"
    page.click("#cracks th:nth-child(2) button")
    assert [float(v) for v in column_values(page, "length")] == sorted(lengths, reverse=True)
    assert page.get_attribute("#cracks th:nth-child(2)", "aria-sort") == "descending"
    # Without a pixel size there is no width class; the cracks (3 and 5 px wide) are not below resolution.
    assert column_values(page, "width class") == ["–", "–"] and column_values(page, "below res.") == ["", ""]
    # A decimal comma is a decimal point: 0,5 mm per pixel.
    page.fill("#pixel-size", "0,5")
    page.wait_for_function("document.querySelector('#cracks thead').textContent.includes('(mm)')")
    assert page.is_hidden("#pixel-size-error")
    assert sorted(float(v) for v in column_values(page, "length")) == pytest.approx([60, 80], rel=0.1)
    assert "pixel_size_mm=0.5" in page.get_attribute("#download-csv", "href")
    # The width classes: 1.5 and 2.5 mm are over concrete's 0.4 mm, under pavement's 6 mm.
    assert column_values(page, "width class") == [">=0.4 mm"] * 2
    page.select_option("#classes", "pavement")
    page.wait_for_function("document.querySelector('#cracks tbody').textContent.includes('low (<6 mm)')")
    assert column_values(page, "width class") == ["low (<6 mm)"] * 2
    assert page.inner_text("#classes-bins") == "classes: low (<6 mm), moderate (6-19 mm), high (>=19 mm)"
    assert "classes=pavement" in page.get_attribute("#download-zip", "href")
    # The minimum length, in the table's unit (mm): the 60 mm crack goes, from the table and the downloads.
    page.fill("#min-length", "70")
    page.wait_for_selector("#cracks[data-count='1']")
    assert page.inner_text("#min-length-unit") == "mm" and "1 shorter" in page.inner_text("#dropped")
    assert "min_length=140" in page.get_attribute("#download-csv", "href")  # 70 mm of 0.5 mm px
    # Cleared, the pixel size takes the millimetres with it; the filter stays the same length, now in px.
    page.fill("#pixel-size", "")
    page.wait_for_function("document.querySelector('#cracks thead').textContent.includes('(px)')")
    assert "mm" not in page.inner_text("#cracks") and page.inner_text("#total-length").endswith(" px")
    assert page.input_value("#min-length") == "140" and page.inner_text("#min-length-unit") == "px"
    assert "pixel_size_mm=none" in page.get_attribute("#download-csv", "href")
    assert page.get_attribute("#cracks", "data-count") == "1"
    # A number the page cannot read as one: refused, visibly, and nothing changes.
    for bad in ("1.234,5", "0,5,1", "abc"):
        page.fill("#pixel-size", bad)
        assert page.is_visible("#pixel-size-error") and "0,5" in page.inner_text("#pixel-size-error")
        assert page.get_attribute("#pixel-size", "aria-invalid") == "true"
    assert "(px)" in page.inner_text("#cracks thead")


def test_an_expired_result_says_so_and_clears_the_view(page, server_url, photo):
    def drop_the_result():  # as the server does once its time is up, or when memory is short
        rid = page.evaluate("new URL(document.getElementById('download-mask').href).pathname.split('/')[3]")
        assert httpx.delete(f"{server_url}api/results/{rid}").status_code == 200
        return rid

    def assert_expired(rid):
        page.wait_for_selector("body[data-state='expired']")
        assert "This result has expired: upload the photo again." == page.inner_text("#status")
        assert page.is_visible("#status.error") and page.is_hidden("#result-panel")
        assert page.locator("#cracks tbody tr").count() == 0
        assert all(link.get_attribute("href") is None for link in page.locator(".downloads a").all())
        assert rid not in page.inner_text("body") and rid not in page.evaluate("document.body.innerHTML")
        shot = decode(page.screenshot(full_page=True))[..., :3].astype(int)
        assert photo_surface(shot).sum() < 20  # the photo is gone too

    # Found out when the page asks for new measurements...
    show_result(page, server_url, photo)
    rid = drop_the_result()
    slide_threshold_to(page, "0.45")
    assert_expired(rid)
    # ... or a download.
    drop_file(page, photo)
    page.wait_for_selector("body[data-state='ready']")
    rid = drop_the_result()
    page.click("#download-zip")
    assert_expired(rid)


def test_the_page_expires_a_result_when_its_time_is_up(browser, server_url, photo):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    try:
        page.clock.install()
        show_result(page, server_url, photo)
        ttl = httpx.get(f"{server_url}api/health").json()["result_ttl_s"]
        page.clock.fast_forward(int(ttl * 1000) - 5000)
        assert page.get_attribute("body", "data-state") == "ready"
        page.clock.fast_forward(6000)
        page.wait_for_selector("body[data-state='expired']")
        assert "expired" in page.inner_text("#status") and page.is_hidden("#result-panel")
    finally:
        context.close()


def test_everything_downloads_as_one_zip(page, server_url, photo):
    show_in_mm_at_a_low_threshold(page, server_url, photo)
    with page.expect_download() as download:
        page.click("#download-zip")
    assert download.value.suggested_filename == "wall_crackseg.zip"
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    kinds = ["mask.png", "overlay.jpg", "cracks.csv", "cracks.gpkg", "cracks.dxf", "width.png", "measure.json"]
    assert set(archive.namelist()) == {f"wall_{kind}" for kind in [*kinds, "report.html"]}
    mask = decode(archive.read("wall_mask.png")) > 0
    assert mask.sum() == DRAWN_PIXELS + 160  # the threshold on the page: the faint crack too
    report = archive.read("wall_report.html").decode()
    assert report.count("<tr>") == 4 and "length (mm)" in report and "data:image/png;base64," in report
    # The report's table is the page's: the same lengths.
    page_lengths = sorted(column_values(page, "length"))
    assert all(f"<td>{length}</td>" in report for length in page_lengths)


def test_a_geotiff_keeps_its_place_and_pixel_size_on_the_page(page, server_url, tmp_path):
    from tests.test_serve import geotiff_bytes

    tif = tmp_path / "deck.tif"
    tif.write_bytes(geotiff_bytes(drawn_cracks_photo(300, 360)))
    open_page(page, server_url)
    page.set_input_files("#file-input", str(tif))
    page.wait_for_selector("body[data-state='ready']")
    assert page.input_value("#pixel-size") == "2" and "georeference" in page.inner_text("#pixel-size-note")
    assert page.inner_text("#place") == "EPSG:32633" and page.is_visible("#download-geojson")
    assert "(mm)" in page.inner_text("#cracks thead")
    with page.expect_download() as download:
        page.click("#download-geojson")
    assert download.value.suggested_filename == "deck_cracks.geojson"
    # The next photo, a plain one, does not inherit the GeoTIFF's pixel size.
    photo = tmp_path / "wall.png"
    write_image(photo, drawn_cracks_photo(300, 360))
    drop_file(page, photo)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('wall.png')")
    assert page.input_value("#pixel-size") == "" and page.is_hidden("#download-geojson")
    assert "(px)" in page.inner_text("#cracks thead")


def test_labels_help_and_the_icon_for_every_reader(page, server_url, photo):
    failures = []
    page.on("response", lambda r: failures.append(r.url) if r.status >= 400 else None)
    show_result(page, server_url, photo)
    assert not failures  # the icon included
    view = page.locator("#view")
    assert view.get_attribute("role") == "img" and "2 cracks" in view.get_attribute("aria-label")
    # The threshold is announced once, by the slider: the number beside it is hidden from screen readers.
    assert page.locator("output").count() == 0
    assert page.get_attribute("#threshold-value", "aria-hidden") == "true"
    page.focus("#threshold")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#threshold", "aria-valuetext") == "0.51"
    # The angle column is explained in words on the page, not only in a tooltip.
    legend = page.locator(".legend")
    assert legend.is_visible() and "counter-clockwise from the photo's horizontal" in legend.inner_text()
    assert page.get_attribute("#viewport", "tabindex") == "0"
    page.click("footer a[href='docs']")
    page.wait_for_selector("a[href='/openapi.json']")


class SlowBackend(DarknessBackend):
    """The darkness stand-in at a quarter of a second per batch of tiles: a large photo takes a while."""

    def __call__(self, batch):
        time.sleep(0.25)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def slow_server():
    """One worker: a photo waits for the one before it, unless that one is cancelled."""
    config = ModelConfig(train_size=256, name="darkness", threshold=0.5)
    segmenter = CrackSegmenter(None, config, backend=SlowBackend(config))
    with serving(create_app(segmenter, workers=1, host="127.0.0.1")) as url:
        yield url, segmenter


def test_progress_preview_and_cancel_free_the_server(page, slow_server, tmp_path):
    url, segmenter = slow_server
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    write_image(big, drawn_cracks_photo(2048, 2048))
    write_image(small, drawn_cracks_photo(300, 360))
    tiles = segmenter._tile_count(2048, 2048)
    full_s = math.ceil(tiles / segmenter.batch_size) * 0.25
    open_page(page, url)
    # The photo shows at once, before the server has an answer; then the tiles count up.
    page.set_input_files("#file-input", str(big))
    page.wait_for_selector("body[data-preview]")
    assert page.get_attribute("body", "data-state") == "busy"
    assert pixel(page, 10, 10) == [200, 200, 200] and not is_red(pixel(page, 100, 40))  # the photo, no cracks yet
    page.wait_for_function("document.getElementById('progress').value >= 8")
    assert page.evaluate("document.getElementById('progress').max") == tiles
    assert page.inner_text("#progress-text").startswith("tiles ") and page.inner_text("#progress-text").endswith(
        f" / {tiles}"
    )
    # Escape cancels; the server stops, and the next photo is done in about its own time.
    done_before = page.evaluate("document.getElementById('progress').value")
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('status').textContent.includes('Cancelled')")
    assert page.is_hidden("#result-panel") and page.get_attribute("body", "data-state") == "empty"
    started = time.monotonic()
    page.set_input_files("#file-input", str(small))
    page.wait_for_selector("body[data-state='ready']")
    took = time.monotonic() - started
    left_of_big = full_s * (1 - done_before / tiles)
    assert took < 3 and took < left_of_big / 2, (took, left_of_big)
    assert wait_idle(url)["pending"] == 0
