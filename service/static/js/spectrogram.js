// A spectrogram of the selected clip on a <canvas>: decoded by the Web Audio API, one small FFT
// per pixel column. The per-window timeline (timeline.js) is laid out on the same time axis.

const RATE = 16_000; // decode resampled to 16 kHz: the band the adapters see
const FFT = 512; // 32 ms frames, 256 frequency bins
const MAX_BYTES = 64 * 1024 * 1024; // larger files are not decoded in the page
const MAX_COLUMNS = 2048;

/** In-place radix-2 FFT of (re, im), length a power of two. */
function fft(re, im) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const angle = (-2 * Math.PI) / len;
    const wr = Math.cos(angle);
    const wi = Math.sin(angle);
    for (let i = 0; i < n; i += len) {
      let cr = 1;
      let ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k;
        const b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci;
        const ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti;
        re[a] += tr; im[a] += ti;
        [cr, ci] = [cr * wr - ci * wi, cr * wi + ci * wr];
      }
    }
  }
}

/** Magnitudes in dB, [columns][FFT/2], one Hann-windowed frame centred on each column. */
function stft(samples, columns) {
  const hann = Float32Array.from({ length: FFT }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / FFT));
  const out = [];
  const re = new Float32Array(FFT);
  const im = new Float32Array(FFT);
  for (let c = 0; c < columns; c++) {
    const centre = Math.floor(((c + 0.5) / columns) * samples.length);
    for (let i = 0; i < FFT; i++) {
      const s = samples[centre - FFT / 2 + i] || 0;
      re[i] = s * hann[i];
      im[i] = 0;
    }
    fft(re, im);
    const col = new Float32Array(FFT / 2);
    for (let k = 0; k < FFT / 2; k++) col[k] = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-10);
    out.push(col);
  }
  return out;
}

// Dark blue -> purple -> orange -> pale yellow (readable in both colour schemes).
const STOPS = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];
function colour(x) {
  const t = Math.max(0, Math.min(1, x)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t));
  const f = t - i;
  return STOPS[i].map((v, j) => Math.round(v + (STOPS[i + 1][j] - v) * f));
}

async function decode(blob) {
  if (blob.size > MAX_BYTES) throw new Error(`over ${MAX_BYTES / 1048576} MiB`);
  const ctx = new OfflineAudioContext(1, 1, RATE);
  const buffer = await ctx.decodeAudioData(await blob.arrayBuffer());
  return { samples: buffer.getChannelData(0), duration: buffer.duration };
}

/** Draw the clip's spectrogram; resolves its duration in seconds (rejects if undecodable). */
export async function drawSpectrogram(canvas, blob) {
  const { samples, duration } = await decode(blob);
  const width = Math.min(MAX_COLUMNS, Math.max(64, Math.round(canvas.clientWidth * (devicePixelRatio || 1))));
  const height = FFT / 2;
  canvas.width = width;
  canvas.height = height;
  const spec = stft(samples, width);
  let max = -Infinity;
  for (const col of spec) for (const v of col) max = Math.max(max, v);
  const floor = max - 80; // an 80 dB range
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const [r, g, b] = colour((spec[x][height - 1 - y] - floor) / 80); // low frequencies at the bottom
      const p = (y * width + x) * 4;
      image.data[p] = r; image.data[p + 1] = g; image.data[p + 2] = b; image.data[p + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.dataset.duration = String(duration);
  return duration;
}
