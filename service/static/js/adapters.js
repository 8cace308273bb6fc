// The Adapters view: list, activate, roll back (with confirmation), delete (with confirmation),
// upload. Every action says how it went: a success line or the server's error.
import { $, el, showError, showOk } from "./dom.js";
import { adminCall, fetchAdapters, getJson, sendForm } from "./api.js";
import { Progress } from "./progress.js";

let refreshOthers = async () => {};
let uploadProgress = null;

const path = (name) => `/adapters/${encodeURIComponent(name)}`;

function report(ok, error) {
  showOk($("#adapters-status"), ok || "");
  showError($("#adapters-error"), error || "");
}

async function afterChange(message) {
  await loadAdapterTable();
  await refreshOthers();
  report(message, "");
}

async function activate(a, v, active) {
  const rollback = active !== null && v < active;
  if (rollback && !window.confirm(`Roll back ${a.name} from version ${active} to version ${v}? New requests get version ${v} at once.`)) return;
  try {
    await adminCall("POST", `${path(a.name)}/activate`, { version: v });
    await afterChange(rollback ? `Rolled back ${a.name} to version ${v} (was ${active}).` : `Activated ${a.name} version ${v}.`);
  } catch (err) {
    report("", `${rollback ? "Rollback" : "Activate"} failed: ${err.message}`);
  }
}

async function deleteVersion(a, v, active, count) {
  const isActive = v === active;
  const consequence = isActive
    ? count > 1 ? " It is the active version: the newest other version takes over." : " It is the only version: the adapter goes."
    : "";
  if (!window.confirm(`Delete version ${v} of ${a.name}?${consequence} This cannot be undone.`)) return;
  try {
    await adminCall("DELETE", `${path(a.name)}/versions/${v}${isActive ? "?force=true" : ""}`);
    await afterChange(`Deleted version ${v} of ${a.name}.`);
  } catch (err) {
    report("", `Delete failed: ${err.message}`);
  }
}

async function deleteAdapter(a, count) {
  if (!window.confirm(`Delete the adapter ${a.name} and all its ${count} version(s)? This cannot be undone.`)) return;
  try {
    await adminCall("DELETE", path(a.name));
    await afterChange(`Deleted ${a.name} (${count} version(s)).`);
  } catch (err) {
    report("", `Delete failed: ${err.message}`);
  }
}

function versionButtons(a) {
  const active = a.active ?? null;
  const versions = (a.versions || []).map((v) => (typeof v === "object" ? v.version : v));
  const box = el("div", { class: "versions" });
  for (const v of versions) {
    const isActive = v === active;
    const word = active !== null && v < active ? "roll back to" : "activate";
    const use = el("button", {
      type: "button",
      text: isActive ? `v${v} (active)` : `${word} v${v}`,
      "aria-label": isActive ? `version ${v} of ${a.name} is active` : `${word} version ${v} of ${a.name}`,
    });
    use.disabled = isActive;
    use.addEventListener("click", () => activate(a, v, active));
    const del = el("button", { type: "button", class: "danger", text: "✕", title: `delete version ${v}`,
      "aria-label": `delete version ${v} of ${a.name}` });
    del.addEventListener("click", () => deleteVersion(a, v, active, versions.length));
    box.append(el("span", { class: "version" }, use, del));
  }
  const all = el("button", { type: "button", class: "danger", text: "Delete adapter", "aria-label": `delete adapter ${a.name}` });
  all.addEventListener("click", () => deleteAdapter(a, versions.length));
  box.append(all);
  return box;
}

function row(a) {
  const active = a.active ?? null;
  const infos = (a.versions || []).filter((v) => typeof v === "object");
  const info = infos.find((v) => v.version === active) || infos[infos.length - 1] || a;
  const percent = info.trainable_percent;
  const metrics = Object.entries(info.metrics || {}).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(", ");
  const labels = info.labels || [];
  const state = info.state || a.state || "unloaded";
  const reason = info.reason || "";
  return el("tr", { "data-adapter": a.name },
    el("td", { "data-label": "Name", text: a.name }),
    el("td", { "data-label": "Task", text: info.task || "" }),
    el("td", { "data-label": "Method", text: info.method || "" }),
    el("td", { "data-label": "Params", text: percent !== undefined ? `${Number(percent).toFixed(2)} %` : "" }),
    el("td", { "data-label": "State", class: `state-${state}`, text: reason ? `${state}: ${reason}` : state + (info.resident ? " (resident)" : "") }),
    el("td", { "data-label": "Labels", text: labels.length > 8 ? `${labels.slice(0, 8).join(", ")} … (${labels.length})` : labels.join(", ") }),
    el("td", { "data-label": "Metrics", text: metrics }),
    el("td", { "data-label": "Versions" }, versionButtons(a)),
  );
}

export async function loadAdapterTable() {
  const box = $("#adapters-list");
  let adapters;
  try {
    adapters = await fetchAdapters();
  } catch (err) {
    report("", `Could not list adapters: ${err.message}`);
    return;
  }
  // GET /adapters/{name} describes each version (state, labels, metrics).
  const details = await Promise.all(adapters.map((a) => getJson(path(a.name)).catch(() => a)));
  const cols = ["Name", "Task", "Method", "Params", "State", "Labels", "Metrics", "Versions"];
  const head = el("thead", {}, el("tr", {}, ...cols.map((h) => el("th", { scope: "col", text: h }))));
  box.replaceChildren(details.length
    ? el("table", {}, head, el("tbody", {}, ...details.map(row)))
    : el("p", { text: "The store is empty." }));
}

async function upload(event) {
  event.preventDefault();
  const status = $("#upload-status");
  const errorBox = $("#upload-error");
  showOk(status, "");
  showError(errorBox, "");
  const manifest = $("#upload-manifest").files[0];
  const weights = $("#upload-weights").files[0];
  if (!manifest || !weights) return showError(errorBox, "Choose both manifest.json and adapter.safetensors.");
  const form = new FormData();
  form.append("manifest", manifest, "manifest.json");
  form.append("weights", weights, "adapter.safetensors");
  const activateNow = $("#upload-activate").checked ? "?activate=true" : "";
  uploadProgress.start(weights.name);
  try {
    const answer = await sendForm(`/adapters${activateNow}`, form, {
      admin: true, onProgress: (f) => uploadProgress.upload(f), onSent: () => uploadProgress.sent(),
    });
    if (!answer.ok) return showError(errorBox, `Upload refused: ${answer.error}`);
    const body = answer.body;
    await loadAdapterTable();
    await refreshOthers();
    showOk(status, `Stored ${body.name} v${body.version}${answer.status === 200 ? " (identical content was already stored)" : ""}${body.active ? ", active" : ""}.`);
  } catch (err) {
    showError(errorBox, `Upload failed: ${err.message}`);
  } finally {
    uploadProgress.stop();
  }
}

/** `others` reloads the adapter pickers of the other views after a change. */
export function setUpAdapters(others) {
  refreshOthers = others;
  uploadProgress = new Progress($("#upload-progress"));
  $("#upload-form").addEventListener("submit", upload);
}
