// Data access: relative URLs only (the tab runs in TensorBoard's iframe with
// <base href="plugin/gradient_health/">), and TensorBoard's JSON conventions.

/** Turns TensorBoard's "NaN" / "Infinity" / "-Infinity" strings back into numbers. */
export function reviveNumber(v) {
  if (v === 'NaN') return NaN;
  if (v === 'Infinity') return Infinity;
  if (v === '-Infinity') return -Infinity;
  return v;
}

/** Revives the non-finite values of the numeric arrays of a payload, in place. */
export function revive(obj) {
  if (Array.isArray(obj)) {
    for (let i = 0; i < obj.length; i++) {
      const v = obj[i];
      if (typeof v === 'string') obj[i] = reviveNumber(v);
      else if (v && typeof v === 'object') revive(v);
    }
  } else if (obj && typeof obj === 'object') {
    for (const k of Object.keys(obj)) {
      const v = obj[k];
      if (v && typeof v === 'object') revive(v);
      else if (typeof v === 'string' && NUMERIC_KEYS.has(k)) obj[k] = reviveNumber(v);
    }
  }
  return obj;
}
const NUMERIC_KEYS = new Set(['volatility', 'value', 'median']);

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Builds a query string; arrays give repeated parameters. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** GETs a route of the plugin and returns its revived JSON. */
export async function getJson(route, params) {
  const res = await fetch(`./${route}${query(params)}`);
  if (!res.ok) {
    const text = (await res.text()).slice(0, 300);
    throw new HttpError(res.status, text || res.statusText);
  }
  // Series arrays may hold "NaN" strings among numbers; revive them.
  return revive(await res.json());
}
