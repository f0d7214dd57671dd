// Round-trip pictures: what an img2img or inpainting edit starts from. POST /v1/roundtrip answers the PNG
// of D(E(x)) for the original and for the protected file; both are shown side by side with the PSNR the
// server measured for each against the picture it was sent (X-PCA-Roundtrip-PSNR-dB).

import { call, formData, sentence } from "./api.js";
import { el } from "./form.js";

// One round trip at a time for the whole page: a batch of many pictures never fills the server's queue.
let chain = Promise.resolve();
function serially(task) {
  const run = chain.then(task, task);
  chain = run.catch(() => {});
  return run;
}

async function decoded(file, name) {
  const response = await call("/v1/roundtrip", { method: "POST", body: formData({}, [["file", file, name]]) });
  const psnr = response.headers.get("X-PCA-Roundtrip-PSNR-dB");
  return { url: URL.createObjectURL(await response.blob()), psnr };
}

function picture(result, which, name) {
  const value = result.psnr === "inf" ? "identical" : `${Number(result.psnr).toFixed(1)} dB`;
  return el("figure", { class: `roundtrip-${which}` },
    el("img", { src: result.url, alt: `Round trip of the ${which} ${name}` }),
    el("figcaption", {}, `The ${which} after the model's VAE: PSNR `,
      el("span", { class: "num", "data-field": `roundtrip_${which}_psnr`, "data-value": result.psnr, text: value }),
      ` against the ${which}.`));
}

/** A section that fills itself with the two round trips (or the server's reason why not). */
export function roundtripView(original, blob, resultName) {
  const title = el("h4", { text: "What an edit starts from: both pictures after a round trip through the model's VAE" });
  const status = el("p", { class: "status", text: "Decoding the original and the protected picture…" });
  const section = el("section", { class: "roundtrip", "aria-label": `Round trips of ${original.name}`, "aria-live": "polite" },
    title, status);
  serially(async () => {
    try {
      const clean = await decoded(original, original.name);
      const protectedOne = await decoded(blob, resultName);
      section.replaceChildren(title, el("div", { class: "views" },
        picture(clean, "original", original.name), picture(protectedOne, "protected", original.name)),
      el("p", { class: "help", text: "The closer the left one is to your picture, the better the model sees it; " +
        "the damage on the right is what an edit of the protected file starts from." }));
      section.dataset.ready = "true";
    } catch (err) {
      section.replaceChildren(title, el("p", { class: "error", text: sentence(err.message) }));
      section.dataset.ready = "error";
    }
  });
  return section;
}
