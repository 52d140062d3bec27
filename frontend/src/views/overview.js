// The overview view: the open run's loss and global gradient norm over steps,
// the gradient norm against the parameter norm, and the update/parameter ratio;
// when several optimizers step the model (a GAN's d_optimizer and g_optimizer),
// each one's gradient norm and update ratio beside the global ones.
import {el} from '../util.js';
import {
  baseOption, flagAreas, lineWithMarkers, stepAxis, stepTooltip, stepZoom, valueAxis,
} from '../charts.js';
import {HEALTHY_UPDATE_RATIO, emptyState, exportLinks, seriesOptions} from './common.js';

// `optimizer/<attribute>/<stat>` keys (metadata.OPTIMIZER_STATS) the overview draws.
const OPTIMIZER_KEY = /^optimizer\/(.+)\/(grad_norm|update_ratio)$/;
const LOSS_COMPONENT = 'loss_component/';

/**
 * The per-optimizer series of a run, by the optimizer's attribute name:
 * `{d_optimizer: {grad_norm: S, update_ratio: S}}`; empty when the run has
 * one optimizer (the callback writes them only for several).
 */
async function optimizerSeries(app, run, tags, fresh) {
  const keys = Object.keys(tags.scalars || {}).filter((k) => OPTIMIZER_KEY.test(k)).sort();
  const got = await Promise.all(keys.map((key) => app.fetch('series', {run, key}, fresh)));
  const out = {};
  keys.forEach((key, i) => {
    const [, name, stat] = key.match(OPTIMIZER_KEY);
    (out[name] ||= {})[stat] = got[i];
  });
  return out;
}

// Dash patterns of the optimizers' lines (px on, px off, ...): a run keeps its one
// colour in every chart, so its optimizers are told apart by the line's pattern, as
// the global norm is by its dashes.
const OPTIMIZER_DASHES = [[2, 3], [9, 3, 2, 3], [14, 4], [2, 3, 2, 3, 9, 3]];

/** A dash pattern per optimizer, in the order of their names. */
function optimizerDashes(names) {
  return Object.fromEntries(
    names.map((name, i) => [name, OPTIMIZER_DASHES[i % OPTIMIZER_DASHES.length]]));
}

/** The line series of each optimizer's `stat`, named `<label> · <attribute>`. */
function optimizerLines(app, run, optimizers, dashes, stat, label, extra) {
  const out = [];
  for (const [name, series] of Object.entries(optimizers)) {
    const one = series[stat];
    if (!one) continue;
    out.push(...lineWithMarkers(`${label} · ${name}`, one.steps, one.values, seriesOptions(app,
      run, `optimizer/${name}/${stat}`, one, {...extra, dash: dashes[name]})));
  }
  return out;
}

/**
 * Says, above the chart, that the run logs no `loss` (a custom train_step that
 * returns only its parts, as the keras.io GAN's d_loss and g_loss) and names the
 * loss components it records, or how to record them.
 */
function noLossHint(chart, components) {
  const box = chart.getDom();
  const why = 'No loss is drawn: this run\'s Keras logs have no "loss" entry';
  const text = components.length
    ? `${why}. Its loss components ${components.join(', ')} are drawn in the Loss components view.`
    : `${why} (a custom train_step that returns only its parts, e.g. d_loss and g_loss) and it `
      + 'records no loss component. Pass loss_components=["d_loss", "g_loss"] (the names '
      + 'your train_step returns) to GradientHealthCallback to record them.';
  box.parentElement.insertBefore(el('p', {class: 'gh-hint', 'data-no-loss': '',
    'data-loss-components': components.join(','), text}), box);
}

/** Names, above the chart, the flags that hold over every step it draws. */
function wholeRunFlags(chart, flags) {
  const box = chart.getDom();
  const kinds = flags.map((f) => f.kind);
  box.parentElement.insertBefore(el('p', {class: 'gh-muted', 'data-whole-run-flags': kinds.join(','),
    text: `Flagged over every step, so not shaded: ${flags.map((f) => `${f.kind} (${f.severity})`)
      .join(', ')} (see Flags).`}), box);
}

/**
 * Loss (left axis) and global gradient norm (right axis, dashed) with the flags'
 * ranges, and each optimizer's gradient norm on the right axis.
 */
function lossAndGradNorm(app, data, main, color, dashes) {
  const s = app.state;
  const run = data.run;
  const loss = data.series['step/loss'];
  const grad = data.series['step/grad_norm'];
  const drawn = [loss && 'loss (solid)', grad && 'global gradient norm (dashed)',
    Object.keys(data.optimizers).length && 'each optimizer\'s gradient norm'].filter(Boolean);
  const what = drawn.slice(0, -1).join(', ') + (drawn.length > 1 ? ' and ' : '') + drawn.at(-1);
  const chart = app.charts.get('overview', main, {height: 360,
    title: `${what[0].toUpperCase()}${what.slice(1)} vs step — ${run}`});
  const out = [];
  const steps = (loss || grad).steps;
  const {markArea: areas, whole} = flagAreas(data.flags, steps[0], steps.at(-1));
  if (whole.length) wholeRunFlags(chart, whole);
  if (!loss) noLossHint(chart, data.lossComponents);
  if (loss) {
    out.push(...lineWithMarkers('loss', loss.steps, loss.values, seriesOptions(app, run,
      'step/loss', loss, {yAxisIndex: 0, log: s.log, color, markArea: areas})));
  }
  if (grad) {
    out.push(...lineWithMarkers('grad norm', grad.steps, grad.values, seriesOptions(app, run,
      'step/grad_norm', grad, {yAxisIndex: 1, log: s.log, color, dashed: true,
        markArea: loss ? undefined : areas})));
  }
  out.push(...optimizerLines(app, run, data.optimizers, dashes, 'grad_norm', 'grad norm',
    {yAxisIndex: 1, log: s.log, color}));
  chart.setOption(baseOption({
    tooltip: stepTooltip(run),
    xAxis: stepAxis(),
    yAxis: [valueAxis(loss ? 'loss' : 'loss (none logged)', s.log),
      valueAxis('grad norm', s.log, {splitLine: {show: false}})],
    dataZoom: stepZoom(app, 'overview'),
    series: out,
  }));
}

/**
 * The range both axes of the norms scatter span: [lo, hi] widened to ticks, so
 * that each end is labelled as a tick is. Ends at the raw norms (0.68 beside the
 * tick 1) printed their labels over the nearest tick's. ECharts ticks a log axis
 * every decade up to 10 decades and every 10 decades beyond; a linear axis here
 * every `interval` (1, 2 or 5 × 10^k, about five of them).
 */
function tickedRange(lo, hi, log) {
  // Decimal strings give the nearest doubles (10 ** -7 is not quite 1e-7).
  const round = (v) => Number(v.toPrecision(12));
  if (log) {
    let a = Math.floor(Math.log10(lo));
    let b = Math.max(Math.ceil(Math.log10(hi)), a + 1);
    const decades = b - a < 10 ? 1 : 10;
    a = Math.floor(a / decades) * decades;
    b = Math.ceil(b / decades) * decades;
    return {lo: Number(`1e${a}`), hi: Number(`1e${b}`)};
  }
  const rough = (hi - lo) / 5;
  const unit = 10 ** Math.floor(Math.log10(rough));
  const interval = round([1, 2, 5, 10].map((m) => m * unit).find((step) => step >= rough));
  return {lo: round(Math.floor(lo / interval) * interval),
    hi: round(Math.ceil(hi / interval) * interval), interval};
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
  const range = lo < hi ? tickedRange(lo, hi, s.log) : {lo: 'dataMin', hi: 'dataMax'};
  const [first, last] = lo < hi ? [range.lo, range.hi] : [lo, hi];
  chart.setOption(baseOption({
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) =>
      `${run} · step ${p.value[2]}\nparameter norm ${p.value[0]}\ngrad norm ${p.value[1]}`},
    // Both axes span the same range, so the diagonal is drawn whatever the norms
    // (a vanishing run's ‖g‖ lies far below its ‖w‖, an exploding one's far above).
    xAxis: valueAxis('parameter norm', s.log, {min: range.lo, max: range.hi,
      interval: range.interval, nameLocation: 'middle', nameGap: 24}),
    yAxis: valueAxis('grad norm', s.log, {min: range.lo, max: range.hi, interval: range.interval}),
    series: [{
      name: 'grad norm vs param norm', type: 'scatter', symbolSize: 4, data: pts,
      itemStyle: {color},
      markLine: pts.length ? {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
        label: {formatter: '‖g‖ = ‖w‖'}, data: [[{coord: [first, first]}, {coord: [last, last]}]]}
        : undefined,
    }],
  }));
  if (bad.length) {
    main.appendChild(el('p', {class: 'gh-warn', 'data-nonfinite-steps': bad.join(','),
      text: `Non-finite gradient norm at ${bad.length} step(s), first ${bad[0]}.`}));
  }
}

/**
 * The global update/parameter ratio (when logged) and each optimizer's, with the
 * healthy 1e-3 reference (cs231n).
 */
function updateRatio(app, run, ratio, optimizers, main, color, dashes) {
  const s = app.state;
  const chart = app.charts.get('update', main, {height: 240, title: 'Update / parameter ratio'});
  const ratioSeries = ratio ? lineWithMarkers('update ratio', ratio.steps, ratio.values,
    seriesOptions(app, run, 'step/update_ratio', ratio, {log: s.log, color})) : [];
  ratioSeries.push(...optimizerLines(app, run, optimizers, dashes, 'update_ratio',
    'update ratio', {log: s.log, color}));
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
    const [data, flags, , tags] = await Promise.all([
      app.fetch('overview', {run}, fresh), app.flagsOf(run, fresh), app.healthOf([run], fresh),
      app.fetch('tags', {run}, fresh)]);
    const lossComponents = Object.keys(tags.scalars || {})
      .filter((k) => k.startsWith(LOSS_COMPONENT)).map((k) => k.slice(LOSS_COMPONENT.length))
      .sort();
    return {...data, flags, lossComponents,
      optimizers: await optimizerSeries(app, run, tags, fresh)};
  },
  draw(app, data, main) {
    const series = data.series;
    if (!series['step/loss'] && !series['step/grad_norm']) {
      emptyState(main, 'Overview', 'This run has no step/loss or step/grad_norm series yet.');
      return;
    }
    const color = app.colorOf(data.run);
    const optimizers = data.optimizers;
    const dashes = optimizerDashes(Object.keys(optimizers));
    lossAndGradNorm(app, data, main, color, dashes);
    if (data.norms && data.norms.x.length) normsScatter(app, data.run, data.norms, main, color);
    const ratio = series['step/update_ratio'];
    const optimizerRatios = Object.values(optimizers).some((o) => o.update_ratio);
    if (ratio || optimizerRatios) {
      updateRatio(app, data.run, ratio, optimizers, main, color, dashes);
    }
    const optimizerKeys = Object.values(optimizers)
      .flatMap((o) => Object.values(o).map((one) => one.key));
    main.appendChild(exportLinks(data.run, Object.keys(series).concat(optimizerKeys)));
  },
};
