// The clip Classify sends: the most recent input wins (a picked file, a recording, a dropped
// file or an example), shown in the status line and playable in the player.
import { $, kib } from "./dom.js";

let current = null; // {blob, name, source}
let objectUrl = null;
const listeners = [];

export function currentClip() {
  return current;
}

/** Call fn(clip) each time another clip is selected. */
export function onClipChange(fn) {
  listeners.push(fn);
}

/** Make `blob` the clip to send; `source` says where it came from ("file", "recording", ...). */
export function selectClip(blob, name, source) {
  current = { blob, name, source };
  if (source !== "file") $("#audio-file").value = ""; // the picker no longer shows what is sent
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(blob);
  const player = $("#player");
  player.src = objectUrl;
  player.hidden = false;
  $("#clip-status").textContent = `Selected ${source}: ${name} (${kib(blob.size)}); press Classify.`;
  for (const fn of listeners) fn(current);
}

/** Wire the file picker. */
export function setUpClipInput() {
  const input = $("#audio-file");
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file) selectClip(file, file.name, "file");
  });
}
