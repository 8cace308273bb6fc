// The Live view: the microphone streamed to GET /stream (a WebSocket; the messages are those of
// lookaside/stream_protocol.py). Microphone -> AudioWorklet (live-worklet.js, mono float blocks)
// -> ~100 ms binary f32 frames -> one message per window back, shown newest first with the lag.
// The microphone is asked for only when Start is pressed; Stop or any close releases it.
import { $, el, showError } from "./dom.js";
import { bars, checkedValues, renderAudioChoices } from "./classify.js";

const BATCH_S = 0.1; // seconds of audio per WebSocket frame
const MAX_ROWS = 200; // windows kept in the timeline (older ones leave the page)
const MAX_BUFFERED_S = 5; // audio the socket may hold unsent before the page gives up
const READY_TIMEOUT_MS = 15_000; // the socket's open and the server's ready
const END_TIMEOUT_MS = 15_000; // after Stop: the server's end, else the page closes
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const CLOSE_WORDS = {
  1000: "closed normally",
  1001: "the server is shutting down",
  1006: "the connection was lost",
  1009: "a frame was too big for the server",
  1011: "the server failed (its log has the details)",
};

let session = null; // the running LiveSession, or null
let choicesLoaded = false;

const fmtS = (s) => `${s.toFixed(2)} s`;

function chosenAdapters() {
  return checkedValues("live-adapter");
}

/** The audio adapters to pick from (loaded when the Live view is first opened). */
export async function loadLiveChoices() {
  choicesLoaded = true;
  await renderAudioChoices($("#live-choices"), "live-adapter", "live-choice-");
}

/** After an adapter changed in the Adapters view: reload the picker if it was shown. */
export function refreshLiveChoices() {
  return choicesLoaded ? loadLiveChoices() : Promise.resolve();
}

function addRow(row) {
  const list = $("#live-timeline");
  list.prepend(row);
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function windowRow(w) {
  const top = w.results[0]?.labels[0];
  const row = el("li", { class: "live-window", "data-track": String(w.track), "data-index": String(w.index),
    "data-label": top ? top.label : "" },
  el("span", { class: "live-time", text: `${w.start_s.toFixed(2)}–${fmtS(w.end_s)}` }));
  for (const r of w.results) {
    row.append(el("div", { class: "live-result", "data-adapter": r.adapter },
      el("h4", { text: `${r.adapter} v${r.version}` }), bars(r.labels)));
  }
  return row;
}

function droppedRow(d) {
  return el("li", { class: "live-window dropped", "data-track": String(d.track), "data-index": String(d.index) },
    el("span", { class: "live-time", text: `${d.start_s.toFixed(2)}–${fmtS(d.end_s)}` }),
    el("p", { text: `dropped (${d.reason}): ${d.message}` }));
}

function setStat(id, text) {
  $(`#${id}`).textContent = text;
}

function showTracks(ready) {
  const items = ready.tracks.map((t) => el("li", { "data-track": String(t.track) },
    `${t.adapters.map((a) => `${a.adapter}@${a.version}`).join(", ")} · window ${fmtS(t.window_s)} · hop ${fmtS(t.hop_s)}`));
  $("#live-tracks").replaceChildren(...items);
}

function setRunning(running) {
  $("#live-start").disabled = running;
  $("#live-stop").disabled = !running;
  for (const input of document.querySelectorAll("#live-form input")) input.disabled = running;
}

function say(text) {
  $("#live-status").textContent = text;
}

/** A microphone error in words (a refused permission says how to allow it). */
function micProblem(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError") {
    return "Microphone permission refused: allow this page to use the microphone (the icon in the address bar) and press Start again.";
  }
  if (err.name === "NotFoundError") return "No microphone found: connect one and press Start again.";
  return `Microphone unavailable: ${err.message || err.name}`;
}

/** One live session: the microphone, the audio graph and the socket, released together. */
class LiveSession {
  constructor(open) {
    this.open = open; // the opening message, less the sample rate
    this.blocks = [];
    this.queued = 0; // samples in blocks
    this.sent = 0; // samples sent
    this.ready = false;
    this.ending = false;
    this.ended = null; // the server's end message
    this.error = null; // the server's error message
    this.windows = 0;
    this.dropped = 0;
    this.streamStart = null; // performance.now() of the first sample sent
    this.timer = null;
    this.stopped = false; // Stop pressed (or given up) before the end
    this.failure = ""; // what went wrong on the page's side
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    if (this.stopped) return this.releaseAudio(); // Stop was pressed meanwhile
    for (const t of this.stream.getAudioTracks()) t.onended = () => this.stop(); // unplugged
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule("/static/js/live-worklet.js");
    if (this.stopped) return this.releaseAudio();
    this.rate = this.context.sampleRate;
    this.node = new AudioWorkletNode(this.context, "live-capture", { numberOfInputs: 1, numberOfOutputs: 1 });
    this.node.port.onmessage = (e) => this.onBlock(e.data);
    this.source = this.context.createMediaStreamSource(this.stream);
    this.source.connect(this.node);
    this.node.connect(this.context.destination); // silent: it keeps the node rendering
    await this.context.resume();
    if (this.stopped) return this.releaseAudio();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}/stream`);
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => this.socket.send(JSON.stringify({ ...this.open, sample_rate: this.rate }));
    this.socket.onmessage = (e) => this.onMessage(e.data);
    this.socket.onclose = (e) => this.onClose(e);
    this.timer = setTimeout(() => this.fail("The server did not answer the opening message in time."), READY_TIMEOUT_MS);
  }

  onBlock(block) {
    if (!this.ready || this.ending) return; // audio before ready is not sent
    if (this.streamStart === null) this.streamStart = performance.now() - (block.length / this.rate) * 1000;
    this.blocks.push(block);
    this.queued += block.length;
    if (this.queued >= this.rate * BATCH_S) this.flush();
  }

  flush() {
    if (!this.queued || this.socket.readyState !== WebSocket.OPEN) return;
    const frame = new Float32Array(this.queued);
    let at = 0;
    for (const b of this.blocks) { frame.set(b, at); at += b.length; }
    this.blocks = [];
    this.queued = 0;
    if (this.socket.bufferedAmount > MAX_BUFFERED_S * this.rate * 4) {
      this.fail(`The connection cannot keep up: more than ${MAX_BUFFERED_S} s of audio wait to be sent.`);
      return;
    }
    this.socket.send(LITTLE_ENDIAN ? frame.buffer : littleEndian(frame));
    this.sent += frame.length;
    setStat("live-seconds", fmtS(this.sent / this.rate));
  }

  onMessage(data) {
    if (typeof data !== "string") return;
    const msg = JSON.parse(data);
    if (msg.type === "ready") {
      clearTimeout(this.timer);
      this.ready = true;
      showTracks(msg);
      say(`Listening (session ${msg.session}, ${this.rate} Hz): the first window comes once it is full.`);
    } else if (msg.type === "window") {
      this.windows += 1;
      addRow(windowRow(msg));
      this.showLag(msg);
      const top = msg.results.map((r) => `${r.adapter}: ${r.labels[0]?.label ?? "–"}`).join(", ");
      $("#live-latest").textContent = top;
    } else if (msg.type === "dropped") {
      this.dropped += 1;
      addRow(droppedRow(msg));
    } else if (msg.type === "end") {
      this.ended = msg;
    } else if (msg.type === "error") {
      this.error = msg;
    }
    setStat("live-windows", String(this.windows));
    setStat("live-dropped", String(this.dropped));
  }

  showLag(w) {
    setStat("live-lag-server", fmtS(w.lag_s));
    if (this.streamStart !== null) {
      setStat("live-lag-client", fmtS((performance.now() - this.streamStart) / 1000 - w.end_s));
    }
  }

  /** Stop: the last partial frame and end go out; the server answers what is pending. */
  stop() {
    if (this.ending) return;
    $("#live-stop").disabled = true;
    if (!this.ready || this.socket.readyState !== WebSocket.OPEN) {
      this.fail("");
      return;
    }
    this.flush();
    this.ending = true;
    this.releaseAudio();
    this.socket.send(JSON.stringify({ type: "end" }));
    say("Stopped: waiting for the last windows…");
    this.timer = setTimeout(() => this.fail("The server did not end the session in time."), END_TIMEOUT_MS);
  }

  /** Give up: release everything, with an error to show (or none). */
  fail(message) {
    this.failure = message;
    this.stopped = true;
    this.releaseAudio();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "client stopped");
    else finish(this, message ? null : "Stopped.", message);
  }

  releaseAudio() {
    if (this.node) { this.node.port.postMessage("stop"); this.node.port.onmessage = null; this.node.disconnect(); }
    if (this.source) this.source.disconnect();
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.context && this.context.state !== "closed") this.context.close().catch(() => {});
  }

  onClose(e) {
    clearTimeout(this.timer);
    this.releaseAudio();
    const words = CLOSE_WORDS[e.code] || "the connection closed";
    if (this.error) {
      const what = this.ready ? "ended" : "refused";
      finish(this, null, `The server ${what} the stream: ${this.error.message} (close code ${e.code}, ${this.error.reason})`);
    } else if (this.failure) {
      finish(this, null, this.failure);
    } else if (this.ended) {
      const end = this.ended;
      finish(this, `Stopped: ${end.windows} windows, ${end.dropped} dropped, ${fmtS(end.seconds)} of audio.`, "");
    } else if (this.stopped) {
      finish(this, "Stopped.", "");
    } else {
      finish(this, null, `The stream closed: ${words} (close code ${e.code}${e.reason ? `, ${e.reason}` : ""}).`);
    }
  }
}

function littleEndian(frame) {
  const view = new DataView(new ArrayBuffer(frame.length * 4));
  frame.forEach((x, i) => view.setFloat32(i * 4, x, true));
  return view.buffer;
}

function finish(live, status, error) {
  if (session !== live) return;
  session = null;
  setRunning(false);
  if (status) say(status);
  else if (error) say("Not listening.");
  showError($("#live-error"), error || "");
}

function hopSeconds() {
  const text = $("#live-hop").value.trim();
  return text ? Number(text) : null;
}

async function startLive(event) {
  event.preventDefault();
  const errorBox = $("#live-error");
  showError(errorBox, "");
  if (session) return;
  const adapters = chosenAdapters();
  if (!adapters.length) return showError(errorBox, "Pick at least one adapter.");
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    return showError(errorBox, "This browser cannot stream the microphone here (it needs https, or http://localhost, and AudioWorklet).");
  }
  const open = { adapters, format: "f32", channels: 1, follow: $("#live-follow").checked, top_k: Math.max(1, Math.min(10, Number($("#live-top-k").value) || 3)) };
  const hop = hopSeconds();
  if (Number.isNaN(hop) || (hop !== null && !(hop > 0 && hop <= 60))) {
    return showError(errorBox, "The hop must be a number of seconds between 0 and 60 (e.g. 0.5), or empty for each adapter's own hop.");
  }
  if (hop !== null) open.hop_s = hop;
  const live = new LiveSession(open);
  session = live;
  setRunning(true);
  $("#live-timeline").replaceChildren();
  $("#live-tracks").replaceChildren();
  $("#live-latest").textContent = "";
  for (const id of ["live-windows", "live-dropped"]) setStat(id, "0");
  for (const id of ["live-seconds", "live-lag-server", "live-lag-client"]) setStat(id, "–");
  say("Asking for the microphone…");
  try {
    await live.start();
  } catch (err) {
    const isMic = !live.stream;
    live.fail(isMic ? micProblem(err) : `Could not start: ${err.message || err}`);
  }
}

export function setUpLive() {
  $("#live-form").addEventListener("submit", startLive);
  $("#live-stop").addEventListener("click", () => { if (session) session.stop(); });
}
