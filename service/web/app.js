// The artists' page: pick pictures, choose a strength, follow each picture through POST /v1/jobs and
// GET /v1/jobs/{id}, then compare, read the certificate and download. Only the public API is used.

import { ApiError, call, dispositionName, formData, getJSON, jobOptionsSchema, postForm, sentence, setApiKey } from "./api.js";
import { SpeedModel, humanSeconds } from "./estimate.js";
import { buildOptions, effectiveSteps, el } from "./form.js";
import { resultCard } from "./results.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const IMAGE_NAME = /\.(png|jpe?g|webp|tiff?|bmp|gif)$/i;
const state = { models: null, options: null, speed: null, picked: [], jobs: new Map(), running: false };

function showError(message) {
  $("errors").append(el("p", { class: "error", text: sentence(message) }));
}
const clearErrors = () => $("errors").replaceChildren();

// -- server ----------------------------------------------------------------------------------------
async function askForKey() {
  $("key-section").hidden = false;
  $("api-key").focus();
  return new Promise((resolve) => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setApiKey($("api-key").value.trim());
      resolve();
    }, { once: true });
  });
}

async function loadModels() {
  for (;;) {
    try {
      return await getJSON("/v1/models");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      if ($("key-section").hidden === false) showError(err.message);
      await askForKey();
    }
  }
}

function describeServer(models) {
  const m = models.model;
  const parts = [`Model ${m.name} (${(m.parameters / 1e6).toFixed(2)} M encoder parameters) on ${m.device}`];
  parts.push(m.decoder_loaded ? "round-trip checks on" : "no decoder: round-trip checks off");
  parts.push(`up to ${models.limits.max_files_per_job} pictures per batch, ${(models.limits.max_upload_bytes / 1e6).toFixed(0)} MB each`);
  $("server-line").textContent = `${parts.join("; ")}.`;
  const warning = $("model-warning");
  warning.hidden = !models.warning;
  warning.textContent = models.warning ? `This server does not protect your pictures: ${models.warning}.` : "";
  $("version").textContent = models.version;
}

// -- picking ---------------------------------------------------------------------------------------
function imageSize(file) {
  return new Promise((resolve) => {
    const img = new Image();
    const url = URL.createObjectURL(file);
    img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
    img.onerror = () => resolve(null);
    img.src = url;
    file.previewUrl = url;
  });
}

async function addFiles(files) {
  clearErrors();
  for (const file of files) {
    file.size_px = await imageSize(file);
    state.picked.push(file);
  }
  renderPicked();
}

function renderPicked() {
  const list = $("picked");
  list.replaceChildren(...state.picked.map((file, n) => {
    const dims = file.size_px ? `${file.size_px[0]} x ${file.size_px[1]}` : "not readable by this browser";
    const remove = el("button", { type: "button", class: "link", text: "Remove", "aria-label": `Remove ${file.name}` });
    remove.addEventListener("click", () => { state.picked.splice(n, 1); renderPicked(); });
    return el("li", {}, el("span", { class: "name", text: file.name }), el("span", { class: "dims", text: dims }), remove);
  }));
  $("protect").disabled = state.running || state.picked.length === 0;
  updateEstimate();
}

async function entryFiles(entry) {
  if (entry.isFile) return new Promise((ok) => entry.file((f) => ok(IMAGE_NAME.test(f.name) ? [f] : []), () => ok([])));
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((ok) => reader.readEntries(ok, () => ok([])));
    if (!batch.length) return out;
    for (const child of batch) out.push(...(await entryFiles(child)));
  }
}

function wirePicking() {
  $("pick-files").addEventListener("click", () => $("file-input").click());
  $("pick-folder").addEventListener("click", () => $("folder-input").click());
  $("file-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  $("folder-input").addEventListener("change", (e) => {
    addFiles([...e.target.files].filter((f) => IMAGE_NAME.test(f.name)));
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    const hasFolder = entries.some((entry) => entry.isDirectory);
    if (!hasFolder) return addFiles([...e.dataTransfer.files]);
    const nested = await Promise.all(entries.map(entryFiles));
    addFiles(nested.flat());
  });
}

// -- estimate --------------------------------------------------------------------------------------
function updateEstimate() {
  const out = $("estimate");
  if (!state.speed || !state.options) return;
  const steps = effectiveSteps(state.options.values());
  if (!state.speed.known) {
    out.textContent = "Measuring this server's speed for a time estimate…";
    return;
  }
  const sizes = state.picked.map((f) => (f.size_px ? f.size_px[0] * f.size_px[1] : 1e6));
  const total = sizes.reduce((s, px) => s + state.speed.seconds(px, steps), 0);
  const at = Number.isInteger(steps) ? `${steps} steps` : "the chosen mode";
  const what = state.picked.length ? `${state.picked.length} picture(s) at ${at}: ${humanSeconds(total)}` :
    `a 1-megapixel picture at ${at}: ${humanSeconds(state.speed.seconds(1e6, steps))}`;
  out.textContent = `Time for ${what} (${state.speed.describe()}).`;
}

// -- jobs ------------------------------------------------------------------------------------------
function progressRow(file) {
  const bar = el("progress", { max: 1, "aria-label": `Progress of ${file.name}` });
  const status = el("span", { class: "status", text: "uploading" });
  const row = el("li", { "data-name": file.name }, el("span", { class: "name", text: file.name }), bar, status);
  $("progress").append(row);
  return { row, bar, status, started: null };
}

async function showResult(job, item, track) {
  const response = await call(item.download_url);
  const blob = await response.blob();
  const resultName = item.output || dispositionName(response, item.filename);  // the one naming scheme
  if ((item.certificate.mode || "pgd") === "pgd") state.speed.add(item.certificate);  // per-step speed: pgd only
  $("results-section").hidden = false;
  const roundtrip = Boolean(state.models.model.decoder_loaded);
  $("results").append(resultCard({ original: track.file, originalUrl: track.file.previewUrl, blob, resultName,
    certificate: item.certificate, roundtrip }));
}

function updateRow(track, item, steps) {
  if (track.shown === item.status) {
    if (item.status === "running" && item.progress) {  // the attack's own step count (GET /v1/jobs/{id})
      track.bar.value = item.progress.fraction;
      track.status.textContent = `protecting: step ${item.progress.steps_done} of ${item.progress.steps}`;
    } else if (item.status === "running" && track.estimate) track.bar.value = Math.min(0.95, (performance.now() - track.started) / 1000 / track.estimate);
    return false;
  }
  track.shown = item.status;
  track.row.dataset.status = item.status;
  if (item.status === "running") {
    track.started = performance.now();
    const px = track.file.size_px ? track.file.size_px[0] * track.file.size_px[1] : 1e6;
    track.estimate = state.speed.seconds(px, steps);
    track.status.textContent = track.estimate ? `protecting (${humanSeconds(track.estimate)})` : "protecting";
    if (!track.estimate) track.bar.removeAttribute("value");
  } else if (item.status === "done") {
    track.bar.value = 1;
    track.status.textContent = "done";
  } else if (item.status === "failed" || item.status === "cancelled") {
    track.bar.value = 0;
    track.status.textContent = item.status;
    if (item.error) track.row.append(el("p", { class: "error", text: `${item.filename}: ${sentence(item.error)}` }));
  } else {
    track.bar.value = 0;
    track.status.textContent = item.status;
  }
  return item.status === "done";
}

async function follow(jobId, tracks, steps) {
  for (;;) {
    const job = state.jobs.get(jobId);
    if (!job || job.cancelled) return;
    const view = await getJSON(`/v1/jobs/${jobId}`);
    for (const item of view.items) {
      if (!updateRow(tracks[item.index], item, steps)) continue;
      try {
        await showResult(view, item, tracks[item.index]);
      } catch (err) {
        showError(`${item.filename}: ${err.message}`);
      }
    }
    updateSummary();
    if (["done", "failed", "cancelled"].includes(view.status)) {
      if (view.progress.done > 0) $("zips").append(zipButton(jobId, state.jobs.size > 1 ? ` (batch ${state.jobs.size})` : ""));
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function zipButton(jobId, suffix) {
  const button = el("button", { type: "button", text: `Download all as a zip${suffix}` });
  button.addEventListener("click", async () => {
    try {
      const response = await call(`/v1/jobs/${jobId}/results`);
      const url = URL.createObjectURL(await response.blob());
      const a = el("a", { href: url, download: dispositionName(response, `job-${jobId}.zip`) });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) {
      showError(err.message);
    }
  });
  return button;
}

function updateSummary() {
  const rows = [...$("progress").children];
  const count = (s) => rows.filter((r) => r.dataset.status === s).length;
  const failed = count("failed") + count("cancelled");
  $("progress-summary").textContent = `${count("done")} of ${rows.length} done` + (failed ? `, ${failed} not protected` : "") + ".";
}

async function protect(event) {
  event.preventDefault();
  clearErrors();
  const bad = state.options.invalid();
  if (bad) {
    bad.focus();
    return showError(`${bad.labels[0] ? bad.labels[0].textContent : bad.name}: ${bad.validationMessage}`);
  }
  const files = state.picked.splice(0);
  const values = state.options.values();
  const steps = effectiveSteps(values);
  state.running = true;
  renderPicked();
  $("cancel").hidden = false;
  $("progress-section").hidden = false;
  const per = state.models.limits.max_files_per_job;
  const runs = [];
  try {
    for (let start = 0; start < files.length; start += per) {
      const chunk = files.slice(start, start + per);
      const tracks = chunk.map((file) => ({ ...progressRow(file), file }));
      const job = await postForm("/v1/jobs", formData(values, chunk.map((f) => ["files", f])))
        .catch((err) => { for (const t of tracks) t.row.remove(); throw err; });
      state.jobs.set(job.id, { cancelled: false });
      runs.push(follow(job.id, tracks, steps));
    }
    await Promise.all(runs);
  } catch (err) {
    showError(err.message);
  } finally {
    state.running = false;
    $("cancel").hidden = true;
    renderPicked();
    updateSummary();
  }
}

async function cancel() {
  for (const [jobId, job] of state.jobs) {
    if (job.cancelled) continue;
    job.cancelled = true;
    try {
      await call(`/v1/jobs/${jobId}`, { method: "DELETE" });
    } catch (err) {
      if (err.status !== 404) showError(err.message);
    }
  }
  for (const row of $("progress").children) {
    if (!["done", "failed"].includes(row.dataset.status)) {
      row.dataset.status = "cancelled";
      row.querySelector(".status").textContent = "cancelled";
    }
  }
  updateSummary();
}

// -- start -----------------------------------------------------------------------------------------
async function start() {
  wirePicking();
  try {
    state.models = await loadModels();
    $("key-section").hidden = true;
    describeServer(state.models);
    const properties = await jobOptionsSchema();
    state.options = buildOptions(properties, state.models, $("options-main"), $("options-more"));
    state.options.onChange(updateEstimate);
    state.speed = new SpeedModel(state.models.model.name);
    $("options").addEventListener("submit", protect);
    $("cancel").addEventListener("click", cancel);
    document.body.dataset.ready = "true";
    updateEstimate();
    if (!state.speed.known) {
      state.speed.calibrate().then(updateEstimate).catch(() => {
        $("estimate").textContent = "The time estimate appears after the first picture.";
      });
    }
  } catch (err) {
    $("server-line").textContent = "The server is not available.";
    showError(err.message);
  }
}

start();
