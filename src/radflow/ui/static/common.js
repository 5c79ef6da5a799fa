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

// The access token (a radflow API token or an OIDC access token) lives in this tab only: it is sent as
// "Authorization: Bearer" with every call, and asked for when the server answers 401.
const TOKEN_KEY = "radflow.token";

function withToken(options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = new Headers((options && options.headers) || {});
  if (token && !headers.has("authorization")) headers.set("authorization", "Bearer " + token);
  return { ...(options || {}), headers };
}

function askToken(message) {
  let bar = document.getElementById("token-bar");
  if (!bar) {
    const input = el("input", { id: "token-input", type: "password", autocomplete: "off", spellcheck: "false" });
    bar = el(
      "form",
      { id: "token-bar", class: "token-bar", role: "alert" },
      el("p", { id: "token-message" }),
      el("label", { for: "token-input", text: "Access token (kept in this tab only) " }, input),
      el("button", { type: "submit", text: "Use token" })
    );
    bar.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      location.reload();
    });
    document.body.prepend(bar);
  }
  document.getElementById("token-message").textContent = message;
  bar.hidden = false;
}

async function send(url, options) {
  let response;
  try {
    response = await fetch(url, withToken(options));
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached (" + err.message + ")");
  }
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    const msg = body.error || "this server needs an access token";
    askToken(msg);
    throw new ApiError(401, msg);
  }
  return response;
}

async function api(url, options) {
  const response = await send(url, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const msg = body && body.error ? body.error : "HTTP " + response.status;
    throw new ApiError(response.status, msg);
  }
  return body;
}

// Images the server keeps behind the token: fetched with it and shown from a blob URL (an <img src>
// cannot send a header); a failure calls the image's onerror as a plain <img src> would.
async function loadImage(img, url) {
  const token = Symbol();
  img.radflowLoad = token;
  img.dataset.src = url;
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    img.src = url;
    return;
  }
  try {
    const response = await send(url);
    if (!response.ok) throw new ApiError(response.status, "HTTP " + response.status);
    const blobUrl = URL.createObjectURL(await response.blob());
    if (img.radflowLoad !== token) return URL.revokeObjectURL(blobUrl);
    if (img.radflowBlob) URL.revokeObjectURL(img.radflowBlob);
    img.radflowBlob = blobUrl;
    img.src = blobUrl;
  } catch (err) {
    if (img.radflowLoad === token && img.onerror) img.onerror(err);
  }
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

window.radflow = { el, svgEl, api, loadImage, TOKEN_KEY, ApiError, pct, yearsMonths, formatValue, timeOf, lineChart };
