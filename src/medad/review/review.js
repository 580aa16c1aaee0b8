// The review page of `medad serve` (docs/service.md, "Review page"): every image scored since the
// service started, highest score first, the selected one large with its heatmap and the outline of
// its lesion mask, and a threshold that moves over the validation normals' scores. Plain ES module,
// no dependency, nothing fetched from outside the service.

const API_ROOT = new URL("../", document.baseURI); // the page is served at <root>/review/
const POLL_SECONDS = pollSeconds(new URLSearchParams(location.search).get("poll"));
const OUTLINE_RGBA = [0, 229, 255, 255]; // mask outline colour (cyan), keep in step with review.css
const DIST_COLOURS = { normal: "#8a8f98", flagged: "#ff5c5c", passed: "#3ecf8e", threshold: "#f5f5f5" };

const $ = (id) => document.getElementById(id);

const state = {
  model: null,
  calibration: null,
  normals: [], // the validation normals' scores, ascending
  results: [], // highest score first
  signature: null, // the ids of `results`, to skip re-rendering an unchanged list
  calibrationKey: "",
  candidates: [], // the thresholds the slider steps through, ascending
  index: 0, // the slider's position in `candidates`
  modelIndex: 0, // the model's own threshold in `candidates`
  selected: null, // id of the selected result
  heatmap: true,
  mask: true,
  drawToken: 0, // the latest outline drawing; older ones stop when it changes
  loading: null, // the load in flight, shared by the poll and the refresh button
};

/** Seconds between two polls of /v1/results, from the page's `?poll=` (0 turns polling off). */
function pollSeconds(text) {
  const value = text === null ? 5 : Number(text);
  return Number.isFinite(value) && value >= 0 ? value : 5;
}

/** An API path (as the contract writes it, from the service's root) as a URL under API_ROOT. */
function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), API_ROOT).href;
}

async function getJson(path) {
  let response;
  try {
    response = await fetch(apiUrl(path), { cache: "no-store" });
  } catch (err) {
    throw new Error(`GET ${path}: ${err.message}`);
  }
  if (!response.ok) throw new Error(`GET ${path}: HTTP ${response.status} ${response.statusText}`.trim());
  return response.json();
}

/** Number formatting for scores: `digits` significant digits, exponent for very large or small. */
function fmt(value, digits = 4) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  const size = Math.abs(value);
  return size !== 0 && (size >= 1e4 || size < 1e-3) ? value.toExponential(digits - 1) : value.toPrecision(digits);
}

const percent = (share) => `${(100 * share).toFixed(1)} %`;

// -- threshold ------------------------------------------------------------------------------

/** The slider's thresholds: every validation-normal score and the model's threshold, ascending and
 * distinct. One step moves the threshold past one more (or one fewer) normal. */
function thresholdCandidates(normals, threshold) {
  const values = [...normals, threshold].filter(Number.isFinite).sort((a, b) => a - b);
  return values.filter((v, i) => i === 0 || v !== values[i - 1]);
}

/** How many of the ascending `sorted` values are strictly above `t` (binary search). */
function countAbove(sorted, t) {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] > t) hi = mid;
    else lo = mid + 1;
  }
  return sorted.length - lo;
}

const currentThreshold = () => state.candidates[state.index];
const isFlagged = (result) => result.score > currentThreshold(); // as the model: above the threshold

function applyCalibration(calibration) {
  const normals = calibration.normal_scores.filter(Number.isFinite).sort((a, b) => a - b);
  const key = `${calibration.threshold}|${normals.join(",")}`;
  state.calibration = calibration;
  if (key === state.calibrationKey) return;
  state.calibrationKey = key;
  state.normals = normals;
  state.candidates = thresholdCandidates(normals, calibration.threshold);
  state.modelIndex = Math.max(0, state.candidates.indexOf(calibration.threshold));
  state.index = state.modelIndex;
  const slider = $("threshold");
  slider.max = String(Math.max(0, state.candidates.length - 1));
  slider.disabled = state.candidates.length < 2;
  slider.setAttribute("aria-label", `Threshold on the ${calibration.score_name} score`);
}

function setThresholdIndex(index) {
  if (!state.candidates.length) return;
  state.index = Math.min(Math.max(index, 0), state.candidates.length - 1);
  renderThreshold();
}

function renderThreshold() {
  const t = currentThreshold();
  if (t === undefined) return;
  const slider = $("threshold");
  slider.value = String(state.index);
  const atModel = state.index === state.modelIndex;
  slider.setAttribute("aria-valuetext", `${fmt(t, 6)}${atModel ? ", the model's threshold" : ""}`);
  $("threshold-reset").disabled = atModel;

  const value = $("threshold-value");
  value.textContent = `${fmt(t, 6)}${atModel ? " (model)" : ""}`;
  value.dataset.value = String(t);

  const fpr = $("fpr");
  if (state.normals.length) {
    const share = countAbove(state.normals, t) / state.normals.length;
    fpr.textContent = percent(share);
    fpr.dataset.value = String(share);
  } else {
    fpr.textContent = "– (no validation normals)";
    delete fpr.dataset.value;
  }

  let flagged = 0;
  for (const result of state.results) {
    const on = isFlagged(result);
    flagged += on;
    const item = $(`r-${result.id}`);
    if (item) {
      item.dataset.flagged = String(on);
      const badge = item.querySelector(".flag");
      badge.textContent = on ? "flagged" : "normal";
    }
  }
  const count = $("flagged");
  count.textContent = `${flagged} of ${state.results.length}`;
  count.dataset.value = String(flagged);
  renderDetails();
  drawDistribution();
}

// -- the list -------------------------------------------------------------------------------

function applyResults(results) {
  const sorted = [...results].sort(byScoreDescending);
  const signature = sorted.map((r) => r.id).join(",");
  state.results = sorted;
  if (signature !== state.signature) {
    state.signature = signature;
    renderList();
  }
  if (!sorted.some((r) => r.id === state.selected)) select(sorted.length ? sorted[0].id : null);
  renderThreshold();
}

/** Highest score first; a score that is not a number last; equal scores in scoring order (stable). */
function byScoreDescending(a, b) {
  const x = Number.isFinite(a.score) ? a.score : -Infinity;
  const y = Number.isFinite(b.score) ? b.score : -Infinity;
  return y - x || 0;
}

function renderList() {
  const list = $("results");
  list.replaceChildren(...state.results.map(listItem));
  $("count").textContent = state.results.length ? `(${state.results.length})` : "";
  $("empty").hidden = state.results.length > 0;
  list.hidden = state.results.length === 0;
  const selected = state.selected && $(`r-${state.selected}`);
  if (selected) selected.setAttribute("aria-selected", "true");
}

function listItem(result, rank) {
  const item = document.createElement("li");
  item.id = `r-${result.id}`;
  item.setAttribute("role", "option");
  item.setAttribute("aria-selected", "false");
  item.dataset.id = result.id;
  item.dataset.score = String(result.score);
  const part = (cls, text, title) => {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text; // never innerHTML: file names come from the uploader
    if (title) span.title = title;
    return span;
  };
  item.append(
    part("rank", `${rank + 1}`),
    part("name", result.filename, result.filename),
    part("score", fmt(result.score), "score"),
    part("cal", percent(result.calibrated), "calibrated: share of validation normals scoring lower"),
    part("flag", ""),
  );
  return item;
}

function select(id) {
  const list = $("results");
  const previous = state.selected && $(`r-${state.selected}`);
  if (previous) previous.setAttribute("aria-selected", "false");
  state.selected = id;
  const item = id && $(`r-${id}`);
  if (!item) {
    list.removeAttribute("aria-activedescendant");
    $("viewer").hidden = true;
    $("details").replaceChildren();
    return;
  }
  item.setAttribute("aria-selected", "true");
  list.setAttribute("aria-activedescendant", item.id);
  item.scrollIntoView({ block: "nearest" });
  showResult(selectedResult());
}

const selectedResult = () => state.results.find((r) => r.id === state.selected);

function move(step) {
  if (!state.results.length) return;
  const at = state.results.findIndex((r) => r.id === state.selected);
  moveTo(at + step);
}

function moveTo(index) {
  if (!state.results.length) return;
  const at = Math.min(Math.max(index, 0), state.results.length - 1);
  select(state.results[at].id);
}

// -- the selected image ---------------------------------------------------------------------

function showResult(result) {
  const viewer = $("viewer");
  viewer.hidden = false;
  viewer.dataset.id = result.id;
  const image = $("image");
  image.src = apiUrl(result.image_url);
  image.alt = `${result.filename}, as the model sees it (preprocessed)`;
  const heatmap = $("heatmap");
  if (result.heatmap_url) {
    heatmap.src = apiUrl(result.heatmap_url);
    heatmap.alt = `Anomaly heatmap of ${result.filename}`;
  } else {
    heatmap.removeAttribute("src");
    heatmap.alt = "";
  }
  $("outline").setAttribute("aria-label", `Outline of the lesion mask of ${result.filename}`);
  $("caption").textContent = result.filename;
  renderLayers();
  renderDetails();
  drawOutline(result);
}

function renderLayers() {
  const result = selectedResult();
  const heatmapButton = $("toggle-heatmap");
  const maskButton = $("toggle-mask");
  heatmapButton.setAttribute("aria-pressed", String(state.heatmap));
  maskButton.setAttribute("aria-pressed", String(state.mask));
  heatmapButton.disabled = Boolean(result) && !result.heatmap_url;
  maskButton.disabled = Boolean(result) && !result.mask_url;
  heatmapButton.title = heatmapButton.disabled ? "No heatmap: the model gives image scores only" : "Show or hide the heatmap (h)";
  maskButton.title = maskButton.disabled ? "No lesion mask for this image" : "Show or hide the lesion mask outline (m)";
  const heatmap = $("heatmap");
  heatmap.hidden = !(state.heatmap && result && result.heatmap_url);
  heatmap.style.opacity = $("opacity").value;
  $("opacity").disabled = !state.heatmap;
  $("outline").hidden = !(state.mask && result && result.mask_url);
}

function renderDetails() {
  const result = selectedResult();
  const details = $("details");
  if (!result) {
    details.replaceChildren();
    return;
  }
  const scoreName = state.calibration ? state.calibration.score_name : "score";
  const rows = [
    ["File", result.filename],
    [`Score (${scoreName})`, fmt(result.score, 6)],
    ["Calibrated", `higher than ${percent(result.calibrated)} of validation normals`],
    ["At this threshold", isFlagged(result) ? "flagged" : "not flagged"],
    ["At the model's threshold", `${result.abnormal ? "abnormal" : "normal"} (threshold ${fmt(result.threshold, 6)})`],
    ["Scored at", result.scored_at],
    ["Id", result.id],
  ];
  details.replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

/** RGBA pixels of the outline of a mask: its boundary pixels — inside the 255 region (red channel
 * of the decoded mask at least 128) with a 4-neighbour outside it or on the image's edge — in
 * `colour`, every other pixel transparent. */
function outlinePixels(maskRgba, width, height, colour) {
  const inside = (x, y) => x >= 0 && y >= 0 && x < width && y < height && maskRgba[4 * (y * width + x)] >= 128;
  const out = new Uint8ClampedArray(4 * width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!inside(x, y)) continue;
      if (inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1)) continue;
      out.set(colour, 4 * (y * width + x));
    }
  }
  return out;
}

async function drawOutline(result) {
  const token = ++state.drawToken;
  const canvas = $("outline");
  delete canvas.dataset.drawn;
  if (!result.mask_url) {
    canvas.width = 0;
    canvas.height = 0;
    return;
  }
  const mask = new Image();
  mask.src = apiUrl(result.mask_url);
  try {
    await mask.decode();
  } catch {
    if (token === state.drawToken) showError(`Cannot load the mask of ${result.filename} (${result.mask_url}).`);
    return;
  }
  if (token !== state.drawToken) return; // another image was selected meanwhile
  const { naturalWidth: width, naturalHeight: height } = mask;
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(mask, 0, 0);
  const pixels = outlinePixels(context.getImageData(0, 0, width, height).data, width, height, OUTLINE_RGBA);
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
  canvas.dataset.drawn = result.id;
}

// -- the score strip ------------------------------------------------------------------------

/** Validation normals (grey, lower half) and scored images (upper half: red flagged, green not)
 * on one score axis, with the threshold (solid) and the model's threshold (dashed). */
function drawDistribution() {
  const canvas = $("distribution");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  const scores = state.results.map((r) => r.score).filter(Number.isFinite);
  const values = [...state.normals, ...scores, ...state.candidates];
  if (!values.length || width === 0) return;
  let lo = values.reduce((a, b) => Math.min(a, b));
  let hi = values.reduce((a, b) => Math.max(a, b));
  if (hi === lo) [lo, hi] = [lo - 1, hi + 1];
  const x = (v) => 4 + ((width - 8) * (v - lo)) / (hi - lo);
  const tick = (v, colour, top, bottom) => {
    context.strokeStyle = colour;
    context.beginPath();
    context.moveTo(x(v), top);
    context.lineTo(x(v), bottom);
    context.stroke();
  };
  context.lineWidth = 1;
  context.globalAlpha = 0.6;
  for (const v of state.normals) tick(v, DIST_COLOURS.normal, height / 2 + 2, height);
  context.globalAlpha = 1;
  const t = currentThreshold();
  for (const v of scores) tick(v, v > t ? DIST_COLOURS.flagged : DIST_COLOURS.passed, 0, height / 2 - 2);
  context.lineWidth = 2;
  context.setLineDash([4, 3]);
  tick(state.candidates[state.modelIndex], DIST_COLOURS.threshold, 0, height);
  context.setLineDash([]);
  tick(t, DIST_COLOURS.threshold, 0, height);
}

// -- loading --------------------------------------------------------------------------------

function applyModel(model) {
  state.model = model;
  const parts = [
    model.name,
    `${model.detector} (${model.score_name})`,
    `${model.image_size} px, ${model.channels} channel${model.channels === 1 ? "" : "s"}`,
    `run ${model.run}`,
    `medad ${model.medad_version}`,
  ];
  $("model-info").textContent = parts.filter((p) => p && !String(p).includes("undefined")).join(" · ");
}

function showError(message) {
  const banner = $("error");
  banner.hidden = !message;
  banner.textContent = message || "";
}

/** Fetch the model, the calibration and the results; one load at a time. */
function load() {
  state.loading ??= (async () => {
    try {
      const [model, calibration, results] = await Promise.all([
        getJson("/v1/model"),
        getJson("/v1/calibration"),
        getJson("/v1/results"),
      ]);
      applyModel(model);
      applyCalibration(calibration);
      applyResults(results.results);
      showError(null);
      document.body.dataset.state = "ready";
    } catch (err) {
      const retry = POLL_SECONDS ? `retrying every ${POLL_SECONDS} s` : "press Refresh to retry";
      showError(`Cannot reach the medad service: ${err.message} (${retry}).`);
      document.body.dataset.state = "error";
    } finally {
      state.loading = null;
    }
  })();
  return state.loading;
}

async function poll() {
  await load();
  if (POLL_SECONDS) setTimeout(poll, POLL_SECONDS * 1000);
}

// -- controls and keys ----------------------------------------------------------------------

function toggleHeatmap() {
  state.heatmap = !state.heatmap;
  renderLayers();
}

function toggleMask() {
  state.mask = !state.mask;
  renderLayers();
}

function toggleHelp() {
  const help = $("help");
  if (help.open) help.close();
  else help.showModal();
}

const KEYS = {
  j: () => move(1),
  ArrowDown: () => move(1),
  k: () => move(-1),
  ArrowUp: () => move(-1),
  Home: () => moveTo(0),
  End: () => moveTo(state.results.length - 1),
  h: toggleHeatmap,
  m: toggleMask,
  "+": () => setThresholdIndex(state.index + 1),
  "=": () => setThresholdIndex(state.index + 1),
  "]": () => setThresholdIndex(state.index + 1),
  "-": () => setThresholdIndex(state.index - 1),
  "[": () => setThresholdIndex(state.index - 1),
  0: () => setThresholdIndex(state.modelIndex),
  r: load,
  "?": toggleHelp,
};

// keys a focused form control handles itself (a range slider moves with them)
const CONTROL_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown"]);

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if ($("help").open) {
    if (event.key === "?") {
      event.preventDefault();
      toggleHelp();
    }
    return; // the dialog closes itself on Escape
  }
  const target = event.target;
  const control = target instanceof HTMLInputElement || target instanceof HTMLSelectElement;
  if (control && CONTROL_KEYS.has(event.key)) return;
  if (target instanceof HTMLButtonElement && (event.key === " " || event.key === "Enter")) return;
  const action = Object.hasOwn(KEYS, event.key) ? KEYS[event.key] : null;
  if (!action) return;
  event.preventDefault();
  action();
}

function init() {
  document.querySelectorAll(".origin").forEach((el) => (el.textContent = API_ROOT.href.replace(/\/$/, "")));
  $("refresh").addEventListener("click", load);
  $("help-button").addEventListener("click", toggleHelp);
  $("toggle-heatmap").addEventListener("click", toggleHeatmap);
  $("toggle-mask").addEventListener("click", toggleMask);
  $("opacity").addEventListener("input", renderLayers);
  $("threshold").addEventListener("input", (event) => setThresholdIndex(Number(event.target.value)));
  $("threshold-reset").addEventListener("click", () => setThresholdIndex(state.modelIndex));
  $("results").addEventListener("click", (event) => {
    const item = event.target.closest("[role=option]");
    if (item) select(item.dataset.id);
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", drawDistribution);
  poll();
}

init();
