// Small DOM helpers shared by every view of the page.

export const $ = (sel) => document.querySelector(sel);

/** Create an element: attrs (class, text, or any attribute) then children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

/** Show a message in an error box (role="alert"); an empty message hides it. */
export function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

/** Show a success message in a status box (role="status", always in the page so screen readers
 * announce it; empty, it takes no room). */
export function showOk(box, message) {
  box.textContent = message;
}

/** "404: <the server's detail>" from a JSON error body (or the status line). */
export function errorMessage(status, statusText, body) {
  if (body && typeof body === "object" && body.detail !== undefined) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return `${status}: ${detail}`;
  }
  return `${status} ${statusText || ""}`.trim();
}

export async function errorText(response) {
  const body = await response.json().catch(() => null);
  return errorMessage(response.status, response.statusText, body);
}

export function kib(bytes) {
  return `${Math.max(1, Math.round(bytes / 1024))} KiB`;
}

/** A button copying the text of `source` to the clipboard, saying so in its own label. */
export function copyButton(source, what) {
  const button = el("button", { type: "button", class: "copy", text: `Copy ${what}` });
  button.addEventListener("click", async () => {
    const text = source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const range = document.createRange(); // no clipboard permission: select it for Ctrl-C
      range.selectNodeContents(source);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl-C";
      return;
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = `Copy ${what}`; }, 1500);
  });
  return button;
}
