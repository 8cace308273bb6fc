// The public HTTP API as the page calls it; every wait has a timeout.
import { errorMessage, errorText } from "./dom.js";

const TOKEN_KEY = "lookaside-admin-token";
const FETCH_TIMEOUT_MS = 60_000;
const SEND_TIMEOUT_MS = 180_000; // an upload of a 32 MiB clip on a slow link, then the answer
const MAX_PAGES = 20; // GET /adapters pages of 1000 names

export function adminToken() {
  return document.querySelector("#admin-token").value.trim();
}

export function rememberToken(input) {
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  input.addEventListener("change", () => sessionStorage.setItem(TOKEN_KEY, input.value));
}

function adminHeaders() {
  const token = adminToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export function getJson(url) {
  return fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) }).then(async (r) => {
    if (!r.ok) throw new Error(await errorText(r));
    return r.json();
  });
}

/** Every adapter of GET /adapters (it is paginated: follow next_cursor). */
export async function fetchAdapters() {
  const all = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const query = new URLSearchParams({ limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const body = await getJson(`/adapters?${query}`);
    all.push(...(body.adapters || []));
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return all;
}

/** A mutating admin call (POST activate, DELETE); throws with the server's detail. */
export async function adminCall(method, url, body) {
  const init = { method, headers: adminHeaders(), signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json().catch(() => ({}));
}

/**
 * POST a FormData with XMLHttpRequest, so upload progress can be shown:
 * onProgress(fraction) while sending, onSent() once the body is out (then the server works).
 * Resolves {ok, status, body}; rejects on a network error or the timeout.
 */
export function sendForm(url, form, { onProgress, onSent, admin = false } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.timeout = SEND_TIMEOUT_MS;
    xhr.responseType = "json";
    if (admin) for (const [k, v] of Object.entries(adminHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => { if (onSent) onSent(); };
    xhr.onload = () => {
      const ok = xhr.status >= 200 && xhr.status < 300;
      resolve({ ok, status: xhr.status, body: xhr.response,
        error: ok ? "" : errorMessage(xhr.status, xhr.statusText, xhr.response) });
    };
    xhr.onerror = () => reject(new Error("the server could not be reached"));
    xhr.ontimeout = () => reject(new Error(`no answer within ${SEND_TIMEOUT_MS / 1000} s`));
    xhr.send(form);
  });
}
