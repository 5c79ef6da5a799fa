// Reader page: upload a radiograph, show findings (bars with thresholds), heatmaps per finding, or a
// segmentation model's masks to correct (mask_editor.js), a detection model's boxes to correct (box_editor.js), collect the reader's feedback and list recent
// predictions with their feedback state.
"use strict";

(function () {
  const { el, api, pct, yearsMonths, formatValue, timeOf } = window.radflow;
  const $ = (id) => document.getElementById(id);
  let current = null; // {id, model, arm, latency_ms, findings|prediction|structures, localUrl}
  let shownHeatmap = null;
  let editor = null; // radflow.MaskEditor of the current segmentation answer
  let boxEditor = null; // radflow.BoxEditor of the current detection answer

  function setStatus(node, text, kind) {
    node.textContent = text;
    node.dataset.kind = kind || "";
  }

  async function upload(file) {
    if (!file) return;
    const status = $("status");
    setStatus(status, "Scoring " + file.name + "…", "busy");
    const form = new FormData();
    form.append("file", file, file.name);
    const sex = $("sex").value;
    try {
      const answer = await api("/v1/predict" + (sex ? "?sex=" + sex : ""), { method: "POST", body: form });
      const isDicom = /\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom";
      answer.localUrl = isDicom ? null : URL.createObjectURL(file);
      show(answer, file.name);
      setStatus(status, "Scored " + file.name + " in " + answer.latency_ms.toFixed(1) + " ms.", "ok");
      loadHistory();
      loadWorklist();
    } catch (err) {
      setStatus(status, "Could not score " + file.name + ": " + err.message, "error");
    }
  }

  function baseUrl(record) {
    return "/v1/ui/predictions/" + encodeURIComponent(record.id) + "/image.png";
  }

  function showImage(src, caption) {
    const img = $("image");
    img.onerror = () => {
      // The server keeps no input pixels when store_inputs is off: fall back to the local file.
      if (current && current.localUrl && img.src !== current.localUrl) img.src = current.localUrl;
      else setStatus($("status"), "The image cannot be shown: " + caption, "error");
    };
    radflow.loadImage(img, src);
    $("caption").textContent = caption;
    $("viewer").hidden = false;
  }

  function show(record, name) {
    if (current && current.localUrl && current.localUrl !== record.localUrl) URL.revokeObjectURL(current.localUrl);
    current = record;
    shownHeatmap = null;
    showImage(baseUrl(record), name || "Prediction " + record.id);
    const info = $("model-info");
    const model = record.model;
    info.replaceChildren(
      el("dt", { text: "Model" }),
      el("dd", { text: model.name + " v" + model.version + (model.alias ? " @" + model.alias : "") }),
      el("dt", { text: "Arm" }),
      el("dd", { text: record.arm, "data-testid": "arm" }),
      el("dt", { text: "Latency" }),
      el("dd", { text: record.latency_ms == null ? "—" : record.latency_ms.toFixed(1) + " ms" }),
      el("dt", { text: "Prediction" }),
      el("dd", { text: record.id, class: "mono" })
    );
    // The answer's key says which view: findings, a value, or structures (the segmentation kind's "mask" view).
    const masks = Boolean(record.structures);
    const boxes = Boolean(record.boxes);
    const regression = !record.findings && !masks && !boxes;
    $("result-title").textContent = masks ? "Structures" : boxes ? "Boxes" : "Findings";
    $("findings").hidden = !record.findings;
    $("legend").hidden = !record.findings;
    $("label-hint").hidden = !record.findings;
    $("value").hidden = !regression;
    $("value-feedback").hidden = !regression;
    $("mask-tools").hidden = !masks;
    $("mask-canvas").hidden = !masks;
    $("box-tools").hidden = !boxes;
    $("box-canvas").hidden = !boxes;
    if (editor) editor.destroy();
    editor = null;
    if (boxEditor) boxEditor.destroy();
    boxEditor = null;
    $("confirm-all").textContent = regression
      ? "Agree with the estimate"
      : masks ? "Accept the masks" : boxes ? "Accept the boxes" : "Confirm all findings";
    if (boxes) {
      showBoxes(record, record.feedback && record.feedback.labels ? record.feedback.labels.boxes : null);
    } else if (masks) {
      showMasks(record.structures, record.feedback && record.feedback.labels ? record.feedback.labels.masks : null);
    } else if (regression) {
      $("value").textContent = "Predicted bone age: " + formatValue(record.prediction);
      $("est-years").value = "";
      $("est-months").value = "";
    } else {
      renderFindings(record.findings, record.contradictions);
    }
    $("feedback").reset();
    setStatus($("feedback-status"), "");
    if (record.feedback) prefill(record.feedback);
    $("result").hidden = false;
  }

  function renderFindings(findings, contradictions) {
    const list = $("findings");
    list.replaceChildren();
    // A self-contradicting answer ("No Finding" beside a finding) is shown, never resolved silently.
    (contradictions || []).forEach((c) =>
      list.append(el("li", { class: "finding contradiction", role: "alert", text: "Contradiction: " + c.message }))
    );
    findings.forEach((f, i) => {
      // An untrained label (no positive in training) has no threshold and is never called positive.
      const thr = f.threshold === null || f.threshold === undefined ? "none (untrained)" : pct(f.threshold);
      const fill = el("div", { class: "fill" });
      fill.style.width = (f.probability * 100).toFixed(1) + "%";
      const tick = el("div", { class: "tick", title: "threshold " + thr });
      if (f.threshold === null || f.threshold === undefined) tick.hidden = true;
      else tick.style.left = (f.threshold * 100).toFixed(1) + "%";
      const bar = el(
        "div",
        {
          class: "bar",
          role: "meter",
          "aria-label": f.label + " probability",
          "aria-valuemin": 0,
          "aria-valuemax": 100,
          "aria-valuenow": (f.probability * 100).toFixed(1),
          "aria-valuetext": pct(f.probability) + ", threshold " + thr,
        },
        fill,
        tick
      );
      const toggle = el("button", {
        type: "button",
        class: "heatmap-toggle",
        "aria-pressed": "false",
        "aria-label": "Heatmap for " + f.label,
        "data-label": f.label,
        text: "Heatmap",
        onclick: () => toggleHeatmap(f.label, toggle),
      });
      const selectId = "reading-" + i;
      const select = el(
        "select",
        { id: selectId, "data-label": f.label },
        el("option", { value: "", text: "not reviewed" }),
        el("option", { value: "1", text: "present" }),
        el("option", { value: "0", text: "absent" })
      );
      list.append(
        el(
          "li",
          { class: f.positive ? "finding positive" : "finding", "data-label": f.label },
          el(
            "div",
            { class: "finding-head" },
            el("span", { class: "name", text: f.label }),
            el("span", { class: "thr", text: "threshold " + thr }),
            el("span", { class: "prob", text: pct(f.probability) }),
            f.positive ? el("span", { class: "badge", text: "positive" }) : null,
            f.untrained ? el("span", { class: "badge untrained", text: "not trained" }) : null
          ),
          bar,
          el(
            "div",
            { class: "finding-actions" },
            toggle,
            el("label", { for: selectId, class: "inline" }, "Your reading ", select)
          )
        )
      );
    });
  }

  function showMasks(structures, corrected) {
    const list = $("structures");
    const pick = $("mask-structure");
    list.replaceChildren();
    pick.replaceChildren();
    if (!structures.length) return;
    editor = new radflow.MaskEditor($("mask-canvas"), structures, corrected);
    editor.opacity = Number($("mask-opacity").value) / 100;
    editor.outline = $("mask-outline").checked;
    editor.radius = Number($("mask-size").value);
    editor.tool = document.querySelector('input[name="mask-tool"]:checked').value;
    const areas = [];
    structures.forEach((s, k) => {
      const [r, g, b] = radflow.PALETTE[k % radflow.PALETTE.length];
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = "rgb(" + r + "," + g + "," + b + ")";
      const id = "structure-" + k;
      const box = el("input", {
        id,
        type: "checkbox",
        checked: true,
        "data-structure": s.structure,
        onchange: (e) => {
          editor.visible[k] = e.target.checked;
          editor.draw();
        },
      });
      const area = el("span", { class: "area" });
      areas.push(area);
      list.append(el("li", { "data-structure": s.structure }, box, swatch, el("label", { for: id, class: "inline", text: s.structure }), area));
      pick.append(el("option", { value: String(k), text: s.structure }));
    });
    const update = () => {
      areas.forEach((node, k) => (node.textContent = editor.area(k) + " px" + (editor.changed(k) ? " · corrected" : "")));
      $("mask-undo").disabled = !editor.undo.length;
    };
    editor.onchange = update;
    editor.active = Number(pick.value);
    update();
  }

  // The model's labels (for boxes the reader adds) from the served arms; the answer's own labels if unknown.
  async function modelLabels(record) {
    try {
      const routing = (await api("/v1/ui/models")).routing || {};
      const arm = routing[record.arm];
      if (arm && arm.labels) return arm.labels;
    } catch (err) {
      // the labels of the answer's boxes still let the reader correct them
    }
    return [];
  }

  async function showBoxes(record, corrected) {
    const labels = await modelLabels(record);
    if (current !== record) return;
    boxEditor = new radflow.BoxEditor($("box-canvas"), $("image"), record.boxes, labels, corrected || null);
    boxEditor.threshold = Number($("box-threshold").value) / 100;
    const pick = $("box-label");
    pick.replaceChildren(...boxEditor.labels.map((l) => el("option", { value: l, text: l })));
    boxEditor.label = pick.value;
    const update = () => {
      const n = boxEditor.count();
      const edited = boxEditor.boxes.filter((b) => b.edited && boxEditor.shown(b)).length;
      $("box-count").textContent = n + " box" + (n === 1 ? "" : "es") + " shown" + (edited ? " · " + edited + " by you" : "");
      $("box-delete").disabled = boxEditor.selected < 0;
      // A selected box's label is the picker's: changing it relabels the box, and a new box takes it.
      if (boxEditor.selected >= 0) pick.value = boxEditor.label = boxEditor.boxes[boxEditor.selected].label;
    };
    boxEditor.onchange = update;
    boxEditor.draw();
    update();
  }

  function wireBoxTools() {
    $("box-threshold").addEventListener("input", () => {
      $("box-threshold-value").textContent = $("box-threshold").value + "%";
      if (!boxEditor) return;
      boxEditor.threshold = Number($("box-threshold").value) / 100;
      boxEditor.selected = -1;
      boxEditor.changed();
    });
    $("box-label").addEventListener("change", () => boxEditor && boxEditor.setLabel($("box-label").value));
    $("box-delete").addEventListener("click", () => boxEditor && boxEditor.remove());
  }

  function wireMaskTools() {
    const set = (fn) => () => editor && (fn(editor), editor.draw());
    $("mask-opacity").addEventListener("input", set((ed) => (ed.opacity = Number($("mask-opacity").value) / 100)));
    $("mask-outline").addEventListener("change", set((ed) => (ed.outline = $("mask-outline").checked)));
    $("mask-size").addEventListener("input", set((ed) => (ed.radius = Number($("mask-size").value))));
    $("mask-structure").addEventListener("change", set((ed) => (ed.active = Number($("mask-structure").value))));
    for (const radio of document.querySelectorAll('input[name="mask-tool"]')) {
      radio.addEventListener("change", set((ed) => (ed.tool = radio.value)));
    }
    $("mask-undo").addEventListener("click", () => editor && editor.undoStroke());
  }

  function toggleHeatmap(label, button) {
    for (const b of document.querySelectorAll(".heatmap-toggle")) if (b !== button) b.setAttribute("aria-pressed", "false");
    if (shownHeatmap === label) {
      shownHeatmap = null;
      button.setAttribute("aria-pressed", "false");
      showImage(baseUrl(current), "Input image");
      return;
    }
    shownHeatmap = label;
    button.setAttribute("aria-pressed", "true");
    const url = "/v1/predictions/" + encodeURIComponent(current.id) + "/heatmap.png?label=" + encodeURIComponent(label);
    const img = $("image");
    img.onerror = () => setStatus($("status"), "No heatmap for " + label + " (the server keeps no inputs or the model has no CAM).", "error");
    radflow.loadImage(img, url);
    $("caption").textContent = "Heatmap: " + label;
  }

  function prefill(fb) {
    for (const s of document.querySelectorAll("#findings select[data-label]")) {
      const v = fb.labels ? fb.labels[s.dataset.label] : undefined;
      s.value = v === undefined || v === null ? "" : String(v);
    }
    if (fb.correct !== null && fb.correct !== undefined) {
      const radio = document.querySelector('input[name="verdict"][value="' + String(fb.correct) + '"]');
      if (radio) radio.checked = true;
    }
    if (fb.value !== null && fb.value !== undefined) {
      $("est-years").value = Math.floor(Math.round(fb.value) / 12);
      $("est-months").value = Math.round(fb.value) % 12;
    }
    $("reader").value = fb.reader || "";
    $("comment").value = fb.comment || "";
    setStatus($("feedback-status"), "Feedback saved earlier (" + timeOf(fb.created_at) + ").", "ok");
  }

  function confirmAll() {
    if (!current) return;
    if (current.structures || current.boxes) {
      // Accepting leaves the masks or boxes as they are; Save feedback sends them.
    } else if (current.findings) {
      for (const f of current.findings) {
        const s = document.querySelector('#findings select[data-label="' + CSS.escape(f.label) + '"]');
        if (s) s.value = f.positive ? "1" : "0";
      }
    } else {
      const months = Math.round(current.prediction.value);
      $("est-years").value = Math.floor(months / 12);
      $("est-months").value = months % 12;
    }
    document.querySelector('input[name="verdict"][value="true"]').checked = true;
  }

  function estimate() {
    const y = $("est-years").value;
    const m = $("est-months").value;
    if (y === "" && m === "") return null;
    const months = Number(y || 0) * 12 + Number(m || 0);
    const unit = (current.prediction.unit || "months").toLowerCase();
    return unit.startsWith("year") ? months / 12 : months;
  }

  async function sendFeedback(event) {
    event.preventDefault();
    if (!current) return;
    const status = $("feedback-status");
    const body = { prediction_id: current.id };
    if (current.boxes) {
      if (boxEditor) body.labels = { boxes: boxEditor.corrected() };
    } else if (current.structures) {
      if (editor) body.labels = { masks: editor.corrected() };
    } else if (current.findings) {
      const labels = {};
      for (const s of document.querySelectorAll("#findings select[data-label]")) {
        if (s.value !== "") labels[s.dataset.label] = Number(s.value);
      }
      if (Object.keys(labels).length) body.labels = labels;
    } else {
      const value = estimate();
      if (value !== null) body.value = value;
    }
    const verdict = document.querySelector('input[name="verdict"]:checked');
    if (verdict && verdict.value !== "") body.correct = verdict.value === "true";
    const reader = $("reader").value.trim();
    const comment = $("comment").value.trim();
    if (reader) body.reader = reader;
    if (comment) body.comment = comment;
    if (body.labels === undefined && body.value === undefined && body.correct === undefined) {
      setStatus(status, "Give a reading for at least one finding, an estimate, or a verdict before saving.", "error");
      return;
    }
    setStatus(status, "Saving…", "busy");
    try {
      const saved = await api("/v1/feedback", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      setStatus(status, "Feedback saved (#" + saved.id + " at " + timeOf(saved.created_at) + ").", "ok");
      loadHistory();
      loadWorklist();
    } catch (err) {
      setStatus(status, "Feedback not saved: " + err.message, "error");
    }
  }

  function resultText(outputs) {
    if (outputs.prediction) return formatValue(outputs.prediction);
    if (outputs.boxes) {
      const n = outputs.boxes.filter((b) => b.score >= 0.5).length;
      return n ? n + " box" + (n === 1 ? "" : "es") + " at 50%" : "no box at 50%";
    }
    if (outputs.structures) {
      const shown = outputs.structures.filter((s) => s.area_px > 0).map((s) => s.structure);
      return shown.length ? shown.join(", ") : "no structure found";
    }
    const positives = (outputs.findings || []).filter((f) => f.positive).map((f) => f.label);
    return positives.length ? positives.join(", ") : "no positive finding";
  }

  function feedbackText(fb, outputs) {
    if (!fb) return "none";
    const parts = [];
    if (fb.correct !== null && fb.correct !== undefined) parts.push(fb.correct ? "correct" : "incorrect");
    if (fb.labels && Array.isArray(fb.labels.boxes)) {
      const n = fb.labels.boxes.length;
      parts.push(n ? n + " box" + (n === 1 ? "" : "es") + " read" : "no finding");
    } else if (fb.labels && fb.labels.masks) {
      const n = Object.keys(fb.labels.masks).length;
      parts.push(n + " mask" + (n === 1 ? "" : "s") + " reviewed");
    } else if (fb.labels) {
      const corrected = (outputs.findings || []).filter(
        (f) => fb.labels[f.label] !== undefined && Boolean(fb.labels[f.label]) !== f.positive
      ).length;
      const n = Object.keys(fb.labels).length;
      parts.push(n + " label" + (n === 1 ? "" : "s") + (corrected ? ", " + corrected + " corrected" : " confirmed"));
    }
    if (fb.value !== null && fb.value !== undefined) parts.push("estimate " + yearsMonths(fb.value));
    return parts.join("; ") || "saved";
  }

  async function loadHistory() {
    const body = document.querySelector("#history tbody");
    let data;
    try {
      data = await api("/v1/ui/recent?limit=15");
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, text: "History unavailable: " + err.message })));
      return;
    }
    if (!data.predictions.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, text: "No predictions yet." })));
      return;
    }
    body.replaceChildren(
      ...data.predictions.map((p) => {
        const record = Object.assign({ id: p.id, model: p.model, arm: p.arm, latency_ms: p.latency_ms, feedback: p.feedback }, p.outputs);
        return el(
          "tr",
          { "data-id": p.id, class: current && current.id === p.id ? "current" : "" },
          el("td", { text: timeOf(p.created_at) }),
          el("td", { text: p.model.name + " v" + p.model.version + " (" + p.arm + ")" }),
          el("td", { text: resultText(p.outputs) }),
          el("td", { class: p.feedback ? "fb yes" : "fb", text: feedbackText(p.feedback, p.outputs) }),
          el(
            "td",
            {},
            el("button", {
              type: "button",
              text: "Open",
              "aria-label": "Open prediction from " + timeOf(p.created_at),
              onclick: () => {
                show(record);
                loadHistory();
                $("result").scrollIntoView({ behavior: "smooth" });
              },
            })
          )
        );
      })
    );
  }

  // GET /v1/worklist: unread studies, the model's urgent findings first (radflow.triage); Open shows its first image
  async function loadWorklist() {
    const body = document.querySelector("#worklist tbody");
    let data;
    try {
      data = await api("/v1/worklist?status=unread&limit=15");
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, text: "Worklist unavailable: " + err.message })));
      return;
    }
    if (!data.items.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 5, text: "No unread studies." })));
      return;
    }
    body.replaceChildren(
      ...data.items.map((item) => {
        const urgent = item.urgent.map((f) => f.label + " " + (100 * f.probability).toFixed(0) + "%").join(", ");
        return el(
          "tr",
          { "data-study": item.study, class: item.urgency > 0 ? "urgent" : "" },
          el("td", { text: timeOf(item.arrived) }),
          el("td", { text: urgent || "none" }),
          el("td", { text: item.modality || "" }),
          el("td", { text: String(item.predictions.length) }),
          el(
            "td",
            {},
            el("button", {
              type: "button",
              text: "Open",
              "aria-label": "Open study from " + timeOf(item.arrived),
              onclick: async () => {
                const r = await api("/v1/predictions/" + encodeURIComponent(item.predictions[0]));
                const model = { name: r.model_name, version: r.model_version, alias: r.model_alias };
                show(Object.assign({ id: r.id, model, arm: r.arm, latency_ms: r.latency_ms, feedback: null }, r.outputs));
                $("result").scrollIntoView({ behavior: "smooth" });
              },
            })
          )
        );
      })
    );
  }

  function wireDrop() {
    const drop = $("drop");
    for (const kind of ["dragenter", "dragover"]) {
      drop.addEventListener(kind, (e) => {
        e.preventDefault();
        drop.dataset.state = "over";
      });
    }
    for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => (drop.dataset.state = "idle"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) upload(file);
    });
    $("file").addEventListener("change", (e) => {
      upload(e.target.files[0]);
      e.target.value = "";
    });
  }

  wireDrop();
  wireMaskTools();
  wireBoxTools();
  $("feedback").addEventListener("submit", sendFeedback);
  $("confirm-all").addEventListener("click", confirmAll);
  $("refresh-history").addEventListener("click", loadHistory);
  $("refresh-worklist").addEventListener("click", loadWorklist);
  loadHistory();
  loadWorklist();
})();
