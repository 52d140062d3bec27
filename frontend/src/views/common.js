// What the views share: the empty state, export links, the runs a comparing
// route is asked for, and the options of a run's line series.
import {el} from '../util.js';
import {selectedRuns} from '../runs.js';

export const HEALTHY_UPDATE_RATIO = 1e-3; // cs231n: update/weight ratio near 1e-3 is healthy.
const MAX_COMPARED_RUNS = 200; // the routes' limit of `run` parameters (http_api.md)

/** The shown runs a comparing route is asked for: at most the routes' limit. */
export function comparedRuns(app) {
  const runs = selectedRuns(app.state);
  if (runs.length > MAX_COMPARED_RUNS) {
    app.note(`Comparing the first ${MAX_COMPARED_RUNS} of ${runs.length} shown runs: `
      + 'narrow the run list to compare others.');
  }
  return runs.slice(0, MAX_COMPARED_RUNS);
}

export function emptyState(main, title, text) {
  main.appendChild(el('section', {class: 'gh-card gh-empty', 'data-empty': title},
    el('h3', {text: title}), el('p', {text})));
}

export function exportLinks(run, keys) {
  const box = el('div', {class: 'gh-export'}, el('span', {class: 'gh-muted', text: 'Export every point: '}));
  for (const key of keys) {
    for (const format of ['csv', 'json']) {
      const q = new URLSearchParams({run, key, format});
      box.appendChild(el('a', {href: `./export?${q}`, download: '', text: `${key} (${format})`}));
    }
  }
  return box;
}

/**
 * Options of lineWithMarkers for a route's series object S of a run. The
 * stretches of NaN/Inf over every point come from the run's health row when the
 * tab has it (single-run views load it; views that compare many runs use the
 * rows the health table loaded, and count in the drawn points otherwise).
 */
export function seriesOptions(app, run, key, series, extra = {}) {
  return {smoothing: app.state.smoothing, stretches: app.stretchesOf(run, key),
    downsampled: !!series.downsampled, ...extra};
}
