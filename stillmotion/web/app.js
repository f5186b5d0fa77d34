// stillmotion playground: plain JS against the service's own API (same origin).
// Catalog: GET /v1/models; submit: POST /task/bailian/image2video; poll: GET /task/{id};
// history: GET /v1/tasks; balance: GET /v1/account. The key lives in localStorage and is sent
// as a Bearer token (also to /v1/models, whose prices are then the caller's own).

const KEY_STORAGE = "stillmotion.apiKey";
const IMAGE_MIMES = ["image/jpeg", "image/png", "image/bmp", "image/webp"];
const SIDE_MIN = 240;
const SIDE_MAX = 8000;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]);
const PAGE = 8;
// the API's field names -> the control each one belongs to
const FIELDS = {
  "input.img_url": "image", "input.prompt": "prompt", "input.negative_prompt": "negative_prompt",
  "input.audio_url": "audio_url", "input.template": "general", "model": "model",
  "parameters.resolution": "resolution", "parameters.duration": "duration",
  "parameters.audio": "audio", "parameters.shot_type": "shot_type", "parameters.seed": "seed",
  "parameters.prompt_extend": "prompt_extend", "parameters.watermark": "watermark",
};

const $ = (id) => document.getElementById(id);
const state = {
  models: [], model: null, image: null,
  task: null, pollTimer: 0, clockTimer: 0, startedAt: 0,
  listOffset: 0,
  account: null, accountSeq: 0, catalogSeq: 0, listLoad: null,
};
// refusals that are about the account, not a field: shown next to the submit button
const SUBMIT_CODES = {
  Arrearage: "Balance too low",
  "Throttling.RateQuota": "Too many submits",
  "Throttling.AllocationQuota": "Limit reached",
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- money

// Amounts are exact, as in stillmotion/money.py: the API's decimal strings become BigInt
// micros (millionths of the currency) and back; no amount ever passes through a float.
const SCALE = 1000000n;

function toMicros(text) {
  const match = /^(-?)(\d+)(?:\.(\d{1,6}))?$/.exec(String(text ?? "").trim());
  if (!match) return null;
  const micros = BigInt(match[2]) * SCALE + BigInt((match[3] || "").padEnd(6, "0"));
  return match[1] ? -micros : micros;
}

// 3000000n -> "3.00", 595000n -> "0.595": at least two decimals, more only where they matter
function formatMicros(micros) {
  const abs = micros < 0n ? -micros : micros;
  const frac = (abs % SCALE).toString().padStart(6, "0").replace(/0+$/, "").padEnd(2, "0");
  return `${micros < 0n ? "-" : ""}${abs / SCALE}.${frac}`;
}

function money(text) {
  const micros = toMicros(text);
  return micros === null ? null : `${formatMicros(micros)} ${currency()}`;
}

function currency() {
  if (state.account && state.account.currency) return state.account.currency;
  const priced = state.models.find((m) => m.price && m.price.currency);
  return priced ? priced.price.currency : "CNY";
}

// ---------------------------------------------------------------- API

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = `Bearer ${apiKey()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "NetworkError", `The server could not be reached (${err.message}).`);
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const code = (data && data.code) || `HTTP${resp.status}`;
    throw new ApiError(resp.status, code, (data && data.message) || resp.statusText);
  }
  return data;
}

// ---------------------------------------------------------------- errors next to fields

function fieldFor(err) {
  if (err.code === "InvalidApiKey") return "key";
  const match = /\b(input\.\w+|parameters\.\w+|model)\b/.exec(err.message || "");
  if (match && FIELDS[match[1]]) return FIELDS[match[1]];
  if (err.code === "BadRequest.TooLarge") return "image";
  return "general";
}

function showError(field, message) {
  const slot = document.querySelector(`[data-error-for="${field}"]`) ||
    document.querySelector('[data-error-for="general"]');
  slot.textContent = message;
  const box = slot.closest(".field, .key-form");
  if (box) box.classList.add("invalid");
  const details = slot.closest("details");
  if (details) details.open = true;
  if (field !== "general") slot.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

function clearErrors(scope) {
  scope.querySelectorAll("[data-error-for]").forEach((slot) => {
    slot.textContent = "";
    delete slot.dataset.code;
  });
  [scope, ...scope.querySelectorAll(".invalid")].forEach((el) => el.classList.remove("invalid"));
}

// ---------------------------------------------------------------- key

function renderKey() {
  const saved = apiKey();
  $("api-key").value = saved;
  $("forget-key").hidden = !saved;
  $("save-key").textContent = saved ? "Saved" : "Save";
}

async function saveKey(event) {
  event.preventDefault();
  const value = $("api-key").value.trim();
  clearErrors($("key-form"));
  if (!value) return showError("key", "Paste an API key (stillmotion keys create --name NAME).");
  localStorage.setItem(KEY_STORAGE, value);
  renderKey();
  loadAccount();
  loadPrices();
  await loadTasks(true);
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  renderKey();
  $("tasks").replaceChildren();
  $("tasks-empty").hidden = false;
  $("task-total").textContent = "";
  $("more").hidden = true;
  loadAccount();
  loadPrices();
}

// ---------------------------------------------------------------- account

async function loadAccount() {
  const seq = ++state.accountSeq;  // only the latest answer is shown
  let account = null;
  if (apiKey()) {
    try {
      account = await api("/v1/account");
    } catch {
      account = null;  // a bad key is reported by the task list; no balance line then
    }
  }
  if (seq !== state.accountSeq) return;
  state.account = account;
  renderAccount();
  updatePrice();
}

// Billing on: "Available: 97.00 CNY (held 3.00)", what a submit can still be quoted against.
// Billing off nothing is held or charged, so the line says so next to the balance instead of
// presenting the amount as money at stake; prices and costs are still shown (what it would
// have cost).
function renderAccount() {
  const box = $("account");
  const acct = state.account;
  const available = acct && toMicros(acct.available);
  if (!acct || available === null) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const amount = Object.assign(document.createElement("strong"), {
    id: "balance", textContent: money(acct.available),
  });
  box.dataset.billing = acct.billing;
  if (acct.billing === "on") {
    const held = toMicros(acct.held);
    const tail = held ? ` (held ${formatMicros(held)})` : "";
    box.replaceChildren("Available: ", amount, tail);
  } else {
    box.replaceChildren("Balance: ", amount, " · billing off: nothing is held or charged");
  }
  box.hidden = false;
}

// ---------------------------------------------------------------- catalog and controls

// With a key the catalog's prices are the caller's (price group); an unknown key gets the list.
async function fetchCatalog() {
  if (apiKey()) {
    try {
      return (await api("/v1/models")).data;
    } catch (err) {
      if (err.status !== 401) throw err;
    }
  }
  return (await api("/v1/models", { auth: false })).data;
}

async function loadCatalog() {
  const seq = ++state.catalogSeq;
  let models;
  try {
    models = await fetchCatalog();
  } catch (err) {
    return showError("model", `Could not load the model catalog: ${err.message}`);
  }
  if (seq !== state.catalogSeq && state.models.length) return;
  state.models = models;
  $("model").replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
  selectModel(state.models[0].id);
}

// The key changed: take the new prices, keep the form as it is.
async function loadPrices() {
  if (!state.models.length) return loadCatalog();
  const seq = ++state.catalogSeq;
  let models;
  try {
    models = await fetchCatalog();
  } catch {
    return;
  }
  if (seq !== state.catalogSeq) return;
  const prices = new Map(models.map((m) => [m.id, m.price]));
  state.models.forEach((m) => { m.price = prices.get(m.id); });
  updatePrice();
}

function segmented(container, name, values, selected, label = (v) => v) {
  container.replaceChildren(...values.map((value) => {
    const wrap = document.createElement("label");
    const input = Object.assign(document.createElement("input"), {
      type: "radio", name, value: String(value), checked: value === selected,
    });
    const text = Object.assign(document.createElement("span"), { textContent: label(value) });
    wrap.append(input, text);
    return wrap;
  }));
}

function checkedValue(name) {
  const input = document.querySelector(`input[name="${name}"]:checked`);
  return input ? input.value : null;
}

function isRange(values) {
  return values.length > 2 && values.every((v, i) => i === 0 || v === values[i - 1] + 1);
}

function renderDuration(model) {
  const box = $("duration-control");
  const values = model.durations;
  if (isRange(values)) {
    const range = Object.assign(document.createElement("input"), {
      type: "range", id: "duration", min: values[0], max: values.at(-1), step: 1,
      value: model.default_duration,
    });
    range.setAttribute("aria-label", "Duration in seconds");
    range.addEventListener("input", () => { $("duration-out").textContent = `${range.value} s`; });
    box.replaceChildren(range);
    $("duration-out").textContent = `${model.default_duration} s`;
  } else {
    const group = Object.assign(document.createElement("div"), { className: "segmented" });
    segmented(group, "duration", values, model.default_duration, (v) => `${v} s`);
    box.replaceChildren(group);
    $("duration-out").textContent = "";
  }
}

function durationValue() {
  const range = $("duration");
  return Number(range ? range.value : checkedValue("duration"));
}

function audioValue(model) {
  return model.audio === "optional" ? $("audio").checked : model.audio !== "never";
}

// Micros per output second for the model, tier and audio choice (a model without a silent
// price has only "audio", and one without audio only "silent"); null when not priced.
function pricePerSecond(model, resolution, audio) {
  const row = model.price && model.price.per_second && model.price.per_second[resolution];
  if (!row) return null;
  return toMicros(audio ? (row.audio ?? row.silent) : (row.silent ?? row.audio));
}

// "This video: 5 s × 0.60 = 3.00 CNY": what the service quotes (price × requested seconds).
function updatePrice() {
  const box = $("price");
  const model = state.model;
  const res = checkedValue("resolution");
  const seconds = durationValue();
  const per = model && res ? pricePerSecond(model, res, audioValue(model)) : null;
  if (per === null || !Number.isInteger(seconds) || seconds <= 0) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const total = per * BigInt(seconds);
  const cur = (model.price && model.price.currency) || currency();
  const parts = [
    `This video: ${seconds} s × ${formatMicros(per)} = `,
    Object.assign(document.createElement("strong"), {
      id: "price-total", textContent: `${formatMicros(total)} ${cur}`,
    }),
  ];
  const acct = state.account;
  const available = acct && toMicros(acct.available);
  const short = acct && acct.billing === "on" && available !== null && available < total;
  if (short) parts.push(note(`more than the ${formatMicros(available)} ${cur} available`));
  else if (acct && acct.billing === "off") parts.push(note("not charged: billing off"));
  box.classList.toggle("short", Boolean(short));
  box.dataset.micros = String(total);
  box.replaceChildren(...parts);
  box.hidden = false;
}

function note(text) {
  return Object.assign(document.createElement("span"), {
    className: "price-note", textContent: text,
  });
}

function selectModel(id) {
  const model = state.models.find((m) => m.id === id);
  state.model = model;
  $("model").value = id;
  $("model-desc").textContent = model.description;
  const keep = checkedValue("resolution");
  const res = model.resolutions.includes(keep) ? keep : model.default_resolution;
  segmented($("resolutions"), "resolution", model.resolutions, res);
  renderDuration(model);
  const optional = model.audio === "optional";
  $("audio-toggle").hidden = !optional;
  $("audio-note").textContent = optional
    ? "Switch off for a silent (cheaper) video."
    : "This model always makes video with audio.";
  $("shot-field").hidden = model.shot_types.length === 0;
  segmented($("shot-types"), "shot_type", model.shot_types, model.shot_types[0]);
  $("prompt").maxLength = model.prompt_max;
  $("negative-prompt").maxLength = model.negative_prompt_max;
  updateCounts();
  updateSizeInfo();
  updatePrice();
}

function updateCounts() {
  if (!state.model) return;
  $("prompt-count").textContent = `${$("prompt").value.length} / ${state.model.prompt_max}`;
  const neg = $("negative-prompt").value.length;
  $("negative-count").textContent = `${neg} / ${state.model.negative_prompt_max}`;
}

// ---------------------------------------------------------------- image

// Same formula as stillmotion/media/geometry.py: keep the aspect ratio at the tier's area,
// floor both sides to multiples of 16.
function outputSize(width, height, tier, multiple = 16) {
  const area = tier[0] * tier[1];
  const ar = width / height;
  const h = Math.sqrt(area / ar);
  const w = ar * h;
  const floor = (x) => Math.max(multiple, Math.floor(x / multiple) * multiple);
  return [floor(w), floor(h)];
}

function sniffImage(bytes) {
  const at = (i, ...xs) => xs.every((x, j) => bytes[i + j] === x);
  if (at(0, 0xff, 0xd8, 0xff)) return "image/jpeg";
  if (at(0, 0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (at(0, 0x42, 0x4d)) return "image/bmp";
  if (at(0, 0x52, 0x49, 0x46, 0x46) && at(8, 0x57, 0x45, 0x42, 0x50)) return "image/webp";
  return null;
}

function readDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function loadImage(file) {
  clearErrors($("drop").closest(".field"));
  state.image = null;
  const mime = sniffImage(new Uint8Array(await file.slice(0, 12).arrayBuffer()));
  if (!mime) return imageProblem("Not a JPEG, PNG, BMP or WEBP image.");
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  try {
    await preview.decode();
  } catch {
    return imageProblem("This image cannot be decoded.");
  }
  preview.hidden = false;
  $("drop").classList.add("has-image");
  const { naturalWidth: width, naturalHeight: height } = preview;
  const uri = (await readDataUri(file)).replace(/^data:[^,]*,/, `data:${mime};base64,`);
  state.image = { name: file.name, size: file.size, width, height, uri };
  updateSizeInfo();
  const side = Math.min(width, height) < SIDE_MIN || Math.max(width, height) > SIDE_MAX;
  if (side) imageProblem(`Sides must be ${SIDE_MIN}–${SIDE_MAX} px; this is ${width}×${height}.`);
  else if (state.model && file.size > state.model.image_max_bytes) {
    imageProblem(`The image is over ${state.model.image_max_bytes / 2 ** 20} MB.`);
  }
}

function imageProblem(message) {
  showError("image", message);
  return null;
}

function updateSizeInfo() {
  const img = state.image;
  const res = checkedValue("resolution");
  if (!img || !state.model || !res) {
    $("image-info").textContent = "";
    return;
  }
  const [w, h] = outputSize(img.width, img.height, state.model.tiers[res]);
  const kb = Math.round(img.size / 1024);
  $("image-info").replaceChildren(
    `${img.name} · ${img.width}×${img.height} · ${kb} KB → video `,
    Object.assign(document.createElement("strong"), { id: "output-size", textContent: `${w}×${h}` }),
    ` at ${res}`,
  );
}

// ---------------------------------------------------------------- submit

// The model's body generation (GET /v1/models `body`, docs/api.md): legacy img_url, a
// media[] list (Wan 2.7 / 3.0), or kf2v's first and last frame (here: the one image twice).
function bodyMedia(kind, image, audioUrl) {
  if (kind === "media") {
    const media = [{ type: "first_frame", url: image }];
    if (audioUrl) media.push({ type: "driving_audio", url: audioUrl });
    return { media };
  }
  if (kind === "kf2v") return { first_frame_url: image, last_frame_url: image };
  const input = { img_url: image };
  if (audioUrl) input.audio_url = audioUrl;
  return input;
}

function requestBody() {
  const model = state.model;
  const prompt = $("prompt").value.trim();
  const negative = $("negative-prompt").value.trim();
  const audioUrl = $("audio-url").value.trim();
  const input = bodyMedia(model.body, state.image.uri, audioUrl);
  if (prompt) input.prompt = prompt;
  if (negative) input.negative_prompt = negative;
  const parameters = {
    resolution: checkedValue("resolution"),
    duration: durationValue(),
    prompt_extend: $("prompt-extend").checked,
    watermark: $("watermark").checked,
  };
  if (model.audio === "optional") parameters.audio = $("audio").checked;
  if (model.shot_types.length) parameters.shot_type = checkedValue("shot_type");
  const seed = $("seed").value.trim();
  if (seed !== "") parameters.seed = Number(seed);
  return { model: model.id, input, parameters };
}

async function submit(event) {
  event.preventDefault();
  clearErrors($("generate-form"));
  if (!apiKey()) return showError("key", "Paste your API key and save it first.");
  if (!state.image) return showError("image", "Choose a first frame.");
  const button = $("submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const body = await api("/task/bailian/image2video", { method: "POST", body: requestBody() });
    openTask(body.output.task_id, body);
    loadTasks(true);
    loadAccount();
    if (matchMedia("(max-width: 860px)").matches) {
      $("result").scrollIntoView({ behavior: "smooth", block: "start" });
    }
  } catch (err) {
    if (SUBMIT_CODES[err.code] || err.code.startsWith("Throttling")) {
      showSubmitError(err);
      loadAccount();
    } else {
      showError(fieldFor(err), err.message);
    }
  } finally {
    button.disabled = false;
    button.textContent = "Generate video";
  }
}

// An account refusal (balance, rate, limits) sits next to the button; the next submit clears
// it (clearErrors) and only another refusal brings it back.
function showSubmitError(err) {
  const slot = $("submit-error");
  const label = SUBMIT_CODES[err.code] || "Throttled";
  slot.replaceChildren(
    Object.assign(document.createElement("strong"), { textContent: `${label} (${err.code})` }),
    `: ${err.message}`,
  );
  slot.dataset.code = err.code;
}

// ---------------------------------------------------------------- the current task

function stopWatching() {
  clearTimeout(state.pollTimer);
  clearInterval(state.clockTimer);
}

function openTask(taskId, body = null) {
  stopWatching();
  state.task = taskId;
  state.startedAt = Date.now();
  const video = $("video");
  video.hidden = true;
  video.removeAttribute("src");
  video.load();
  video.parentElement.classList.remove("has-video");
  $("placeholder").hidden = false;
  $("placeholder").textContent = "Waiting for the video…";
  $("download").hidden = true;
  $("task-id").textContent = taskId;
  $("result-message").textContent = "";
  $("percent").textContent = "";
  markOpen();
  state.clockTimer = setInterval(tick, 500);
  if (body) renderTask(body.output);
  poll(taskId, 0);
}

function tick() {
  const s = Math.floor((Date.now() - state.startedAt) / 1000);
  $("elapsed").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function poll(taskId, round) {
  if (state.task !== taskId) return;
  let output;
  try {
    output = (await api(`/task/${encodeURIComponent(taskId)}`)).output;
  } catch (err) {
    $("result-message").textContent = `${err.code}: ${err.message}`;
    if (err.status === 401) return finish(null);
  }
  if (state.task !== taskId) return;
  if (output) renderTask(output);
  if (output && TERMINAL.has(output.task_status)) return finish(output);
  const delay = Math.min(3000, 700 + 250 * round);
  state.pollTimer = setTimeout(() => poll(taskId, round + 1), delay);
}

function renderTask(output) {
  const status = output.task_status;
  const pill = $("status");
  pill.textContent = status.toLowerCase();
  pill.dataset.status = status;
  $("cancel").hidden = status !== "PENDING";
  const bar = $("progress");
  const pct = typeof output.progress === "number" ? output.progress : null;
  bar.classList.toggle("indeterminate", !TERMINAL.has(status) && pct === null);
  bar.dataset.status = status;
  $("progress-bar").style.width = `${pct ?? (status === "SUCCEEDED" ? 100 : 0)}%`;
  bar.setAttribute("aria-valuenow", String(pct ?? 0));
  $("percent").textContent = pct !== null && !TERMINAL.has(status) ? `${pct}%` : "";
}

function finish(output) {
  stopWatching();
  $("cancel").hidden = true;
  $("progress").classList.remove("indeterminate");
  if (output && output.submit_time && output.end_time) {
    const took = (Date.parse(output.end_time.replace(" ", "T")) -
      Date.parse(output.submit_time.replace(" ", "T"))) / 1000;
    if (Number.isFinite(took)) $("elapsed").textContent = `took ${took.toFixed(1)} s`;
  }
  if (output && output.task_status === "SUCCEEDED") showVideo(output.video_url, output.task_id);
  else if (output) {
    $("placeholder").textContent = "No video.";
    const why = output.code ? `${output.code}: ${output.message}` : `The task is ${output.task_status}.`;
    $("result-message").textContent = why;
  }
  refreshListItem(output);
  if (output) {
    loadAccount();  // the hold became a charge (or was released)
    refreshListItems();  // the cost is in the list once the task ended
  }
}

function showVideo(url, taskId) {
  const video = $("video");
  video.src = url;
  video.hidden = false;
  video.parentElement.classList.add("has-video");
  $("placeholder").hidden = true;
  const link = $("download");
  link.href = url;
  link.download = `stillmotion-${taskId.slice(0, 8)}.mp4`;
  link.hidden = false;
}

async function cancelTask() {
  const taskId = state.task;
  try {
    await api(`/task/${encodeURIComponent(taskId)}/cancel`, { method: "POST" });
    poll(taskId, 0);
  } catch (err) {
    $("result-message").textContent = `${err.code}: ${err.message}`;
  }
}

// ---------------------------------------------------------------- recent tasks

// the list's latest load: a refresh after a task ended waits for it, so it is not overwritten
function loadTasks(reset) {
  state.listLoad = fetchTasks(reset);
  return state.listLoad;
}

async function fetchTasks(reset) {
  if (!apiKey()) return;
  if (reset) state.listOffset = 0;
  clearErrors($("tasks").parentElement);
  let page;
  try {
    page = await api(`/v1/tasks?limit=${PAGE}&offset=${state.listOffset}`);
  } catch (err) {
    return showError(err.status === 401 ? "key" : "tasks", err.message);
  }
  const items = page.data.map(taskItem);
  if (reset) $("tasks").replaceChildren(...items);
  else $("tasks").append(...items);
  state.listOffset += page.data.length;
  $("task-total").textContent = page.total ? `${page.total}` : "";
  $("tasks-empty").hidden = page.total > 0;
  $("tasks-empty").textContent = "No tasks yet: make your first video.";
  $("more").hidden = state.listOffset >= page.total;
  markOpen();
}

function taskItem(task) {
  const li = document.createElement("li");
  li.dataset.taskId = task.task_id;
  const button = Object.assign(document.createElement("button"), { type: "button" });
  button.addEventListener("click", () => openTask(task.task_id));
  const pill = Object.assign(document.createElement("span"), {
    className: "pill", textContent: task.task_status.toLowerCase(),
  });
  pill.dataset.status = task.task_status;
  const prompt = Object.assign(document.createElement("span"), {
    className: "prompt", textContent: task.prompt || "(no prompt)",
  });
  const meta = Object.assign(document.createElement("span"), {
    className: "meta",
    textContent: [task.model, task.resolution, task.duration && `${task.duration} s`,
      task.submit_time && task.submit_time.slice(5, 16)].filter(Boolean).join(" · "),
  });
  const charge = chargeText(task);
  if (charge) {
    meta.append(" · ", Object.assign(document.createElement("span"), {
      className: "cost", textContent: charge,
    }));
  }
  button.append(pill, prompt, meta);
  li.append(button);
  return li;
}

// "cost 3.00 CNY" once the task ended (with billing off: what it would have cost), its
// "quote 3.00 CNY" while it waits or runs
function chargeText(task) {
  const cost = task.cost != null && money(task.cost);
  if (cost) return `cost ${cost}`;
  const quote = !TERMINAL.has(task.task_status) && task.quote != null && money(task.quote);
  return quote ? `quote ${quote}` : "";
}

// Re-render the listed tasks of the first page in place (status, cost), keeping later pages.
async function refreshListItems() {
  if (!apiKey()) return;
  await state.listLoad;
  let page;
  try {
    page = await api(`/v1/tasks?limit=${PAGE}&offset=0`);
  } catch {
    return;
  }
  page.data.forEach((task) => {
    const li = document.querySelector(`#tasks li[data-task-id="${CSS.escape(task.task_id)}"]`);
    if (li) li.replaceWith(taskItem(task));
  });
  markOpen();
}

function markOpen() {
  document.querySelectorAll("#tasks li").forEach((li) => {
    li.classList.toggle("open", li.dataset.taskId === state.task);
  });
}

function refreshListItem(output) {
  if (!output) return;
  const li = document.querySelector(`#tasks li[data-task-id="${CSS.escape(output.task_id)}"]`);
  const pill = li && li.querySelector(".pill");
  if (!pill) return;
  pill.textContent = output.task_status.toLowerCase();
  pill.dataset.status = output.task_status;
}

// ---------------------------------------------------------------- wiring

function wireDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => {
    drop.classList.remove("dragging");
  }));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) loadImage(file);
  });
  $("image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) loadImage(file);
  });
}

function wire() {
  $("key-form").addEventListener("submit", saveKey);
  $("api-key").addEventListener("input", () => { $("save-key").textContent = "Save"; });
  $("forget-key").addEventListener("click", forgetKey);
  $("model").addEventListener("change", (e) => selectModel(e.target.value));
  $("resolutions").addEventListener("change", updateSizeInfo);
  ["input", "change"].forEach((type) => $("generate-form").addEventListener(type, updatePrice));
  $("prompt").addEventListener("input", updateCounts);
  $("negative-prompt").addEventListener("input", updateCounts);
  $("generate-form").addEventListener("submit", submit);
  $("generate-form").addEventListener("input", (e) => {
    const box = e.target.closest(".field");
    if (box && box.classList.contains("invalid") && box.dataset.field !== "image") {
      clearErrors(box);
    }
  });
  $("cancel").addEventListener("click", cancelTask);
  $("refresh").addEventListener("click", () => loadTasks(true));
  $("more").addEventListener("click", () => loadTasks(false));
  wireDrop();
}

wire();
renderKey();
loadCatalog();
loadAccount();
loadTasks(true);
