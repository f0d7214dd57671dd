// The page's only door to the server: the public HTTP API (the same routes as pca_client).
// Every call carries the API key of this tab when one is set; every error becomes an ApiError whose
// message is the server's own sentence ({"error": {"code", "message"}}).

const KEY_STORE = "pca-protect-api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** "not a readable image (…)" -> "Not a readable image (…)." */
export function sentence(text) {
  const trimmed = String(text || "").trim();
  if (!trimmed) return "Something went wrong.";
  const first = trimmed[0].toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : `${first}.`;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = `the server answered ${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, code, message);
}

/** fetch() with the key; resolves to the Response when ok, rejects with ApiError otherwise. */
export async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, "network", `the server could not be reached (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export const getJSON = async (path) => (await call(path)).json();

export function formData(fields, files = []) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value !== null && value !== undefined && value !== "") form.append(name, String(value));
  }
  for (const [name, file, filename] of files) form.append(name, file, filename || file.name);
  return form;
}

export const postForm = async (path, form) => (await call(path, { method: "POST", body: form })).json();

/** The multipart schema of POST /v1/jobs: the options model, read from the server's OpenAPI document. */
export async function jobOptionsSchema() {
  const doc = await getJSON("/openapi.json");
  const body = doc.paths["/v1/jobs"].post.requestBody.content["multipart/form-data"].schema;
  const resolve = (schema) => {
    if (schema && schema.$ref) {
      const name = schema.$ref.split("/").pop();
      return resolve(doc.components.schemas[name]);
    }
    return schema;
  };
  const schema = resolve(body);
  const properties = {};
  for (const [name, prop] of Object.entries(schema.properties || {})) properties[name] = resolve(prop);
  return properties;
}

/** The file name a download should get, from Content-Disposition: the Unicode `filename*=UTF-8''…`
 * (RFC 5987) first, then the ASCII `filename=` (fallback: `fallback`). */
export function dispositionName(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const extended = /filename\*=UTF-8''([^;\s]+)/i.exec(header);
  if (extended) {
    try {
      return decodeURIComponent(extended[1]);
    } catch {
      /* malformed: use the plain name */
    }
  }
  const match = /filename="?([^";]+)"?/i.exec(header);
  return match ? match[1] : fallback;
}
