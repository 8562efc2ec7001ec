// The page's only way to the server: the public API (/v1/model, /v1/segment) and the
// bounded list of recent requests' costs (/v1/recent). URLs are relative, so the page also
// works behind a path prefix.

export const MIB = 2 ** 20;

// An answer of the API that is not a success: its status and the API's own error fields.
export class ApiProblem extends Error {
  constructor(status, code, message, minBudgetMb = null) {
    super(message);
    this.name = "ApiProblem";
    this.status = status;
    this.code = code;
    this.minBudgetMb = minBudgetMb;
  }
}

async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiProblem(0, "unreachable", `the server could not be reached (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // a body that is not JSON: said below by the status alone
  }
  if (!response.ok) {
    const detail = body && typeof body.error === "object" ? body.error : {};
    throw new ApiProblem(
      response.status,
      detail.code || `http_${response.status}`,
      detail.message || `the server answered ${response.status} ${response.statusText}`,
      typeof detail.min_budget_mb === "number" ? detail.min_budget_mb : null,
    );
  }
  return body;
}

export function getModel() {
  return request("v1/model");
}

export function getRecent(limit = 100) {
  return request(`v1/recent?limit=${limit}`);
}

// One setting of the knob: {scheme, threshold?, budget_mb?} -> the query string the API takes.
export function settingQuery(setting) {
  const query = new URLSearchParams({ scheme: setting.scheme });
  if (setting.scheme === "threshold") query.set("threshold", String(setting.threshold));
  if (setting.scheme === "budget") query.set("budget_mb", String(setting.budget_mb));
  return query.toString();
}

// POST /v1/segment with the image as the multipart field `image`.
export function segment(file, setting, signal) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  return request(`v1/segment?${settingQuery(setting)}`, { method: "POST", body: form, signal });
}

// The smallest budget (MiB) this image can run under: the API names it in the 422 it gives
// for a budget below it, before the image reaches the queue, so asking costs little.
export async function minBudgetMb(file, signal) {
  try {
    await segment(file, { scheme: "budget", budget_mb: 0.001 }, signal);
  } catch (error) {
    if (error instanceof ApiProblem && error.minBudgetMb !== null) return error.minBudgetMb;
    throw error;
  }
  return 0.001; // the server took even that: nothing smaller is worth offering
}
