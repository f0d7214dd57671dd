// The options form, built at run time from the OpenAPI schema of POST /v1/jobs (one options model:
// bounds, defaults, choices and descriptions come from the server) and from GET /v1/models (presets,
// the server's step cap, whether it has a fast-mode generator). Strength (eps), steps, mode, preset and format
// get friendly controls; every other field of the schema appears under "More settings" with a control chosen
// by its type.

export const STRENGTH_STOPS = [
  { name: "subtle", eps: 12 }, // the eps of INTENSITIES["subtle"] (pca_attack/attack/config.py)
  { name: "standard", eps: 16 },
  { name: "strong", eps: 24 },
];
const MAIN_FIELDS = ["eps", "steps", "mode", "preset", "format", "model"];
const FAST_PASS_STEPS = 0.5; // the time estimate counts one generator pass as half a PGD step
const STRENGTH_FIELDS = ["eps", "intensity"]; // both drawn by the strength control
const LOSSLESS = new Set(["png"]);

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter(Boolean));
  return node;
};
export { el };

/** The non-null branch of an `anyOf: [X, null]` schema, and whether null is allowed. */
function unwrap(prop) {
  if (!prop.anyOf) return { schema: prop, nullable: false };
  const branch = prop.anyOf.find((s) => s.type !== "null") || {};
  return { schema: { ...branch, description: prop.description, default: prop.default, title: prop.title }, nullable: true };
}

function bounds(schema) {
  const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum : undefined);
  return { min, max: schema.maximum, exclusiveMin: schema.exclusiveMinimum !== undefined };
}

// Friendlier names for fields the page knows; any other field shows the schema's own title.
const LABELS = {
  steps: "Steps", preset: "Preset", format: "Format", step: "Step size", seed: "Seed", random_start: "Random start",
  quality: "JPEG / WebP quality", keep_exif: "Keep EXIF metadata", eot: "Robustness preset (EoT)",
  eot_samples: "EoT samples per step", model: "Model",
};
const labelText = (name, schema) => LABELS[name] || schema.title || name.replace(/_/g, " ");

function describe(id, schema) {
  return schema.description ? el("small", { id: `${id}-help`, class: "help", text: schema.description }) : null;
}

/** A generic control for one schema field: select for enums, checkbox for booleans, number or text. */
function genericField(name, prop) {
  const { schema, nullable } = unwrap(prop);
  const id = `opt-${name}`;
  const help = describe(id, schema);
  const common = { id, name, "aria-describedby": help ? `${id}-help` : null };
  let input;
  if (schema.enum) {
    const options = schema.enum.map((v) => el("option", { value: v, text: v, selected: v === schema.default }));
    // a choice without a default is optional (EoT): "none" first and chosen, sent empty, which the server reads as unset
    if (nullable || schema.default == null) options.unshift(el("option", { value: "", text: "none", selected: true }));
    input = el("select", common, ...options);
  } else if (schema.type === "boolean") {
    input = el("input", { ...common, type: "checkbox", checked: schema.default === true });
    return el("div", { class: "field check" }, input, el("label", { for: id, text: labelText(name, schema) }), help);
  } else if (schema.type === "integer" || schema.type === "number") {
    const { min, max, exclusiveMin } = bounds(schema);
    const step = schema.type === "integer" ? 1 : "any";
    const low = exclusiveMin && schema.type === "integer" ? min + 1 : min;
    input = el("input", { ...common, type: "number", inputmode: "decimal", min: low, max, step, value: schema.default ?? "" });
    if (nullable) input.placeholder = "server default";
  } else {
    input = el("input", { ...common, type: "text", maxlength: schema.maxLength, value: schema.default ?? "" });
    if (nullable) input.placeholder = "none";
  }
  return el("div", { class: "field" }, el("label", { for: id, text: labelText(name, schema) }), input, help);
}

/** The strength control: a slider over eps with named stops. When the server's options model has an
 * `intensity` knob, a named stop sends that name (the server's tuned settings for the level) instead of
 * eps; any other slider value sends a plain eps. */
function strengthField(prop, intensityProp) {
  const { schema } = unwrap(prop);
  const named = intensityProp ? unwrap(intensityProp).schema.enum || [] : null;
  const { min, max, exclusiveMin } = bounds(schema);
  const low = Math.max(1, exclusiveMin ? Math.floor(min) + 1 : Math.ceil(min ?? 1));
  const high = Math.floor(max ?? 64);
  const value = schema.default ?? 16;
  const stops = STRENGTH_STOPS.filter((s) => s.eps >= low && s.eps <= high && (!named || named.includes(s.name)));
  const intensity = named ? el("input", { type: "hidden", id: "opt-intensity", name: "intensity" }) : null;
  const list = el("datalist", { id: "eps-stops" }, ...stops.map((s) => el("option", { value: s.eps, label: s.name })));
  const slider = el("input", {
    id: "opt-eps", name: "eps", type: "range", min: low, max: high, step: 1, value, list: "eps-stops",
    "aria-describedby": "eps-out eps-help",
  });
  const out = el("output", { id: "eps-out", for: "opt-eps", "aria-live": "polite" });
  const buttons = el("div", { class: "stops", role: "group", "aria-label": "Named strengths" },
    ...stops.map((s) => el("button", { type: "button", "data-eps": s.eps, text: `${s.name[0].toUpperCase()}${s.name.slice(1)} ${s.eps}` })));
  const show = () => {
    const eps = Number(slider.value);
    const stop = stops.find((s) => s.eps === eps);
    out.textContent = `${eps} of 255 levels${stop ? ` (${stop.name})` : ""}`;
    if (intensity) intensity.value = stop ? stop.name : "";
    for (const b of buttons.querySelectorAll("button")) b.setAttribute("aria-pressed", String(Number(b.dataset.eps) === eps));
  };
  slider.addEventListener("input", show);
  buttons.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    slider.value = b.dataset.eps;
    slider.dispatchEvent(new Event("input", { bubbles: true }));
  });
  show();
  const help = el("small", { id: "eps-help", class: "help",
    text: "The most any pixel may change, on the 0-255 scale. Higher protects more and shows more." +
      (intensity ? " A named strength also uses the server's tuned settings for that level." : "") });
  return el("div", { class: "field strength" },
    el("label", { for: "opt-eps", text: "Strength" }), buttons, slider, list, out, help, intensity);
}

/** The attack mode: thorough (pgd, the default), fast (one pass of the server's trained generator) or fast
 * followed by N PGD refinement steps. Drawn only when GET /v1/models reports a generator (`generator_id`);
 * without one the field is left out and the server's default (pgd) applies. The composed value (pgd, fast or
 * fast+N) travels in the hidden input named `mode`; the steps field is disabled outside pgd (not sent). */
function modeField(prop, models, stepsInput) {
  const cap = Math.min(Number(models.limits?.max_steps ?? 9999), 9999);
  const hidden = el("input", { type: "hidden", id: "opt-mode", name: "mode", value: "pgd" });
  const choice = el("select", { id: "opt-mode-choice", "aria-describedby": "opt-mode-help" },
    el("option", { value: "pgd", text: "Thorough (full attack)", selected: true }),
    el("option", { value: "fast", text: "Fast (one generator pass)" }),
    el("option", { value: "fast+N", text: "Fast, then N refinement steps" }));
  const refine = el("input", {
    id: "opt-mode-steps", type: "number", inputmode: "numeric", min: 1, max: cap, step: 1, value: 5,
    "data-check": true,
  });
  const refineBox = el("div", { class: "field refine", hidden: true },
    el("label", { for: "opt-mode-steps", text: "Refinement steps (N)" }), refine);
  const help = el("small", { id: "opt-mode-help", class: "help", text: "Fast uses this server's generator " +
    `(${models.generator_id}): seconds instead of minutes, less protection; refinement steps recover part of it.` });
  const sync = () => {
    const fastN = choice.value === "fast+N";
    refineBox.hidden = !fastN;
    refine.disabled = !fastN;
    hidden.value = fastN ? `fast+${refine.value}` : choice.value;
    if (stepsInput) stepsInput.disabled = choice.value !== "pgd";
    hidden.dispatchEvent(new Event("input", { bubbles: true }));
  };
  choice.addEventListener("change", sync);
  refine.addEventListener("input", sync);
  return el("div", { class: "field mode" },
    el("label", { for: "opt-mode-choice", text: "Mode" }), choice, hidden, help, refineBox);
}

/** PGD steps a request's values amount to, for the time estimate (a fast pass counts FAST_PASS_STEPS). */
export function effectiveSteps(values) {
  const mode = values.mode || "pgd";
  if (mode === "pgd") return Number(values.steps || 1);
  return FAST_PASS_STEPS + (mode === "fast" ? 0 : Number(mode.split("+")[1]));
}

function presetHelp(models, select) {
  const note = el("small", { id: "opt-preset-summary", class: "help", "aria-live": "polite" });
  const show = () => {
    const preset = (models.presets || []).find((p) => p.name === select.value);
    note.textContent = preset ? preset.summary : "";
  };
  select.addEventListener("change", show);
  select.setAttribute("aria-describedby", "opt-preset-summary");
  show();
  return note;
}

function formatWarning(select) {
  const warn = el("p", { id: "lossy-warning", class: "warning", role: "status" });
  const show = () => {
    const lossy = !LOSSLESS.has(select.value);
    warn.hidden = !lossy;
    warn.textContent = lossy
      ? `${select.value.toUpperCase()} is lossy: compression changes pixels after the protection, so part of it ` +
        "may be lost. PNG keeps every protected pixel."
      : "";
  };
  select.addEventListener("change", show);
  show();
  return warn;
}

/** Build the form into `mainBox` and `moreBox`; returns { values(), onChange(fn) }. */
export function buildOptions(properties, models, mainBox, moreBox) {
  const fields = Object.entries(properties).filter(([name, p]) => name !== "files" && p.type !== "array");
  const main = MAIN_FIELDS.filter((name) => properties[name]);
  for (const name of main) {
    if (name === "mode") {
      if (models.generator_id) mainBox.append(modeField(properties.mode, models, mainBox.querySelector("#opt-steps")));
      continue; // no generator on this server: pgd only, nothing to choose
    }
    mainBox.append(name === "eps" ? strengthField(properties.eps, properties.intensity) : genericField(name, properties[name]));
  }
  const drawn = properties.eps ? [...main, ...STRENGTH_FIELDS] : main;
  for (const [name, prop] of fields) if (!drawn.includes(name)) moreBox.append(genericField(name, prop));
  const steps = mainBox.querySelector("#opt-steps");
  const cap = models.limits && models.limits.max_steps;
  if (steps && cap) steps.max = Math.min(Number(steps.max || cap), cap);
  const preset = mainBox.querySelector("#opt-preset");
  if (preset) {
    if (models.default_preset) preset.value = models.default_preset;
    const schemaHelp = preset.parentElement.querySelector(".help");
    if (schemaHelp) schemaHelp.remove(); // the preset's own summary from /v1/models says more
    preset.parentElement.append(presetHelp(models, preset));
  }
  const format = mainBox.querySelector("#opt-format");
  if (format) format.parentElement.append(formatWarning(format));
  const inputs = () => [...mainBox.querySelectorAll("[name]"), ...moreBox.querySelectorAll("[name]")];
  return {
    values() {
      const out = {};
      for (const input of inputs()) {
        if (input.disabled) continue;
        if (input.type === "checkbox") out[input.name] = input.checked ? "true" : "false";
        else if (input.value !== "") out[input.name] = input.value;
      }
      if (out.intensity) delete out.eps; // the named level brings its own eps
      return out;
    },
    invalid() {
      const checked = [...inputs(), ...mainBox.querySelectorAll("[data-check]")].filter((input) => !input.disabled);
      return checked.find((input) => !input.checkValidity()) || null;
    },
    onChange(fn) {
      for (const input of inputs()) input.addEventListener("input", fn);
    },
  };
}
