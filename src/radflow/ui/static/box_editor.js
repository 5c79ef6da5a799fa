// Detection boxes in the reader: a canvas over the image draws each box with its label and score, boxes
// below the score threshold hidden. The reader selects a box (click), moves it (drag inside), resizes it
// (drag a corner handle), deletes it (Delete key or button) and adds one (drag on empty image) with the
// label picked. Boxes are [x0, y0, x1, y1] in the upload's pixels, as the answer gives them and as
// feedback saves them (labels.boxes: the boxes the reader leaves shown).
"use strict";

(function () {
  const HANDLE = 6; // CSS px around a corner that grabs it
  const MIN_SIZE = 1; // image px: a drawn box smaller than this is a click, not a box

  class BoxEditor {
    // canvas: the overlay (same box as img); boxes: the answer's [{label, score, box}]; labels: the model's;
    // corrected: a saved correction's boxes (shown instead of the answer's).
    constructor(canvas, img, boxes, labels, corrected) {
      this.canvas = canvas;
      this.img = img;
      this.labels = labels.slice();
      for (const b of [...boxes, ...(corrected || [])]) if (!this.labels.includes(b.label)) this.labels.push(b.label);
      const source = corrected || boxes;
      this.boxes = source.map((b) => ({ label: b.label, score: corrected ? null : b.score, box: b.box.slice(), edited: false }));
      this.threshold = 0.5;
      this.selected = -1;
      this.label = this.labels[0];
      this.onchange = null;
      this.wire();
      this.draw();
    }

    size() {
      return [this.img.naturalWidth || 0, this.img.naturalHeight || 0];
    }

    shown(b) {
      return b.score === null || b.edited || b.score >= this.threshold;
    }

    // Pointer position in image pixels, and the CSS px per image px.
    at(e) {
      const r = this.canvas.getBoundingClientRect();
      const [w] = this.size();
      const scale = r.width / (w || 1);
      return [[(e.clientX - r.left) / scale, (e.clientY - r.top) / scale], scale];
    }

    hit(p, scale) {
      const s = this.selected >= 0 ? this.boxes[this.selected] : null;
      if (s && this.shown(s)) {
        const [x0, y0, x1, y1] = s.box;
        const corners = [[x0, y0, 0, 1], [x1, y0, 2, 1], [x0, y1, 0, 3], [x1, y1, 2, 3]];
        for (const [cx, cy, ix, iy] of corners) {
          if (Math.abs(p[0] - cx) * scale <= HANDLE && Math.abs(p[1] - cy) * scale <= HANDLE) return { mode: "resize", k: this.selected, ix, iy };
        }
      }
      // The smallest shown box under the pointer (nested boxes stay reachable).
      let best = -1, area = Infinity;
      this.boxes.forEach((b, k) => {
        const [x0, y0, x1, y1] = b.box;
        if (this.shown(b) && p[0] >= x0 && p[0] <= x1 && p[1] >= y0 && p[1] <= y1 && (x1 - x0) * (y1 - y0) < area) {
          best = k;
          area = (x1 - x0) * (y1 - y0);
        }
      });
      return best >= 0 ? { mode: "move", k: best } : { mode: "draw" };
    }

    clamp(box) {
      const [w, h] = this.size();
      return [Math.max(0, Math.min(w, box[0])), Math.max(0, Math.min(h, box[1])), Math.max(0, Math.min(w, box[2])), Math.max(0, Math.min(h, box[3]))];
    }

    wire() {
      const c = this.canvas;
      let drag = null;
      this.abort = new AbortController();
      const opts = { signal: this.abort.signal };
      c.addEventListener("pointerdown", (e) => {
        if (e.button !== 0 || !this.size()[0]) return;
        e.preventDefault();
        c.focus();
        c.setPointerCapture(e.pointerId);
        const [p, scale] = this.at(e);
        const target = this.hit(p, scale);
        drag = { ...target, start: p, moved: false };
        if (target.mode === "draw") {
          this.selected = -1;
        } else {
          this.selected = target.k;
          drag.box = this.boxes[target.k].box.slice();
        }
        this.changed();
      }, opts);
      c.addEventListener("pointermove", (e) => {
        if (!drag) return;
        const [p] = this.at(e);
        const dx = p[0] - drag.start[0], dy = p[1] - drag.start[1];
        if (!drag.moved && Math.hypot(dx, dy) < 0.5) return;
        drag.moved = true;
        const [w, h] = this.size();
        if (drag.mode === "move") {
          const [x0, y0, x1, y1] = drag.box;
          const mx = Math.max(-x0, Math.min(w - x1, dx)), my = Math.max(-y0, Math.min(h - y1, dy));
          this.update(drag.k, [x0 + mx, y0 + my, x1 + mx, y1 + my]);
        } else if (drag.mode === "resize") {
          const box = drag.box.slice();
          box[drag.ix] += dx;
          box[drag.iy] += dy;
          this.update(drag.k, this.clamp([Math.min(box[0], box[2]), Math.min(box[1], box[3]), Math.max(box[0], box[2]), Math.max(box[1], box[3])]));
        } else {
          drag.box = this.clamp([Math.min(drag.start[0], p[0]), Math.min(drag.start[1], p[1]), Math.max(drag.start[0], p[0]), Math.max(drag.start[1], p[1])]);
          this.draw();
        }
      }, opts);
      const end = () => {
        if (!drag) return;
        const done = drag;
        drag = null;
        if (done.mode === "draw" && done.box && done.box[2] - done.box[0] >= MIN_SIZE && done.box[3] - done.box[1] >= MIN_SIZE) {
          this.boxes.push({ label: this.label, score: null, box: done.box, edited: true });
          this.selected = this.boxes.length - 1;
        }
        this.changed();
      };
      c.addEventListener("pointerup", end, opts);
      c.addEventListener("pointercancel", end, opts);
      c.addEventListener("keydown", (e) => {
        if ((e.key === "Delete" || e.key === "Backspace") && this.selected >= 0) {
          e.preventDefault();
          this.remove();
        }
      }, opts);
      this.img.addEventListener("load", () => this.draw(), opts);
      window.addEventListener("resize", () => this.draw(), opts);
      this.current = () => drag;
    }

    destroy() {
      this.abort.abort();
      const ctx = this.canvas.getContext("2d");
      ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    }

    update(k, box) {
      this.boxes[k].box = box;
      this.boxes[k].edited = true;
      this.draw();
    }

    remove() {
      if (this.selected < 0) return;
      this.boxes.splice(this.selected, 1);
      this.selected = -1;
      this.changed();
    }

    setLabel(label) {
      this.label = label;
      if (this.selected >= 0 && this.boxes[this.selected].label !== label) {
        this.boxes[this.selected].label = label;
        this.boxes[this.selected].edited = true;
      }
      this.changed();
    }

    changed() {
      this.draw();
      if (this.onchange) this.onchange();
    }

    count() {
      return this.boxes.filter((b) => this.shown(b)).length;
    }

    // The boxes the reader leaves shown, in the upload's pixels: the correction Save feedback sends.
    corrected() {
      const round = (v) => Math.round(v * 100) / 100;
      return this.boxes.filter((b) => this.shown(b)).map((b) => ({ label: b.label, box: b.box.map(round) }));
    }

    draw() {
      const c = this.canvas;
      const r = c.getBoundingClientRect();
      const dpr = window.devicePixelRatio || 1;
      c.width = Math.max(1, Math.round(r.width * dpr));
      c.height = Math.max(1, Math.round(r.height * dpr));
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, r.width, r.height);
      const [w] = this.size();
      if (!w) return;
      const s = r.width / w;
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "bottom";
      const palette = window.radflow.PALETTE;
      this.boxes.forEach((b, k) => {
        if (!this.shown(b)) return;
        const [cr, cg, cb] = palette[Math.max(0, this.labels.indexOf(b.label)) % palette.length];
        const colour = "rgb(" + cr + "," + cg + "," + cb + ")";
        const [x0, y0, x1, y1] = b.box.map((v) => v * s);
        ctx.strokeStyle = colour;
        ctx.lineWidth = k === this.selected ? 3 : 1.5;
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
        const text = b.label + (b.score === null || b.edited ? " (reader)" : " " + Math.round(b.score * 100) + "%");
        const tw = ctx.measureText(text).width + 4;
        const ty = y0 >= 13 ? y0 : y0 + 13;
        ctx.fillStyle = colour;
        ctx.fillRect(x0, ty - 13, tw, 13);
        ctx.fillStyle = "#000";
        ctx.fillText(text, x0 + 2, ty - 1);
        if (k === this.selected) {
          ctx.fillStyle = "#fff";
          for (const [hx, hy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) {
            ctx.fillRect(hx - 3, hy - 3, 6, 6);
            ctx.strokeRect(hx - 3, hy - 3, 6, 6);
          }
        }
      });
      const drag = this.current ? this.current() : null;
      if (drag && drag.mode === "draw" && drag.box) {
        const [x0, y0, x1, y1] = drag.box.map((v) => v * s);
        ctx.setLineDash([4, 3]);
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
        ctx.setLineDash([]);
      }
    }
  }

  window.radflow = Object.assign(window.radflow || {}, { BoxEditor });
})();
