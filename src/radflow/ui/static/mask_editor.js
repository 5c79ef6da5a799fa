// Segmentation masks in the reader: a canvas over the image shows each structure's mask (filled at an
// opacity, or as its outline), and the reader corrects one structure at a time with a brush or an
// eraser; undo takes back the last stroke. Masks travel as COCO RLE at the input's size, the form the
// answer gives them in (radflow.runtime.masks) and the form feedback saves them in.
"use strict";

(function () {
  // radflow.runtime.masks.PALETTE: structure k's colour, as in the label PNG.
  const PALETTE = [
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
  ];

  // COCO compact RLE -> row-major Uint8Array (1 = in the mask). Counts are column-major runs of 0 and 1;
  // each value is 5-bit groups, least significant first (bit 0x20: more follow; 0x10 of the last: negative),
  // and from the third value on it is the difference to the value two before.
  function decodeRle(rle) {
    const [h, w] = rle.size;
    const counts = [];
    const s = rle.counts;
    if (Array.isArray(s)) counts.push(...s);
    else {
      let p = 0;
      while (p < s.length) {
        let x = 0, k = 0, c = 0, more = true;
        while (more) {
          c = s.charCodeAt(p++) - 48;
          x += (c & 0x1f) * 2 ** (5 * k);
          more = (c & 0x20) !== 0;
          k++;
        }
        if (c & 0x10) x -= 2 ** (5 * k);
        if (counts.length > 2) x += counts[counts.length - 2];
        counts.push(x);
      }
    }
    const mask = new Uint8Array(h * w);
    let i = 0;
    counts.forEach((n, j) => {
      if (j % 2) for (let e = i + n; i < e; i++) mask[(i % h) * w + Math.floor(i / h)] = 1;
      else i += n;
    });
    return mask;
  }

  function encodeRle(mask, h, w) {
    const counts = [];
    let value = 0, run = 0;
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        const v = mask[y * w + x];
        if (v !== value) {
          counts.push(run);
          run = 0;
          value = v;
        }
        run++;
      }
    }
    counts.push(run);
    let out = "";
    counts.forEach((count, i) => {
      let x = i > 2 ? count - counts[i - 2] : count;
      let more = true;
      while (more) {
        let c = x & 0x1f;
        x = Math.floor(x / 32);
        more = c & 0x10 ? x !== -1 : x !== 0;
        if (more) c |= 0x20;
        out += String.fromCharCode(c + 48);
      }
    });
    return { size: [h, w], counts: out };
  }

  class MaskEditor {
    // canvas: the overlay (same box as the image); structures: the answer's [{structure, rle}, ...].
    constructor(canvas, structures, corrected) {
      this.canvas = canvas;
      const [h, w] = structures[0].rle.size;
      this.h = h;
      this.w = w;
      canvas.width = w;
      canvas.height = h;
      this.names = structures.map((s) => s.structure);
      this.served = structures.map((s) => decodeRle(s.rle));
      this.masks = structures.map((s, k) => (corrected && corrected[s.structure] ? decodeRle(corrected[s.structure]) : this.served[k].slice()));
      this.visible = this.names.map(() => true);
      this.opacity = 0.45;
      this.outline = false;
      this.active = 0;
      this.tool = "brush";
      this.radius = 3;
      this.undo = [];
      this.onchange = null;
      this.wire();
      this.draw();
    }

    wire() {
      const c = this.canvas;
      let last = null;
      const at = (e) => {
        const r = c.getBoundingClientRect();
        return [((e.clientX - r.left) * this.w) / r.width, ((e.clientY - r.top) * this.h) / r.height];
      };
      this.abort = new AbortController();
      const opts = { signal: this.abort.signal };
      c.addEventListener("pointerdown", (e) => {
        if (e.button !== 0) return;
        e.preventDefault();
        c.setPointerCapture(e.pointerId);
        this.undo.push({ k: this.active, mask: this.masks[this.active].slice() });
        last = at(e);
        this.paint(last, last);
      }, opts);
      c.addEventListener("pointermove", (e) => {
        if (!last) return;
        const p = at(e);
        this.paint(last, p);
        last = p;
      }, opts);
      const end = () => {
        if (!last) return;
        last = null;
        if (this.onchange) this.onchange();
      };
      c.addEventListener("pointerup", end, opts);
      c.addEventListener("pointercancel", end, opts);
    }

    destroy() {
      this.abort.abort();
    }

    // A disc of the brush radius swept from a to b (image pixels), set by the brush and cleared by the eraser.
    paint(a, b) {
      const mask = this.masks[this.active];
      const value = this.tool === "eraser" ? 0 : 1;
      const r = this.radius;
      const steps = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / Math.max(0.5, r / 2)));
      for (let s = 0; s <= steps; s++) {
        const cx = a[0] + ((b[0] - a[0]) * s) / steps;
        const cy = a[1] + ((b[1] - a[1]) * s) / steps;
        for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(this.h - 1, Math.ceil(cy + r)); y++) {
          for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(this.w - 1, Math.ceil(cx + r)); x++) {
            // Pixel centres within the radius (at least the pixel under the pointer).
            if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= Math.max(r * r, 0.5)) mask[y * this.w + x] = value;
          }
        }
      }
      this.draw();
    }

    undoStroke() {
      const last = this.undo.pop();
      if (!last) return false;
      this.masks[last.k] = last.mask;
      this.draw();
      if (this.onchange) this.onchange();
      return true;
    }

    changed(k) {
      const a = this.masks[k], b = this.served[k];
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return true;
      return false;
    }

    area(k) {
      let n = 0;
      for (const v of this.masks[k]) n += v;
      return n;
    }

    // Every structure's mask as the reader leaves it (unchanged ones confirm the answer).
    corrected() {
      const out = {};
      this.names.forEach((name, k) => (out[name] = encodeRle(this.masks[k], this.h, this.w)));
      return out;
    }

    draw() {
      const ctx = this.canvas.getContext("2d");
      const image = ctx.createImageData(this.w, this.h);
      const px = image.data;
      const alpha = Math.round(this.opacity * 255);
      const { w, h } = this;
      this.masks.forEach((mask, k) => {
        if (!this.visible[k]) return;
        const [r, g, b] = PALETTE[k % PALETTE.length];
        for (let y = 0; y < h; y++) {
          for (let x = 0; x < w; x++) {
            const i = y * w + x;
            if (!mask[i]) continue;
            // Outline: mask pixels with a 4-neighbour outside the mask (or on the image edge).
            if (this.outline && x > 0 && y > 0 && x < w - 1 && y < h - 1 && mask[i - 1] && mask[i + 1] && mask[i - w] && mask[i + w]) continue;
            px[4 * i] = r;
            px[4 * i + 1] = g;
            px[4 * i + 2] = b;
            px[4 * i + 3] = this.outline ? 255 : alpha;
          }
        }
      });
      ctx.putImageData(image, 0, 0);
    }
  }

  window.radflow = Object.assign(window.radflow || {}, { MaskEditor, decodeRle, encodeRle, PALETTE });
})();
