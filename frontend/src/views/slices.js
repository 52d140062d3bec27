// The slices view: average gradient and gradient variance per parameter slice,
// and the whole model's gradient variance, of every shown run with slices.
import {baseOption, lineWithMarkers, stepAxis, stepTooltip, stepZoom, valueAxis} from '../charts.js';
import {comparedRuns, emptyState, seriesOptions} from './common.js';

const SLICE_SYMBOLS = ['circle', 'rect', 'triangle', 'diamond', 'pin', 'arrow'];

export const slices = {
  title: 'Slices',
  multiRun: true,
  async load(app, fresh) {
    const runs = comparedRuns(app);
    if (!runs.length) return {runs: {}};
    const data = await app.fetch('slices', {run: runs}, fresh);
    // Only runs that record slices are compared (window statistics alone are not slices).
    const withSlices = Object.keys(data.runs).filter((run) =>
      Object.keys(data.runs[run].slices).length);
    return {runs: Object.fromEntries(withSlices.map((run) => [run, data.runs[run]]))};
  },
  draw(app, data, main) {
    const s = app.state;
    const out = [];
    for (const [run, d] of Object.entries(data.runs)) {
      const color = app.colorOf(run);
      Object.entries(d.slices).forEach(([name, slice], i) => {
        const symbol = SLICE_SYMBOLS[i % SLICE_SYMBOLS.length];
        if (slice.grad_mean_abs) {
          out.push(...lineWithMarkers(`${run} · ${name} average |g|`, slice.grad_mean_abs.steps,
            slice.grad_mean_abs.values, seriesOptions(app, run, `slice/${name}/grad_mean_abs`,
              slice.grad_mean_abs, {log: s.log, color, symbol})));
        }
        if (slice.grad_variance) {
          out.push(...lineWithMarkers(`${run} · ${name} variance`, slice.grad_variance.steps,
            slice.grad_variance.values, seriesOptions(app, run, `slice/${name}/grad_variance`,
              slice.grad_variance, {yAxisIndex: 1, log: s.log, color, dashed: true, symbol})));
        }
      });
      const variance = d.window.grad_variance;
      if (variance) {
        out.push(...lineWithMarkers(`${run} · gradient variance (all)`, variance.steps,
          variance.values, seriesOptions(app, run, 'window/grad_variance', variance,
            {yAxisIndex: 1, log: s.log, color, dashed: true})));
      }
    }
    if (!out.length) {
      emptyState(main, 'Slices', 'No shown run records parameter slices. '
        + 'Pass slices={...} to GradientHealthCallback to record them.');
      return;
    }
    const chart = app.charts.get('slices', main, {height: 420,
      title: 'Average gradient per slice (left, solid) and gradient variance (right, dashed); '
        + 'runs with slices only'});
    chart.setOption(baseOption({
      tooltip: stepTooltip(null),
      grid: {left: 70, right: 70, top: 70, bottom: 64},
      xAxis: stepAxis(),
      yAxis: [valueAxis('average |g|', s.log), valueAxis('variance', s.log, {splitLine: {show: false}})],
      dataZoom: stepZoom(app, 'slices'),
      series: out,
    }));
  },
};
