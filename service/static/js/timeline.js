// The per-window timeline of each adapter, on the spectrogram's time axis: one button per window
// of the classify response (its start_s / end_s), which plays that span of the clip.
import { el } from "./dom.js";

let stopAt = null;

/** Play [start, end) of the clip in the player, then pause. */
export function playSpan(player, start, end) {
  stopAt = end;
  player.currentTime = start;
  player.play().catch(() => {});
}

export function watchSpans(player) {
  player.addEventListener("timeupdate", () => {
    if (stopAt !== null && player.currentTime >= stopAt) {
      player.pause();
      stopAt = null;
    }
  });
  player.addEventListener("seeking", () => { if (player.paused) stopAt = null; });
}

/** Lanes so overlapping windows (hop shorter than the window) do not cover each other. */
function lanesOf(windows) {
  const ends = [];
  return windows.map((w) => {
    let lane = ends.findIndex((end) => end <= w.start_s + 1e-6);
    if (lane < 0) { lane = ends.length; ends.push(0); }
    ends[lane] = w.end_s;
    return lane;
  });
}

function track(result, duration, player) {
  const windows = result.timeline;
  const lanes = lanesOf(windows);
  const list = el("ol", { class: "windows", "aria-label": `${result.adapter}: top label of each window (press to play it)` });
  list.style.height = `${(Math.max(...lanes) + 1) * 2.4}rem`;
  windows.forEach((w, i) => {
    const top = w.labels[0] || { label: "–", score: 0 };
    const end = Math.min(w.end_s, duration);
    const button = el("button", {
      type: "button",
      class: "window",
      "data-start": String(w.start_s),
      "data-end": String(w.end_s),
      "data-label": top.label,
      title: `${w.start_s.toFixed(2)}–${w.end_s.toFixed(2)} s: ${top.label} ${top.score.toFixed(2)}`,
      "aria-label": `play ${w.start_s.toFixed(2)} to ${w.end_s.toFixed(2)} s: ${top.label}, score ${top.score.toFixed(2)}`,
    }, top.label);
    button.addEventListener("click", () => {
      for (const b of list.querySelectorAll("button")) b.removeAttribute("aria-current");
      button.setAttribute("aria-current", "true");
      playSpan(player, w.start_s, end);
    });
    const item = el("li", {}, button);
    item.style.left = `${(w.start_s / duration) * 100}%`;
    item.style.width = `${(Math.max(0, end - w.start_s) / duration) * 100}%`;
    item.style.top = `${lanes[i] * 2.4}rem`;
    list.append(item);
  });
  return el("div", { class: "track", "data-adapter": result.adapter }, el("h4", { text: result.adapter }), list);
}

const STEPS = [0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];

/** Seconds marked under the spectrogram (at most about 8 ticks). */
export function drawAxis(box, duration) {
  const step = STEPS.find((s) => duration / s <= 8) || 600;
  const ticks = [];
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const tick = el("span", { text: `${Number(t.toFixed(2))} s` });
    tick.style.left = `${(t / duration) * 100}%`;
    if (t > duration - step / 2 && t > 0) tick.classList.add("last");
    ticks.push(tick);
  }
  box.replaceChildren(...ticks);
}

/** One track per result that has a timeline (clips longer than one window). */
export function drawTimelines(box, results, duration, player) {
  // Long clips: at least 2.8rem per window, the spectrogram widened with them (it scrolls).
  const most = Math.max(0, ...results.map((r) => (r.timeline ? r.timeline.length : 0)));
  box.parentElement.style.width = most ? `max(100%, ${most * 2.8}rem)` : "";
  const tracks = results.filter((r) => r.timeline && r.timeline.length).map((r) => track(r, duration, player));
  box.replaceChildren(...tracks);
  if (!tracks.length && results.length) {
    box.append(el("p", { class: "hint", text: "The clip fits in one window: no timeline." }));
  }
}
