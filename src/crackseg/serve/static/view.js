// The photo viewer: the photo with its cracks in red (drawn at the photo's resolution on #view), zoomed and moved
// by a CSS transform, and on top a screen-sized canvas (#marks) with each crack's id and the picked crack's
// centreline, redrawn at every zoom or move so that labels stay readable at any zoom.
//
// Coordinates: "image" = the photo's pixels (x right, y down, pixel centres at +0.5, as the server's centrelines);
// "screen" = CSS pixels from the viewport's top-left corner. At zoom 1 the photo fills the viewport's width.

const RED = new Uint8ClampedArray([255, 0, 0, 170]);
const CRACK_PIXEL = new Uint32Array(RED.buffer)[0]; // the same bytes, whatever the CPU's byte order
export const HIGHLIGHT = "rgb(0, 229, 255)"; // the picked crack: cyan, a colour neither the overlay nor photos use much
const MAX_SCREEN_PX_PER_IMAGE_PX = 16;
const DRAG_SLOP = 4; // px a pointer may move and still count as a click

export class PhotoView {
  constructor(viewport, view, marks, onPick) {
    Object.assign(this, { viewport, view, marks, onPick });
    this.zoom = { z: 1, x: 0, y: 0 }; // scale over the fitted size, and translation in screen px
    this.shapes = []; // per crack: { id, lines, label, width } from the server's measurements
    this.selected = null;
    this.showCracks = true;
    this.pointers = new Map();
    this.wire();
  }

  // --- content ----------------------------------------------------------------------------------------------

  // A photo alone (a preview while the server works): no overlay, no marks.
  showPhoto(bitmap) {
    this.resize(bitmap.width, bitmap.height);
    Object.assign(this, { photo: bitmap, prob: null, shapes: [], selected: null });
    this.redraw();
  }

  // A result: the photo and its probabilities (Uint8Array, × 255), redrawn at `threshold`.
  showResult(photo, prob, threshold) {
    this.resize(photo.width, photo.height);
    Object.assign(this, { photo, prob, threshold });
    this.overlay = document.createElement("canvas");
    this.overlay.width = photo.width;
    this.overlay.height = photo.height;
    this.layer = this.overlay.getContext("2d").createImageData(photo.width, photo.height);
    this.redraw();
  }

  clear() {
    Object.assign(this, { photo: null, prob: null, shapes: [], selected: null });
    this.view.width = this.view.height = 0;
    this.drawMarks();
  }

  resize(width, height) {
    if (this.view.width !== width || this.view.height !== height) {
      this.view.width = width;
      this.view.height = height;
      this.fit();
    }
  }

  setShapes(shapes) {
    this.shapes = shapes;
    this.selected = null;
    this.drawMarks();
  }

  // The share of pixels drawn as cracks, for the summary.
  redraw() {
    const ctx = this.view.getContext("2d");
    if (!this.photo) return 0;
    ctx.drawImage(this.photo, 0, 0);
    let cracks = 0;
    if (this.prob) {
      const pixels = new Uint32Array(this.layer.data.buffer);
      const level = this.threshold * 255 - 0.5; // prob8 = round(prob × 255): as the server's prob ≥ threshold
      for (let i = 0; i < this.prob.length; i++) {
        const isCrack = this.prob[i] >= level;
        pixels[i] = isCrack ? CRACK_PIXEL : 0;
        cracks += isCrack;
      }
      this.overlay.getContext("2d").putImageData(this.layer, 0, 0);
      if (this.showCracks) ctx.drawImage(this.overlay, 0, 0);
      this.view.dataset.threshold = this.threshold.toFixed(2);
    }
    this.drawMarks();
    return this.prob ? cracks / this.prob.length : 0;
  }

  select(id, reveal = false) {
    this.selected = id;
    const shape = this.shapes.find((s) => s.id === id);
    if (reveal && shape && this.zoom.z > 1) this.centreOn(shape);
    this.drawMarks();
  }

  // --- zoom and pan -----------------------------------------------------------------------------------------

  get fitScale() {
    return this.view.width ? this.viewport.clientWidth / this.view.width : 1;
  }

  fit() {
    this.zoom = { z: 1, x: 0, y: 0 };
    this.apply();
  }

  // Zoom by `factor` keeping the image point under screen (sx, sy) where it is (default: the viewport's centre).
  zoomBy(factor, sx = this.viewport.clientWidth / 2, sy = this.viewport.clientHeight / 2) {
    const maxZ = Math.max(1, MAX_SCREEN_PX_PER_IMAGE_PX / this.fitScale);
    const z = Math.min(maxZ, Math.max(1, this.zoom.z * factor));
    const k = z / this.zoom.z;
    this.zoom = { z, x: sx - (sx - this.zoom.x) * k, y: sy - (sy - this.zoom.y) * k };
    this.apply();
  }

  panBy(dx, dy) {
    this.zoom.x += dx;
    this.zoom.y += dy;
    this.apply();
  }

  centreOn(shape) {
    const [ix, iy] = shape.label || shape.lines[0][0];
    const s = this.fitScale * this.zoom.z;
    this.zoom.x = this.viewport.clientWidth / 2 - ix * s;
    this.zoom.y = this.viewport.clientHeight / 2 - iy * s;
    this.apply();
  }

  // Keeps the photo covering the viewport, sets the transform, and redraws the marks.
  apply() {
    const width = this.viewport.clientWidth;
    const height = this.viewport.clientHeight;
    const z = this.zoom.z;
    this.zoom.x = Math.min(0, Math.max(width - width * z, this.zoom.x));
    this.zoom.y = Math.min(0, Math.max(height - height * z, this.zoom.y));
    const moved = z !== 1 || this.zoom.x !== 0 || this.zoom.y !== 0;
    this.view.style.transform = moved ? `translate(${this.zoom.x}px, ${this.zoom.y}px) scale(${z})` : "";
    // Zoomed in far, show the pixels as they are (an inspector judges a crack's width by them), not smoothed.
    this.view.style.imageRendering = z > 1 && this.fitScale * z >= 2 ? "pixelated" : "auto";
    this.viewport.dataset.zoom = z.toFixed(2);
    this.viewport.style.touchAction = z > 1 ? "none" : "pan-x pan-y";
    this.viewport.dispatchEvent(new CustomEvent("zoomchange", { detail: z }));
    this.drawMarks();
  }

  toScreen([ix, iy]) {
    const s = this.fitScale * this.zoom.z;
    return [this.zoom.x + ix * s, this.zoom.y + iy * s];
  }

  toImage(sx, sy) {
    const s = this.fitScale * this.zoom.z;
    return [(sx - this.zoom.x) / s, (sy - this.zoom.y) / s];
  }

  // --- marks: ids and the picked crack ----------------------------------------------------------------------

  drawMarks() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.viewport.clientWidth;
    const height = this.viewport.clientHeight;
    this.marks.width = Math.round(width * ratio);
    this.marks.height = Math.round(height * ratio);
    const ctx = this.marks.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (!this.photo) return;
    const picked = this.shapes.find((s) => s.id === this.selected);
    if (picked) this.drawHighlight(ctx, picked);
    if (this.showCracks) for (const shape of this.shapes) this.drawLabel(ctx, shape, width, height);
  }

  drawHighlight(ctx, shape) {
    const s = this.fitScale * this.zoom.z;
    ctx.lineCap = ctx.lineJoin = "round";
    for (const [colour, extra] of [["rgba(0, 0, 0, 0.6)", 4], [HIGHLIGHT, 0]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = Math.max(4, (shape.width + 2) * s) + extra;
      for (const line of shape.lines) {
        ctx.beginPath();
        line.forEach((point, i) => ctx[i ? "lineTo" : "moveTo"](...this.toScreen(point)));
        if (line.length === 1) ctx.lineTo(...this.toScreen(line[0]));
        ctx.stroke();
      }
    }
  }

  // The id in a dark box up and right of the crack's middle, clear of the crack itself.
  drawLabel(ctx, shape, width, height) {
    if (!shape.label) return;
    const [x, y] = this.toScreen(shape.label);
    if (x < -40 || y < -20 || x > width + 10 || y > height + 30) return;
    const text = String(shape.id);
    ctx.font = "bold 12px system-ui, sans-serif";
    const boxWidth = ctx.measureText(text).width + 8;
    const left = x + 6;
    const top = y - 6 - 16;
    ctx.fillStyle = shape.id === this.selected ? HIGHLIGHT : "rgba(0, 0, 0, 0.7)";
    ctx.fillRect(left, top, boxWidth, 16);
    ctx.fillStyle = shape.id === this.selected ? "#000" : "#fff";
    ctx.textBaseline = "middle";
    ctx.fillText(text, left + 4, top + 8.5);
  }

  // The crack whose centreline passes nearest screen (sx, sy), within a few pixels of it; null if none.
  crackAt(sx, sy) {
    const [ix, iy] = this.toImage(sx, sy);
    const s = this.fitScale * this.zoom.z;
    let best = null;
    let bestDistance = Infinity;
    for (const shape of this.shapes) {
      const reach = Math.max(8 / s, shape.width / 2 + 2);
      for (const line of shape.lines) {
        for (let i = 0; i < line.length; i++) {
          const d = segmentDistance(ix, iy, line[i], line[Math.min(i + 1, line.length - 1)]);
          if (d <= reach && d < bestDistance) [best, bestDistance] = [shape.id, d];
        }
      }
    }
    return best;
  }

  // --- input ------------------------------------------------------------------------------------------------

  wire() {
    const vp = this.viewport;
    vp.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    vp.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    vp.addEventListener("pointermove", (e) => this.onPointerMove(e));
    for (const type of ["pointerup", "pointercancel"]) vp.addEventListener(type, (e) => this.onPointerUp(e));
    vp.addEventListener("keydown", (e) => this.onKey(e));
    new ResizeObserver(() => this.apply()).observe(vp);
  }

  point(e) {
    const box = this.viewport.getBoundingClientRect();
    return [e.clientX - box.left, e.clientY - box.top];
  }

  onWheel(e) {
    if (!this.photo || (e.deltaY > 0 && this.zoom.z <= 1)) return; // zoomed out fully: the page scrolls
    e.preventDefault();
    const scale = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? 800 : 1; // lines, pages → px
    this.zoomBy(Math.exp(-e.deltaY * scale * 0.002), ...this.point(e));
  }

  onPointerDown(e) {
    if (!this.photo) return;
    this.viewport.setPointerCapture(e.pointerId);
    this.pointers.set(e.pointerId, { start: this.point(e), last: this.point(e) });
    this.moved = this.pointers.size > 1;
  }

  onPointerMove(e) {
    const pointer = this.pointers.get(e.pointerId);
    if (!pointer) return;
    const now = this.point(e);
    if (this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      const before = Math.hypot(a.last[0] - b.last[0], a.last[1] - b.last[1]);
      pointer.last = now;
      const after = Math.hypot(a.last[0] - b.last[0], a.last[1] - b.last[1]);
      if (before > 0) this.zoomBy(after / before, (a.last[0] + b.last[0]) / 2, (a.last[1] + b.last[1]) / 2);
      return;
    }
    const [dx, dy] = [now[0] - pointer.last[0], now[1] - pointer.last[1]];
    pointer.last = now;
    if (Math.hypot(now[0] - pointer.start[0], now[1] - pointer.start[1]) > DRAG_SLOP) this.moved = true;
    if (this.moved && this.zoom.z > 1) this.panBy(dx, dy);
  }

  onPointerUp(e) {
    if (!this.pointers.delete(e.pointerId)) return;
    if (e.type === "pointerup" && !this.moved && this.pointers.size === 0) this.onPick(this.crackAt(...this.point(e)));
  }

  onKey(e) {
    const step = 0.15 * this.viewport.clientWidth;
    const actions = {
      "+": () => this.zoomBy(1.5),
      "=": () => this.zoomBy(1.5),
      "-": () => this.zoomBy(1 / 1.5),
      0: () => this.fit(),
      ArrowLeft: () => this.panBy(step, 0),
      ArrowRight: () => this.panBy(-step, 0),
      ArrowUp: () => this.panBy(0, step),
      ArrowDown: () => this.panBy(0, -step),
    };
    const action = actions[e.key];
    if (!action || !this.photo || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key.startsWith("Arrow") && this.zoom.z <= 1) return; // nothing to move: the page scrolls
    e.preventDefault();
    action();
  }
}

function segmentDistance(px, py, [ax, ay], [bx, by]) {
  const dx = bx - ax;
  const dy = by - ay;
  const length2 = dx * dx + dy * dy;
  const t = length2 ? Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / length2)) : 0;
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}
