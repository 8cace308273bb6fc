// A progress indicator: upload percentage while the body is sent, then elapsed time.
import { el } from "./dom.js";

export class Progress {
  constructor(box) {
    this.box = box;
    this.bar = el("progress", { max: "1", "aria-label": "request progress" });
    this.text = el("span", { class: "progress-text" });
    box.replaceChildren(this.bar, this.text);
    box.hidden = true;
    this.timer = null;
  }

  start(what) {
    this.what = what;
    this.started = performance.now();
    this.phase = "upload";
    this.bar.value = 0;
    this.box.hidden = false;
    this.box.setAttribute("aria-busy", "true");
    this.tick();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 200);
  }

  upload(fraction) {
    this.bar.value = fraction;
    this.tick();
  }

  sent() {
    this.phase = "wait";
    this.bar.removeAttribute("value"); // indeterminate
    this.tick();
  }

  tick() {
    const s = (performance.now() - this.started) / 1000;
    const doing = this.phase === "upload"
      ? `Sending ${this.what}: ${Math.round(this.bar.value * 100)} %`
      : `${this.what} sent; waiting for the answer…`;
    this.text.textContent = `${doing} ${s.toFixed(1)} s`;
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.box.hidden = true;
    this.box.removeAttribute("aria-busy");
  }
}
