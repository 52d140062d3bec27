// The loss-components view: each logged component per shown run and its
// volatility (the loss_components route computes it from every point).
import {el, fmt} from '../util.js';
import {baseOption, lineWithMarkers, stepAxis, stepTooltip, stepZoom, valueAxis} from '../charts.js';
import {comparedRuns, emptyState, seriesOptions} from './common.js';

export const lossComponents = {
  title: 'Loss components',
  multiRun: true,
  async load(app, fresh) {
    const runs = comparedRuns(app);
    if (!runs.length) return {runs: {}};
    const data = await app.fetch('loss_components', {run: runs}, fresh);
    const withComponents = Object.keys(data.runs).filter((run) =>
      Object.keys(data.runs[run]).length);
    return {runs: Object.fromEntries(withComponents.map((run) => [run, data.runs[run]]))};
  },
  draw(app, data, main) {
    const s = app.state;
    const names = [];
    for (const comps of Object.values(data.runs)) {
      for (const n of Object.keys(comps)) if (!names.includes(n)) names.push(n);
    }
    if (!names.length) {
      emptyState(main, 'Loss components', 'No shown run records loss components. '
        + 'Pass loss_components=["kl_loss", ...] to GradientHealthCallback.');
      return;
    }
    const runs = Object.keys(data.runs);
    const table = el('table', {class: 'gh-table', id: 'gh-volatility'});
    table.appendChild(el('tr', {}, el('th', {text: 'run'}),
      ...names.map((n) => el('th', {text: `${n} volatility`}))));
    for (const run of runs) {
      table.appendChild(el('tr', {'data-run': run}, el('td', {text: run}),
        ...names.map((n) => el('td', {'data-component': n,
          text: fmt(data.runs[run][n]?.volatility ?? null)}))));
    }
    main.appendChild(el('section', {class: 'gh-card'},
      el('h3', {text: 'Volatility: std of point-to-point change over the second half ÷ mean |loss|'}),
      table));
    for (const name of names) {
      const out = [];
      let nonPositive = false;
      for (const run of runs) {
        const c = data.runs[run][name];
        if (c && c.values.some((v) => Number.isFinite(v) && v <= 0)) nonPositive = true;
      }
      for (const run of runs) {
        const c = data.runs[run][name];
        if (!c) continue;
        out.push(...lineWithMarkers(run, c.steps, c.values, seriesOptions(app, run,
          `loss_component/${name}`, c, {log: s.log && !nonPositive, color: app.colorOf(run)})));
      }
      const log = s.log && !nonPositive;
      const chart = app.charts.get(`loss_${name}`, main, {height: 300,
        title: `${name}${s.log && !log ? ' (linear: has values ≤ 0)' : ''}`});
      chart.setOption(baseOption({
        tooltip: stepTooltip(null),
        xAxis: stepAxis(),
        yAxis: valueAxis(name, log),
        dataZoom: stepZoom(app, `loss_${name}`),
        series: out,
      }));
    }
  },
};
