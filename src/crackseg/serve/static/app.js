// crackseg page: upload a photo, show the cracks, re-threshold in the browser, list and download the measurements.
// The probability map is fetched once; moving the slider only redraws the overlay here, and asks the server to
// re-measure the kept probability map (no network re-run) once the slider is released.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  result: null, // the /api/predict answer
  photo: null, // ImageBitmap of the upright photo
  prob: null, // Uint8Array, crack probability × 255, row-major
  overlay: null, // canvas holding the red crack layer at the current threshold
  layer: null, // its pixels, reused at every redraw
  measureSeq: 0, // drops re-measurements that arrive after a newer one was asked for
  uploadSeq: 0, // the latest upload; an older one that ends after it was replaced changes nothing on the page
};

const busy = { controller: null, timer: null, started: 0 }; // the upload in flight, for Cancel and the clock

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function errorText(status, body) {
  let detail = body && body.detail;
  if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
  return `Error ${status}: ${detail || "the server gave no reason"}`;
}

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(response.status, body));
  return body;
}

async function fetchBitmap(url, raw, signal) {
  const response = await fetch(url, { signal });
  if (!response.ok) throw new Error(errorText(response.status, await response.json().catch(() => null)));
  // The probability PNG holds data, not colour: decode it without colour management.
  const options = raw ? { colorSpaceConversion: "none", premultiplyAlpha: "none" } : {};
  return createImageBitmap(await response.blob(), options);
}

function threshold() {
  return Number($("threshold").value);
}

// The pixel size field: empty (no millimetres), or a positive number; anything else is refused with a message.
function pixelSizeField() {
  const input = $("pixel-size");
  const text = input.value.trim();
  if (input.validity.badInput) return { ok: false }; // typed text that is not a number
  if (text === "") return { ok: true, value: null };
  const value = Number(text);
  return Number.isFinite(value) && value > 0 ? { ok: true, value } : { ok: false };
}

function pixelSize() {
  const field = pixelSizeField();
  return field.ok ? field.value : null;
}

function checkPixelSize() {
  const { ok } = pixelSizeField();
  $("pixel-size").setAttribute("aria-invalid", String(!ok));
  $("pixel-size-error").textContent = ok ? "" : "The pixel size must be a number above 0 (mm per pixel), or empty.";
  $("pixel-size-error").hidden = ok;
  return ok;
}

// --- model and limits ---------------------------------------------------------------------------------------

async function loadModel() {
  try {
    const info = await fetchJson("api/model");
    const name = info.name || "unnamed model";
    $("model-info").textContent = `${name} ${info.version} · ${info.backend} ${info.precision}`;
    $("threshold").value = info.threshold;
    $("threshold-value").textContent = Number(info.threshold).toFixed(2);
    const limits = info.limits;
    $("limits").textContent = `up to ${limits.max_upload_mb} MB, ${(limits.max_pixels / 1e6).toFixed(0)} MP`;
  } catch (err) {
    $("model-info").textContent = `model information unavailable (${err.message})`;
  }
}

// --- upload -------------------------------------------------------------------------------------------------

async function upload(file) {
  if (!file) return;
  if (!checkPixelSize()) {
    setStatus(`${file.name} not sent: correct the pixel size first.`, true);
    return;
  }
  if (busy.controller) busy.controller.abort(); // a new photo replaces the one still in flight
  const seq = ++state.uploadSeq;
  const previous = state.result;
  const form = new FormData();
  form.append("file", file);
  form.append("threshold", threshold());
  if (pixelSize()) form.append("pixel_size_mm", pixelSize());
  const signal = startBusy();
  setStatus(`Segmenting ${file.name}…`);
  let result = null;
  try {
    result = await fetchJson("api/predict", { method: "POST", body: form, signal });
    const [photo, probBitmap] = await Promise.all([
      fetchBitmap(result.urls.image, false, signal),
      fetchBitmap(result.urls.prob, true, signal),
    ]);
    state.result = result;
    state.photo = photo;
    state.prob = probValues(probBitmap);
    setupCanvases(result.width, result.height);
    drawOverlay();
    showMeasurements(result);
    updateDownloads();
    $("result-panel").hidden = false;
    $("image-size").textContent = `${result.width} × ${result.height}`;
    $("expiry").textContent = `Results stay on the server for ${Math.round(result.expires_in_s / 60)} min.`;
    setStatus(`${result.file}: done in ${(result.timing_ms.total / 1000).toFixed(1)} s`);
    document.body.dataset.state = "ready";
    forget(previous);
  } catch (err) {
    if (result) forget(result); // made, but never shown
    if (seq !== state.uploadSeq) return; // replaced by a newer upload, which owns the page now
    if (err.name === "AbortError") {
      setStatus(`Cancelled: ${file.name} was not segmented.`);
      document.body.dataset.state = state.result ? "ready" : "empty";
    } else {
      clearResult(); // the previous photo's result must not stand beside this photo's error
      setStatus(err.message, true);
      document.body.dataset.state = "error";
    }
  } finally {
    if (seq === state.uploadSeq) stopBusy();
  }
}

function startBusy() {
  busy.controller = new AbortController();
  busy.started = performance.now();
  document.body.dataset.state = "busy";
  $("busy").hidden = false;
  showElapsed();
  clearInterval(busy.timer);
  busy.timer = setInterval(showElapsed, 250);
  return busy.controller.signal;
}

function showElapsed() {
  $("elapsed").textContent = `${Math.floor((performance.now() - busy.started) / 1000)} s`;
}

function stopBusy() {
  clearInterval(busy.timer);
  busy.controller = null;
  $("busy").hidden = true;
}

// Frees a result on the server (it would otherwise stay in memory until it expires).
function forget(result) {
  if (result && result.id) fetch(`api/results/${result.id}`, { method: "DELETE" }).catch(() => {});
}

function clearResult() {
  forget(state.result);
  Object.assign(state, { result: null, photo: null, prob: null, overlay: null, layer: null });
  state.measureSeq++; // a re-measurement still on its way is for the result that is gone
  $("result-panel").hidden = true;
  $("view").width = $("view").height = 0;
  $("cracks").querySelector("tbody").replaceChildren();
  for (const id of ["download-mask", "download-overlay", "download-csv", "download-gpkg", "download-dxf"]) {
    $(id).removeAttribute("href");
  }
  for (const id of ["crack-count", "total-length", "crack-fraction", "image-size"]) $(id).textContent = "–";
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

// --- drawing ------------------------------------------------------------------------------------------------

function setupCanvases(width, height) {
  const view = $("view");
  view.width = width;
  view.height = height;
  state.overlay = document.createElement("canvas");
  state.overlay.width = width;
  state.overlay.height = height;
  state.layer = state.overlay.getContext("2d").createImageData(width, height);
}

// Red where probability ≥ threshold, like the server's mask (prob ≥ threshold), at 8-bit precision.
const RED = new Uint8ClampedArray([255, 0, 0, 170]);
const CRACK_PIXEL = new Uint32Array(RED.buffer)[0]; // the same bytes, whatever the CPU's byte order

function drawOverlay() {
  const pixels = new Uint32Array(state.layer.data.buffer);
  const level = threshold() * 255 - 0.5; // prob8 = round(prob × 255)
  let cracks = 0;
  for (let i = 0; i < state.prob.length; i++) {
    const isCrack = state.prob[i] >= level;
    pixels[i] = isCrack ? CRACK_PIXEL : 0;
    cracks += isCrack;
  }
  state.overlay.getContext("2d").putImageData(state.layer, 0, 0);
  const view = $("view").getContext("2d");
  view.drawImage(state.photo, 0, 0);
  if ($("show-overlay").checked) view.drawImage(state.overlay, 0, 0);
  $("crack-fraction").textContent = `${((100 * cracks) / state.prob.length).toFixed(2)} %`;
  $("view").dataset.threshold = threshold().toFixed(2);
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending || !state.result) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawOverlay();
  });
}

// --- measurements -------------------------------------------------------------------------------------------

function fmt(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

// Lengths and widths in mm when the server had a pixel size, otherwise in pixels (the unit is in the header).
function crackCells(crack, mm) {
  const unit = mm ? "mm" : "px";
  return [
    crack.id,
    fmt(crack[`len_${unit}`]),
    fmt(crack[`w_mean_${unit}`], 2),
    fmt(crack[`w_max_${unit}`], 2),
    fmt(crack.orient_deg, 0),
    crack.crack_cls,
  ];
}

function showMeasurements(answer) {
  const m = answer.measurements;
  const mm = answer.pixel_size_mm !== null && answer.pixel_size_mm !== undefined;
  for (const unit of $("cracks").querySelectorAll(".unit")) unit.textContent = mm ? "mm" : "px";
  const tbody = $("cracks").querySelector("tbody");
  tbody.replaceChildren();
  for (const crack of m.cracks) {
    const row = document.createElement("tr");
    for (const cell of crackCells(crack, mm)) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    tbody.appendChild(row);
  }
  if (!m.cracks.length) {
    const row = tbody.insertRow();
    const td = row.insertCell();
    td.colSpan = 6;
    td.textContent = "no cracks at this threshold";
  }
  const s = m.summary;
  const total = mm && s.total_length_mm !== undefined ? `${fmt(s.total_length_mm)} mm` : `${fmt(s.total_length_px)} px`;
  $("crack-count").textContent = m.cracks.length;
  $("total-length").textContent = total;
  $("cracks").dataset.threshold = Number(answer.threshold).toFixed(2);
  $("cracks").dataset.count = m.cracks.length;
}

let measureTimer = null;
function scheduleMeasure() {
  clearTimeout(measureTimer);
  measureTimer = setTimeout(remeasure, 250);
}

async function remeasure() {
  if (!state.result) return;
  const seq = ++state.measureSeq;
  const params = new URLSearchParams({ threshold: threshold() });
  if (pixelSize()) params.set("pixel_size_mm", pixelSize());
  try {
    const answer = await fetchJson(`${state.result.urls.measurements}?${params}`);
    if (seq !== state.measureSeq) return;
    showMeasurements(answer);
    if (busy.controller) return; // the status line tells about the photo in progress
    setStatus(`threshold ${threshold().toFixed(2)}: ${answer.measurements.cracks.length} cracks`);
  } catch (err) {
    if (seq === state.measureSeq && !busy.controller) setStatus(err.message, true);
  }
}

function updateDownloads() {
  if (!state.result) return;
  const t = new URLSearchParams({ threshold: threshold() });
  const withSize = new URLSearchParams(t);
  if (pixelSize()) withSize.set("pixel_size_mm", pixelSize());
  const urls = state.result.urls;
  $("download-mask").href = `${urls.mask}?${t}`;
  $("download-overlay").href = `${urls.overlay}?${t}`;
  $("download-csv").href = `${urls.csv}?${withSize}`;
  $("download-gpkg").href = `${urls.gpkg}?${withSize}`;
  $("download-dxf").href = `${urls.dxf}?${withSize}`;
}

// --- wiring -------------------------------------------------------------------------------------------------

function wire() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => {
    upload(e.target.files[0]);
    e.target.value = ""; // choosing the same file again (say, after fixing the pixel size) sends it again
  });
  $("cancel").addEventListener("click", () => busy.controller && busy.controller.abort());
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
    $("threshold-value").textContent = threshold().toFixed(2);
    scheduleDraw();
  });
  $("threshold").addEventListener("change", () => {
    updateDownloads();
    scheduleMeasure();
  });
  $("pixel-size").addEventListener("input", () => {
    if (!checkPixelSize()) return; // the table and downloads keep the last valid size; the message says why
    updateDownloads();
    scheduleMeasure();
  });
  $("show-overlay").addEventListener("change", scheduleDraw);
}

wire();
loadModel();
