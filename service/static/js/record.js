// Recording from the microphone (MediaRecorder); the recording becomes the selected clip.
import { $ } from "./dom.js";
import { selectClip } from "./clip.js";

const MAX_RECORD_MS = 120_000; // stop by itself after 2 minutes
const STOP_TIMEOUT_MS = 5_000; // a recorder that never says it stopped does not hang Classify
let recorder = null;
let limitTimer = null;
let ticker = null;
let stopped = Promise.resolve(); // settles once the last recording is the selected clip

/** Stop a recording in progress (Classify sends it); resolves once it is the selected clip. */
export function finishRecording() {
  if (recorder && recorder.state === "recording") recorder.stop();
  const late = new Promise((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS));
  return Promise.race([stopped, late]);
}

function idle(button) {
  button.setAttribute("aria-pressed", "false");
  button.textContent = "● Record from microphone";
}

export async function toggleRecording() {
  const button = $("#record-button");
  const status = $("#clip-status");
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    status.textContent = "This browser cannot record audio; choose a file instead.";
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    status.textContent = `Microphone unavailable: ${err.message}`;
    return;
  }
  const chunks = [];
  const started = performance.now();
  let done;
  stopped = new Promise((resolve) => { done = resolve; });
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    clearTimeout(limitTimer);
    clearInterval(ticker);
    stream.getTracks().forEach((t) => t.stop());
    idle(button);
    const type = recorder.mimeType || "audio/webm";
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const blob = new Blob(chunks, { type });
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    selectClip(blob, `recording.${ext}`, `recording (${seconds} s)`);
    done();
  };
  recorder.start();
  limitTimer = setTimeout(() => { if (recorder.state === "recording") recorder.stop(); }, MAX_RECORD_MS);
  button.setAttribute("aria-pressed", "true");
  status.textContent = "Recording… press Stop recording (or Classify) to finish.";
  const say = () => {
    const s = Math.floor((performance.now() - started) / 1000);
    button.textContent = `■ Stop recording (${s} s)`; // the status (a live region) stays quiet
  };
  say();
  ticker = setInterval(say, 1000);
}
