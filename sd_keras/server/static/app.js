// The sd_keras web page: calls the same /sdapi/v1 API as any client, with the API key when the server needs one.
// The key stays in this tab's sessionStorage and is sent as "Authorization: Bearer KEY".
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "sd-keras-api-key";
const POLL_MS = 400;
let pollTimer = null;

function apiKey() {
  return $("api-key").value.trim();
}

async function api(path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (apiKey()) headers["Authorization"] = "Bearer " + apiKey();
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail : response.statusText;
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function fillSelect(select, items, valueOf, labelOf, selected) {
  select.replaceChildren(...items.map((item) => {
    const option = document.createElement("option");
    option.value = valueOf(item);
    option.textContent = labelOf(item);
    option.selected = option.value === selected;
    return option;
  }));
}

async function loadSettings() {
  try {
    const [samplers, schedulers, options, models] = await Promise.all([
      api("/sdapi/v1/samplers"), api("/sdapi/v1/schedulers"), api("/sdapi/v1/options"), api("/sdapi/v1/sd-models"),
    ]);
    // an SDXL refiner continues an SDXL base model's generation ("None": no refiner)
    fillSelect($("refiner-model"), [{title: ""}, ...models], (m) => m.title, (m) => m.title || "None", "");
    fillSelect($("sampler"), samplers, (s) => s.name, (s) => s.name, "Euler a");
    fillSelect($("scheduler"), schedulers, (s) => s.name, (s) => s.label, "automatic");
    $("model-name").textContent = "model: " + options.sd_model_checkpoint;
    if (options.sd_keras_default_width) {
      $("width").value = options.sd_keras_default_width;
      $("height").value = options.sd_keras_default_height;
    }
    setStatus("");
  } catch (error) {
    setStatus(error.status === 401 ? "Enter the API key to use this server." : "Cannot load settings: " + error.message,
              true);
  }
}

function intValue(id) {
  return parseInt($(id).value, 10);
}

function request() {
  return {
    prompt: $("prompt").value,
    negative_prompt: $("negative-prompt").value,
    steps: intValue("steps"),
    cfg_scale: parseFloat($("cfg-scale").value),
    seed: intValue("seed"),
    width: intValue("width"),
    height: intValue("height"),
    batch_size: intValue("batch-size"),
    sampler_name: $("sampler").value,
    scheduler: $("scheduler").value,
    // hires fix: Width x Height is the first pass, the image comes at that size times "Upscale by"
    enable_hr: $("enable-hr").checked,
    hr_scale: parseFloat($("hr-scale").value),
    hr_upscaler: $("hr-upscaler").value,
    hr_second_pass_steps: intValue("hr-steps"),
    denoising_strength: parseFloat($("hr-strength").value),
    // SDXL refiner (A1111's fields): null leaves it off
    refiner_checkpoint: $("refiner-model").value || null,
    refiner_switch_at: parseFloat($("refiner-switch").value),
  };
}

function addToGallery(result) {
  const info = JSON.parse(result.info);
  const figures = result.images.map((image, i) => {
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = "data:image/png;base64," + image;
    link.download = `sd_keras-${info.all_seeds[i]}.png`;
    const img = document.createElement("img");
    img.src = link.href;
    img.alt = info.prompt;
    img.title = info.infotexts[i];
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.textContent = `seed ${info.all_seeds[i]} · ${info.width}x${info.height} · ${info.sampler_name} · ` +
      `${info.steps} steps`;
    figure.append(link, caption);
    return figure;
  });
  $("gallery").prepend(...figures);
  return info;
}

async function pollProgress() {
  try {
    const progress = await api("/sdapi/v1/progress?skip_current_image=true");
    const state = progress.state;
    if (state.job_count > 0 && progress.compiling) {
      // the first run of a size, step count or sampler compiles its program first (up to a minute on a CPU)
      $("progress").removeAttribute("value");
      setStatus(`Step ${state.sampling_step}/${state.sampling_steps} · ${progress.textinfo}…`);
    } else if (state.job_count > 0) {
      $("progress").value = progress.progress;
      setStatus(`Step ${state.sampling_step}/${state.sampling_steps}` +
                (progress.eta_relative > 0.5 ? ` · about ${Math.round(progress.eta_relative)} s left` : ""));
    } else if (state.queue_depth > 0) {
      setStatus(`Waiting in the queue (${state.queue_depth} ahead)`);
    }
  } catch (error) {
    // progress is best-effort; the generation request reports real errors
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("interrupt").disabled = !busy;
  clearInterval(pollTimer);
  pollTimer = busy ? setInterval(pollProgress, POLL_MS) : null;
  if (!busy) $("progress").value = 0;
}

async function generate(event) {
  event.preventDefault();
  setBusy(true);
  setStatus("Generating…");
  const started = performance.now();
  try {
    const result = await api("/sdapi/v1/txt2img", request());
    const info = addToGallery(result);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const done = info.interrupted ? `Interrupted after ${seconds} s` : `Done in ${seconds} s (seed ${info.seed})`;
    // e.g. a size larger than the model's native one
    setStatus([done, ...(info.warnings || [])].join(" · "));
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    setBusy(false);
  }
}

async function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, apiKey());
    loadSettings();
  });
  $("form").addEventListener("submit", generate);
  $("interrupt").addEventListener("click", () => api("/sdapi/v1/interrupt", {}).catch(() => {}));
  try {
    const health = await api("/health");
    $("key-row").hidden = !health.auth_required;
  } catch (error) {
    setStatus("The server does not answer: " + error.message, true);
    return;
  }
  await loadSettings();
}

init();
