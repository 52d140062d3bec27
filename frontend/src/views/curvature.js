// The curvature & trajectory view: the open run's minimal ratio against the loss
// and over training (with its range), the spectral density, the gradient noise
// scale, and the parameter trajectories of every shown run in one PCA.
import {el, fmt} from '../util.js';
import {
  baseOption, lineWithMarkers, stepAxis, stepTooltip, stepZoom, themePalette, valueAxis,
} from '../charts.js';
import {comparedRuns, emptyState, seriesOptions} from './common.js';
import {spectralDensity} from './spectral_density.js';

/**
 * The minimal ratio's range [min_ratio_low, min_ratio_high]: its two ends as
 * thin lines (the tooltip shows their logged values, NaN stretches get their
 * markers) and the area between them shaded. ECharts stacks two value axes
 * along x, so the area is one polygon of a custom series, not a stack.
 */
function minRatioRange(app, run, hs, color) {
  const low = hs['hessian/min_ratio_low'];
  const high = hs['hessian/min_ratio_high'];
  if (!low || !high) return [];
  const thin = {smoothing: 0, color, dashed: true};
  const out = [
    ...lineWithMarkers('min ratio low', low.steps, low.values,
      seriesOptions(app, run, 'hessian/min_ratio_low', low, thin)),
    ...lineWithMarkers('min ratio high', high.steps, high.values,
      seriesOptions(app, run, 'hessian/min_ratio_high', high, thin)),
  ];
  const both = [...minRatioRangeAt(hs)].map(([step, [lo, hi]]) => [step, lo, hi]);
  if (both.length > 1) {
    out.push({name: 'min ratio range', type: 'custom', silent: true, clip: true, z: 1,
      data: [[both[0][0], both[0][1]]], encode: {x: 0, y: 1},
      itemStyle: {color},
      renderItem: (params, api) => ({type: 'polygon',
        shape: {points: both.map((p) => api.coord([p[0], p[2]]))
          .concat(both.slice().reverse().map((p) => api.coord([p[0], p[1]])))},
        style: {fill: color, opacity: 0.15}})});
  }
  return out;
}

// The width of [min_ratio_low, min_ratio_high] from which the ratio is called
// undetermined in the view.
const UNDETERMINED_WIDTH = 0.5;

/** The minimal ratio against the probe loss, one dot per curvature step. */
function minRatioVsLoss(app, run, pairs, hs, main, color) {
  const scatter = app.charts.get('curv_scatter', main, {height: 300,
    title: `Minimal ratio (share of positive Hessian eigenvalues) vs loss — ${run}`});
  const range = minRatioRangeAt(hs);
  scatter.setOption(baseOption({
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) => {
      const r = range.get(p.value[2]);
      return `${run} · step ${p.value[2]}\nprobe loss ${p.value[0]}\nmin ratio ${p.value[1]}`
        + (r ? `\nrange [${r[0]}, ${r[1]}]` : '');
    }},
    xAxis: valueAxis('probe loss', false),
    yAxis: valueAxis('min ratio', false, {min: 0, max: 1}),
    series: [{name: 'min ratio vs loss', type: 'scatter', symbolSize: 7, itemStyle: {color},
      data: pairs.x.map((x, i) => [x, pairs.y[i], pairs.steps[i]])}],
  }));
  // A range of half [0, 1] or more says little: say so rather than let the dot
  // (its midpoint) read as a measured share.
  const wide = pairs.steps.filter((step) => {
    const r = range.get(step);
    return r && r[1] - r[0] >= UNDETERMINED_WIDTH;
  });
  if (wide.length) {
    main.appendChild(el('p', {class: 'gh-warn', 'data-undetermined-steps': wide.join(','),
      text: `At ${wide.length} of ${pairs.steps.length} curvature step(s) (first ${wide[0]}) `
        + 'the minimal ratio is undetermined: the stochastic Lanczos spectrum cannot tell '
        + 'how many eigenvalues near zero are positive, so its range spans half of [0, 1] '
        + 'or more and the dot is only a midpoint (see the range in the tooltip).'}));
  }
}

/** Step -> [min_ratio_low, min_ratio_high] where both are logged and finite. */
function minRatioRangeAt(hs) {
  const low = hs['hessian/min_ratio_low'];
  const high = hs['hessian/min_ratio_high'];
  const out = new Map();
  if (!low || !high) return out;
  const highAt = new Map(high.steps.map((step, i) => [step, high.values[i]]));
  low.steps.forEach((step, i) => {
    const h = highAt.get(step);
    if (Number.isFinite(low.values[i]) && Number.isFinite(h)) out.set(step, [low.values[i], h]);
  });
  return out;
}

/**
 * The curvature shares (left axis) and the sharpness (right axis) over training.
 * The series are quantities of one run, not runs: each has a colour of its own
 * from the theme's palette (the minimal ratio's range that of the ratio).
 */
function curvatureOverTraining(app, run, hs, main) {
  const s = app.state;
  const overTime = app.charts.get('curv_time', main, {height: 300,
    title: `Curvature over training — ${run}`});
  const palette = themePalette(overTime);
  const out = [];
  const curve = (name, key, color, extra) => {
    const series = hs[key];
    if (series) {
      out.push(...lineWithMarkers(name, series.steps, series.values,
        seriesOptions(app, run, key, series, {smoothing: 0, color, ...extra})));
    }
  };
  out.push(...minRatioRange(app, run, hs, palette[0]));
  curve('min ratio', 'hessian/min_ratio', palette[0], {symbol: 'circle'});
  curve('negative ratio', 'hessian/negative_ratio', palette[1],
    {symbol: 'triangle', dashed: true});
  curve('band min ratio', 'hessian/band_min_ratio', palette[2], {symbol: 'diamond'});
  curve('near-zero ratio', 'hessian/near_zero_ratio', palette[3],
    {symbol: 'emptyCircle', dashed: true});
  curve('top eigenvalue (sharpness)', 'hessian/top_eigenvalue', palette[4],
    {yAxisIndex: 1, symbol: 'rect', log: s.log, dashed: true});
  overTime.setOption(baseOption({
    tooltip: stepTooltip(run),
    xAxis: stepAxis(),
    yAxis: [valueAxis('ratio', false, {min: 0, max: 1}),
      valueAxis('sharpness', s.log, {splitLine: {show: false}})],
    dataZoom: stepZoom(app, 'curv_time'),
    series: out,
  }));
}

/** The gradient noise scale B_simple over training. */
function noiseScale(app, run, noise, main, color) {
  const s = app.state;
  const noiseChart = app.charts.get('noise_scale', main, {height: 260,
    title: `Gradient noise scale B_simple — ${run}`});
  noiseChart.setOption(baseOption({
    tooltip: stepTooltip(run),
    xAxis: stepAxis(),
    yAxis: valueAxis('B_simple', s.log),
    dataZoom: stepZoom(app, 'noise_scale'),
    series: lineWithMarkers('noise scale', noise.steps, noise.values,
      seriesOptions(app, run, 'window/noise_scale', noise, {log: s.log, color})),
  }));
}

/** The trajectories of the shown runs in the plane of one PCA over all of them. */
function trajectories(app, traj, main) {
  const ev = traj.explained_variance_ratio || [];
  const out = Object.entries(traj.runs).map(([trajRun, t]) => ({
    name: trajRun, type: 'line', symbol: 'circle', symbolSize: 5,
    itemStyle: {color: app.colorOf(trajRun)}, lineStyle: {color: app.colorOf(trajRun)},
    data: t.xy.map((p, j) => [p[0], p[1], t.steps[j]]),
  }));
  const excluded = traj.excluded && traj.excluded.length
    ? ` (not comparable, other architecture: ${traj.excluded.join(', ')})` : '';
  const trajectory = app.charts.get('trajectory', main, {height: 380,
    title: `Parameter trajectories, one PCA over all shown runs with one${excluded}`});
  trajectory.setOption(baseOption({
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) =>
      `${p.seriesName} · step ${p.value[2]}\nPC1 ${p.value[0]}\nPC2 ${p.value[1]}`},
    xAxis: valueAxis(`PC1 (${fmt(100 * (ev[0] ?? NaN))}%)`, false),
    yAxis: valueAxis(`PC2 (${fmt(100 * (ev[1] ?? NaN))}%)`, false),
    series: out,
  }));
}

export const curvature = {
  title: 'Curvature & trajectory',
  singleRun: true,
  multiRun: true,
  async load(app, fresh) {
    const run = app.state.run;
    // The chosen density step belongs to the run it was chosen in.
    const chosen = app.state.densityStep;
    const step = chosen && chosen.run === run ? chosen.step : undefined;
    const curv = await app.fetch('curvature', {run, step}, fresh);
    await app.healthOf([run], fresh);
    let traj;
    const runs = comparedRuns(app);
    try {
      // Every shown run with a trajectory; the route leaves out runs without one.
      traj = runs.length ? await app.fetch('trajectory', {run: runs}, fresh)
        : {available: false, runs: {}};
    } catch (e) {
      traj = {available: false, error: e.message};
    }
    return {curv, traj};
  },
  draw(app, {curv, traj}, main) {
    const run = curv.run;
    const color = app.colorOf(run);
    const hs = curv.series;
    if (!Object.keys(hs).some((k) => k.startsWith('hessian/'))) {
      emptyState(main, 'Curvature', `No Hessian curvature in ${run}. Set hessian_freq=N in `
        + 'GradientHealthCallback to compute the minimal ratio and sharpness every N epochs.');
    } else {
      if (curv.min_ratio_vs_loss.x.length) {
        minRatioVsLoss(app, run, curv.min_ratio_vs_loss, hs, main, color);
      }
      curvatureOverTraining(app, run, hs, main);
      if (curv.spectral_density) spectralDensity(app, run, curv, main);
    }
    if (hs['window/noise_scale']) noiseScale(app, run, hs['window/noise_scale'], main, color);
    if (!traj || !traj.available) {
      const why = traj && traj.error ? ` (${traj.error})` : '';
      emptyState(main, 'Trajectory', `No parameter trajectory in the shown runs${why}. `
        + 'Set trajectory_freq=N in GradientHealthCallback to record one every N epochs.');
      return;
    }
    trajectories(app, traj, main);
  },
};
