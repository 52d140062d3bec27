// The run list, as in TensorBoard's time-series dashboard: a regex filter,
// select all / none, a checkbox and a colour per run, and the run that the
// single-run views show. The choice lives in the URL hash across reloads.
import {el, clear} from './util.js';

/**
 * Run colours (category10 and its lighter tableau20 shades). Pure red is left
 * out: it marks NaN/Inf findings. A run's colour is fixed by its place among
 * all runs, so a filter never recolours a run; past 20 runs colours repeat, as
 * in TensorBoard.
 */
export const RUN_COLORS = [
  '#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf',
  '#bcbd22', '#7f7f7f', '#393b79', '#637939', '#ad494a', '#6b6ecf', '#e7ba52',
  '#aec7e8', '#98df8a', '#c5b0d5', '#c49c94', '#f7b6d2', '#9edae5',
];

// Keys this tab adds to TensorBoard's hash ("#gradient_health&ghRun=..."):
// TensorBoard itself splits its hash on "&" and "=" and keeps such keys.
const HASH_KEYS = {filter: 'ghFilter', off: 'ghOff', run: 'ghRun', view: 'ghView'};

/** The window whose URL hash holds the state: TensorBoard's page when reachable. */
function hashWindow() {
  try {
    if (window.parent !== window && window.parent.location.hash !== undefined) {
      return window.parent;
    }
  } catch (e) {
    // A parent of another origin: keep the state in this frame's own URL.
  }
  return window;
}

/** Parses "#tab&key=value&..." as TensorBoard does; the bare part is the tab. */
export function parseHash(hash) {
  const out = {};
  for (const part of hash.replace(/^#/, '').split('&')) {
    if (!part) continue;
    const pair = part.split('=');
    if (pair.length === 1) out[''] = pair[0];
    else if (pair.length === 2) out[decodeURIComponent(pair[0])] = decodeURIComponent(pair[1]);
  }
  return out;
}

function formatHash(entries) {
  const parts = [];
  if (entries['']) parts.push(entries['']);
  for (const [key, value] of Object.entries(entries)) {
    if (key === '' || value === undefined || value === null || value === '') continue;
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  return `#${parts.join('&')}`;
}

/** Reads the tab's saved state out of the URL hash. */
export function readHashState() {
  const entries = parseHash(hashWindow().location.hash || '');
  let off = [];
  try {
    off = JSON.parse(entries[HASH_KEYS.off] || '[]');
  } catch (e) {
    off = [];
  }
  return {
    filter: entries[HASH_KEYS.filter] || '',
    off: Array.isArray(off) ? off.filter((r) => typeof r === 'string') : [],
    run: entries[HASH_KEYS.run] || null,
    view: entries[HASH_KEYS.view] || null,
  };
}

/** Writes the tab's state into the URL hash without a new history entry. */
export function writeHashState(state) {
  const target = hashWindow();
  const entries = parseHash(target.location.hash || '');
  entries[HASH_KEYS.filter] = state.filter;
  entries[HASH_KEYS.off] = state.off.size ? JSON.stringify([...state.off].sort()) : '';
  entries[HASH_KEYS.run] = state.run || '';
  entries[HASH_KEYS.view] = state.view;
  const hash = formatHash(entries);
  if (hash === target.location.hash) return;
  const url = target.location.href.replace(/#.*$/, '') + hash;
  target.history.replaceState(target.history.state, '', url);
  if (target !== window) {
    // TensorBoard re-reads its hash on this event: it keeps our keys when it
    // writes its own (e.g. the active tab) later.
    target.dispatchEvent(new HashChangeEvent('hashchange'));
  }
}

/** The compiled filter, or null when the text is not a valid regex. */
export function filterRegex(text) {
  try {
    return new RegExp(text, 'i');
  } catch (e) {
    return null;
  }
}

/** The runs that pass the filter (every run for an empty filter, none for a bad regex). */
export function matchingRuns(state) {
  const regex = filterRegex(state.filter);
  if (!regex) return [];
  return state.runs.filter((run) => regex.test(run));
}

/** The runs that the views draw: matching the filter and checked. */
export function selectedRuns(state) {
  return matchingRuns(state).filter((run) => !state.off.has(run));
}

export function runColor(state, run) {
  const i = state.runs.indexOf(run);
  return RUN_COLORS[(i < 0 ? 0 : i) % RUN_COLORS.length];
}

/**
 * The run list's DOM. `onChange(kind)` is called after a change: "selection"
 * (filter, checkboxes) or "open" (the run of single-run views).
 */
export class RunList {
  constructor(state, onChange) {
    this.state = state;
    this.onChange = onChange;
    this.filterInput = el('input', {type: 'search', id: 'gh-run-filter',
      placeholder: 'Filter runs (regex)', value: state.filter, spellcheck: 'false',
      'aria-label': 'Filter runs (regular expression)'});
    this.filterInput.addEventListener('input', () => {
      state.filter = this.filterInput.value;
      this.update();
      this.onChange('selection');
    });
    this.count = el('span', {class: 'gh-muted', id: 'gh-run-count'});
    this.list = el('ul', {class: 'gh-runs', id: 'gh-runs'});
    this.root = el('aside', {class: 'gh-sidebar', id: 'gh-runlist'},
      el('div', {class: 'gh-sidebar-title', text: 'Runs'}),
      this.filterInput,
      el('div', {class: 'gh-run-actions'},
        el('button', {id: 'gh-select-all', text: 'All', title: 'Select every matching run',
          onclick: () => this.setAll(true)}),
        el('button', {id: 'gh-select-none', text: 'None', title: 'Deselect every matching run',
          onclick: () => this.setAll(false)}),
        this.count),
      this.list);
  }

  setAll(on) {
    for (const run of matchingRuns(this.state)) {
      if (on) this.state.off.delete(run);
      else this.state.off.add(run);
    }
    this.update();
    this.onChange('selection');
  }

  /** Opens a run in the single-run views. */
  open(run) {
    this.state.run = run;
    this.state.off.delete(run); // an opened run is shown

    this.update();
    this.onChange('open');
  }

  /** Rebuilds the list from the state (runs, filter, checks, open run). */
  update() {
    const s = this.state;
    const regex = filterRegex(s.filter);
    this.filterInput.classList.toggle('gh-invalid', !regex);
    this.filterInput.title = regex ? '' : 'Not a valid regular expression';
    const matching = new Set(matchingRuns(s));
    clear(this.list);
    for (const run of s.runs) {
      if (!matching.has(run)) continue;
      const box = el('input', {type: 'checkbox', class: 'gh-run-toggle',
        checked: !s.off.has(run), 'aria-label': `Show ${run}`});
      box.addEventListener('change', () => {
        if (box.checked) s.off.delete(run);
        else s.off.add(run);
        this.onChange('selection');
      });
      const swatch = el('span', {class: 'gh-swatch'});
      swatch.style.background = runColor(s, run);
      const name = el('button', {class: 'gh-run-name', text: run,
        title: `Open ${run} in the single-run views`, onclick: () => this.open(run)});
      const item = el('li', {class: run === s.run ? 'gh-run gh-open' : 'gh-run'},
        box, swatch, name);
      item.dataset.run = run;
      this.list.appendChild(item);
    }
    const shown = [...matching].filter((run) => !s.off.has(run)).length;
    this.count.textContent = `${shown} of ${s.runs.length} shown`;
  }
}
