// The Classify view: send the selected clip to POST /classify, show each adapter's labels and
// the per-window timeline under the clip's spectrogram.
import { $, el, showError } from "./dom.js";
import { fetchAdapters, sendForm } from "./api.js";
import { currentClip, onClipChange } from "./clip.js";
import { finishRecording } from "./record.js";
import { Progress } from "./progress.js";
import { drawSpectrogram } from "./spectrogram.js";
import { drawAxis, drawTimelines } from "./timeline.js";
import { updateSnippet } from "./snippet.js";

const AV_METHODS = ["avpea"]; // served by POST /av-event, not /classify
export const isAudioVisual = (a) => AV_METHODS.includes(a.method);

let progress = null;
let spectrogramDuration = null; // seconds of the clip as the page decoded it, or null

function chosenAdapters() {
  return checkedValues("adapter");
}

function topK() {
  return Math.max(1, Math.min(50, Number($("#top-k").value) || 5));
}

export function refreshSnippet() {
  updateSnippet({ adapters: chosenAdapters(), topK: topK(), fileName: currentClip()?.name });
}

/** The checked values of the checkboxes named ``name``. */
export function checkedValues(name) {
  return [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
}

/** Fill ``box`` with one checkbox per audio adapter (named ``name``, ids ``<prefix><adapter>``),
 * keeping what was checked, else checking the first; ``onChange`` runs when one is toggled. */
export async function renderAudioChoices(box, name, prefix, onChange = null) {
  try {
    const keep = new Set(checkedValues(name));
    const adapters = (await fetchAdapters()).filter((a) => !isAudioVisual(a));
    box.replaceChildren();
    if (!adapters.length) {
      box.textContent = "No audio adapters in the store yet: upload one in the Adapters view.";
      return;
    }
    const kept = adapters.some((a) => keep.has(a.name)); // else the first one is picked
    adapters.forEach((a, i) => {
      const id = `${prefix}${a.name}`;
      const input = el("input", { type: "checkbox", id, name, value: a.name });
      input.checked = kept ? keep.has(a.name) : i === 0;
      if (onChange) input.addEventListener("change", onChange);
      const label = el("label", { for: id }, input, `${a.name}`);
      if (a.active != null) label.append(el("small", { text: ` v${a.active}` }));
      box.append(label);
    });
  } catch (err) {
    box.textContent = `Could not list adapters: ${err.message}`;
  }
}

export async function loadAdapterChoices() {
  await renderAudioChoices($("#adapter-choices"), "adapter", "choice-", refreshSnippet);
  refreshSnippet();
}

/** Score bars of ``labels`` ({label, score}), as both views show them. */
export function bars(labels) {
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

function clearResults() {
  $("#results").replaceChildren();
  $("#timelines").replaceChildren();
  $("#clip-inner").style.width = "";
}

function showResults(body, latency) {
  const cards = body.results.map((r) =>
    el("article", { class: "result", "data-adapter": r.adapter },
      el("h3", { text: r.adapter }),
      el("p", { class: "meta", text: `version ${r.version} · ${body.duration_s.toFixed(2)} s of audio · ${latency.toFixed(0)} ms` }),
      bars(r.labels),
    ));
  $("#results").replaceChildren(...cards);
  $("#clip-view").hidden = false;
  drawTimelines($("#timelines"), body.results, spectrogramDuration || body.duration_s, $("#player"));
}

export async function classify(event) {
  event?.preventDefault();
  const errorBox = $("#classify-error");
  showError(errorBox, "");
  clearResults(); // a new request: the previous clip's answer goes
  await finishRecording(); // Classify during a recording sends that recording
  const chosen = chosenAdapters();
  const clip = currentClip();
  if (!chosen.length) return showError(errorBox, "Pick at least one adapter.");
  if (!clip) return showError(errorBox, "Choose an audio file, drop one here, record a clip or try an example first.");
  const form = new FormData();
  form.append("file", clip.blob, clip.name);
  form.append("adapter", chosen.join(","));
  form.append("top_k", String(topK()));
  refreshSnippet();
  const button = $("#classify-button");
  button.disabled = true;
  progress.start(clip.name);
  const started = performance.now();
  try {
    const answer = await sendForm("/classify", form, {
      onProgress: (f) => progress.upload(f),
      onSent: () => progress.sent(),
    });
    if (!answer.ok) return showError(errorBox, answer.error);
    showResults(answer.body, performance.now() - started);
  } catch (err) {
    showError(errorBox, `Request failed: ${err.message}`);
  } finally {
    progress.stop();
    button.disabled = false;
  }
}

async function showClip(clip) {
  clearResults();
  showError($("#classify-error"), "");
  refreshSnippet();
  const canvas = $("#spectrogram");
  const note = $("#spectrogram-note");
  $("#clip-view").hidden = false;
  spectrogramDuration = null;
  canvas.hidden = false;
  $("#time-axis").replaceChildren();
  try {
    spectrogramDuration = await drawSpectrogram(canvas, clip.blob);
    if (currentClip() !== clip) return; // another clip was selected meanwhile
    drawAxis($("#time-axis"), spectrogramDuration);
    canvas.setAttribute("aria-label", `spectrogram of ${clip.name}, ${spectrogramDuration.toFixed(2)} s`);
    note.textContent = `${clip.name}: ${spectrogramDuration.toFixed(2)} s, 0–8 kHz`;
  } catch (err) {
    if (currentClip() !== clip) return;
    canvas.hidden = true;
    note.textContent = `No spectrogram: this browser cannot decode ${clip.name} (${err.message || err}). The server may still.`;
  }
}

export function setUpClassify() {
  progress = new Progress($("#classify-progress"));
  $("#classify-form").addEventListener("submit", classify);
  $("#top-k").addEventListener("input", refreshSnippet);
  onClipChange(showClip);
}
