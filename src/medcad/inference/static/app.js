// medcad viewer: uploads images (or a clip) to this server's API and shows what the model says. No external assets.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const token = () => $("#token").value || new URLSearchParams(location.hash.slice(1)).get("token") || "";
const headers = () => (token() ? { Authorization: "Bearer " + token() } : {});
const pct = (p) => (100 * p).toFixed(1) + "\u00a0%"; // a no-break space: "51.7 %" never splits at a line end

let card = null; // the model card (/model), once loaded: its labels and the decisions that say no finding

function folds(n) {  // "5 folds", "1 fold" (a holdout split), "folds" when unknown
  return n ? `${n} fold${n === 1 ? "" : "s"}` : "folds";
}

function status(text) { $("#status").textContent = text; }

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : {};
  if (r.status === 401) $("#tokenbox").hidden = false;
  const hint = r.status === 401 ? " (type it in the token box above)" : "";
  if (!r.ok) throw new Error((body.detail || r.status + " " + r.statusText) + hint);
  return body;
}

function ci(m) {  // none where a bound is missing (null in JSON: fewer than half the resamples defined it)
  if (!m.ci95 || m.ci95.some((x) => x === null)) return "";
  return ` (95 % CI ${m.ci95.map((x) => x.toFixed(3)).join(m.ci95.some((x) => x < 0) ? " to " : "–")})`;
}

function num(m, digits = 3) {  // a figure with its interval; — where there is none (null in JSON)
  return m && m.value !== null && m.value !== undefined ? m.value.toFixed(digits) + ci(m) : "—";
}

function row(dl, key, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = key; dd.textContent = value; dl.append(dt, dd);
}

async function loadCard() {
  try {
    const c = await api("/model");
    card = c;
    const dl = document.createElement("dl");
    row(dl, "task", `${c.task}: ${c.summary}`);
    row(dl, "labels", c.labels.join(", "));
    row(dl, "decision", c.decision);
    if (c.frame_decision) row(dl, "frame decision", `${c.frame_decision.rule} (threshold ${num({value: c.frame_decision.threshold}, 4)}: ${c.frame_decision.threshold_of})`);
    row(dl, "model", `${c.model.backbone}${c.model.arch ? " / " + c.model.arch : ""}, ${c.model.ensemble}`);
    const cut = c.preprocessing.interface && c.preprocessing.interface !== "none" ? `, interface ${c.preprocessing.interface}` : "";
    row(dl, "input", `${c.preprocessing.resize}${c.preprocessing.bilateral_filter ? ", bilateral filter" : ""}${cut}`);
    for (const [k, m] of Object.entries(c.metrics || {})) row(dl, k, num(m));
    row(dl, "metrics", c.metrics_note);
    if (c.calibration) row(dl, "calibration", c.calibration.map((x) => `p_${x.class}: intercept ` +
      num(x.calibration_intercept) + ", slope " + num(x.calibration_slope)).join("; ") + "; " + c.calibration_note);
    const oof = (c.frame_decision || {}).out_of_fold;
    if (oof) row(dl, "dice after the frame decision", num(oof.dice) + "; " + oof.note);
    if (c.evaluation) row(dl, "evaluated", `${c.evaluation.how} on ${c.evaluation.images} images` +
      (c.evaluation.splits ? `, ${folds(c.evaluation.splits.n_folds)} grouped by ${c.evaluation.splits.group_by}` : ""));
    if (c.trained_on) row(dl, "trained on", c.trained_on.dataset + (c.trained_on.training_images == null ? "" :
      `: ${c.trained_on.training_images} training and ${c.trained_on.validation_images} validation images` +
      (c.trained_on.images == null ? "" : ` of ${c.trained_on.images}`)));
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
  // a small heat-map picture (one row of tiles per fold model) is shown at the figure's width: scaled up, its pixels
  // and its burnt-in fold labels stay sharp rather than blurred
  $("img", li).addEventListener("load", (e) => {
    const img = e.target;
    img.classList.toggle("pixelated", img.classList.contains("heat") && img.naturalWidth * 1.5 <= img.clientWidth);
  });
  $("img", li).src = r.overlay;
  $("img", li).alt = `overlay: ${r.label} ${pct(r.score)}`;
  // a multitask answer has two decisions: the class head's (the label: the most probable class, or the positive
  // class from a validated threshold on, `decided_at`) and the mask's own frame decision; each is named, so a class
  // 'normal' beside a mask decided 'lesion' is not left unexplained
  const both = r.probabilities && r.frame_decision !== undefined;
  const at = r.decided_at ? ` (p ${r.decided_at.positive} ≥ ${r.decided_at.threshold.toFixed(3)})` : "";
  const how = r.decided_at ? `class${at}: ` : "class (most probable): ";
  $(".decision", li).textContent = (both ? how : "") + `${r.label} — ${pct(r.score)}` + (both ? "" : at);
  if (r.probabilities) probTable($("tbody", li), r.probabilities); else $(".probs", li).remove();
  const extra = [];
  if (r.frame_reason) extra.push(`${both ? "lesion mask (decided apart from the class)" : "frame decision"} — ${r.frame_reason}`);
  if (r.lesion_fraction !== undefined) extra.push(`lesion shown: ${pct(r.lesion_fraction)} of the image`);
  if (r.boxes) extra.push(`${r.boxes.length} box(es) ≥ ${r.threshold}: ` + r.boxes.map((b) => `${b[5]} ${b[4].toFixed(2)}`).join(", "));
  $(".extra", li).textContent = extra.join(" · ");
  if (r.frames > 1 && li.file && r.kind === "dicom") {
    // /predict answered for one frame of a multi-frame DICOM (a cine loop): offer all its frames as a clip
    const cine = document.createElement("button");
    cine.type = "button"; cine.className = "toggle cine";
    cine.textContent = `Predict all ${r.frames} frames as a cine`;
    cine.addEventListener("click", () => { cine.disabled = true; predictVideo(li.file); });
    $(".extra", li).prepend(`a DICOM cine of ${r.frames} frames; shown: frame ${r.frame} (frames count from 0). `);
    $(".details", li).append(cine);
  } else if (r.frames > 1 && li.file) {
    // a multi-page TIFF, an animated GIF / WebP / PNG: each page is an image of its own (not a clip); a TIFF's
    // thumbnail pages (reduced copies) are not images of the set, as predict reads them
    const pages = r.pages || [...Array(r.frames).keys()];
    const thumbs = r.frames - pages.length;
    $(".extra", li).prepend(`a ${r.kind.toUpperCase()} of ${pages.length} page${pages.length === 1 ? "" : "s"}` +
      (thumbs ? ` and ${thumbs} thumbnail${thumbs === 1 ? "" : "s"}` : "") +
      `; shown: page ${r.frame} (pages count from 0). `);
    const others = pages.filter((k) => k !== r.frame);
    if (r.frame === pages[0] && others.length) {
      const rest = document.createElement("button");
      rest.type = "button"; rest.className = "toggle pages";
      rest.textContent = `Predict the other ${others.length} page${others.length > 1 ? "s" : ""}`;
      rest.addEventListener("click", () => {
        rest.disabled = true;
        for (const k of others) predictImage(li.file, k);
      });
      $(".details", li).append(rest);
    }
  }
  for (const w of r.warnings || []) {  // what makes the prediction doubtful (a tiny image, a mask sent as an image)
    const p = document.createElement("p");
    p.className = "warning";
    p.textContent = "note: " + w;
    $(".details", li).append(p);
  }
  if (r.heatmap) {
    const button = $(".toggle", li);
    button.hidden = false;
    button.addEventListener("click", () => {
      const on = button.getAttribute("aria-pressed") !== "true";
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "Show overlay" : "Show heat-map";
      const img = $("img", li);
      img.classList.toggle("heat", on);
      img.src = on ? r.heatmap.image : r.overlay;
      img.alt = on ? "heat-map: " + r.heatmap.caption : `overlay: ${r.label} ${pct(r.score)}`;
      $("figcaption", li).textContent = on ? r.heatmap.caption : li.dataset.name;
    });
  }
}

async function predictImage(file, frame = 0) {
  const name = frame ? `${file.name}#${frame}` : file.name;  // a page of a multi-page file, as predict names it
  const li = newCard(name);
  li.dataset.name = name;
  li.file = file;
  const form = new FormData();
  form.append("file", file);
  const q = "/predict?overlay=true&mask=none" + (frame ? `&frame=${frame}` : "") + ($("#heat").checked ? "&gradcam=true" : "");
  try {
    showImage(li, await api(q, { method: "POST", body: form }));
  } catch (e) {
    li.classList.add("error");
    $(".decision", li).textContent = "refused: " + e.message;
    $(".probs", li).remove();
  }
}

// The colours of decisions: no finding in grey; findings in the Okabe-Ito colours (told apart with colour blindness)
const FINDING_COLOURS = ["#d55e00", "#0072b2", "#cc79a7", "#e69f00", "#009e73", "#56b4e9", "#7a4b00", "#332288"];
const NO_FINDING_COLOUR = "#c3ccd5";

function noFinding(decision) { return ((card && card.no_finding) || []).includes(decision); }

function decisionColours(decisions) {
  // findings keep one colour per label whatever the clip (the model's labels first, in their order)
  const order = [...((card && card.labels) || []), ...[...decisions].sort()];
  const findings = [...new Set(order)].filter((d) => !noFinding(d));
  return Object.fromEntries([...decisions].map((d) =>
    [d, noFinding(d) ? NO_FINDING_COLOUR : FINDING_COLOURS[findings.indexOf(d) % FINDING_COLOURS.length]]));
}

function secs(t, digits) { return t.toFixed(digits); }

// Runs of frames with one (smoothed) decision that is a finding: [{decision, start, end, first, last, frames}];
// a run ends where the next predicted frame starts (the last one: one source frame later)
function findingIntervals(frames, frameTime) {
  const runs = [];
  frames.forEach((f, i) => {
    const last = runs[runs.length - 1];
    if (last && last.decision === f.smoothed && last.next === i) {
      last.last = f.frame; last.frames += 1; last.next = i + 1;
    } else if (!noFinding(f.smoothed)) {
      runs.push({ decision: f.smoothed, start: f.time_s, first: f.frame, last: f.frame, frames: 1, next: i + 1 });
    }
  });
  for (const r of runs) r.end = r.next < frames.length ? frames[r.next].time_s : frames[r.next - 1].time_s + frameTime;
  return runs;
}

function frameWords(cell, means) {
  // `means`: what the smoothed score is where it is not the label's probability ("lesion area": a mask's lesion
  // share; the frame's own figure beside it is then its lesion share too, not its top pixel probability)
  const f = cell.record;
  if (!f) return `frame ${cell.frame} at ${cell.time_s.toFixed(2)} s: no decision (${cell.reason})`;
  const area = means === "lesion area" && f.lesion_fraction !== undefined && f.lesion_fraction !== null;
  const what = means ? ` ${means}` : "";
  const said = [`frame ${f.frame} at ${f.time_s.toFixed(2)} s: ${f.smoothed}${what} ${pct(f.smoothed_score)} (smoothed)`,
    `this frame alone: ${f.label}${what} ${pct(area ? f.lesion_fraction : f.score)}`];
  if (f.frame_decision !== undefined && f.frame_decision !== null) said.push(`lesion mask: ${f.frame_decision}`);
  if (!area && f.lesion_fraction !== undefined && f.lesion_fraction !== null && f.frame_decision !== "no lesion") {
    said.push(`lesion ${pct(f.lesion_fraction)} of the frame`);
  }
  return said.join(" · ");
}

function timeline(s) {
  // one cell per frame, in frame order, undecodable frames included (hatched)
  const frames = [...s.frames].sort((a, b) => a.frame - b.frame);
  const cells = [
    ...frames.map((f) => ({ frame: f.frame, time_s: f.time_s, record: f })),
    ...(s.summary.dropped_frames || []).map((d) => ({ frame: d.frame, time_s: d.time_s ?? 0, reason: d.reason })),
  ].sort((a, b) => a.frame - b.frame);
  const fps = s.summary.source_fps;
  const frameTime = fps > 0 ? 1 / fps : 0;
  const duration = Math.max(...cells.map((c) => c.time_s)) + frameTime;
  const digits = duration < 10 ? 2 : 1;
  const decisions = new Set(frames.map((f) => f.smoothed));
  const colours = decisionColours(decisions);

  const box = document.createElement("div");
  box.className = "timeline";
  const strip = document.createElement("div");
  strip.className = cells.length <= 120 ? "strip few" : "strip"; // few: cells wide enough for a separator
  strip.tabIndex = 0; strip.setAttribute("role", "group");
  strip.setAttribute("aria-label", `timeline of ${cells.length} frames, one cell per frame coloured by its smoothed ` +
    "decision; arrow keys step through the frames");
  for (const c of cells) {
    const cell = document.createElement("span");
    cell.className = "cell" + (c.record ? "" : " dropped");
    cell.dataset.frame = c.frame;
    cell.dataset.decision = c.record ? c.record.smoothed : "no decision";
    if (c.record) cell.style.background = colours[c.record.smoothed];
    strip.append(cell);
  }
  const axis = document.createElement("div");
  axis.className = "axis";
  axis.append(...[0, duration / 2, duration].map((t) => Object.assign(document.createElement("span"),
    { textContent: secs(t, digits) + " s" })));
  const info = document.createElement("p");
  info.className = "frameinfo"; info.setAttribute("aria-live", "polite");
  info.textContent = "Point at or click a cell (or focus the strip and use the arrow keys) to read what was decided at its frame.";

  const legend = document.createElement("ul");
  legend.className = "legend";
  const counts = {};
  for (const f of frames) counts[f.smoothed] = (counts[f.smoothed] || 0) + 1;
  const named = [...decisions].sort((a, b) => noFinding(a) - noFinding(b) || counts[b] - counts[a]);
  for (const d of named) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = colours[d];
    item.append(swatch, `${d}: ${counts[d]} frame${counts[d] === 1 ? "" : "s"}` + (noFinding(d) ? " (no finding)" : ""));
    legend.append(item);
  }
  if (s.summary.frames_dropped) {
    const item = document.createElement("li");
    item.append(Object.assign(document.createElement("span"), { className: "swatch dropped" }),
      `no decision: ${s.summary.frames_dropped} frame${s.summary.frames_dropped === 1 ? "" : "s"}`);
    legend.append(item);
  }

  let selected = -1;
  const show = (i, keep) => {
    if (i < 0 || i >= cells.length) return;
    info.textContent = frameWords(cells[i], s.summary.smoothed_score_means);
    if (keep) {
      if (selected >= 0) strip.children[selected].classList.remove("sel");
      selected = i; strip.children[i].classList.add("sel");
    }
  };
  const at = (e) => {
    const r = strip.getBoundingClientRect();
    return Math.min(cells.length - 1, Math.max(0, Math.floor(((e.clientX - r.left) / r.width) * cells.length)));
  };
  strip.addEventListener("mousemove", (e) => show(at(e), false));
  strip.addEventListener("mouseleave", () => { if (selected >= 0) show(selected, false); });
  strip.addEventListener("click", (e) => show(at(e), true));
  strip.addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1, Home: -cells.length, End: cells.length }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    show(Math.min(cells.length - 1, Math.max(0, (selected < 0 ? 0 : selected + step))), true);
  });
  box.append(strip, axis, info, legend);

  const runs = findingIntervals(frames, frameTime);
  return { box, runs, digits, duration };
}

function showVideo(li, name, s) {
  const { box, runs, digits, duration } = timeline(s);
  $("figure", li).remove(); // the timeline goes under the heading, as wide as the card
  $(".decision", li).after(box);
  const found = [...new Set(runs.map((r) => r.decision))];
  $(".decision", li).textContent = found.length
    ? `${name}: ${found.join(", ")} in ${runs.length} interval${runs.length === 1 ? "" : "s"}`
    : `${name}: no finding in ${s.frames.length} frames`;
  const list = document.createElement("ul");
  list.className = "intervals";
  list.setAttribute("aria-label", "intervals of findings (smoothed decisions)");
  for (const r of runs) {
    const item = document.createElement("li");
    item.textContent = `${r.decision} ${secs(r.start, digits)}–${secs(r.end, digits)} s ` +
      (r.first === r.last ? `(frame ${r.first})` : `(frames ${r.first}–${r.last})`);
    list.append(item);
  }
  const notes = [`${s.summary.frames_predicted} frames (${secs(duration, digits)} s) predicted at ` +
    `${s.summary.frames_per_s.toFixed(1)} frames/s; colours and intervals: each frame's decision smoothed over ` +
    `up to ${s.summary.smooth} frames (it and those before it)`];
  const dropped = s.summary.dropped_frames || [];
  for (const [group, what] of [
    [dropped.filter((d) => !d.concealed), "could not be decoded"],
    [dropped.filter((d) => d.concealed), "decoded from a lost, damaged or missing frame (concealed by the decoder)"],
  ]) {
    if (group.length) {
      notes.push(`${group.length} frame${group.length === 1 ? "" : "s"} ${what} ` +
        `(frame ${group.map((d) => d.frame).join(", ")}): no decision, hatched on the timeline`);
    }
  }
  if (s.summary.truncated) notes.push(`the file is truncated: ${s.summary.truncation}`);
  const gaps = s.summary.time_gaps || [];
  if (gaps.length) {
    const n = gaps.reduce((sum, g) => sum + g.frames, 0);
    const more = gaps.length > 10 ? ` and ${gaps.length - 10} more` : "";
    notes.push(`${n} ${n === 1 ? "frame's" : "frames'"} time with no frame in the file (before frame ` +
      `${gaps.slice(0, 10).map((g) => g.before_frame).join(", ")}${more}): lost from the file or never recorded`);
  }
  $(".extra", li).textContent = notes.join(" · ");
  const head = Object.assign(document.createElement("p"), { className: "subhead", textContent: "Findings by time" });
  if (runs.length) box.after(head, list);
}

async function predictVideo(file) {
  const li = newCard(file.name);
  li.classList.add("video");
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
      if (s.status === "done") return showVideo(li, file.name, s);
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
  $("#token").addEventListener("change", () => loadCard()); // a token typed in: the card it had been refused, now
  $("#files").addEventListener("change", (e) => {
    handle(e.target.files); // copies the list before its first await
    e.target.value = ""; // picking the same file again is a change too
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });
  loadCard();
});
