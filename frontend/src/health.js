// The health table, the tab's first view: a row per shown run with its worst
// flag, flag kinds, last step, last loss and a grad-norm sparkline. Pure
// builders over the `health` route's rows; sorting and clicks are wired by
// the caller through `onSort` and `onOpen`.
import {el, fmt, exact, nonFiniteStretches} from './util.js';

const SVG = 'http://www.w3.org/2000/svg';
const SEVERITY_RANK = {error: 3, warning: 2, info: 1};
const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 24;

export const HEALTH_COLUMNS = [
  {key: 'run', title: 'Run'},
  {key: 'worst', title: 'Worst'},
  {key: 'kinds', title: 'Flags'},
  {key: 'last_step', title: 'Last step'},
  {key: 'last_loss', title: 'Last loss'},
  {key: 'grad_norm', title: 'Grad norm', sortable: false},
];

/** The value a column sorts on; non-finite losses sort as the worst. */
function sortValue(row, key) {
  if (key === 'worst') return SEVERITY_RANK[row.worst] || 0;
  if (key === 'kinds') return row.flag_count;
  if (key === 'last_loss') {
    const v = row.last_loss;
    if (v === null || v === undefined) return -Infinity;
    return Number.isFinite(v) ? v : Infinity;
  }
  return row[key] ?? -Infinity;
}

/** Rows sorted by a column; ties by run name, so the order is stable. */
export function sortRows(rows, {key, descending}) {
  const sign = descending ? -1 : 1;
  return rows.slice().sort((a, b) => {
    if (key !== 'run') {
      const va = sortValue(a, key);
      const vb = sortValue(b, key);
      if (va < vb) return -sign;
      if (va > vb) return sign;
    } else if (a.run !== b.run) {
      return sign * (a.run < b.run ? -1 : 1);
    }
    return a.run < b.run ? -1 : a.run > b.run ? 1 : 0;
  });
}

/**
 * A sparkline of a {steps, values} series as inline SVG (no chart instance per
 * row: 200 rows stay fast). Each stretch of non-finite points is one red band.
 */
export function sparkline(series, color) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', String(SPARK_WIDTH));
  svg.setAttribute('height', String(SPARK_HEIGHT));
  svg.setAttribute('class', 'gh-spark');
  if (!series || !series.steps.length) return svg;
  const {steps, values} = series;
  const finite = values.filter((v) => Number.isFinite(v) && v > 0);
  // Gradient norms span decades: a log scale, as the charts default to.
  const logs = finite.map((v) => Math.log10(v));
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  const x0 = steps[0];
  const span = Math.max(1, steps[steps.length - 1] - x0);
  const x = (step) => (1 + ((SPARK_WIDTH - 2) * (step - x0)) / span).toFixed(1);
  const y = (v) => (SPARK_HEIGHT - 2 - ((SPARK_HEIGHT - 4) * (Math.log10(v) - lo))
    / Math.max(hi - lo, 1e-12)).toFixed(1);
  let path = '';
  let pen = 'M';
  for (let i = 0; i < steps.length; i++) {
    const v = values[i];
    if (Number.isFinite(v) && v > 0) {
      path += `${pen}${x(steps[i])},${y(v)}`;
      pen = 'L';
    } else {
      pen = 'M';
    }
  }
  for (const stretch of nonFiniteStretches(steps, values)) {
    const left = Number(x(stretch.first_step)) - 1;
    const band = document.createElementNS(SVG, 'rect');
    band.setAttribute('x', String(left));
    band.setAttribute('y', '0');
    band.setAttribute('width', String(Math.max(2, Number(x(stretch.last_step)) + 1 - left)));
    band.setAttribute('height', String(SPARK_HEIGHT));
    band.setAttribute('class', 'gh-spark-nonfinite');
    svg.appendChild(band);
  }
  const line = document.createElementNS(SVG, 'path');
  line.setAttribute('d', path);
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', color);
  line.setAttribute('stroke-width', '1.5');
  svg.appendChild(line);
  return svg;
}

/**
 * Builds the health table.
 *
 * @param {Array<Object>} rows the `health` rows of the shown runs.
 * @param {{key: string, descending: boolean}} sort the sort column.
 * @param {Object} hooks {colorOf(run), onSort(key), onOpen(run), pending}:
 *     `pending` counts runs whose row is still loading.
 * @return {HTMLElement} the table's card.
 */
export function healthTable(rows, sort, {colorOf, onSort, onOpen, pending = 0}) {
  const head = el('tr', {});
  for (const column of HEALTH_COLUMNS) {
    const sortable = column.sortable !== false;
    const arrow = sort.key === column.key ? (sort.descending ? ' ▼' : ' ▲') : '';
    const th = el('th', {text: column.title + arrow, 'data-sort': sortable ? column.key : null,
      'aria-sort': sort.key === column.key ? (sort.descending ? 'descending' : 'ascending') : null,
      title: sortable ? 'Sort by this column' : null,
      onclick: sortable ? () => onSort(column.key) : null});
    if (sortable) th.classList.add('gh-sortable');
    head.appendChild(th);
  }
  const body = el('tbody', {});
  for (const row of sortRows(rows, sort)) {
    const swatch = el('span', {class: 'gh-swatch'});
    swatch.style.background = colorOf(row.run);
    const loss = row.last_loss;
    const lossCell = el('td', {class: 'gh-num', 'data-col': 'last_loss', text: fmt(loss),
      title: loss === null ? '' : `exact: ${exact(loss)}`});
    if (loss !== null && !Number.isFinite(loss)) {
      lossCell.classList.add('gh-warn');
      if (row.last_finite_loss) {
        lossCell.title = `last finite: ${exact(row.last_finite_loss.value)} at step `
          + `${row.last_finite_loss.step}`;
      }
    }
    const tr = el('tr', {class: 'gh-health-row', tabindex: '0',
      title: `Open ${row.run}`, onclick: () => onOpen(row.run),
      onkeydown: (e) => { if (e.key === 'Enter') onOpen(row.run); }},
    el('td', {'data-col': 'run'}, swatch, el('span', {class: 'gh-run-text', text: row.run})),
    el('td', {'data-col': 'worst'}, el('span', {class: `gh-badge gh-sev-${row.worst || 'ok'}`,
      text: row.worst || 'ok'})),
    el('td', {'data-col': 'kinds', text: row.kinds.join(', ') || '–'}),
    el('td', {class: 'gh-num', 'data-col': 'last_step', text: row.last_step ?? '–'}),
    lossCell,
    el('td', {'data-col': 'grad_norm'}, sparkline(row.grad_norm, colorOf(row.run))));
    tr.dataset.run = row.run;
    tr.dataset.worst = row.worst || '';
    body.appendChild(tr);
  }
  const counts = {error: 0, warning: 0};
  for (const row of rows) if (row.worst in counts) counts[row.worst]++;
  const summary = `${rows.length} run(s): ${counts.error} with errors, `
    + `${counts.warning} with warnings${pending ? ` — ${pending} still loading…` : ''}`;
  return el('section', {class: 'gh-card'},
    el('h3', {text: 'Run health — click a run to open it'}),
    el('p', {class: 'gh-muted', id: 'gh-health-summary', text: summary}),
    el('table', {class: 'gh-table gh-health', id: 'gh-health'}, el('thead', {}, head), body));
}
