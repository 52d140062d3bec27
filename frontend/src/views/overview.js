// The overview view: the open run's loss and global gradient norm over steps,
// the gradient norm against the parameter norm, and the update/parameter ratio.
import {el} from '../util.js';
import {
  baseOption, flagAreas, lineWithMarkers, stepAxis, stepTooltip, stepZoom, valueAxis,
} from '../charts.js';
import {HEALTHY_UPDATE_RATIO, emptyState, exportLinks, seriesOptions} from './common.js';

/** Loss (left axis) and global gradient norm (right axis, dashed) with the flags' ranges. */
function lossAndGradNorm(app, data, main, color) {
  const s = app.state;
  const run = data.run;
  const loss = data.series['step/loss'];
  const grad = data.series['step/grad_norm'];
  const chart = app.charts.get('overview', main, {height: 360,
    title: `Loss (solid) and global gradient norm (dashed) vs step — ${run}`});
  const out = [];
  const areas = flagAreas(data.flags);
  if (loss) {
    out.push(...lineWithMarkers('loss', loss.steps, loss.values, seriesOptions(app, run,
      'step/loss', loss, {yAxisIndex: 0, log: s.log, color, markArea: areas})));
  }
  if (grad) {
    out.push(...lineWithMarkers('grad norm', grad.steps, grad.values, seriesOptions(app, run,
      'step/grad_norm', grad, {yAxisIndex: 1, log: s.log, color, dashed: true,
        markArea: loss ? undefined : areas})));
  }
  chart.setOption(baseOption({
    tooltip: stepTooltip(run),
    xAxis: stepAxis(),
    yAxis: [valueAxis('loss', s.log), valueAxis('grad norm', s.log, {splitLine: {show: false}})],
    dataZoom: stepZoom(app, 'overview'),
    series: out,
  }));
}

/** Gradient norm against parameter norm, one dot per step, with the diagonal ‖g‖ = ‖w‖. */
function normsScatter(app, run, norms, main, color) {
  const s = app.state;
  const chart = app.charts.get('norms', main, {height: 320,
    title: 'Gradient norm vs parameter norm (above the diagonal: ‖g‖ > ‖w‖)'});
  const pts = [];
  const bad = [];
  for (let i = 0; i < norms.x.length; i++) {
    const x = norms.x[i];
    const y = norms.y[i];
    if (Number.isFinite(x) && Number.isFinite(y) && (!s.log || (x > 0 && y > 0))) {
      pts.push([x, y, norms.steps[i]]);
    } else if (!Number.isFinite(y)) bad.push(norms.steps[i]);
  }
  const xs = pts.map((p) => p[0]).concat(pts.map((p) => p[1]));
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  chart.setOption(baseOption({
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) =>
      `${run} · step ${p.value[2]}\nparameter norm ${p.value[0]}\ngrad norm ${p.value[1]}`},
    xAxis: valueAxis('parameter norm', s.log, {min: 'dataMin', max: 'dataMax',
      nameLocation: 'middle', nameGap: 24}),
    yAxis: valueAxis('grad norm', s.log, {min: 'dataMin', max: 'dataMax'}),
    series: [{
      name: 'grad norm vs param norm', type: 'scatter', symbolSize: 4, data: pts,
      itemStyle: {color},
      markLine: pts.length ? {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
        label: {formatter: '‖g‖ = ‖w‖'}, data: [[{coord: [lo, lo]}, {coord: [hi, hi]}]]} : undefined,
    }],
  }));
  if (bad.length) {
    main.appendChild(el('p', {class: 'gh-warn', 'data-nonfinite-steps': bad.join(','),
      text: `Non-finite gradient norm at ${bad.length} step(s), first ${bad[0]}.`}));
  }
}

/** The global update/parameter ratio with the healthy 1e-3 reference (cs231n). */
function updateRatio(app, run, ratio, main, color) {
  const s = app.state;
  const chart = app.charts.get('update', main, {height: 240, title: 'Update / parameter ratio'});
  const ratioSeries = lineWithMarkers('update ratio', ratio.steps, ratio.values,
    seriesOptions(app, run, 'step/update_ratio', ratio, {log: s.log, color}));
  ratioSeries[0].markLine = {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
    label: {formatter: '1e-3 (cs231n)'}, data: [{yAxis: HEALTHY_UPDATE_RATIO}]};
  chart.setOption(baseOption({
    tooltip: stepTooltip(run),
    xAxis: stepAxis(),
    yAxis: valueAxis('ratio', s.log),
    dataZoom: stepZoom(app, 'update'),
    series: ratioSeries,
  }));
}

export const overview = {
  title: 'Overview',
  singleRun: true,
  async load(app, fresh) {
    const run = app.state.run;
    const [data, flags] = await Promise.all([
      app.fetch('overview', {run}, fresh), app.flagsOf(run, fresh), app.healthOf([run], fresh)]);
    return {...data, flags};
  },
  draw(app, data, main) {
    const series = data.series;
    if (!series['step/loss'] && !series['step/grad_norm']) {
      emptyState(main, 'Overview', 'This run has no step/loss or step/grad_norm series yet.');
      return;
    }
    const color = app.colorOf(data.run);
    lossAndGradNorm(app, data, main, color);
    if (data.norms && data.norms.x.length) normsScatter(app, data.run, data.norms, main, color);
    const ratio = series['step/update_ratio'];
    if (ratio) updateRatio(app, data.run, ratio, main, color);
    main.appendChild(exportLinks(data.run, Object.keys(series)));
  },
};
