// The per-layer view: one statistic per variable × step bucket as a heatmap, and
// the update/parameter ratio per variable at the last step with finite values.
import {el, fmt} from '../util.js';
import {NONFINITE_COLOR, NOT_UPDATED_COLOR} from '../charts.js';
import {HEALTHY_UPDATE_RATIO, emptyState, exportLinks} from './common.js';

// The heatmap's series (and legend entries) apart from the statistic's own.
const NOT_UPDATED = 'not updated';
const NONFINITE = 'non-finite (NaN/Inf)';

/** The <select> of the per-layer statistic; a change reloads the view. */
function statPicker(app, data) {
  const pick = el('select', {id: 'gh-layer-stat'});
  for (const st of data.stats) {
    const o = el('option', {text: st});
    o.value = st;
    if (st === data.stat) o.selected = true;
    pick.appendChild(o);
  }
  pick.addEventListener('change', () => { app.state.layerStat = pick.value; app.show('layers'); });
  return el('div', {class: 'gh-row'}, el('label', {}, 'Statistic ', pick));
}

/**
 * The heatmap's cells: [bucket, variable, colour value, logged value] for finite
 * ones (colour on log10 when the log scale is on), [bucket, variable, value] for
 * the non-finite ones (findings) and [bucket, variable] for those the route sends
 * as null: no optimizer updated the variable in the bucket (frozen, or stepped by
 * no optimizer), which is not a finding. lo/hi bound the colour values.
 */
function heatmapCells(heat, log) {
  const cells = [];
  const bad = [];
  const absent = [];
  let lo = Infinity;
  let hi = -Infinity;
  heat.values.forEach((row, yi) => row.forEach((v, xi) => {
    if (v === null) { absent.push([xi, yi]); return; }
    if (!Number.isFinite(v)) { bad.push([xi, yi, v]); return; }
    if (log && v <= 0) { cells.push([xi, yi, null, v]); return; }
    const c = log ? Math.log10(v) : v;
    lo = Math.min(lo, c);
    hi = Math.max(hi, c);
    cells.push([xi, yi, c, v]);
  }));
  if (lo === Infinity) { lo = 0; hi = 1; }
  return {cells, bad, absent, lo, hi};
}

/** The tooltip of a heatmap cell: run, variable, steps and the value or why none. */
function cellTooltip(data, heat) {
  return (p) => {
    const d = Array.isArray(p.data) ? p.data : p.data.value;
    const range = heat.step_ranges ? heat.step_ranges[d[0]] : null;
    const steps = range ? `steps ${range[0]}–${range[1]}` : `step ${heat.steps[d[0]]}`;
    const what = p.seriesName === NOT_UPDATED
      ? 'not updated: no optimizer stepped this variable at these steps'
      : `largest: ${d[3] ?? d[2]}`;
    return `${data.run} · ${heat.variables[d[1]]}\n${steps}\n${what}`;
  };
}

/**
 * The heatmap of one statistic: variables × step buckets; NaN/Inf cells red
 * (findings), cells of a variable no optimizer updated grey (not a finding).
 */
function heatmapChart(app, data, main) {
  const s = app.state;
  const heat = data.heatmap;
  const {cells, bad, absent, lo, hi} = heatmapCells(heat, s.log);
  const height = Math.max(260, 40 + 16 * heat.variables.length);
  const chart = app.charts.get('heatmap', main, {height,
    title: `${data.stat} per variable × step (${s.log ? 'log₁₀ colour scale' : 'linear colour'}; `
      + 'red: NaN/Inf; grey: not updated)'});
  // Non-finite and not-updated cells are drawn as cells of the grid's size: a run
  // of them reads as one block, not as a row of separate markers.
  const cellSize = [
    Math.max(2, (chart.getWidth() - 250) / Math.max(1, heat.steps.length)),
    Math.max(2, (height - 80) / Math.max(1, heat.variables.length)),
  ];
  chart.setOption({
    animation: false,
    backgroundColor: 'transparent',
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: cellTooltip(data, heat)},
    legend: {data: [NONFINITE, NOT_UPDATED], top: 0, left: 160, selectedMode: false,
      icon: 'rect', itemWidth: 12, itemHeight: 10},
    grid: {left: 160, right: 90, top: 28, bottom: 60},
    xAxis: {type: 'category', data: heat.steps, name: 'step'},
    yAxis: {type: 'category', data: heat.variables, axisLabel: {width: 150, overflow: 'truncate'}},
    // The handles of a calculable bar carry its end labels: `text` would label the
    // ends a second time. They name the logged value, not its log10.
    visualMap: {type: 'continuous', min: lo, max: hi === lo ? lo + 1 : hi, dimension: 2,
      seriesIndex: 0, calculable: true, orient: 'vertical', right: 0, top: 20,
      formatter: (v) => fmt(s.log ? 10 ** v : v),
      // Viridis: perceptually even, and free of the red that marks NaN/Inf.
      inRange: {color: ['#440154', '#3b528b', '#21918c', '#5ec962', '#fde725']}},
    dataZoom: [{type: 'slider', xAxisIndex: 0, height: 18, bottom: 6},
      {type: 'inside', xAxisIndex: 0}],
    series: [
      // Plain arrays and ECharts' progressive drawing keep 40,000 cells responsive.
      {name: data.stat, type: 'heatmap', data: cells, progressive: 4000, progressiveThreshold: 8000},
      {name: NONFINITE, type: 'scatter', symbol: 'rect', symbolSize: cellSize,
        itemStyle: {color: NONFINITE_COLOR}, data: bad.map((b) => ({value: [b[0], b[1], null, b[2]]}))},
      {name: NOT_UPDATED, type: 'scatter', symbol: 'rect', symbolSize: cellSize,
        itemStyle: {color: NOT_UPDATED_COLOR}, data: absent.map((a) => ({value: [a[0], a[1]]}))},
    ],
  });
}

/**
 * The variables that no optimizer updated at `step`, read from the heatmap's last
 * bucket (null: not updated at any of its steps) when that bucket ends at `step`.
 * Their NaN ratio is an absence, not a finding.
 */
function notUpdatedAt(heat, step) {
  const last = heat ? heat.steps.length - 1 : -1;
  if (last < 0 || heat.steps[last] !== step) return new Set();
  const idle = heat.values.map((row, i) => (row[last] === null ? i : -1));
  return new Set(idle.filter((i) => i >= 0));
}

/** The update/parameter ratio per variable as dots on a log axis, 1e-3 dashed. */
function updateRatioChart(app, data, main) {
  const ratio = data.update_ratio;
  let {step, values} = ratio;
  let title = `Update / parameter ratio per variable at step ${step} (dashed: 1e-3, cs231n)`;
  const idle = notUpdatedAt(data.heatmap, step);
  if (idle.size && !data.finite) {
    title += `; not updated at that step, no dot: ${[...idle].map((i) => ratio.variables[i]).join(', ')}`;
  }
  if (data.finite) {
    step = data.finite.step;
    values = data.finite.values || [];
    title = step === null
      ? `Update / parameter ratio per variable: no step has finite values (last step ${ratio.step})`
      : `Update / parameter ratio per variable at step ${step}, the last step with finite `
        + `values (step ${ratio.step} holds NaN/Inf; dashed: 1e-3, cs231n)`;
  }
  const bars = app.charts.get('update_ratio', main, {height: Math.max(220, 30 + 16 * ratio.variables.length),
    title});
  bars.getDom().dataset.step = String(step);
  bars.getDom().dataset.notUpdated = data.finite ? '' : [...idle].join(',');
  const positive = values.filter((v) => Number.isFinite(v) && v > 0);
  const lowest = Math.min(HEALTHY_UPDATE_RATIO, ...positive);
  const highest = Math.max(HEALTHY_UPDATE_RATIO, ...positive);
  bars.setOption({
    animation: false,
    backgroundColor: 'transparent',
    tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) =>
      `${data.run} · step ${step}\n${ratio.variables[p.value[1]]}: ${p.value[0]}`},
    grid: {left: 160, right: 40, top: 10, bottom: 30},
    yAxis: {type: 'category', data: ratio.variables, axisLabel: {width: 150, overflow: 'truncate'}},
    xAxis: {type: 'log', name: 'ratio', min: 10 ** (Math.ceil(Math.log10(lowest)) - 1),
      max: 10 ** Math.ceil(Math.log10(highest)), axisLabel: {formatter: (v) => fmt(v)}},
    // A dot per variable: log-axis bars would grow from 1, not from the axis start.
    series: [{name: 'update ratio', type: 'scatter', symbol: 'rect', symbolSize: [8, 12],
      itemStyle: {color: app.colorOf(data.run)},
      data: values.map((v, i) => [Number.isFinite(v) && v > 0 ? v : null, i]),
      markLine: {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
        data: [{xAxis: HEALTHY_UPDATE_RATIO}]}}],
  });
}

export const layers = {
  title: 'Per-layer',
  singleRun: true,
  async load(app, fresh) {
    const run = app.state.run;
    const data = await app.fetch('layers', {run, stat: app.state.layerStat}, fresh);
    const ratio = data.update_ratio;
    let finite = null;
    const idle = notUpdatedAt(data.heatmap, ratio && ratio.step);
    if (ratio && ratio.values.some((v, i) => !Number.isFinite(v) && !idle.has(i))) {
      // The last step holds NaN/Inf (beyond variables no optimizer updated): draw
      // the last step whose ratios are all finite.
      finite = await app.fetch('last_finite', {run, key: 'layer/update_ratio'}, fresh);
    }
    return {...data, finite};
  },
  draw(app, data, main) {
    main.appendChild(statPicker(app, data));
    const heat = data.heatmap;
    if (!heat || !heat.variables.length) {
      emptyState(main, 'Per-layer', 'This run has no per-layer tensors for this statistic.');
      return;
    }
    heatmapChart(app, data, main);
    if (data.update_ratio && data.update_ratio.variables.length) updateRatioChart(app, data, main);
    main.appendChild(exportLinks(data.run, [`layer/${data.stat}`]));
  },
};
