// "Use via API": the current request as a curl command and as Python with lookaside.client.
import { $, copyButton, el } from "./dom.js";

const shell = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;
const py = (s) => JSON.stringify(String(s));

export function setUpSnippet() {
  const box = $("#api-snippet");
  const curl = el("pre", { id: "api-curl", tabindex: "0" }); // focusable: scrolls by keyboard
  const python = el("pre", { id: "api-python", tabindex: "0" });
  box.replaceChildren(
    el("h3", { text: "curl" }), curl, copyButton(curl, "curl command"),
    el("h3", { text: "Python" }), python, copyButton(python, "Python code"),
  );
}

/** Rewrite both snippets for these adapters, top_k and clip file name. */
export function updateSnippet({ adapters, topK, fileName }) {
  const base = window.location.origin;
  const names = adapters.length ? adapters : ["<adapter>"];
  const file = fileName || "clip.wav";
  $("#api-curl").textContent = [
    `curl -sS ${shell(`${base}/classify`)} \\`,
    `  -F ${shell(`file=@${file}`)} \\`,
    `  -F ${shell(`adapter=${names.join(",")}`)} \\`,
    `  -F ${shell(`top_k=${topK}`)}`,
  ].join("\n");
  const adapterArg = names.length === 1 ? py(names[0]) : `[${names.map(py).join(", ")}]`;
  $("#api-python").textContent = [
    "from lookaside.client import Client",
    "",
    `with Client(${py(base)}) as c:`,
    `    result = c.classify(${py(file)}, ${adapterArg}, top_k=${topK})`,
    "    for r in result.results:",
    "        print(r.adapter, r.version, r.labels)",
  ].join("\n");
}
