"""The web service's API, through FastAPI's test client: results, limits, errors, privacy of results."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from crackseg.inference import CrackSegmenter
from crackseg.io.images import encode_image
from crackseg.models.networks import ModelConfig
from crackseg.serve import create_app
from crackseg.serve.security import allowed_host_names
from crackseg.serve.store import Result, ResultStore
from crackseg.synthetic import synthetic_crack
from tests.fakes import DarknessBackend, darkness_segmenter

# --- helpers shared with test_browser.py ------------------------------------------------------------------

LOCAL = "http://127.0.0.1:8000"  # the test client's requests, as a browser on this machine sends them


def drawn_cracks_photo(height: int = 200, width: int = 240) -> np.ndarray:
    """A light grey photo with two dark cracks of known geometry, a horizontal one 160 px long, 3 px wide,
    and a vertical one 120 px long, 5 px wide (probability ≈ 1), and a faint one 80 px long, 2 px wide
    (probability ≈ 0.24: a crack only at lower thresholds)."""
    image = np.full((height, width, 3), 200, np.uint8)
    image[39:42, 40:200] = 40
    image[70:190, 118:123] = 40
    image[150:152, 20:100] = 135
    return image


def png_bytes(image: np.ndarray) -> bytes:
    return encode_image(image, ".png")


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def post(client, data: bytes, name="photo.png", **form):
    return client.post("/api/predict", files={"file": (name, data, "image/png")}, data=form)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_client(tiny_model_dir):
    app = create_app(CrackSegmenter.from_pretrained(tiny_model_dir, backend="torch"), workers=1)
    with TestClient(app, base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def dark_client():
    with TestClient(create_app(darkness_segmenter(), workers=2), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def photo() -> bytes:
    image, _ = synthetic_crack((96, 128), seed=3)
    return png_bytes(image)


# --- happy paths ------------------------------------------------------------------------------------------


def test_predict_with_a_saved_model(tiny_client, photo):
    response = post(tiny_client, photo)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (128, 96)
    assert body["threshold"] == 0.5  # the model's own
    assert body["model"]["name"] == "tiny"
    assert isinstance(body["measurements"]["cracks"], list)

    mask = decode(tiny_client.get(body["urls"]["mask"]).content)
    prob = decode(tiny_client.get(body["urls"]["prob"]).content)
    assert mask.shape == prob.shape == (96, 128)
    assert set(np.unique(mask)) <= {0, 255}
    assert (mask > 0).mean() == pytest.approx(body["crack_fraction"])
    assert decode(tiny_client.get(body["urls"]["overlay"]).content).shape == (96, 128, 3)
    assert decode(tiny_client.get(body["urls"]["image"]).content).shape == (96, 128, 3)


def test_measurements_match_the_drawn_cracks(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo())).json()
    cracks = sorted(body["measurements"]["cracks"], key=lambda c: -c["len_px"])
    assert len(cracks) == 2
    assert cracks[0]["len_px"] == pytest.approx(160, rel=0.1)
    assert cracks[1]["len_px"] == pytest.approx(120, rel=0.1)
    assert [c["w_mean_px"] for c in cracks] == pytest.approx([3, 5], abs=0.5)
    assert [c["crack_cls"] for c in cracks] == ["transverse", "longitudinal"]
    assert body["measurements"]["summary"]["count"] == 2
    mask = decode(dark_client.get(body["urls"]["mask"]).content) > 0
    assert mask[40, 60:180].all() and mask[80:180, 120].all()
    assert mask.sum() == 160 * 3 + 120 * 5
    assert body["crack_fraction"] == pytest.approx((160 * 3 + 120 * 5) / (200 * 240))


def test_pixel_size_gives_millimetres(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo()), pixel_size_mm="0.5").json()
    assert body["pixel_size_mm"] == 0.5
    for crack in body["measurements"]["cracks"]:
        assert crack["len_mm"] == pytest.approx(crack["len_px"] * 0.5)


def test_rethreshold_and_csv_use_the_kept_probabilities(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo())).json()
    urls = body["urls"]
    low = dark_client.get(urls["measurements"], params={"threshold": 0.2}).json()
    assert low["threshold"] == 0.2 and len(low["measurements"]["cracks"]) == 3  # the faint crack too
    assert low["crack_fraction"] == pytest.approx(body["crack_fraction"] + 160 / (200 * 240))
    low_mask = decode(dark_client.get(urls["mask"], params={"threshold": 0.2}).content) > 0
    default_mask = decode(dark_client.get(urls["mask"]).content) > 0
    assert low_mask.sum() - default_mask.sum() == 160 and low_mask[150:152, 20:100].all()
    assert dark_client.get(urls["mask"], params={"threshold": 0}).status_code == 422
    csv = dark_client.get(urls["csv"], params={"pixel_size_mm": 0.1})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert len(lines) == 3 and "len_mm" in lines[0] and "bbox_x" in lines[0]
    # the same layout as `crackseg measure` writes: one writer for both
    from crackseg.measure.maps import CSV_FIELDS

    assert lines[0].split(",") == CSV_FIELDS
    no_size = dark_client.get(urls["csv"]).text.splitlines()
    assert no_size[0].split(",") == CSV_FIELDS and no_size[1].split(",")[CSV_FIELDS.index("len_mm")] == ""
    scaled = dark_client.get(urls["csv"], params={"pixel_size_mm": 0.1}).text.splitlines()
    lengths_mm = sorted((float(line.split(",")[CSV_FIELDS.index("len_mm")]) for line in scaled[1:]), reverse=True)
    assert lengths_mm == pytest.approx([16.0, 12.0], rel=0.1)  # the 160 and 120 px cracks at 0.1 mm/px
    lengths_px = sorted((c["len_px"] for c in body["measurements"]["cracks"]), reverse=True)
    assert lengths_mm == pytest.approx([length * 0.1 for length in lengths_px])
    dxf = dark_client.get(urls["dxf"], params={"pixel_size_mm": 0.1})
    assert dxf.status_code == 200 and b"LWPOLYLINE" in dxf.content


def test_the_crack_map_is_a_geopackage_in_the_photos_frame_and_geojson_is_refused(dark_client, tmp_path):
    """An upload has no georeference, and GeoJSON is WGS 84 only (GDAL would read pixels as degrees): the page
    offers a GeoPackage in mm from the photo's bottom-left corner instead, and a GeoJSON request says why not."""
    import pyogrio
    import pyproj
    import shapely

    urls = post(dark_client, png_bytes(drawn_cracks_photo())).json()["urls"]
    gpkg = dark_client.get(urls["gpkg"], params={"pixel_size_mm": 0.1})
    assert gpkg.status_code == 200 and gpkg.headers["content-type"] == "application/geopackage+sqlite3"
    assert gpkg.headers["content-disposition"].endswith('_cracks.gpkg"') and gpkg.content.startswith(b"SQLite format 3")
    (tmp_path / "cracks.gpkg").write_bytes(gpkg.content)  # as a browser saves it
    meta, _, wkb, columns = pyogrio.raw.read(tmp_path / "cracks.gpkg")
    assert pyproj.CRS(meta["crs"]).is_engineering and pyproj.CRS(meta["crs"]).axis_info[0].unit_name == "millimetre"
    lengths = dict(zip(columns[list(meta["fields"]).index("id")], shapely.length(shapely.from_wkb(wkb)), strict=True))
    assert sorted(lengths.values()) == pytest.approx([12, 16], rel=0.1)  # 120 and 160 px of 0.1 mm
    assert "geojson" not in urls
    refused = dark_client.get(urls["csv"].replace("cracks.csv", "cracks.geojson"))
    assert refused.status_code == 422
    reason = refused.json()["detail"]
    assert "no georeference" in reason and "cracks.gpkg" in reason and "\n" not in reason


def test_serve_help_says_the_servers_photo_limit_and_what_ctrl_c_does(capsys):
    from crackseg.cli import main
    from crackseg.cli.serve import SHUTDOWN_GRACE_S

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "default for the server: 100 MP" in shown
    assert f"photos in flight get {SHUTDOWN_GRACE_S} s to finish" in shown


def test_downloads_are_named_after_the_upload_safely(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo()), name="../dir/mur nord 裂缝.png").json()
    response = dark_client.get(body["urls"]["csv"])
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="mur_nord____cracks.csv"'


def test_photo_is_turned_upright_by_its_exif_orientation(dark_client):
    img = Image.fromarray(drawn_cracks_photo(100, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    body = post(dark_client, buf.getvalue(), name="phone.jpg").json()
    assert (body["width"], body["height"]) == (100, 160)


def test_inline_returns_data_urls_and_keeps_nothing(dark_client):
    response = dark_client.post(
        "/api/predict", params={"inline": 1}, files={"file": ("a.png", png_bytes(drawn_cracks_photo()))}
    )
    body = response.json()
    assert body["id"] is None
    assert body["urls"]["mask"].startswith("data:image/png;base64,")
    assert body["urls"]["overlay"].startswith("data:image/jpeg;base64,")


# --- limits and bad input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_client():
    app = create_app(darkness_segmenter(), max_upload_mb=0.05, max_pixels=40_000, workers=1)
    with TestClient(app, base_url=LOCAL) as client:
        yield client


def noise_png(height: int, width: int) -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_upload_over_the_size_limit_is_413(strict_client):
    slightly_over = noise_png(80, 250)  # ~60 kB: past the file limit, within the form's slack
    far_over = noise_png(300, 300)  # ~270 kB: refused from Content-Length before the body is read
    for data in (slightly_over, far_over):
        response = post(strict_client, data)
        assert response.status_code == 413
        assert "upload too large" in response.json()["detail"]


def test_streamed_upload_over_the_size_limit_is_413(strict_client):
    boundary = "crackseg-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()

    def chunks():  # no Content-Length: the server has to count while reading
        yield head
        for _ in range(20):
            yield b"\0" * 16384
        yield f"\r\n--{boundary}--\r\n".encode()

    response = strict_client.post(
        "/api/predict",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413


def test_too_many_pixels_is_413(strict_client):
    image = np.full((250, 250, 3), 200, np.uint8)  # 62,500 px > 40,000; compresses far below the size limit
    response = post(strict_client, png_bytes(image))
    assert response.status_code == 413
    assert "exceeds this server's limit" in response.json()["detail"]


def test_not_an_image_is_415(dark_client):
    response = dark_client.post("/api/predict", files={"file": ("notes.txt", b"hello, not a photo", "text/plain")})
    assert response.status_code == 415
    assert "notes.txt: not an image" in response.json()["detail"]


def test_truncated_image_is_400(dark_client):
    data = png_bytes(drawn_cracks_photo())
    response = post(dark_client, data[: len(data) // 2], name="cut.png")
    assert response.status_code == 400
    assert "cut.png" in response.json()["detail"] and "truncated" in response.json()["detail"]


def test_zero_negative_or_infinite_pixel_size_is_422(dark_client):
    urls = post(dark_client, png_bytes(drawn_cracks_photo())).json()["urls"]
    for bad in ("0", "-0.5", "inf", "nan"):
        response = post(dark_client, png_bytes(drawn_cracks_photo()), pixel_size_mm=bad)
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"][-1] == "pixel_size_mm"
        for url in (urls["measurements"], urls["csv"]):
            assert dark_client.get(url, params={"pixel_size_mm": bad}).status_code == 422, (url, bad)


def test_empty_file_and_missing_field_and_bad_threshold(dark_client):
    assert post(dark_client, b"").status_code == 400
    assert dark_client.post("/api/predict", data={"threshold": "0.5"}).status_code == 422
    response = post(dark_client, png_bytes(drawn_cracks_photo()), threshold="1.5")
    assert response.status_code == 422


def test_busy_server_answers_503(dark_client):
    app = dark_client.app
    saved, app.state.pool.pending = app.state.pool.pending, 10**6
    try:
        response = post(dark_client, png_bytes(drawn_cracks_photo()))
    finally:
        app.state.pool.pending = saved
    assert response.status_code == 503 and "Retry-After" in response.headers


# --- who may use the server: Host and Origin ----------------------------------------------------------------


def test_forged_host_and_cross_origin_posts_are_refused(dark_client):
    data = png_bytes(drawn_cracks_photo())

    def send(method="POST", url="/api/predict", **headers):
        files = {"file": ("photo.png", data, "image/png")} if method == "POST" else None
        return dark_client.request(method, url, files=files, headers=headers)

    # A DNS-rebinding page: the browser sends the attacker's name as Host, for reads and for posts.
    for host in ("attacker.example:8000", "attacker.example", "127.0.0.1.attacker.example:8000", "a@127.0.0.1:8000"):
        for method, url in (("GET", "/api/health"), ("GET", "/"), ("POST", "/api/predict")):
            response = send(method, url, host=host)
            assert response.status_code == 400, (host, url)
            assert "not allowed" in response.json()["detail"]
    # Another site's page (or another port on this machine) posting: 403, before the photo is processed.
    for origin in ("http://attacker.example", "http://127.0.0.1:9000", "http://127.0.0.1", "https://127.0.0.1:8000"):
        response = send(origin=origin)
        assert response.status_code == 403, origin
        assert "cross-origin" in response.json()["detail"]
    assert send(origin="null").status_code == 403  # a sandboxed frame or a file:// page
    rid = send().json()["id"]
    assert send("DELETE", f"/api/results/{rid}", origin="http://attacker.example").status_code == 403

    # The page's own origin, under each loopback name, and clients that send no Origin (curl, scripts).
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LocalHost.:8000"):
        origin = f"http://{host}"
        assert send(host=host, origin=origin).status_code == 200, host
        assert send("GET", "/api/health", host=host).status_code == 200
    assert send(origin="http://localhost:8000").status_code == 200  # another loopback name, same server
    assert send().status_code == 200
    assert send("GET", "/api/health", origin="http://attacker.example").status_code == 200  # reads: CORS applies
    assert send("DELETE", f"/api/results/{rid}", origin=LOCAL).status_code == 200


def test_allowed_hosts_follow_the_listening_address(monkeypatch):
    assert allowed_host_names("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_host_names("Crackbox.LAN") == {"localhost", "127.0.0.1", "::1", "crackbox.lan"}
    monkeypatch.setattr("crackseg.serve.security.socket.gethostname", lambda: "crackbox")
    assert allowed_host_names("0.0.0.0") == {"localhost", "127.0.0.1", "::1", "crackbox", "crackbox.local"}

    photo = png_bytes(drawn_cracks_photo())
    app = create_app(darkness_segmenter(), workers=1, host="crackbox.lan")
    with TestClient(app, base_url="http://crackbox.lan:8080") as client:
        assert client.get("/api/health").status_code == 200
        headers = {"origin": "http://crackbox.lan:8080"}
        assert client.post("/api/predict", files={"file": ("a.png", photo)}, headers=headers).status_code == 200
        assert client.get("/api/health", headers={"host": "other.lan:8080"}).status_code == 400

    # Listening on every interface: the address a request arrived at (here the test client's server address;
    # uvicorn's is the socket's) and the machine's name are accepted; other names are not.
    app = create_app(darkness_segmenter(), workers=1, host="0.0.0.0")
    with TestClient(app, base_url="http://192.168.1.5:8000") as client:
        assert client.get("/api/health").status_code == 200
        headers = {"origin": "http://192.168.1.5:8000"}
        assert client.post("/api/predict", files={"file": ("a.png", photo)}, headers=headers).status_code == 200
        assert client.get("/api/health", headers={"host": "crackbox.local:8000"}).status_code == 200
        assert client.get("/api/health", headers={"host": "attacker.example:8000"}).status_code == 400


def test_docs_point_to_the_openapi_description_and_nothing_needs_a_cdn(dark_client):
    """FastAPI's /docs and /redoc load their scripts from a CDN (blank offline): /docs is a plain page that lists the
    endpoints and links to /openapi.json instead."""
    docs = dark_client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert 'href="/openapi.json"' in docs.text and "/api/predict" in docs.text and "<script" not in docs.text
    for url in ("/redoc", "/docs/oauth2-redirect"):
        assert dark_client.get(url).status_code == 404, url
    spec = dark_client.get("/openapi.json")
    assert spec.status_code == 200
    assert {"/api/predict", "/api/health", "/api/model"} <= set(spec.json()["paths"])
    # Nothing the page loads comes from the network.
    scripts = [f"/static/{name}" for name in ("app.js", "view.js", "table.js", "fields.js", "style.css")]
    for url in ("/", "/docs", *scripts):
        response = dark_client.get(url)
        text = response.text
        assert response.status_code == 200, url
        assert "cdn" not in text.lower() and "https://" not in text and "//unpkg" not in text, url


def test_the_favicon_is_served(dark_client):
    icon = dark_client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(icon.content)).format == "ICO"


# --- health, model, privacy of results --------------------------------------------------------------------


def test_health_and_model(tiny_client):
    health = tiny_client.get("/api/health").json()
    assert health["status"] == "ok" and health["max_upload_mb"] == 50
    model = tiny_client.get("/api/model").json()
    assert model["name"] == "tiny" and model["config"]["arch"] == "pspnet"
    assert model["threshold"] == 0.5 and model["backend"] == "torch"
    page = tiny_client.get("/")
    assert page.status_code == 200 and 'id="threshold"' in page.text
    assert tiny_client.get("/static/app.js").status_code == 200


def test_result_ids_are_random_and_private(dark_client):
    data = png_bytes(drawn_cracks_photo())
    ids = [post(dark_client, data).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) >= 22 for i in ids)
    assert dark_client.get("/api/results/not-an-id/mask.png").status_code == 404
    assert dark_client.delete(f"/api/results/{ids[0]}").status_code == 200
    response = dark_client.get(f"/api/results/{ids[0]}/mask.png")
    assert response.status_code == 404 and "upload the photo again" in response.json()["detail"]
    assert ids[0] not in response.json()["detail"]  # the page shows the reason as it is: no internal id in it
    assert dark_client.get(f"/api/results/{ids[1]}/mask.png").headers["cache-control"] == "no-store"


def test_results_expire_and_memory_budget_evicts_oldest(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("crackseg.serve.store.time.monotonic", lambda: clock[0])
    small = np.zeros((10, 10), np.float32)

    def result():
        return Result(np.zeros((10, 10, 3), np.uint8), small, 0.5, None, "x.png")

    store = ResultStore(ttl_s=60, max_bytes=3 * result().nbytes)
    first = store.add(result())
    clock[0] += 30
    second = store.add(result())
    assert store.get(first) is not None
    clock[0] += 31  # first is 61 s old, second 31 s
    assert store.get(first) is None and store.get(second) is not None
    others = [store.add(result()) for _ in range(3)]  # the budget holds three: second is pushed out
    assert store.get(second) is None and all(store.get(i) is not None for i in others)


def test_inference_runs_off_the_event_loop(dark_client):
    """While a photo is being segmented, the server still answers other requests."""
    started, release = threading.Event(), threading.Event()

    class SlowBackend(DarknessBackend):
        def __call__(self, batch):
            started.set()
            release.wait(timeout=30)
            return super().__call__(batch)

    config = ModelConfig(train_size=256)
    app = create_app(CrackSegmenter(None, config, backend=SlowBackend(config)), workers=1)
    with TestClient(app, base_url=LOCAL) as client:
        answer = {}
        worker = threading.Thread(target=lambda: answer.update(r=post(client, png_bytes(drawn_cracks_photo()))))
        worker.start()
        assert started.wait(timeout=30)
        assert client.get("/api/health").json()["pending"] == 1  # answered while the network is busy
        release.set()
        worker.join(timeout=30)
    assert answer["r"].status_code == 200


# --- the command ------------------------------------------------------------------------------------------


def test_serve_command_binds_loopback_by_default_and_warns_otherwise(tiny_model_dir, monkeypatch, capsys):
    from crackseg.cli import main
    from crackseg.cli.serve import SHUTDOWN_GRACE_S
    from crackseg.serve import server

    calls = []

    def run_server(app, host, port, grace_s):
        calls.append((app, {"host": host, "port": port, "grace_s": grace_s}))
        return 0

    monkeypatch.setattr(server, "run_server", run_server)
    assert main(["serve", "--weights", str(tiny_model_dir), "--max-upload-mb", "5"]) == 0
    assert calls[-1][1] == {"host": "127.0.0.1", "port": 8000, "grace_s": SHUTDOWN_GRACE_S}
    assert "warning" not in capsys.readouterr().err
    with TestClient(calls[-1][0], base_url=LOCAL) as client:
        limits = client.get("/api/model").json()["limits"]
    assert limits["max_upload_mb"] == 5 and limits["max_pixels"] == 100_000_000

    assert main(["serve", "--weights", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls[-1][1]["host"] == "0.0.0.0" and calls[-1][1]["port"] == 8123
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err

    # the name given to --host is one the server answers under; a name it was not given is refused
    assert main(["serve", "--weights", str(tiny_model_dir), "--host", "crackbox.lan"]) == 0
    with TestClient(calls[-1][0], base_url="http://crackbox.lan:8000") as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/health", headers={"host": "evil.example:8000"}).status_code == 400


def test_the_network_is_never_entered_by_two_threads_at_once():
    """Some backends (an OpenVINO infer request) break when two workers call them together."""

    class OneAtATime(DarknessBackend):
        busy = threading.Lock()

        def __call__(self, batch):
            if not self.busy.acquire(blocking=False):
                raise RuntimeError("backend entered by two threads at once")
            try:
                time.sleep(0.05)  # widen the window in which a second call would overlap
                return super().__call__(batch)
            finally:
                self.busy.release()

    config = ModelConfig(train_size=64)  # 200×240 photo: 4×5 tiles, 5 batches of 4 per request
    app = create_app(CrackSegmenter(None, config, backend=OneAtATime(config)), workers=3)
    with TestClient(app, base_url=LOCAL) as client:
        answers = []
        threads = [
            threading.Thread(target=lambda: answers.append(post(client, png_bytes(drawn_cracks_photo()))))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert [a.status_code for a in answers] == [200, 200, 200]


class CountingBackend(DarknessBackend):
    """The darkness stand-in, slowed down and counting its calls, so a test can see the work stop."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        time.sleep(0.05)
        return super().__call__(batch)


def test_a_client_that_leaves_stops_the_work_within_a_few_tiles(tmp_path):
    import socket
    import threading

    import uvicorn

    config = ModelConfig(train_size=64, name="counting", threshold=0.5)
    backend = CountingBackend(config)
    app = create_app(CrackSegmenter(None, config, backend=backend, batch_size=1), workers=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        photo = encode_image(drawn_cracks_photo(640, 640), ".png")  # 169 tiles of 64 px, each slowed to 50 ms
        boundary = "crackseg-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + photo
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(head + body)
            while backend.calls < 5 and time.time() < deadline:  # the work has started
                time.sleep(0.02)
        left_at = backend.calls
        time.sleep(2.0)  # long enough for ~40 more tiles had the work gone on
        assert backend.calls - left_at <= 8
        assert backend.calls < 169
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- what the page asks of a result: units, classes, short cracks, place, everything in one ZIP ------------------


def test_a_pixel_size_of_none_measures_in_pixels_even_after_an_upload_with_one(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo()), pixel_size_mm="0.5").json()
    assert body["measurements"]["cracks"][0]["len_mm"] is not None and body["pixel_size_from"] == "the request"
    kept = dark_client.get(body["urls"]["measurements"]).json()  # no pixel size asked: the upload's
    assert kept["pixel_size_mm"] == 0.5
    cleared = dark_client.get(body["urls"]["measurements"], params={"pixel_size_mm": "none"}).json()
    assert cleared["pixel_size_mm"] is None
    assert all(crack["len_mm"] is None for crack in cleared["measurements"]["cracks"])
    assert "total_length_mm" not in cleared["measurements"]["summary"]
    csv = dark_client.get(body["urls"]["csv"], params={"pixel_size_mm": "none"}).text.splitlines()
    from crackseg.measure.maps import CSV_FIELDS

    assert csv[1].split(",")[CSV_FIELDS.index("len_mm")] == ""


def test_width_classes_and_minimum_length_are_asked_per_request(dark_client):
    urls = post(dark_client, png_bytes(drawn_cracks_photo())).json()["urls"]
    params = {"pixel_size_mm": 2.0}  # the 3 and 5 px wide cracks: 6 and 10 mm
    concrete = dark_client.get(urls["measurements"], params=params).json()["measurements"]
    assert concrete["width_classes"]["name"] == "concrete"
    pavement = dark_client.get(urls["measurements"], params={**params, "classes": "pavement"}).json()["measurements"]
    assert pavement["width_classes"]["name"] == "pavement"
    assert {c["width_cls"] for c in pavement["cracks"]} <= set(pavement["width_classes"]["labels"])
    long_only = dark_client.get(urls["measurements"], params={"min_length": 140}).json()["measurements"]
    assert [round(c["len_px"], -1) for c in long_only["cracks"]] == [160] and long_only["summary"]["dropped_short"]
    csv = dark_client.get(urls["csv"], params={"min_length": 140}).text.strip().splitlines()
    assert len(csv) == 2  # the downloads follow the same filter
    assert dark_client.get(urls["measurements"], params={"classes": "roads"}).status_code == 422
    assert dark_client.get(urls["measurements"], params={"min_length": -1}).status_code == 422


def test_measurements_carry_each_cracks_centreline_and_label_place(dark_client):
    body = post(dark_client, png_bytes(drawn_cracks_photo())).json()
    shapes = {shape["id"]: shape for shape in body["centrelines"]}
    assert set(shapes) == {c["id"] for c in body["measurements"]["cracks"]}
    for crack in body["measurements"]["cracks"]:
        x, y, w, h = crack["bbox"]
        points = np.concatenate([np.asarray(line) for line in shapes[crack["id"]]["lines"]])
        label = shapes[crack["id"]]["label"]
        assert (points >= [x - 1, y - 1]).all() and (points <= [x + w + 1, y + h + 1]).all()
        assert x <= label[0] <= x + w and y <= label[1] <= y + h


def geotiff_bytes(image: np.ndarray, crs: str = "EPSG:32633", pixel_m: float = 0.002) -> bytes:
    """`image` as an RGB GeoTIFF in `crs`, north up, with square pixels of `pixel_m` (the CRS's unit)."""
    from affine import Affine
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "height": image.shape[0], "width": image.shape[1], "count": 3, "dtype": "uint8"}
    profile |= {"crs": crs, "transform": Affine(pixel_m, 0.0, 500_000.0, 0.0, -pixel_m, 5_000_000.0)}
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(np.moveaxis(image, -1, 0))
        return memory.read()


def test_a_geotiff_upload_keeps_its_georeference(dark_client, tmp_path):
    import pyogrio
    import pyproj
    import shapely

    image = drawn_cracks_photo()
    answer = post(dark_client, geotiff_bytes(image), name="deck.tif").json()
    assert answer["pixel_size_mm"] == pytest.approx(2.0) and answer["pixel_size_from"] == "georeference"
    assert answer["georeference"]["crs"] == "EPSG:32633"
    lengths_mm = sorted(c["len_mm"] for c in answer["measurements"]["cracks"])
    assert lengths_mm == pytest.approx([240, 320], rel=0.1)  # 120 and 160 px of 2 mm
    urls = answer["urls"]
    # The GeoPackage in the raster's CRS, its cracks inside the raster's extent.
    (tmp_path / "deck.gpkg").write_bytes(dark_client.get(urls["gpkg"]).content)
    meta, _, wkb, _ = pyogrio.raw.read(tmp_path / "deck.gpkg")
    assert pyproj.CRS(meta["crs"]).to_epsg() == 32633
    bounds = shapely.total_bounds(shapely.from_wkb(wkb))
    right, bottom = 500_000 + 0.002 * image.shape[1], 5_000_000 - 0.002 * image.shape[0]
    assert bounds[0] >= 500_000 and bounds[2] <= right and bounds[1] >= bottom and bounds[3] <= 5_000_000
    # GeoJSON, in WGS 84, for a georeferenced upload only.
    geojson = dark_client.get(urls["geojson"])
    assert geojson.status_code == 200 and geojson.headers["content-type"] == "application/geo+json"
    lon, lat = np.asarray(geojson.json()["features"][0]["geometry"]["coordinates"][0][0])
    assert 14.9 < lon < 15.1 and 45.1 < lat < 45.2  # UTM 33N, 500 km east, 5000 km north
    dxf = dark_client.get(urls["dxf"]).text
    assert "500000" in dxf.replace(".", "").replace(" ", "") or "5e+05" in dxf  # in the CRS, not mm from a corner
    # The same photo as a PNG: no place, no GeoJSON.
    plain = post(dark_client, png_bytes(image), name="deck.png").json()
    assert plain["georeference"] is None and plain["pixel_size_from"] is None and "geojson" not in plain["urls"]
    assert dark_client.get(plain["urls"]["csv"].replace(".csv", ".geojson")).status_code == 422


def test_a_geotiff_in_degrees_is_measured_in_pixels_with_the_reason(dark_client):
    answer = post(dark_client, geotiff_bytes(drawn_cracks_photo(), "EPSG:4326", 1e-6), name="wgs.tif").json()
    assert answer["pixel_size_mm"] is None and answer["georeference"]["crs"] == "EPSG:4326"
    assert "geographic" in answer["notes"][0] and "enter the pixel size" in answer["notes"][0]
    assert "geojson" in answer["urls"]


def test_the_zip_holds_every_file_and_a_one_page_report(dark_client, tmp_path):
    import zipfile

    import pyogrio

    answer = post(dark_client, png_bytes(drawn_cracks_photo()), name="wall.png").json()
    params = {"threshold": 0.2, "pixel_size_mm": 0.5}
    response = dark_client.get(answer["urls"]["zip"], params=params)
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="wall_crackseg.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    names = set(archive.namelist())
    kinds = ("mask.png", "overlay.jpg", "cracks.csv", "cracks.gpkg", "cracks.dxf", "width.png", "measure.json")
    assert names == {f"wall_{kind}" for kind in (*kinds, "report.html")}  # no GeoJSON: a photo has no place
    # The files are the current threshold's and pixel size's: the faint crack too, lengths in mm.
    mask = decode(archive.read("wall_mask.png")) > 0
    assert mask.sum() == 160 * 3 + 120 * 5 + 160 and mask[150:152, 20:100].all()
    assert decode(archive.read("wall_overlay.jpg")).shape == (200, 240, 3)
    csv = archive.read("wall_cracks.csv").decode().splitlines()
    assert csv == dark_client.get(answer["urls"]["csv"], params=params).text.splitlines() and len(csv) == 4
    (tmp_path / "c.gpkg").write_bytes(archive.read("wall_cracks.gpkg"))
    assert len(pyogrio.read_info(tmp_path / "c.gpkg")["fields"]) > 10
    assert pyogrio.read_info(tmp_path / "c.gpkg")["features"] == 3
    assert b"LWPOLYLINE" in archive.read("wall_cracks.dxf")
    assert decode(archive.read("wall_width.png")).ndim == 3
    import json

    summary = json.loads(archive.read("wall_measure.json"))
    assert summary["threshold"] == 0.2 and summary["summary"]["count"] == 3 and summary["pixel_size_mm"] == 0.5
    # The report: one page with the picture inline (nothing fetched) and one row per crack, in mm.
    report = archive.read("wall_report.html").decode()
    assert report.count('<img src="data:image/png;base64,') == 1 and "<script" not in report
    assert "http" not in report.replace("data:image/png", "")
    assert report.count("<tr>") == 1 + 3 and "length (mm)" in report and "0.5 mm/px" in report
    assert "counter-clockwise from the photo" in report
    # A GeoTIFF's ZIP holds its GeoJSON too.
    geo = post(dark_client, geotiff_bytes(drawn_cracks_photo()), name="deck.tif").json()
    zipped = zipfile.ZipFile(io.BytesIO(dark_client.get(geo["urls"]["zip"]).content))
    assert "deck_cracks.geojson" in zipped.namelist()
    assert "EPSG:32633" in zipped.read("deck_report.html").decode()


def test_the_report_escapes_the_photos_name(dark_client):
    import zipfile

    answer = post(dark_client, png_bytes(drawn_cracks_photo()), name="wall <b>north.png").json()
    archive = zipfile.ZipFile(io.BytesIO(dark_client.get(answer["urls"]["zip"]).content))
    report = archive.read(next(n for n in archive.namelist() if n.endswith("report.html"))).decode()
    assert "<b>" not in report and "wall &lt;b&gt;north" in report


def test_the_segmenter_reports_tiles_done_of_all():
    config = ModelConfig(train_size=64)
    segmenter = CrackSegmenter(None, config, backend=DarknessBackend(config), batch_size=3)
    calls = []
    segmenter.predict_prob(drawn_cracks_photo(200, 240), progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert total == segmenter._tile_count(200, 240) and calls[-1][0] == total
    assert [done for done, _ in calls] == sorted({done for done, _ in calls}) and all(t == total for _, t in calls)
    two_scales = CrackSegmenter(None, config, backend=DarknessBackend(config), scales=(1.0, 0.5))
    scaled = []
    two_scales.predict_prob(drawn_cracks_photo(200, 240), progress=lambda done, total: scaled.append((done, total)))
    assert scaled[-1][0] == scaled[-1][1] == total + two_scales._tile_count(100, 120)


def test_progress_is_readable_while_a_photo_is_segmented():
    started, release = threading.Event(), threading.Event()

    class SlowBackend(DarknessBackend):
        calls = 0

        def __call__(self, batch):
            SlowBackend.calls += 1
            if SlowBackend.calls == 3:
                started.set()
                release.wait(timeout=30)
            return super().__call__(batch)

    config = ModelConfig(train_size=64)
    app = create_app(CrackSegmenter(None, config, backend=SlowBackend(config), batch_size=1), workers=1)
    token = "page-token-1234"
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get(f"/api/progress/{token}").json()["stage"] == "unknown"
        answer = {}
        photo = png_bytes(drawn_cracks_photo())
        worker = threading.Thread(target=lambda: answer.update(r=post(client, photo, progress=token)))
        worker.start()
        assert started.wait(timeout=30)
        progress = client.get(f"/api/progress/{token}").json()
        release.set()
        worker.join(timeout=30)
        after = client.get(f"/api/progress/{token}").json()
    assert progress == {"stage": "segmenting", "done": 2, "total": 20}  # 200×240 in tiles of 64: 4 × 5
    assert answer["r"].status_code == 200 and after["stage"] == "unknown"  # forgotten once answered
