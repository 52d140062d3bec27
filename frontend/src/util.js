// Small DOM and numeric helpers. Data (run names, tags, messages) is only ever
// put into the page with textContent, never as HTML.

/** Creates an element; `text` goes through textContent. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/**
 * TensorBoard's smoothing: a debiased exponential moving average over the
 * finite points; non-finite points pass through unchanged. The same formula as
 * TensorBoard's scalar charts: last = last * w + (1 - w) * v, drawn as
 * last / (1 - w^n) after n finite points; a constant series stays as it is.
 */
export function smooth(values, weight) {
  if (!weight) return values.slice();
  const first = values.find((v) => Number.isFinite(v));
  if (values.every((v) => !Number.isFinite(v) || v === first)) return values.slice();
  const out = new Array(values.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) {
      out[i] = v;
      continue;
    }
    last = last * weight + (1 - weight) * v;
    n++;
    out[i] = last / (1 - Math.pow(weight, n));
  }
  return out;
}

/**
 * Stretches of consecutive non-finite points of a drawn series:
 * [{first_step, last_step, count, value}], as the `health` route gives them.
 */
export function nonFiniteStretches(steps, values) {
  const out = [];
  let open = null;
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i])) {
      open = null;
    } else if (open) {
      open.last_step = steps[i];
      open.count++;
    } else {
      open = {first_step: steps[i], last_step: steps[i], count: 1, value: values[i]};
      out.push(open);
    }
  }
  return out;
}

/** Full precision of a value, for tooltips ("exact value"). */
export function exact(v) {
  if (typeof v !== 'number') return String(v ?? '–');
  if (!Number.isFinite(v)) return nonFiniteLabel(v);
  return String(v);
}

export function fmt(v) {
  if (v === null || v === undefined) return '–';
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  if (typeof v !== 'number') return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
  return String(Number(v.toPrecision(4)));
}

export function nonFiniteLabel(v) {
  if (Number.isNaN(v)) return 'NaN';
  return v > 0 ? '+Inf' : '-Inf';
}

/** Largest finite positive value of arrays (for placing non-finite markers on log axes). */
export function maxFinite(...arrays) {
  let m = -Infinity;
  for (const a of arrays) for (const v of a || []) if (Number.isFinite(v) && v > m) m = v;
  return m === -Infinity ? 1 : m;
}
