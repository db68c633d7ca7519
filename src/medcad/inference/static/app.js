// medcad viewer: uploads images (or a clip) to this server's API and shows what the model says. No external assets.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const token = () => $("#token").value || new URLSearchParams(location.hash.slice(1)).get("token") || "";
const headers = () => (token() ? { Authorization: "Bearer " + token() } : {});
const pct = (p) => (100 * p).toFixed(1) + " %";

function status(text) { $("#status").textContent = text; }

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : {};
  if (r.status === 401) $("#tokenbox").hidden = false;
  if (!r.ok) throw new Error(body.detail || r.status + " " + r.statusText);
  return body;
}

function ci(m) {
  return m.ci95 ? ` (95 % CI ${m.ci95.map((x) => x.toFixed(3)).join("–")})` : "";
}

function row(dl, key, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = key; dd.textContent = value; dl.append(dt, dd);
}

async function loadCard() {
  try {
    const c = await api("/model");
    const dl = document.createElement("dl");
    row(dl, "task", `${c.task}: ${c.summary}`);
    row(dl, "labels", c.labels.join(", "));
    row(dl, "decision", c.decision);
    if (c.frame_decision) row(dl, "frame decision", `${c.frame_decision.rule} (threshold ${c.frame_decision.threshold.toFixed(4)}: ${c.frame_decision.threshold_of})`);
    row(dl, "model", `${c.model.backbone}${c.model.arch ? " / " + c.model.arch : ""}, ${c.model.ensemble}`);
    row(dl, "input", `${c.preprocessing.resize}${c.preprocessing.bilateral_filter ? ", bilateral filter" : ""}`);
    for (const [k, m] of Object.entries(c.metrics || {})) row(dl, k, m.value.toFixed(3) + ci(m));
    row(dl, "metrics", c.metrics_note);
    const oof = (c.frame_decision || {}).out_of_fold;
    if (oof) row(dl, "dice after the frame decision", oof.dice.value.toFixed(3) + ci(oof.dice) + "; " + oof.note);
    if (c.evaluation) row(dl, "evaluated", `${c.evaluation.how} on ${c.evaluation.images} images` +
      (c.evaluation.splits ? `, ${c.evaluation.splits.n_folds || ""} folds grouped by ${c.evaluation.splits.group_by}` : ""));
    if (c.trained_on) row(dl, "trained on", c.trained_on.dataset);
    row(dl, "use", c.intended_use);
    $("#cardbody").replaceChildren(dl);
  } catch (e) {
    $("#cardbody").textContent = "model card unavailable: " + e.message;
  }
}

function probTable(tbody, probs) {
  for (const [label, p] of Object.entries(probs).sort((a, b) => b[1] - a[1])) {
    const tr = document.createElement("tr");
    const bar = document.createElement("div");
    bar.className = "bar"; bar.style.width = (100 * p).toFixed(1) + "%";
    const cells = [label, pct(p)].map((t) => { const td = document.createElement("td"); td.textContent = t; return td; });
    const tdBar = document.createElement("td"); tdBar.append(bar); tdBar.style.width = "40%";
    tr.append(cells[0], tdBar, cells[1]); tbody.append(tr);
  }
}

function newCard(name) {
  const li = $("#result").content.firstElementChild.cloneNode(true);
  $("figcaption", li).textContent = name;
  $(".decision", li).textContent = "predicting…";
  $("#results").prepend(li);
  return li;
}

function showImage(li, r) {
  $("img", li).src = r.overlay;
  $("img", li).alt = `overlay: ${r.label} ${pct(r.score)}`;
  // a multitask answer has two decisions: the class head's most probable class (the label) and the mask's own
  // frame decision; each is named, so a class 'normal' beside a mask decided 'lesion' is not left unexplained
  const both = r.probabilities && r.frame_decision !== undefined;
  $(".decision", li).textContent = (both ? "class (most probable): " : "") + `${r.label} — ${pct(r.score)}`;
  if (r.probabilities) probTable($("tbody", li), r.probabilities); else $(".probs", li).remove();
  const extra = [];
  if (r.frame_reason) extra.push(`${both ? "lesion mask (decided apart from the class)" : "frame decision"} — ${r.frame_reason}`);
  if (r.lesion_fraction !== undefined) extra.push(`lesion shown: ${pct(r.lesion_fraction)} of the image`);
  if (r.boxes) extra.push(`${r.boxes.length} box(es) ≥ ${r.threshold}: ` + r.boxes.map((b) => `${b[5]} ${b[4].toFixed(2)}`).join(", "));
  $(".extra", li).textContent = extra.join(" · ");
  if (r.heatmap) {
    const button = $(".toggle", li);
    button.hidden = false;
    button.addEventListener("click", () => {
      const on = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "Show overlay" : "Show heat-map";
      $("img", li).src = on ? r.heatmap.image : r.overlay;
      $("figcaption", li).textContent = on ? r.heatmap.caption : li.dataset.name;
    });
  }
}

async function predictImage(file) {
  const li = newCard(file.name);
  li.dataset.name = file.name;
  const form = new FormData();
  form.append("file", file);
  const q = "/predict?overlay=true&mask=none" + ($("#heat").checked ? "&gradcam=true" : "");
  try {
    showImage(li, await api(q, { method: "POST", body: form }));
  } catch (e) {
    li.classList.add("error");
    $(".decision", li).textContent = "refused: " + e.message;
    $(".probs", li).remove();
  }
}

async function predictVideo(file) {
  const li = newCard(file.name);
  $("figure", li).replaceChildren(Object.assign(document.createElement("progress"), { max: 1, value: 0 }));
  $(".probs", li).remove();
  const form = new FormData();
  form.append("file", file);
  try {
    const { status_url } = await api("/predict/video", { method: "POST", body: form });
    for (;;) {
      const s = await api(status_url);
      $("progress", li).max = s.frames_total || 1; $("progress", li).value = s.frames_done;
      $(".decision", li).textContent = `${file.name}: ${s.status}, frame ${s.frames_done} of ${s.frames_total}`;
      if (s.status === "failed") throw new Error(s.error);
      if (s.status === "done") {
        const counts = {};
        for (const f of s.frames) counts[f.smoothed] = (counts[f.smoothed] || 0) + 1;
        $(".extra", li).textContent = `${s.summary.frames_predicted} frames at ${s.summary.frames_per_s.toFixed(1)} frames/s; ` +
          "smoothed decisions: " + Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ");
        return;
      }
      await new Promise((ok) => setTimeout(ok, 500));
    }
  } catch (e) {
    li.classList.add("error");
    $(".decision", li).textContent = "refused: " + e.message;
  }
}

async function handle(files) {
  const list = [...files];
  status(`${list.length} file(s) sent`);
  for (const f of list) {
    if (f.type.startsWith("video/")) await predictVideo(f); else await predictImage(f);
  }
  status(`${list.length} file(s) done`);
}

document.addEventListener("DOMContentLoaded", () => {
  if (token()) $("#token").value = token();
  $("#files").addEventListener("change", (e) => handle(e.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });
  loadCard();
});
