// Example clips (GET /examples): one click selects the clip and classifies it.
import { $, el } from "./dom.js";
import { getJson } from "./api.js";
import { selectClip } from "./clip.js";
import { classify } from "./classify.js";

const FETCH_TIMEOUT_MS = 60_000;

async function tryExample(example, button) {
  const status = $("#clip-status");
  button.disabled = true;
  try {
    const response = await fetch(example.url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const blob = await response.blob();
    selectClip(blob, example.name, "example");
    await classify();
  } catch (err) {
    status.textContent = `Could not fetch the example ${example.name}: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

export async function loadExamples() {
  const section = $("#examples");
  let examples = [];
  try {
    examples = await getJson("/examples");
  } catch {
    examples = []; // an older server without examples: no section
  }
  const list = $("#example-list");
  list.replaceChildren();
  for (const example of examples) {
    const button = el("button", { type: "button", class: "example", "data-name": example.name,
      "aria-label": `try example ${example.name}` }, `▶ ${example.name}`);
    button.addEventListener("click", () => tryExample(example, button));
    list.append(el("li", {}, button));
  }
  section.hidden = !examples.length;
}
