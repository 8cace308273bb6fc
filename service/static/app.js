// Lookaside web page: vanilla JS over the public HTTP API (GET /adapters, POST /classify,
// POST /av-event, POST /adapters, POST /adapters/{name}/activate,
// DELETE /adapters/{name}/versions/{v}).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "lookaside-admin-token";
let recorded = null; // Blob from the microphone, used when no file is chosen

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail || JSON.stringify(body)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function adminHeaders() {
  const token = $("#admin-token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// -- tabs (WAI-ARIA tabs pattern: arrows move between tabs) --------------------------------
function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  tab.focus();
  if (tab.id === "tab-adapters") loadAdapterTable();
  if (tab.id === "tab-av") loadAvChoices();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") selectTab(tabs[(i + 1) % tabs.length]);
      if (e.key === "ArrowLeft") selectTab(tabs[(i - 1 + tabs.length) % tabs.length]);
    });
  });
}

// -- adapters ------------------------------------------------------------------------------
// GET /adapters is paginated: follow next_cursor (at most MAX_PAGES pages of 1000 names).
const MAX_PAGES = 20;
async function fetchAdapters() {
  const all = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const query = new URLSearchParams({ limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const response = await fetch(`/adapters?${query}`);
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    all.push(...(body.adapters || []));
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return all;
}

function activeOf(a) {
  return a.active ?? null;
}

async function loadAdapterChoices() {
  const box = $("#adapter-choices");
  try {
    const adapters = (await fetchAdapters()).filter((a) => !isAudioVisual(a));
    box.replaceChildren();
    if (!adapters.length) {
      box.textContent = "No audio adapters in the store yet: upload one in the Adapters view.";
      return;
    }
    adapters.forEach((a, i) => {
      const id = `choice-${a.name}`;
      const input = el("input", { type: "checkbox", id, name: "adapter", value: a.name });
      if (i === 0) input.checked = true;
      const label = el("label", { for: id }, input, `${a.name}`);
      const version = activeOf(a);
      if (version !== null) label.append(el("small", { text: ` v${version}` }));
      box.append(label);
    });
  } catch (err) {
    box.textContent = `Could not list adapters: ${err.message}`;
  }
}

const AV_METHODS = ["avpea"]; // methods served by POST /av-event (frames + sound per second)

function isAudioVisual(a) {
  return AV_METHODS.includes(a.method);
}

async function loadAvChoices() {
  const select = $("#av-adapter");
  try {
    const adapters = (await fetchAdapters()).filter(isAudioVisual);
    select.replaceChildren();
    if (!adapters.length) {
      select.append(el("option", { value: "", text: "No audio-visual adapters in the store" }));
      return;
    }
    for (const a of adapters) {
      const version = activeOf(a);
      select.append(el("option", { value: a.name, text: version !== null ? `${a.name} (v${version})` : a.name }));
    }
  } catch (err) {
    select.replaceChildren(el("option", { value: "", text: `Could not list adapters: ${err.message}` }));
  }
}

function versionsOf(a) {
  return (a.versions || []).map((v) => (typeof v === "object" ? v.version : v));
}

async function adapterAction(method, url, body) {
  const init = { method, headers: adminHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json().catch(() => ({}));
}

async function loadAdapterTable() {
  const box = $("#adapters-list");
  const errorBox = $("#adapters-error");
  showError(errorBox, "");
  let adapters;
  try {
    adapters = await fetchAdapters();
  } catch (err) {
    showError(errorBox, `Could not list adapters: ${err.message}`);
    return;
  }
  const details = await Promise.all(
    adapters.map((a) =>
      fetch(`/adapters/${encodeURIComponent(a.name)}`).then((r) => (r.ok ? r.json() : a)),
    ),
  );
  const head = el("thead", {}, el("tr", {}, ...["Name", "Task", "Method", "Params", "State", "Labels", "Metrics", "Versions"].map((h) => el("th", { scope: "col", text: h }))));
  const body = el("tbody");
  for (const a of details) {
    const active = activeOf(a);
    const versions = el("div", { class: "versions" });
    for (const v of versionsOf(a)) {
      const isActive = v === active;
      const button = el("button", {
        type: "button",
        text: isActive ? `v${v} (active)` : `activate v${v}`,
        "aria-label": isActive ? `version ${v} of ${a.name} is active` : `activate version ${v} of ${a.name}`,
      });
      button.disabled = isActive;
      button.addEventListener("click", async () => {
        try {
          await adapterAction("POST", `/adapters/${encodeURIComponent(a.name)}/activate`, { version: v });
          await loadAdapterTable();
          await loadAdapterChoices();
        } catch (err) {
          showError(errorBox, `Activate failed: ${err.message}`);
        }
      });
      versions.append(button);
    }
    // GET /adapters/{name} describes each version; show the active one (else the newest).
    const infos = (a.versions || []).filter((v) => typeof v === "object");
    const info = infos.find((v) => v.version === active) || infos[infos.length - 1] || a;
    const percent = info.trainable_percent;
    const metrics = Object.entries(info.metrics || {}).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(", ");
    const labels = info.labels || [];
    const state = info.state || a.state || "unloaded";
    const reason = info.reason || "";
    body.append(
      el("tr", {},
        el("td", { "data-label": "Name", text: a.name }),
        el("td", { "data-label": "Task", text: info.task || "" }),
        el("td", { "data-label": "Method", text: info.method || "" }),
        el("td", { "data-label": "Params", text: percent !== undefined ? `${Number(percent).toFixed(2)} %` : "" }),
        el("td", { "data-label": "State", class: `state-${state}`, text: reason ? `${state}: ${reason}` : state + (info.resident ? " (resident)" : "") }),
        el("td", { "data-label": "Labels", text: labels.length > 8 ? `${labels.slice(0, 8).join(", ")} … (${labels.length})` : labels.join(", ") }),
        el("td", { "data-label": "Metrics", text: metrics }),
        el("td", { "data-label": "Versions" }, versions),
      ),
    );
  }
  box.replaceChildren(adapters.length ? el("table", {}, head, body) : el("p", { text: "The store is empty." }));
}

async function upload(event) {
  event.preventDefault();
  const status = $("#upload-status");
  const manifest = $("#upload-manifest").files[0];
  const weights = $("#upload-weights").files[0];
  if (!manifest || !weights) {
    status.textContent = "Choose both manifest.json and adapter.safetensors.";
    return;
  }
  const form = new FormData();
  form.append("manifest", manifest, "manifest.json");
  form.append("weights", weights, "adapter.safetensors");
  const activate = $("#upload-activate").checked ? "?activate=true" : "";
  status.textContent = "Uploading…";
  const response = await fetch(`/adapters${activate}`, { method: "POST", headers: adminHeaders(), body: form });
  if (!response.ok) {
    status.textContent = `Upload refused: ${await errorText(response)}`;
    return;
  }
  const body = await response.json();
  status.textContent = `Stored ${body.name} v${body.version}${response.status === 200 ? " (identical content was already stored)" : ""}.`;
  await loadAdapterTable();
  await loadAdapterChoices();
}

// -- recording -----------------------------------------------------------------------------
let recorder = null;
async function toggleRecording() {
  const button = $("#record-button");
  const status = $("#record-status");
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status.textContent = "This browser cannot record audio; choose a file instead.";
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      recorded = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
      button.setAttribute("aria-pressed", "false");
      button.textContent = "● Record from microphone";
      status.textContent = `Recorded ${(recorded.size / 1024).toFixed(0)} KiB; press Classify.`;
    };
    recorder.start();
    button.setAttribute("aria-pressed", "true");
    button.textContent = "■ Stop recording";
    status.textContent = "Recording…";
  } catch (err) {
    status.textContent = `Microphone unavailable: ${err.message}`;
  }
}

// -- classify ------------------------------------------------------------------------------
function bars(labels) {
  const list = el("ul", { class: "bars" });
  for (const { label, score } of labels) {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    list.append(
      el("li", {},
        el("span", { class: "label", text: label }),
        el("span", { class: "bar", role: "img", "aria-label": `${label} ${(score * 100).toFixed(1)} percent` }, fill),
        el("span", { class: "score", text: score.toFixed(3) }),
      ),
    );
  }
  return list;
}

function timeline(windows) {
  const strip = el("div", { class: "timeline", role: "list", "aria-label": "labels over time" });
  for (const w of windows) {
    const top = w.labels[0] || { label: "", score: 0 };
    strip.append(
      el("div", { role: "listitem" },
        el("small", { text: `${w.start_s.toFixed(1)}–${w.end_s.toFixed(1)} s` }),
        `${top.label}`,
      ),
    );
  }
  return strip;
}

async function classify(event) {
  event.preventDefault();
  const errorBox = $("#classify-error");
  showError(errorBox, "");
  const chosen = [...document.querySelectorAll('input[name="adapter"]:checked')].map((i) => i.value);
  const file = $("#audio-file").files[0] || recorded;
  if (!chosen.length) return showError(errorBox, "Pick at least one adapter.");
  if (!file) return showError(errorBox, "Choose an audio file or record a clip first.");
  const form = new FormData();
  form.append("file", file, file.name || "recording.webm");
  form.append("adapter", chosen.join(","));
  form.append("top_k", $("#top-k").value || "5");
  const button = $("#classify-button");
  button.disabled = true;
  const started = performance.now();
  try {
    const response = await fetch("/classify", { method: "POST", body: form });
    const latency = performance.now() - started;
    if (!response.ok) return showError(errorBox, await errorText(response));
    const body = await response.json();
    const out = $("#results");
    out.replaceChildren();
    for (const r of body.results) {
      const card = el("article", { class: "result", "data-adapter": r.adapter },
        el("h3", { text: r.adapter }),
        el("p", { class: "meta", text: `version ${r.version} · ${body.duration_s.toFixed(2)} s of audio · ${latency.toFixed(0)} ms` }),
        bars(r.labels),
      );
      if (r.timeline && r.timeline.length) card.append(timeline(r.timeline));
      out.append(card);
    }
  } catch (err) {
    showError(errorBox, `Request failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// -- audio-visual events ------------------------------------------------------------------
// Dark label colours: white text on each keeps a WCAG AA contrast (>= 4.5:1).
const LABEL_COLOURS = ["#0b5cad", "#a4161a", "#1e6b35", "#6a3d9a", "#8a4b00", "#005f73", "#7a1f5c", "#3d4a5c"];
let avVideoUrl = null;

function labelColour(label, labels) {
  return LABEL_COLOURS[labels.indexOf(label) % LABEL_COLOURS.length];
}

function seekTo(video, t) {
  video.currentTime = t;
  video.focus();
}

function secondStrip(seconds, video) {
  const labels = [...new Set(seconds.map((s) => s.label).filter((l) => l !== "background"))];
  const strip = el("ol", { class: "strip", "aria-label": "label of each second (press to jump there)" });
  for (const s of seconds) {
    const isBackground = s.label === "background";
    const button = el("button", {
      type: "button",
      class: isBackground ? "background" : "event",
      "data-t": String(s.t),
      "aria-label": `second ${s.t}: ${s.label}, score ${s.score.toFixed(2)}`,
    }, el("small", { text: `${s.t} s` }), isBackground ? "–" : s.label);
    if (!isBackground) button.style.background = labelColour(s.label, labels);
    button.addEventListener("click", () => seekTo(video, s.t));
    strip.append(el("li", {}, button));
  }
  video.addEventListener("timeupdate", () => {
    const now = Math.floor(video.currentTime);
    for (const b of strip.querySelectorAll("button")) {
      b.setAttribute("aria-current", String(Number(b.dataset.t) === now));
    }
  });
  return strip;
}

function eventList(events, video) {
  if (!events.length) return el("p", { class: "meta", text: "No events: every second is background." });
  const list = el("ol", { class: "events", "aria-label": "events" });
  for (const e of events) {
    const play = el("button", { type: "button", text: "Play", "aria-label": `play ${e.label} from ${e.start_s} s` });
    play.addEventListener("click", () => { seekTo(video, e.start_s); video.play().catch(() => {}); });
    list.append(
      el("li", { "data-label": e.label },
        el("strong", { text: e.label }),
        ` ${e.start_s}–${e.end_s} s · score ${e.score.toFixed(2)}`,
        play,
      ),
    );
  }
  return list;
}

async function findEvents(event) {
  event.preventDefault();
  const errorBox = $("#av-error");
  showError(errorBox, "");
  const adapter = $("#av-adapter").value;
  const video = $("#av-video").files[0];
  const audio = $("#av-audio").files[0];
  if (!adapter) return showError(errorBox, "Pick an audio-visual adapter (upload one in the Adapters view).");
  if (!video) return showError(errorBox, "Choose a video file first.");
  const form = new FormData();
  form.append("video", video, video.name);
  if (audio) form.append("audio", audio, audio.name);
  form.append("adapter", adapter);
  const button = $("#av-button");
  button.disabled = true;
  const started = performance.now();
  try {
    const response = await fetch("/av-event", { method: "POST", body: form });
    const latency = performance.now() - started;
    if (!response.ok) return showError(errorBox, await errorText(response));
    const body = await response.json();
    if (avVideoUrl) URL.revokeObjectURL(avVideoUrl);
    avVideoUrl = URL.createObjectURL(video);
    const player = el("video", { class: "av-player", controls: "", src: avVideoUrl, "aria-label": `uploaded video ${video.name}` });
    const out = $("#av-results");
    out.replaceChildren(
      el("article", { class: "result", "data-adapter": body.adapter },
        el("h3", { text: body.adapter }),
        el("p", { class: "meta", text: `version ${body.version} · ${body.duration_s.toFixed(1)} s of video · ${latency.toFixed(0)} ms` }),
        player,
        el("h4", { text: "Each second" }),
        secondStrip(body.seconds, player),
        el("h4", { text: "Events" }),
        eventList(body.events, player),
      ),
    );
  } catch (err) {
    showError(errorBox, `Request failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTabs();
  const token = $("#admin-token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, token.value));
  $("#audio-file").addEventListener("change", () => { recorded = null; });
  $("#record-button").addEventListener("click", toggleRecording);
  $("#classify-form").addEventListener("submit", classify);
  $("#upload-form").addEventListener("submit", upload);
  $("#av-form").addEventListener("submit", findEvents);
  loadAdapterChoices();
});
