// crackseg page: upload a photo, show the cracks, re-threshold in the browser, list and download the measurements.
// The probability map is fetched once; moving the slider only redraws the overlay here, and asks the server to
// re-measure the kept probability map (no network re-run) once the slider is released. The photo viewer is
// view.js, the crack table table.js, the number fields fields.js.
import { decimalField, randomToken } from "./fields.js";
import { CrackTable, fmt } from "./table.js";
import { PhotoView } from "./view.js";

const $ = (id) => document.getElementById(id);

const state = {
  result: null, // the /api/predict answer
  measurements: null, // the latest measurements shown
  measureSeq: 0, // drops re-measurements that arrive after a newer one was asked for
  uploadSeq: 0, // the latest upload; an older one that ends after it was replaced changes nothing on the page
  autoPixelSize: false, // the pixel size field holds the GeoTIFF's, not one the user typed
  expiryTimer: null,
};

const busy = { controller: null, timer: null, poller: null, started: 0 }; // the upload in flight

const view = new PhotoView($("viewport"), $("view"), $("marks"), (id) => pick(id, false));
const table = new CrackTable($("cracks"), (id) => pick(id, true));

const pixelSizeField = decimalField($("pixel-size"), $("pixel-size-error"), "The pixel size");
const minLengthField = decimalField($("min-length"), $("min-length-error"), "The minimum length", true);

class HttpError extends Error {
  constructor(status, body) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
    super(`Error ${status}: ${detail || "the server gave no reason"}`);
    this.status = status;
  }
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function fetchOk(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) throw new HttpError(response.status, await response.json().catch(() => null));
  return response;
}

async function fetchJson(url, options) {
  return (await fetchOk(url, options)).json();
}

async function fetchBitmap(url, raw, signal) {
  const blob = await (await fetchOk(url, { signal })).blob();
  // The probability PNG holds data, not colour: decode it without colour management.
  return createImageBitmap(blob, raw ? { colorSpaceConversion: "none", premultiplyAlpha: "none" } : {});
}

const threshold = () => Number($("threshold").value);
const pixelSize = () => pixelSizeField.value();
const unit = () => (pixelSize() ? "mm" : "px");

// The minimum length as the server takes it (px), from the field in the table's unit; null: the server's default.
function minLengthPx() {
  const value = minLengthField.value();
  return value === null ? null : pixelSize() ? value / pixelSize() : value;
}

// What to measure with, as query parameters: every one explicit, so the answer is what the page shows.
function measureParams() {
  const params = new URLSearchParams({ threshold: threshold(), classes: $("classes").value });
  params.set("pixel_size_mm", pixelSize() ?? "none");
  if (minLengthPx() !== null) params.set("min_length", minLengthPx());
  return params;
}

// --- model and limits ---------------------------------------------------------------------------------------

async function loadModel() {
  try {
    const info = await fetchJson("api/model");
    $("model-info").textContent = `${info.name || "unnamed model"} ${info.version} · ${info.backend} ${info.precision}`;
    setThresholdControl(info.threshold);
    const limits = info.limits;
    $("limits").textContent = `up to ${limits.max_upload_mb} MB, ${(limits.max_pixels / 1e6).toFixed(0)} MP`;
    state.schemes = info.width_classes || {};
    $("classes").replaceChildren(
      ...Object.keys(state.schemes).map((name) => new Option(name, name, name === "concrete", name === "concrete")),
    );
    showScheme();
  } catch (err) {
    $("model-info").textContent = `model information unavailable (${err.message})`;
  }
}

function setThresholdControl(value) {
  $("threshold").value = value;
  const text = Number(value).toFixed(2);
  $("threshold-value").textContent = text;
  $("threshold").setAttribute("aria-valuetext", text); // read once, by the slider itself
}

function showScheme() {
  const scheme = (state.schemes || {})[$("classes").value];
  $("classes-bins").textContent = scheme ? `classes: ${scheme.labels.join(", ")}` : "";
}

// --- upload -------------------------------------------------------------------------------------------------

async function upload(file) {
  if (!file) return;
  const autoPixelSize = state.autoPixelSize;
  if (autoPixelSize) setPixelSize("", false); // the previous GeoTIFF's size is not this photo's
  const wrong = [[pixelSizeField, "pixel size"], [minLengthField, "minimum length"]].filter(([f]) => !f.check());
  if (wrong.length) {
    setStatus(`${file.name} not sent: correct the ${wrong.map(([, name]) => name).join(" and ")} first.`, true);
    return;
  }
  if (busy.controller) busy.controller.abort(); // a new photo replaces the one still in flight
  const seq = ++state.uploadSeq;
  const previous = state.result;
  const token = randomToken();
  const form = new FormData();
  form.append("file", file);
  form.append("threshold", threshold());
  form.append("classes", $("classes").value);
  form.append("progress", token);
  if (pixelSize()) form.append("pixel_size_mm", pixelSize());
  if (minLengthPx() !== null) form.append("min_length", minLengthPx());
  const signal = startBusy(token);
  setStatus(`Segmenting ${file.name}…`);
  preview(file, seq);
  let result = null;
  try {
    result = await fetchJson("api/predict", { method: "POST", body: form, signal });
    const [photo, probBitmap] = await Promise.all([
      fetchBitmap(result.urls.image, false, signal),
      fetchBitmap(result.urls.prob, true, signal),
    ]);
    showResult(result, photo, probValues(probBitmap));
    const notes = result.notes.length ? ` (${result.notes.join(" ")})` : "";
    setStatus(`${result.file}: done in ${(result.timing_ms.total / 1000).toFixed(1)} s${notes}`);
    forget(previous);
  } catch (err) {
    if (result) forget(result); // made, but never shown
    if (seq !== state.uploadSeq) return; // replaced by a newer upload, which owns the page now
    if (err.name === "AbortError") {
      setStatus(`Cancelled: ${file.name} was not segmented.`);
      restore(autoPixelSize);
    } else {
      clearResult(); // the previous photo's result must not stand beside this photo's error
      setStatus(err.message, true);
      document.body.dataset.state = "error";
    }
  } finally {
    if (seq === state.uploadSeq) stopBusy();
  }
}

// The chosen photo, shown at once while the server works (a TIFF the browser cannot decode shows on the answer).
async function preview(file, seq) {
  try {
    const bitmap = await createImageBitmap(file);
    if (seq !== state.uploadSeq || !busy.controller) return;
    view.showPhoto(bitmap);
    document.body.dataset.preview = "true";
    $("result-panel").hidden = false;
    $("view").setAttribute("aria-label", `${file.name}, being segmented`);
  } catch {
    // not an image the browser reads: the server's answer says what it is
  }
}

// After a cancel: the previous result as it was (with its GeoTIFF's pixel size, if the upload cleared it), or the
// empty page.
function restore(autoPixelSize) {
  delete document.body.dataset.preview;
  if (state.result) {
    if (autoPixelSize) adoptPixelSize(state.result);
    view.showResult(state.photo, state.prob, threshold());
    showMeasurements(state.measurements);
    document.body.dataset.state = "ready";
  } else {
    view.clear();
    $("result-panel").hidden = true;
    document.body.dataset.state = "empty";
  }
}

function showResult(result, photo, prob) {
  Object.assign(state, { result, photo, prob });
  delete document.body.dataset.preview;
  adoptPixelSize(result);
  view.showResult(photo, prob, threshold());
  $("result-panel").hidden = false;
  view.fit();
  showMeasurements(result);
  updateDownloads();
  const place = result.georeference;
  $("place-item").hidden = !place;
  $("place").textContent = place ? place.crs : "–";
  $("download-geojson").hidden = !result.urls.geojson;
  $("download-gpkg").title = place
    ? `GeoPackage in the GeoTIFF's CRS, ${place.crs}`
    : "GeoPackage: mm (px without a pixel size) from the photo's bottom-left corner";
  $("image-size").textContent = `${result.width} × ${result.height}`;
  $("expiry").textContent = `Results stay on the server for ${Math.round(result.expires_in_s / 60)} min.`;
  clearTimeout(state.expiryTimer);
  state.expiryTimer = setTimeout(() => expire(result), result.expires_in_s * 1000);
  document.body.dataset.state = "ready";
}

// A GeoTIFF's own pixel size, shown in the field (which the next photo clears unless the user changed it).
function adoptPixelSize(result) {
  if (!result.pixel_size_from || result.pixel_size_from === "the request") return;
  setPixelSize(String(result.pixel_size_mm), true);
  $("pixel-size-note").textContent = `from the GeoTIFF's ${result.pixel_size_from}; change or clear it freely`;
}

function setPixelSize(text, auto) {
  const before = unit();
  $("pixel-size").value = text;
  state.autoPixelSize = auto;
  $("pixel-size-note").hidden = !auto;
  pixelSizeField.check();
  convertMinLength(before);
}

function startBusy(token) {
  busy.controller = new AbortController();
  busy.started = performance.now();
  document.body.dataset.state = "busy";
  $("busy").hidden = false;
  $("progress").removeAttribute("value"); // indeterminate until the server counts tiles
  $("progress-text").textContent = "sending…";
  showElapsed();
  clearInterval(busy.timer);
  busy.timer = setInterval(showElapsed, 250);
  clearInterval(busy.poller);
  busy.poller = setInterval(() => pollProgress(token), 300);
  return busy.controller.signal;
}

const STAGES = { waiting: "waiting for the server…", reading: "reading the photo…", measuring: "measuring…" };

async function pollProgress(token) {
  const signal = busy.controller && busy.controller.signal;
  try {
    const progress = await fetchJson(`api/progress/${token}`, { signal });
    if (!busy.controller || busy.controller.signal !== signal) return;
    if (progress.stage === "segmenting") {
      $("progress").max = progress.total;
      $("progress").value = progress.done;
      $("progress-text").textContent = `tiles ${progress.done} / ${progress.total}`;
    } else if (STAGES[progress.stage]) {
      if (progress.stage === "measuring") $("progress").value = $("progress").max;
      $("progress-text").textContent = STAGES[progress.stage];
    }
  } catch {
    // a missed poll: the next one tells
  }
}

function showElapsed() {
  $("elapsed").textContent = `${Math.floor((performance.now() - busy.started) / 1000)} s`;
}

function stopBusy() {
  clearInterval(busy.timer);
  clearInterval(busy.poller);
  busy.controller = null;
  $("busy").hidden = true;
}

function cancel() {
  if (busy.controller) busy.controller.abort(); // the server sees the client leave and stops within a batch
}

// Frees a result on the server (it would otherwise stay in memory until it expires).
function forget(result) {
  if (result && result.id) fetch(`api/results/${result.id}`, { method: "DELETE" }).catch(() => {});
}

function clearResult() {
  forget(state.result);
  clearTimeout(state.expiryTimer);
  Object.assign(state, { result: null, photo: null, prob: null, measurements: null });
  state.measureSeq++; // a re-measurement still on its way is for the result that is gone
  delete document.body.dataset.preview;
  $("result-panel").hidden = true;
  view.clear();
  table.clear();
  for (const link of document.querySelectorAll(".downloads a")) {
    link.removeAttribute("href");
    link.setAttribute("aria-disabled", "true");
  }
  for (const id of ["crack-count", "total-length", "crack-fraction", "image-size"]) $(id).textContent = "–";
}

// The server no longer holds the result (its time ran out, or memory was needed): say so, and clear the view.
function expire(result) {
  if (!state.result || (result && state.result !== result)) return;
  state.result.id = null; // nothing left to forget
  clearResult();
  setStatus("This result has expired: upload the photo again.", true);
  document.body.dataset.state = "expired";
}

function probValues(bitmap) {
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const values = new Uint8Array(bitmap.width * bitmap.height);
  for (let i = 0; i < values.length; i++) values[i] = rgba[4 * i];
  return values;
}

// --- drawing and measurements -------------------------------------------------------------------------------

let drawPending = false;
function scheduleDraw() {
  if (drawPending || !state.result) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    if (!state.result || document.body.dataset.preview) return;
    view.threshold = threshold();
    view.showCracks = $("show-overlay").checked;
    $("crack-fraction").textContent = `${(100 * view.redraw()).toFixed(2)} %`;
  });
}

function showMeasurements(answer) {
  state.measurements = answer;
  const m = answer.measurements;
  const mm = answer.pixel_size_mm !== null && answer.pixel_size_mm !== undefined;
  const cracks = Object.fromEntries(m.cracks.map((c) => [c.id, c]));
  table.show(m.cracks, mm ? "mm" : "px");
  view.setShapes(answer.centrelines.map((s) => ({ ...s, width: cracks[s.id] ? cracks[s.id].w_max_px : 1 })));
  scheduleDraw();
  const s = m.summary;
  $("crack-count").textContent = m.cracks.length;
  $("total-length").textContent = mm ? `${fmt(s.total_length_mm)} mm` : `${fmt(s.total_length_px)} px`;
  $("crack-fraction").textContent = `${(100 * answer.crack_fraction).toFixed(2)} %`;
  $("dropped").textContent = s.dropped_short
    ? `${s.dropped_short} shorter marks (under ${fmt(minLengthShown(s.min_length_px, answer))}) are not listed.`
    : "";
  const name = state.result ? state.result.file : "the photo";
  $("view").setAttribute("aria-label", `${name} with ${m.cracks.length} cracks marked in red and numbered`);
  $("cracks").dataset.threshold = Number(answer.threshold).toFixed(2);
  $("cracks").dataset.count = m.cracks.length;
}

function minLengthShown(px, answer) {
  return answer.pixel_size_mm ? `${fmt(px * answer.pixel_size_mm)} mm` : `${fmt(px)} px`;
}

// A crack picked in the table or the photo (null: none): marked in both.
function pick(id, fromTable) {
  view.select(id, fromTable);
  table.select(id, !fromTable);
  $("view").dataset.selected = id ?? "";
}

let measureTimer = null;
function scheduleMeasure() {
  clearTimeout(measureTimer);
  measureTimer = setTimeout(remeasure, 250);
}

async function remeasure() {
  if (!state.result || !state.result.id) return;
  const seq = ++state.measureSeq;
  try {
    const answer = await fetchJson(`${state.result.urls.measurements}?${measureParams()}`);
    if (seq !== state.measureSeq) return;
    showMeasurements(answer);
    $("view").dataset.selected = "";
    if (busy.controller) return; // the status line tells about the photo in progress
    setStatus(`threshold ${threshold().toFixed(2)}: ${answer.measurements.cracks.length} cracks`);
  } catch (err) {
    if (seq !== state.measureSeq) return;
    if (err.status === 404) expire();
    else if (!busy.controller) setStatus(err.message, true);
  }
}

const DOWNLOADS = { mask: "threshold", overlay: "threshold", csv: "all", gpkg: "all", geojson: "all", dxf: "all" };

function updateDownloads() {
  if (!state.result || !state.result.id) return;
  const all = measureParams();
  const t = new URLSearchParams({ threshold: threshold() });
  const urls = state.result.urls;
  for (const [kind, params] of Object.entries({ ...DOWNLOADS, zip: "all" })) {
    const link = $(`download-${kind}`);
    if (!urls[kind]) continue;
    link.href = `${urls[kind]}?${params === "all" ? all : t}`;
    link.removeAttribute("aria-disabled");
  }
}

// A download fetched here first, so that an expired result is said so on the page instead of the browser saving
// the server's error as the file.
async function download(e) {
  const link = e.currentTarget;
  e.preventDefault();
  if (!link.href) return;
  try {
    const response = await fetchOk(link.href);
    const disposition = response.headers.get("content-disposition") || "";
    const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || "download";
    const url = URL.createObjectURL(await response.blob());
    const save = Object.assign(document.createElement("a"), { href: url, download: name });
    document.body.appendChild(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    if (err.status === 404) expire();
    else setStatus(err.message, true);
  }
}

// --- wiring -------------------------------------------------------------------------------------------------

function onSettingsChange() {
  updateDownloads();
  scheduleMeasure();
}

function wire() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => {
    upload(e.target.files[0]);
    e.target.value = ""; // choosing the same file again (say, after fixing the pixel size) sends it again
  });
  $("cancel").addEventListener("click", cancel);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && busy.controller) {
      e.preventDefault();
      cancel();
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
  // A photo dropped anywhere on the page is taken (instead of the browser opening it and leaving the page).
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    upload(e.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", () => {
    setThresholdControl(threshold());
    scheduleDraw();
  });
  $("threshold").addEventListener("change", onSettingsChange);
  $("pixel-size").addEventListener("input", () => {
    state.autoPixelSize = false;
    $("pixel-size-note").hidden = true;
    const before = $("min-length-unit").textContent;
    if (!pixelSizeField.check()) return; // the table and downloads keep the last valid size; the message says why
    convertMinLength(before);
    onSettingsChange();
  });
  $("min-length").addEventListener("input", () => minLengthField.check() && onSettingsChange());
  $("classes").addEventListener("change", () => {
    showScheme();
    onSettingsChange();
  });
  $("show-overlay").addEventListener("change", scheduleDraw);
  for (const link of document.querySelectorAll(".downloads a")) link.addEventListener("click", download);
  $("zoom-in").addEventListener("click", () => view.zoomBy(1.5));
  $("zoom-out").addEventListener("click", () => view.zoomBy(1 / 1.5));
  $("zoom-fit").addEventListener("click", () => view.fit());
  $("viewport").addEventListener("zoomchange", (e) => {
    $("zoom-level").textContent = `${Math.round(100 * e.detail)} %`;
  });
}

// The minimum length follows the table's unit: when the pixel size comes or goes, the same length in the other unit.
function convertMinLength(before) {
  const now = unit();
  const value = minLengthField.value();
  $("min-length-unit").textContent = now;
  if (before !== now && value !== null) {
    const converted = now === "mm" ? value * pixelSize() : value / state.lastPixelSize;
    $("min-length").value = String(Number(converted.toPrecision(4)));
  }
  if (pixelSize()) state.lastPixelSize = pixelSize();
}

wire();
loadModel();
