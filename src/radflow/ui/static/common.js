// Shared helpers of the radflow pages: DOM building (text only, never HTML strings), JSON calls
// that surface the service's {"error": ...} messages, number formats and a small SVG line chart.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached (" + err.message + ")");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const msg = body && body.error ? body.error : "HTTP " + response.status;
    throw new ApiError(response.status, msg);
  }
  return body;
}

function pct(p) {
  return (p * 100).toFixed(1) + "%";
}

// Bone age is predicted in months; readers think in years and months.
function yearsMonths(months) {
  const total = Math.max(0, Math.round(months));
  const y = Math.floor(total / 12);
  const m = total % 12;
  return y + " y " + m + " m";
}

function formatValue(prediction) {
  const unit = (prediction.unit || "").toLowerCase();
  if (unit.startsWith("month")) return yearsMonths(prediction.value) + " (" + prediction.value.toFixed(1) + " months)";
  return prediction.value.toFixed(2) + (prediction.unit ? " " + prediction.unit : "");
}

function timeOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}

// A line chart of one or more series over the same x positions; null values leave gaps.
function lineChart(svg, series, opts) {
  const w = 320, h = 120, padL = 38, padB = 14, padT = 8, padR = 6;
  svg.replaceChildren();
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("preserveAspectRatio", "none");
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && isFinite(v));
  const max = Math.max(opts.minMax || 1, ...values) * 1.1;
  // Right-aligned: the newest value sits at the right edge, as on a strip chart.
  const len = Math.max(...series.map((s) => s.values.length));
  const n = Math.max(2, opts.points || len);
  const x = (i) => padL + ((i + n - len) * (w - padL - padR)) / (n - 1);
  const y = (v) => h - padB - (v / max) * (h - padB - padT);
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    svg.append(svgEl("line", { x1: padL, x2: w - padR, y1: y(v), y2: y(v), class: "grid" }));
    const label = svgEl("text", { x: padL - 4, y: y(v) + 3, class: "axis", "text-anchor": "end" });
    label.textContent = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    svg.append(label);
  }
  series.forEach((s, k) => {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !isFinite(v)) {
        pen = false;
        return;
      }
      d += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    });
    svg.append(svgEl("path", { d: d || "M0 0", class: "series s" + k, fill: "none" }));
    // A value with no neighbour draws no line; mark it so a lone reading is still visible.
    s.values.forEach((v, i) => {
      const gap = (j) => j < 0 || j >= s.values.length || s.values[j] === null || !isFinite(s.values[j]);
      if (v !== null && isFinite(v) && gap(i - 1) && gap(i + 1)) {
        svg.append(svgEl("circle", { cx: x(i), cy: y(v), r: 2.5, class: "dot s" + k }));
      }
    });
  });
  const title = svgEl("title", {});
  title.textContent = opts.title || "";
  svg.prepend(title);
}

window.radflow = { el, svgEl, api, ApiError, pct, yearsMonths, formatValue, timeOf, lineChart };
