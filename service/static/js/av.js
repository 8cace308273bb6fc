// The AV events view: a video through an audio-visual adapter (POST /av-event), the player with
// the per-second strip and the events under it; a way forward when no AV adapter exists.
import { $, copyButton, el, showError } from "./dom.js";
import { fetchAdapters, getJson, sendForm } from "./api.js";
import { isAudioVisual } from "./classify.js";
import { Progress } from "./progress.js";

// Dark label colours: white text on each keeps a WCAG AA contrast (>= 4.5:1).
const LABEL_COLOURS = ["#0b5cad", "#a4161a", "#1e6b35", "#6a3d9a", "#8a4b00", "#005f73", "#7a1f5c", "#3d4a5c"];
const AV_BACKBONE = "timm:vit_base_patch16_224.augreg_in21k"; // docs/training.md, AVE
let videoUrl = null;
let progress = null;

/** The commands that make an AV adapter (docs/training.md) and the backbone it needs. */
async function showHowTo() {
  const train = `lookaside-train train --dataset ave --data-dir data/AVE --method avpea \\\n  --backbone ${AV_BACKBONE} --name ave`;
  const push = `lookaside-train push runs/ave/1 --url ${window.location.origin} \\\n  --token-file admin.token --activate`;
  const code = el("pre", { tabindex: "0", text: `${train}\n${push}` });
  const backbone = el("p", { class: "hint" });
  $("#av-howto").replaceChildren(
    el("h3", { text: "No audio-visual adapter yet" }),
    el("p", { text: "Events in a video need an AV-PEA adapter. Train one on AVE (Annotations.txt, the split files and the videos) and upload it:" }),
    code, copyButton(code, "commands"),
    el("p", { text: `AV-PEA needs a backbone that kept its RGB patch kernel (e.g. ${AV_BACKBONE}; a spectrogram-only one such as AST cannot see frames), and the server must run that same backbone (LOOKASIDE_BACKBONE), else the upload is refused with both fingerprints.` }),
    backbone,
  );
  $("#av-howto").hidden = false;
  try {
    const info = await getJson("/info");
    if (info.backbone) backbone.textContent = `This server runs ${info.backbone}.`;
  } catch {
    // an older server without GET /info: the general rule above stands
  }
}

export async function loadAvChoices() {
  const select = $("#av-adapter");
  try {
    const adapters = (await fetchAdapters()).filter(isAudioVisual);
    select.replaceChildren();
    $("#av-howto").hidden = true;
    if (!adapters.length) {
      select.append(el("option", { value: "", text: "No audio-visual adapters in the store" }));
      await showHowTo();
      return;
    }
    for (const a of adapters) {
      select.append(el("option", { value: a.name, text: a.active != null ? `${a.name} (v${a.active})` : a.name }));
    }
  } catch (err) {
    select.replaceChildren(el("option", { value: "", text: `Could not list adapters: ${err.message}` }));
  }
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
    if (!isBackground) button.style.background = LABEL_COLOURS[labels.indexOf(s.label) % LABEL_COLOURS.length];
    button.addEventListener("click", () => seekTo(video, s.t));
    strip.append(el("li", {}, button));
  }
  video.addEventListener("timeupdate", () => {
    const now = Math.floor(video.currentTime);
    for (const b of strip.querySelectorAll("button")) b.setAttribute("aria-current", String(Number(b.dataset.t) === now));
  });
  return strip;
}

function eventList(events, video) {
  if (!events.length) return el("p", { class: "meta", text: "No events: every second is background." });
  const list = el("ol", { class: "events", "aria-label": "events" });
  for (const e of events) {
    const play = el("button", { type: "button", text: "Play", "aria-label": `play ${e.label} from ${e.start_s} s` });
    play.addEventListener("click", () => { seekTo(video, e.start_s); video.play().catch(() => {}); });
    list.append(el("li", { "data-label": e.label }, el("strong", { text: e.label }), ` ${e.start_s}–${e.end_s} s · score ${e.score.toFixed(2)}`, play));
  }
  return list;
}

function showEvents(body, video, latency) {
  if (videoUrl) URL.revokeObjectURL(videoUrl);
  videoUrl = URL.createObjectURL(video);
  const player = el("video", { class: "av-player", controls: "", src: videoUrl, "aria-label": `uploaded video ${video.name}` });
  $("#av-results").replaceChildren(
    el("article", { class: "result", "data-adapter": body.adapter },
      el("h3", { text: body.adapter }),
      el("p", { class: "meta", text: `version ${body.version} · ${body.duration_s.toFixed(1)} s of video · ${latency.toFixed(0)} ms` }),
      player,
      el("h4", { text: "Each second" }), secondStrip(body.seconds, player),
      el("h4", { text: "Events" }), eventList(body.events, player),
    ),
  );
}

async function findEvents(event) {
  event.preventDefault();
  const errorBox = $("#av-error");
  showError(errorBox, "");
  $("#av-results").replaceChildren();
  const adapter = $("#av-adapter").value;
  const video = $("#av-video").files[0];
  const audio = $("#av-audio").files[0];
  if (!adapter) return showError(errorBox, "Pick an audio-visual adapter (see above how to make one).");
  if (!video) return showError(errorBox, "Choose a video file first.");
  const form = new FormData();
  form.append("video", video, video.name);
  if (audio) form.append("audio", audio, audio.name);
  form.append("adapter", adapter);
  const button = $("#av-button");
  button.disabled = true;
  progress.start(video.name);
  const started = performance.now();
  try {
    const answer = await sendForm("/av-event", form, { onProgress: (f) => progress.upload(f), onSent: () => progress.sent() });
    if (!answer.ok) return showError(errorBox, answer.error);
    showEvents(answer.body, video, performance.now() - started);
  } catch (err) {
    showError(errorBox, `Request failed: ${err.message}`);
  } finally {
    progress.stop();
    button.disabled = false;
  }
}

export function setUpAv() {
  progress = new Progress($("#av-progress"));
  $("#av-form").addEventListener("submit", findEvents);
}
