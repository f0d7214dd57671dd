// Time estimate from this server's measured speed. Each finished picture's certificate says how long it
// took (elapsed_s) for how much work (steps_run x megapixels); a least-squares line
// seconds = overhead + rate x work over the last samples predicts the next picture. Samples live in
// this tab's sessionStorage, one list per model. Before the first picture, two small calibration
// requests (POST /v1/protect on a 160 x 160 picture, 1 and 6 steps) give the first samples.

import { call, formData } from "./api.js";

const MAX_SAMPLES = 24;
const CALIBRATION_SIDE = 160;
const CALIBRATION_STEPS = [1, 6];
const storeKey = (model) => `pca-protect-speed-${model}`;

export class SpeedModel {
  constructor(model) {
    this.model = model;
    try {
      this.samples = JSON.parse(sessionStorage.getItem(storeKey(model)) || "[]");
    } catch {
      this.samples = [];
    }
  }

  add(certificate) {
    const mp = (certificate.width * certificate.height) / 1e6;
    const steps = Math.max(1, certificate.steps_run);
    if (!(certificate.elapsed_s > 0)) return;
    this.samples.push([steps * mp, certificate.elapsed_s]);
    this.samples = this.samples.slice(-MAX_SAMPLES);
    sessionStorage.setItem(storeKey(this.model), JSON.stringify(this.samples));
  }

  get known() {
    return this.samples.length > 0;
  }

  /** [overhead seconds, seconds per step-megapixel] from the samples (both >= 0). */
  fit() {
    const n = this.samples.length;
    const mx = this.samples.reduce((s, [x]) => s + x, 0) / n;
    const my = this.samples.reduce((s, [, y]) => s + y, 0) / n;
    const sxx = this.samples.reduce((s, [x]) => s + (x - mx) ** 2, 0);
    const sxy = this.samples.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0);
    if (n < 2 || sxx <= 1e-12 || sxy <= 0) return [0, my / Math.max(mx, 1e-9)];
    const rate = sxy / sxx;
    const overhead = my - rate * mx;
    return overhead >= 0 ? [overhead, rate] : [0, my / Math.max(mx, 1e-9)];
  }

  /** Seconds for one picture of `pixels` pixels at `steps` steps (null before any sample). */
  seconds(pixels, steps) {
    if (!this.known) return null;
    const [overhead, rate] = this.fit();
    return overhead + rate * steps * (pixels / 1e6);
  }

  describe() {
    if (!this.known) return "";
    const [overhead, rate] = this.fit();
    return `measured on this server: ${(rate * 1000).toFixed(1)} ms per step per megapixel` +
      (overhead > 0 ? ` plus ${overhead.toFixed(2)} s per picture` : "");
  }

  /** Two small requests (same picture, 1 and 6 steps) separate the per-picture overhead from the per-step cost. */
  async calibrate() {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = CALIBRATION_SIDE;
    const ctx = canvas.getContext("2d");
    const gradient = ctx.createLinearGradient(0, 0, CALIBRATION_SIDE, CALIBRATION_SIDE);
    gradient.addColorStop(0, "#3a6");
    gradient.addColorStop(1, "#c52");
    ctx.fillStyle = gradient;
    ctx.fillRect(0, 0, CALIBRATION_SIDE, CALIBRATION_SIDE);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    for (const steps of CALIBRATION_STEPS) {
      const form = formData({ steps }, [["file", blob, "calibration.png"]]);
      const response = await call("/v1/protect?response=json", { method: "POST", body: form });
      this.add((await response.json()).certificate);
    }
  }
}

export function humanSeconds(seconds) {
  if (seconds < 1) return "under a second";
  if (seconds < 90) return `about ${Math.round(seconds)} s`;
  const minutes = seconds / 60;
  return minutes < 90 ? `about ${Math.round(minutes)} min` : `about ${(minutes / 60).toFixed(1)} h`;
}
