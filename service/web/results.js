// One result card: before/after with a split slider and zoom, the perturbation amplified, the
// certificate in plain words (every number is the server's, kept in data-value), the round-trip pictures
// when the model has a decoder (roundtrip.js), the download link and an optional red-team report
// (POST /v1/diagnostics with redteam=true).

import { call, formData, sentence } from "./api.js";
import { el } from "./form.js";
import { roundtripView } from "./roundtrip.js";

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "n/a";
  const v = Number(value);
  return Math.abs(v) >= 1000 ? v.toLocaleString("en", { maximumSignificantDigits: 4 }) : v.toFixed(digits);
}
const MAX_DIFF_SIDE = 1600; // the amplified view is drawn at most this wide or high

function num(field, value, digits = 2, unit = "") {
  return el("span", { class: "num", "data-field": field, "data-value": value ?? "", text: `${fmt(value, digits)}${unit}` });
}

/** A number the server may leave null (MS-SSIM and VIF-P need a large enough picture): no data-value then. */
function optionalNum(field, value, digits) {
  if (value === null || value === undefined) {
    return el("span", { class: "num missing", "data-missing": field, text: "n/a (picture too small)" });
  }
  return num(field, value, digits);
}

function row(term, ...detail) {
  return [el("dt", { text: term }), el("dd", {}, ...detail)];
}

function certificatePanel(cert) {
  const within = cert.budget_ok;
  const rows = [
    ...row("Largest pixel change", num("linf_255", cert.linf_255, 0), ` of 255 levels (limit `,
      num("eps", cert.eps, 0), `): `, el("strong", { class: within ? "ok" : "bad", text: within ? "within the limit" : "over the limit" })),
    ...row("How visible", "PSNR ", num("psnr_db", cert.psnr_db, 1, " dB"), ", SSIM ", num("ssim", cert.ssim, 3),
      ", MS-SSIM ", optionalNum("ms_ssim", cert.ms_ssim, 3), ", VIF-P ", optionalNum("vif", cert.vif, 3),
      " (higher PSNR, and SSIM, MS-SSIM and VIF-P nearer 1, mean harder to see)"),
    ...row("Encoder collapse", "KL to N(0, I) per latent element went from ", num("kl_clean", cert.kl_clean, 3),
      " to ", num("kl_protected", cert.kl_protected, 3), `; KL to the ${cert.preset} target went from `,
      num("target_kl_clean", cert.target_kl_clean, 3), " to ", num("target_kl_protected", cert.target_kl_protected, 3), "."),
    ...row("Latent drift", num("latent_drift", cert.latent_drift, 3),
      " (share of the encoder's mean that moved; 0 = unchanged, 1 = as large as the picture's own)"),
  ];
  if (cert.roundtrip_psnr_clean_db !== null && cert.roundtrip_psnr_clean_db !== undefined) {
    const damage = cert.roundtrip_psnr_clean_db - (cert.roundtrip_psnr_protected_db ?? cert.roundtrip_psnr_clean_db);
    rows.push(...row("Round trip through the VAE", "PSNR ", num("roundtrip_psnr_clean_db", cert.roundtrip_psnr_clean_db, 1, " dB"),
      " for the original, ", num("roundtrip_psnr_protected_db", cert.roundtrip_psnr_protected_db, 1, " dB"),
      ` for the protected picture: ${fmt(damage, 1)} dB of damage an edit would start from.`, ...selfRoundTrip(cert)));
  }
  if (cert.editor_resolution) {
    rows.push(...row("Editor's downscale", "also protected as an editor sees it after downscaling to ",
      num("editor_resolution", cert.editor_resolution, 0, " px"), " on the long side"));
  }
  if (cert.alpha_preserved !== null && cert.alpha_preserved !== undefined) {
    rows.push(...row("Transparency", cert.alpha_preserved ? "kept byte for byte" : "changed"));
  }
  rows.push(...row("Run", `${cert.steps_run} of ${cert.steps} steps, preset ${cert.preset}, model ${cert.model} on ${cert.device}, `,
    num("elapsed_s", cert.elapsed_s, 2, " s"), `, ${cert.width} x ${cert.height} ${cert.format.toUpperCase()}`));
  if (cert.notes && cert.notes.length) rows.push(...row("Notes", cert.notes.map(sentence).join(" ")));
  const panel = el("section", { class: "certificate", "aria-label": "Certificate" },
    el("h4", { text: "Certificate (measured on the downloaded file)" }), el("dl", {}, ...rows));
  if (cert.format !== "png") {
    panel.append(el("p", { class: "warning", text: `This result is ${cert.format.toUpperCase()}, a lossy format: ` +
      "re-saving it will change pixels and may weaken the protection." }));
  }
  return panel;
}

/** The protected picture's round trip against itself: near the original's, the VAE merely reproduces the change. */
function selfRoundTrip(cert) {
  const own = cert.roundtrip_psnr_self_db;
  if (own === null || own === undefined) return [];
  const clean = cert.roundtrip_psnr_clean_db;
  const damaged = clean - (cert.roundtrip_psnr_protected_db ?? clean) >= 1;
  const verdict = !damaged ? "." : own > clean - 1 ? " (the VAE reproduces the change: little of the damage is a collapse)."
    : " (far from both pictures: the damage is a collapse).";
  return [" Against the protected picture itself: ", num("roundtrip_psnr_self_db", own, 1, " dB"), verdict];
}

function loaded(img) {
  return img.complete && img.naturalWidth ? Promise.resolve() : new Promise((ok, bad) => {
    img.addEventListener("load", ok, { once: true });
    img.addEventListener("error", bad, { once: true });
  });
}

function pixels(img, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height).data;
}

/** Draw (after - before) x gain + 128 into `canvas`: grey where nothing changed. */
async function drawDifference(canvas, before, after, eps) {
  await Promise.all([loaded(before), loaded(after)]);
  const scale = Math.min(1, MAX_DIFF_SIDE / Math.max(after.naturalWidth, after.naturalHeight));
  const width = Math.max(1, Math.round(after.naturalWidth * scale));
  const height = Math.max(1, Math.round(after.naturalHeight * scale));
  const a = pixels(before, width, height);
  const b = pixels(after, width, height);
  const gain = 127 / Math.max(eps, 1);
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  for (let i = 0; i < out.data.length; i += 4) {
    for (let c = 0; c < 3; c++) out.data[i + c] = 128 + (b[i + c] - a[i + c]) * gain;
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return gain;
}

function compareView(name, beforeUrl, afterUrl) {
  const before = el("img", { class: "before", src: beforeUrl, alt: `Original ${name}` });
  const after = el("img", { class: "after", src: afterUrl, alt: `Protected ${name}` });
  const stage = el("div", { class: "stage" }, before, after);
  const viewport = el("div", { class: "viewport", tabindex: 0, role: "group", "aria-label": `Before and after of ${name}; scroll to pan when zoomed` }, stage);
  const split = el("input", { type: "range", min: 0, max: 100, value: 50, class: "split", "aria-label": `Split between original (left) and protected (right) of ${name}` });
  const zoom = el("select", { class: "zoom", "aria-label": `Zoom of ${name}` },
    ...[1, 2, 4, 8].map((z) => el("option", { value: z, text: `${z}x` })));
  split.addEventListener("input", () => {
    after.style.clipPath = `inset(0 0 0 ${split.value}%)`;
    stage.style.setProperty("--split", `${split.value}%`);
  });
  zoom.addEventListener("change", () => {
    stage.style.width = `${Number(zoom.value) * 100}%`;
    stage.classList.toggle("pixelated", Number(zoom.value) > 1);
  });
  split.dispatchEvent(new Event("input"));
  const controls = el("div", { class: "compare-controls" },
    el("label", {}, "Split ", split), el("label", {}, "Zoom ", zoom));
  const figure = el("figure", { class: "compare" }, viewport, controls,
    el("figcaption", { text: "Left of the line: your original. Right of it: the protected picture." }));
  return { figure, before, after };
}

function redteamButton(original, blob, resultName) {
  const out = el("div", { class: "redteam", "aria-live": "polite" });
  const button = el("button", { type: "button", text: "Red-team report" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    out.textContent = "Measuring what survives JPEG, resizing, blur, noise and purification…";
    try {
      const form = formData({ redteam: "true" }, [["file", original], ["protected", blob, resultName]]);
      const report = (await (await call("/v1/diagnostics", { method: "POST", body: form })).json()).redteam;
      const rows = report.rows.map((r) => el("tr", {}, el("th", { scope: "row", text: r.transform }),
        el("td", { text: fmt(r.latent_drift, 3) }), el("td", { text: fmt(r.retention, 2) })));
      out.replaceChildren(el("table", {},
        el("caption", { text: "Retention = drift after the channel / drift before (1 = kept, 0 = erased)" }),
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Channel" }), el("th", { scope: "col", text: "Latent drift" }),
          el("th", { scope: "col", text: "Retention" }))), el("tbody", {}, ...rows)));
    } catch (err) {
      out.replaceChildren(el("p", { class: "error", role: "alert", text: sentence(err.message) }));
    } finally {
      button.disabled = false;
    }
  });
  return [button, out];
}

/** The card of one finished picture; `roundtrip`: the model has a decoder, so show both round trips. */
export function resultCard({ original, originalUrl, blob, resultName, certificate, roundtrip = false }) {
  const afterUrl = URL.createObjectURL(blob);
  const { figure, before, after } = compareView(original.name, originalUrl, afterUrl);
  const diff = el("canvas", { class: "difference", role: "img", "aria-label": `Amplified change of ${original.name}` });
  const diffCaption = el("figcaption", { text: "The change, amplified (grey = unchanged)." });
  drawDifference(diff, before, after, certificate.eps).then((gain) => {
    diffCaption.textContent = `The change, amplified ${gain.toFixed(1)} times (grey = unchanged).`;
  }).catch(() => { diffCaption.textContent = "The browser could not draw the change of this picture."; });
  const download = el("a", { class: "button primary", href: afterUrl, download: resultName, text: `Download ${resultName}` });
  const [redteam, redteamOut] = redteamButton(original, blob, resultName);
  return el("article", { class: "result", "data-name": original.name },
    el("h3", { text: original.name }),
    el("div", { class: "views" }, figure, el("figure", { class: "diff" }, diff, diffCaption)),
    certificatePanel(certificate),
    ...(roundtrip ? [roundtripView(original, blob, resultName)] : []),
    el("div", { class: "actions" }, download, redteam), redteamOut);
}
