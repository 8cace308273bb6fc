// The Live view's capture (an AudioWorkletProcessor, run on the audio thread): the microphone's
// channels averaged to mono, posted to the page in blocks of BLOCK frames (the page batches them
// into WebSocket frames). The node's output stays silent. "stop" from the page ends it.
const BLOCK = 1024; // about 21 ms at 48 kHz: small enough for a 100 ms batch, few messages

class LiveCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(BLOCK);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (e) => { if (e.data === "stop") this.running = false; };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (!channels || !channels.length) return true; // no input connected (yet)
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.block[this.filled++] = sum / channels.length;
      if (this.filled === BLOCK) {
        this.port.postMessage(this.block, [this.block.buffer]);
        this.block = new Float32Array(BLOCK);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("live-capture", LiveCapture);
