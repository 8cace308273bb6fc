// Drag and drop anywhere on the page, into the view that is open: Classify takes the clip, AV
// events the video (and a separate sound file), Adapters the manifest and weights to upload.
import { $ } from "./dom.js";
import { selectClip } from "./clip.js";

const isMedia = (f) => /^(audio|video)\//.test(f.type) || f.type === "";

/** Put `files` into a file input, as if picked there (its change listeners run). */
function fill(input, files) {
  const dt = new DataTransfer();
  for (const f of files) dt.items.add(f);
  input.files = dt.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
}

function dropOnClassify(files) {
  const file = files.find(isMedia);
  if (!file) {
    $("#clip-status").textContent = `${files[0].name} is not an audio or video file (${files[0].type}).`;
    return;
  }
  selectClip(file, file.name, "dropped file");
}

function dropOnAv(files) {
  const video = files.find((f) => f.type.startsWith("video/"));
  const audio = files.find((f) => f.type.startsWith("audio/"));
  if (video) fill($("#av-video"), [video]);
  if (audio) fill($("#av-audio"), [audio]);
}

function dropOnAdapters(files) {
  const manifest = files.find((f) => f.name.endsWith(".json"));
  const weights = files.find((f) => f.name.endsWith(".safetensors"));
  if (manifest) fill($("#upload-manifest"), [manifest]);
  if (weights) fill($("#upload-weights"), [weights]);
}

const TARGETS = { "view-classify": dropOnClassify, "view-av": dropOnAv, "view-adapters": dropOnAdapters };

export function setUpDrop() {
  const zone = document.body;
  let depth = 0; // dragenter/dragleave fire for every child crossed
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
  zone.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragging");
  });
  zone.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault(); // allow the drop
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    const files = [...(e.dataTransfer?.files || [])];
    const view = document.querySelector('[role="tabpanel"]:not([hidden])');
    if (files.length && view) TARGETS[view.id]?.(files);
  });
}
