// Operator dashboard: polls /v1/ui/summary, turns successive cumulative counters into rates and
// windowed quantiles, draws SVG charts, and drives the admin API with a token kept in sessionStorage.
"use strict";

(function () {
  const { el, api, pct, lineChart, timeOf } = window.radflow;
  const $ = (id) => document.getElementById(id);
  const POINTS = 60;
  const TOKEN_KEY = radflow.TOKEN_KEY; // one token per tab: the admin token, or an operator's API/OIDC token
  const history = { rate: [], p50: [], p95: [], batch: [], overload: [], timeout: [] };
  let prev = null;
  let timer = null;
  let adminEnabled = false;
  const lastSlow = { monitoring: 0, models: 0 };

  function push(name, value) {
    history[name].push(value);
    if (history[name].length > POINTS) history[name].shift();
  }

  // Same interpolation as Prometheus' histogram_quantile; bounds are null for +Inf.
  function quantile(buckets, q) {
    if (!buckets.length) return null;
    const total = buckets[buckets.length - 1][1];
    if (total <= 0) return null;
    const rank = q * total;
    let lower = 0, below = 0;
    for (const [upper, count] of buckets) {
      if (count >= rank) {
        if (upper === null) return lower;
        const width = count - below;
        return lower + (upper - lower) * (width ? (rank - below) / width : 1);
      }
      lower = upper;
      below = count;
    }
    return lower;
  }

  function delta(cur, old) {
    if (!old || old.length !== cur.length) return cur;
    return cur.map(([b, c], i) => [b, c - old[i][1]]);
  }

  function fmt(v, digits) {
    return v === null || v === undefined || !isFinite(v) ? "—" : v.toFixed(digits);
  }

  function updateCharts(m, now) {
    const dt = prev ? (now - prev.time) / 1000 : null;
    const old = prev ? prev.metrics : null;
    const dReq = old ? m.requests - old.requests : null;
    push("rate", dt ? Math.max(0, dReq) / dt : null);
    const lat = delta(m.latency_buckets, old && old.latency_buckets);
    const fresh = !old || dReq > 0;
    const p50 = fresh ? quantile(lat, 0.5) : null;
    const p95 = fresh ? quantile(lat, 0.95) : null;
    push("p50", p50 === null ? null : p50 * 1000);
    push("p95", p95 === null ? null : p95 * 1000);
    const dBatches = old ? m.batches - old.batches : m.batches;
    const dRows = old ? m.batch_sum - old.batch_sum : m.batch_sum;
    push("batch", dBatches > 0 ? dRows / dBatches : null);
    const rej = (r, k) => (r && r[k]) || 0;
    push("overload", old ? rej(m.rejected, "overload") - rej(old.rejected, "overload") : 0);
    push("timeout", old ? rej(m.rejected, "timeout") - rej(old.rejected, "timeout") : 0);

    const last = (a) => a[a.length - 1];
    $("rate-now").textContent = fmt(last(history.rate), 2) + " req/s";
    $("requests-total").textContent = String(m.requests);
    const windowed = last(history.p50) !== null && last(history.p50) !== undefined;
    $("latency-now").textContent = windowed
      ? "p50 " + fmt(last(history.p50), 1) + " ms · p95 " + fmt(last(history.p95), 1) + " ms"
      : "p50 " + fmt(m.latency_p50_ms, 1) + " · p95 " + fmt(m.latency_p95_ms, 1) + " ms (all time)";
    $("batch-now").textContent = fmt(last(history.batch) ?? m.mean_batch_size, 2);
    const rejectedTotal = Object.values(m.rejected || {}).reduce((a, b) => a + b, 0);
    $("rejected-now").textContent = String(rejectedTotal) + " total";
    lineChart($("rate-chart"), [{ values: history.rate }], { title: "requests per second", points: POINTS });
    lineChart($("latency-chart"), [{ values: history.p50 }, { values: history.p95 }], { title: "latency ms", minMax: 5, points: POINTS });
    lineChart($("batch-chart"), [{ values: history.batch }], { title: "mean batch size", points: POINTS });
    lineChart($("rejected-chart"), [{ values: history.overload }, { values: history.timeout }], { title: "rejected", points: POINTS });
  }

  function updateSplit(routing, metrics) {
    // Prometheus counters outlive a model reload (the arms' own counts restart with them).
    const answered = (arm) => (metrics.by_arm && metrics.by_arm[arm.arm]) || 0;
    const arms = [routing.champion, routing.challenger].filter(Boolean);
    const total = arms.reduce((a, arm) => a + answered(arm), 0);
    const split = $("split");
    split.replaceChildren(
      ...arms.map((arm) => {
        const part = el("div", { class: arm.arm, title: arm.arm });
        const share = total ? answered(arm) / total : arm.arm === "champion" ? 1 - routing.challenger_weight : routing.challenger_weight;
        part.style.width = (share * 100).toFixed(1) + "%";
        return part;
      })
    );
    $("arms").tBodies[0].replaceChildren(
      ...arms.map((arm) =>
        el(
          "tr",
          { "data-arm": arm.arm },
          el("td", {}, el("strong", { text: arm.arm }), el("br"), el("span", { class: "key", text: arm.name + " v" + arm.version })),
          el("td", { text: String(answered(arm)) }),
          el("td", { text: total ? pct(answered(arm) / total) : "—" })
        )
      )
    );
    let mode = "Champion only.";
    if (routing.challenger) {
      mode = routing.shadow
        ? "Shadow: the champion answers; the challenger scores every request in the background."
        : "Canary: the challenger answers " + pct(routing.challenger_weight) + " of requests.";
    }
    const errors = metrics.errors ? " " + metrics.errors + " inference requests failed." : "";
    $("routing-mode").textContent = mode + errors;
    if (document.activeElement !== $("canary")) $("canary").value = Math.round(routing.challenger_weight * 100);
    if (document.activeElement !== $("shadow")) $("shadow").checked = routing.shadow;
  }

  function updateFeedback(rows) {
    const total = rows.reduce((a, r) => a + r.with_feedback, 0);
    $("feedback-total").textContent = String(total);
    const body = $("feedback").tBodies[0];
    if (!rows.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 10, text: "No predictions yet." })));
      return;
    }
    const rate = (v) => (v === null ? "—" : pct(v));
    body.replaceChildren(
      ...rows.map((r) =>
        el(
          "tr",
          {},
          el("td", { text: r.model + " v" + r.version }),
          el("td", { text: r.arm }),
          el("td", { text: String(r.predictions) }),
          el("td", { text: String(r.with_feedback) }),
          el("td", { text: rate(r.accuracy) + (r.verdicts ? " of " + r.verdicts : "") }),
          el("td", { text: rate(r.label_agreement) + (r.label_judgements ? " of " + r.label_judgements : "") }),
          el("td", { text: r.auroc === null ? "—" : r.auroc.toFixed(3) }),
          el("td", { text: r.mae === null ? "—" : r.mae.toFixed(2) }),
          el("td", { text: r.dice == null ? "—" : r.dice.toFixed(3) }),
          el("td", { text: r.map50 == null ? "—" : r.map50.toFixed(3) })
        )
      )
    );
  }

  // Nested objects as "a.b.c" rows: for parts of the report without a dedicated view (online evaluation).
  function flatRows(obj, prefix, depth, rows) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v) && depth < 2) flatRows(v, key, depth + 1, rows);
      else rows.push(el("tr", {}, el("th", { scope: "row", text: key }), el("td", { text: typeof v === "number" ? fmt(v, 4) : JSON.stringify(v) })));
    }
    return rows;
  }

  function flatTable(obj, prefix) {
    return el("div", { class: "table-wrap" }, el("table", {}, el("tbody", {}, ...flatRows(obj, prefix, 0, []).slice(0, 60))));
  }

  const STATUS_TEXT = {
    ok: "no drift",
    alert: "DRIFT",
    collecting: "collecting",
    no_reference: "not monitored",
  };

  // One block per model version: its state, then statistic / score / threshold / alert per feature.
  function driftView(drift) {
    if (!drift.enabled) return [el("p", { class: "hint", text: "Drift monitoring is off on this server (RADFLOW_DRIFT=false)." })];
    const models = Object.entries(drift.models || {});
    if (!models.length) return [el("p", { class: "hint", text: "No model loaded yet." })];
    return models.map(([key, r]) => {
      const w = r.window || {};
      let state = STATUS_TEXT[r.status] || r.status;
      if (r.status === "collecting") state += ": " + w.size + " of " + w.min + " predictions needed";
      else if (r.status !== "no_reference") state += " · window " + w.size + " of " + w.capacity;
      const head = el("h3", { text: key + " — " + state });
      head.dataset.status = r.status;
      const parts = [head];
      if (r.reason) parts.push(el("p", { class: "hint", text: r.reason }));
      if ((r.scores || []).length) {
        const rows = r.scores.map((s) => {
          const tr = el(
            "tr",
            {},
            el("th", { scope: "row", text: s.feature }),
            el("td", { text: s.statistic }),
            el("td", { text: fmt(s.score, 4) }),
            el("td", { text: fmt(s.threshold, 2) }),
            el("td", { text: s.alert ? "ALERT" : "ok" }),
          );
          if (s.alert) tr.dataset.alert = "true";
          return tr;
        });
        const header = el("tr", {}, ...["Feature", "Statistic", "Score", "Threshold", "Alert"].map((t) => el("th", { scope: "col", text: t })));
        parts.push(el("div", { class: "table-wrap" }, el("table", { class: "drift" }, el("thead", {}, header), el("tbody", {}, ...rows))));
      }
      return el("div", { class: "drift-model" }, ...parts);
    });
  }

  // The online report (radflow.monitor.online): labelled predictions per model/arm and the champion vs
  // challenger comparison with the CI of the difference. Other shapes fall back to the flat table.
  function onlineView(online) {
    const title = el("h3", { text: "Online evaluation" });
    if (online && online.error) return [title, el("p", { class: "hint", text: online.error })];
    if (!online || !Array.isArray(online.models)) return [title, flatTable(online, "online")];
    if (!online.models.length) return [title, el("p", { class: "hint", text: "No feedback-labelled predictions yet." })];
    const rows = online.models.map((m) =>
      el(
        "tr",
        {},
        el("th", { scope: "row", text: m.model + " v" + m.version }),
        el("td", { text: m.arm + (m.shadow ? " (shadow)" : "") }),
        el("td", { text: String(m.n) }),
      ),
    );
    const header = el("tr", {}, ...["Model", "Arm", "Labelled"].map((t) => el("th", { scope: "col", text: t })));
    const parts = [title, el("div", { class: "table-wrap" }, el("table", { class: "online" }, el("thead", {}, header), el("tbody", {}, ...rows)))];
    const comp = online.comparison;
    if (comp && comp.reason) parts.push(el("p", { class: "hint", text: "Champion vs challenger: " + comp.reason }));
    else if (comp && comp.metrics) {
      const items = Object.entries(comp.metrics).map(([name, e]) => {
        const ci = e.difference_ci ? " [" + fmt(e.difference_ci[0], 3) + ", " + fmt(e.difference_ci[1], 3) + "]" : "";
        return el("li", { text: name + ": champion " + fmt(e.champion, 3) + " · challenger " + fmt(e.challenger, 3) + " · difference " + fmt(e.difference, 3) + ci });
      });
      parts.push(el("p", { text: "Champion vs challenger" + (comp.paired ? " (paired)" : "") + ":" }), el("ul", { class: "comparison" }, ...items));
    }
    return parts;
  }

  function alertsView(alerts) {
    if (!alerts.length) return [el("p", { class: "hint", text: "No alerts recorded." })];
    const items = alerts.slice(0, 10).map((a) => el("li", { text: timeOf(a.created_at) + " · " + a.message }));
    return [el("h3", { text: "Recent alerts" }), el("ul", { class: "alerts" }, ...items)];
  }

  // Until a server has /v1/monitoring, say so instead of failing.
  async function updateMonitoring() {
    const box = $("monitoring");
    let data;
    try {
      data = await api("/v1/monitoring");
    } catch (err) {
      const text = err.status === 404 ? "Monitoring is not enabled on this server yet." : "Monitoring unavailable: " + err.message;
      box.replaceChildren(el("p", { class: "hint", text }));
      return;
    }
    const parts = [];
    const drift = data.drift;
    if (drift && typeof drift === "object" && ("models" in drift || "enabled" in drift)) parts.push(...driftView(drift));
    else if (drift !== undefined) parts.push(flatTable({ drift }, ""));
    if (data.online !== undefined) parts.push(...onlineView(data.online));
    if (Array.isArray(data.alerts)) parts.push(...alertsView(data.alerts));
    box.replaceChildren(...parts);
  }

  // The report route needs the token like every data route; an <a href> cannot send a header, so with a token
  // the report is fetched and saved as a file (opened from disk it keeps its own styles, which this page's
  // Content-Security-Policy would block in a blob tab); without one the link opens it.
  function reportLink(v) {
    const link = el("a", { href: v.report_url, target: "_blank", rel: "noopener", text: "report" });
    link.addEventListener("click", async (event) => {
      if (!sessionStorage.getItem(TOKEN_KEY)) return;
      event.preventDefault();
      try {
        const response = await send(v.report_url);
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          throw new ApiError(response.status, body.error || "HTTP " + response.status);
        }
        const url = URL.createObjectURL(await response.blob());
        const save = el("a", { href: url, download: "evaluation-report-v" + v.version + ".html" });
        document.body.append(save);
        save.click();
        save.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (err) {
        $("registry-note").textContent = "Report of version " + v.version + ": " + err.message;
      }
    });
    return link;
  }

  async function loadModels() {
    let data;
    try {
      data = await api("/v1/ui/models");
    } catch (err) {
      $("registry-note").textContent = "Models unavailable: " + err.message;
      return;
    }
    const arms = [data.routing.champion, data.routing.challenger].filter(Boolean);
    $("served").tBodies[0].replaceChildren(
      ...arms.map((a) =>
        el(
          "tr",
          {},
          el("td", { text: a.arm }),
          el("td", { text: a.name }),
          el("td", { text: a.version }),
          el("td", { text: a.alias || "—" }),
          el("td", { text: a.task }),
          el("td", { class: "mono", text: a.uri })
        )
      )
    );
    // A served version that failed its quality gates (or was never gated) is said out loud, not hidden in tags.
    const warnings = arms.flatMap((a) => (a.warnings || []).map((w) => a.arm + ": " + w));
    const warningBox = $("served-warnings");
    warningBox.replaceChildren(...warnings.map((w) => el("div", { text: "⚠ " + w })));
    warningBox.hidden = warnings.length === 0;
    const versions = data.registry ? data.registry.versions : [];
    $("registry-note").textContent = data.registry ? "Registered model " + data.registry.name + "." : data.registry_note;
    $("versions").tBodies[0].replaceChildren(
      ...versions.map((v) =>
        el(
          "tr",
          {},
          el("td", { text: v.version }),
          el("td", { text: v.aliases.length ? v.aliases.map((a) => "@" + a).join(" ") : "—" }),
          el("td", { class: "mono", text: Object.entries(v.tags).map(([k, val]) => k + "=" + val).join("  ") || "—" }),
          el("td", {}, v.report_url ? reportLink(v) : "—")
        )
      )
    );
    $("version-list").replaceChildren(...versions.map((v) => el("option", { value: v.version })));
  }

  async function tick() {
    try {
      const data = await api("/v1/ui/summary");
      const now = Date.now();
      adminEnabled = data.admin_enabled;
      updateCharts(data.metrics, now);
      updateSplit(data.routing, data.metrics);
      updateFeedback(data.feedback);
      prev = { time: now, metrics: data.metrics };
      $("updated").textContent = "Updated " + timeOf(new Date(now).toISOString());
      $("admin-note").textContent = adminEnabled
        ? "Paste the server's RADFLOW_ADMIN_TOKEN to use these controls."
        : "Admin endpoints are disabled on this server (RADFLOW_ADMIN_TOKEN is not set).";
      for (const id of ["apply-routing", "promote", "rollback", "reload"]) $(id).disabled = !adminEnabled;
    } catch (err) {
      $("updated").textContent = "Refresh failed: " + err.message;
    }
    // Drift and the registry change slowly (and the registry is a remote call): refresh them less often.
    const now = Date.now();
    if (now - lastSlow.monitoring >= 10000) {
      lastSlow.monitoring = now;
      updateMonitoring();
    }
    if (now - lastSlow.models >= 30000) {
      lastSlow.models = now;
      loadModels();
    }
  }

  function schedule() {
    if (timer) clearInterval(timer);
    const every = Number($("refresh").value);
    timer = every > 0 ? setInterval(tick, every) : null;
  }

  async function admin(method, path, body) {
    const status = $("admin-status");
    const token = $("token").value.trim();
    if (!token) {
      status.textContent = "Paste the admin token first.";
      status.dataset.kind = "error";
      $("token").focus();
      return;
    }
    status.textContent = method + " " + path + "…";
    status.dataset.kind = "busy";
    try {
      const headers = { authorization: "Bearer " + token };
      if (body !== undefined) headers["content-type"] = "application/json";
      await api(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      status.textContent = "Done: " + method + " " + path + " at " + timeOf(new Date().toISOString()) + ".";
      status.dataset.kind = "ok";
      tick();
      loadModels();
    } catch (err) {
      status.textContent = "Refused: " + err.message;
      status.dataset.kind = "error";
    }
  }

  function wireControls() {
    const token = $("token");
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
    $("apply-routing").addEventListener("click", () => {
      const share = Number($("canary").value);
      if (!(share >= 0 && share <= 100)) {
        $("admin-status").textContent = "The challenger share must be between 0 and 100 %.";
        $("admin-status").dataset.kind = "error";
        return;
      }
      admin("PUT", "/admin/routing", { challenger_weight: share / 100, shadow: $("shadow").checked });
    });
    $("promote").addEventListener("click", () => {
      const version = $("promote-version").value.trim();
      if (!version) {
        $("admin-status").textContent = "Give the version to promote.";
        $("admin-status").dataset.kind = "error";
        return;
      }
      admin("POST", "/admin/promote", { version, force: $("force").checked });
    });
    $("rollback").addEventListener("click", () => admin("POST", "/admin/rollback"));
    $("reload").addEventListener("click", () => admin("POST", "/admin/reload", {}));
    $("refresh").addEventListener("change", schedule);
  }

  wireControls();
  tick();
  schedule();
})();
