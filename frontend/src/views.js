// The tab's views. Each has load(app, fresh, progress) -> data and
// draw(app, data, main). Single-run views show the run opened in the run list;
// views that compare runs draw the shown runs that hold their data.
import {el, exact, fmt} from './util.js';
import {
  NONFINITE_COLOR, SEVERITY_COLOR, baseOption, flagAreas, lineWithMarkers, stepAxis,
  stepTooltip, stepZoom, valueAxis,
} from './charts.js';
import {healthTable} from './health.js';
import {selectedRuns} from './runs.js';

const HEALTHY_UPDATE_RATIO = 1e-3; // cs231n: update/weight ratio near 1e-3 is healthy.
const MAX_COMPARED_RUNS = 200; // the routes' limit of `run` parameters (http_api.md)

/** The shown runs a comparing route is asked for: at most the routes' limit. */
function comparedRuns(app) {
  const runs = selectedRuns(app.state);
  if (runs.length > MAX_COMPARED_RUNS) {
    app.note(`Comparing the first ${MAX_COMPARED_RUNS} of ${runs.length} shown runs: `
      + 'narrow the run list to compare others.');
  }
  return runs.slice(0, MAX_COMPARED_RUNS);
}

function emptyState(main, title, text) {
  main.appendChild(el('section', {class: 'gh-card gh-empty', 'data-empty': title},
    el('h3', {text: title}), el('p', {text})));
}

function exportLinks(run, keys) {
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
function seriesOptions(app, run, key, series, extra = {}) {
  return {smoothing: app.state.smoothing, stretches: app.stretchesOf(run, key),
    downsampled: !!series.downsampled, ...extra};
}

// -- health -----------------------------------------------------------------

const health = {
  title: 'Health',
  multiRun: true,
  async load(app, fresh, progress) {
    const runs = selectedRuns(app.state);
    await app.healthOf(runs, fresh, () => progress({runs}));
    return {runs};
  },
  draw(app, {runs}, main) {
    const s = app.state;
    if (!runs.length) {
      emptyState(main, 'Health', s.runs.length
        ? 'No run is shown: check runs in the run list or change its filter.'
        : 'No run with gradient-health data yet.');
      return;
    }
    const rows = runs.map((run) => app.health.get(run)).filter((row) => row);
    main.appendChild(healthTable(rows, s.sort, {
      colorOf: (run) => app.colorOf(run),
      pending: runs.length - rows.length,
      onSort: (key) => {
        s.sort = {key, descending: s.sort.key === key ? !s.sort.descending : key !== 'run'};
        app.show('health');
      },
      onOpen: (run) => app.openRun(run, 'overview'),
    }));
  },
};

// -- overview ---------------------------------------------------------------

const overview = {
  title: 'Overview',
  singleRun: true,
  async load(app, fresh) {
    const run = app.state.run;
    const [data, flags] = await Promise.all([
      app.fetch('overview', {run}, fresh), app.flagsOf(run, fresh), app.healthOf([run], fresh)]);
    return {...data, flags};
  },
  draw(app, data, main) {
    const s = app.state;
    const series = data.series;
    const loss = series['step/loss'];
    const grad = series['step/grad_norm'];
    if (!loss && !grad) {
      emptyState(main, 'Overview', 'This run has no step/loss or step/grad_norm series yet.');
      return;
    }
    const run = data.run;
    const color = app.colorOf(run);
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

    const norms = data.norms;
    if (norms && norms.x.length) {
      const normsChart = app.charts.get('norms', main, {height: 320,
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
      normsChart.setOption(baseOption({
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
    const ratio = series['step/update_ratio'];
    if (ratio) {
      const ratioChart = app.charts.get('update', main, {height: 240,
        title: 'Update / parameter ratio'});
      const ratioSeries = lineWithMarkers('update ratio', ratio.steps, ratio.values,
        seriesOptions(app, run, 'step/update_ratio', ratio, {log: s.log, color}));
      ratioSeries[0].markLine = {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
        label: {formatter: '1e-3 (cs231n)'}, data: [{yAxis: HEALTHY_UPDATE_RATIO}]};
      ratioChart.setOption(baseOption({
        tooltip: stepTooltip(run),
        xAxis: stepAxis(),
        yAxis: valueAxis('ratio', s.log),
        dataZoom: stepZoom(app, 'update'),
        series: ratioSeries,
      }));
    }
    main.appendChild(exportLinks(data.run, Object.keys(series)));
  },
};

// -- per-layer --------------------------------------------------------------

const layers = {
  title: 'Per-layer',
  singleRun: true,
  async load(app, fresh) {
    const run = app.state.run;
    const data = await app.fetch('layers', {run, stat: app.state.layerStat}, fresh);
    const ratio = data.update_ratio;
    let finite = null;
    if (ratio && ratio.values.some((v) => !Number.isFinite(v))) {
      // The last step holds NaN/Inf: draw the last step whose ratios are all finite.
      finite = await app.fetch('last_finite', {run, key: 'layer/update_ratio'}, fresh);
    }
    return {...data, finite};
  },
  draw(app, data, main) {
    const s = app.state;
    const pick = el('select', {id: 'gh-layer-stat'});
    for (const st of data.stats) {
      const o = el('option', {text: st});
      o.value = st;
      if (st === data.stat) o.selected = true;
      pick.appendChild(o);
    }
    pick.addEventListener('change', () => { s.layerStat = pick.value; app.show('layers'); });
    main.appendChild(el('div', {class: 'gh-row'}, el('label', {}, 'Statistic ', pick)));
    const heat = data.heatmap;
    if (!heat || !heat.variables.length) {
      emptyState(main, 'Per-layer', 'This run has no per-layer tensors for this statistic.');
      return;
    }
    const cells = [];
    const bad = [];
    let lo = Infinity;
    let hi = -Infinity;
    heat.values.forEach((row, yi) => row.forEach((v, xi) => {
      if (!Number.isFinite(v)) { bad.push([xi, yi, v]); return; }
      if (s.log && v <= 0) { cells.push([xi, yi, null, v]); return; }
      const c = s.log ? Math.log10(v) : v;
      lo = Math.min(lo, c);
      hi = Math.max(hi, c);
      cells.push([xi, yi, c, v]);
    }));
    if (lo === Infinity) { lo = 0; hi = 1; }
    const height = Math.max(260, 40 + 16 * heat.variables.length);
    const chart = app.charts.get('heatmap', main, {height,
      title: `${data.stat} per variable × step (${s.log ? 'log₁₀ colour scale' : 'linear colour'}; `
        + 'red: NaN/Inf)'});
    // Non-finite cells are drawn as red cells of the grid's size: a run of them
    // reads as one red block, not as a row of separate markers.
    const cellSize = [
      Math.max(2, (chart.getWidth() - 250) / Math.max(1, heat.steps.length)),
      Math.max(2, (height - 80) / Math.max(1, heat.variables.length)),
    ];
    chart.setOption({
      animation: false,
      backgroundColor: 'transparent',
      tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) => {
        const d = Array.isArray(p.data) ? p.data : p.data.value;
        const range = heat.step_ranges ? heat.step_ranges[d[0]] : null;
        const steps = range ? `steps ${range[0]}–${range[1]}` : `step ${heat.steps[d[0]]}`;
        return `${data.run} · ${heat.variables[d[1]]}\n${steps}\nlargest: ${d[3] ?? d[2]}`;
      }},
      grid: {left: 160, right: 90, top: 20, bottom: 60},
      xAxis: {type: 'category', data: heat.steps, name: 'step'},
      yAxis: {type: 'category', data: heat.variables, axisLabel: {width: 150, overflow: 'truncate'}},
      visualMap: {type: 'continuous', min: lo, max: hi === lo ? lo + 1 : hi, dimension: 2,
        seriesIndex: 0, calculable: true, orient: 'vertical', right: 0, top: 20,
        text: [s.log ? `10^${fmt(hi)}` : fmt(hi), s.log ? `10^${fmt(lo)}` : fmt(lo)],
        // Viridis: perceptually even, and free of the red that marks NaN/Inf.
        inRange: {color: ['#440154', '#3b528b', '#21918c', '#5ec962', '#fde725']}},
      dataZoom: [{type: 'slider', xAxisIndex: 0, height: 18, bottom: 6},
        {type: 'inside', xAxisIndex: 0}],
      series: [
        // Plain arrays and ECharts' progressive drawing keep 40,000 cells responsive.
        {name: data.stat, type: 'heatmap', data: cells, progressive: 4000, progressiveThreshold: 8000},
        {name: 'non-finite', type: 'scatter', symbol: 'rect', symbolSize: cellSize,
          itemStyle: {color: NONFINITE_COLOR}, data: bad.map((b) => ({value: [b[0], b[1], null, b[2]]}))},
      ],
    });
    const ratio = data.update_ratio;
    if (ratio && ratio.variables.length) {
      let {step, values} = ratio;
      let title = `Update / parameter ratio per variable at step ${step} (dashed: 1e-3, cs231n)`;
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
    main.appendChild(exportLinks(data.run, [`layer/${data.stat}`]));
  },
};

// -- slices -----------------------------------------------------------------

const SLICE_SYMBOLS = ['circle', 'rect', 'triangle', 'diamond', 'pin', 'arrow'];

const slices = {
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

// -- loss components --------------------------------------------------------

const lossComponents = {
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

// -- curvature & trajectory -------------------------------------------------

// The density's Gaussian tails underflow float32 to exactly 0 far from every
// eigenvalue (http_api.md): a log axis draws them at this share of the peak.
const DENSITY_FLOOR = 1e-8;

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
  const highAt = new Map(high.steps.map((step, i) => [step, high.values[i]]));
  const both = low.steps.map((step, i) => [step, low.values[i], highAt.get(step)])
    .filter((p) => Number.isFinite(p[1]) && Number.isFinite(p[2]));
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

/**
 * The spectral density of one curvature step on a log axis (zeros drawn at the
 * floor), the exact eigenvalue histogram where exact, and a step chooser.
 */
function spectralDensity(app, run, curv, main) {
  const sd = curv.spectral_density;
  const color = app.colorOf(run);
  const pick = el('select', {id: 'gh-density-step'});
  for (const step of sd.steps) {
    const o = el('option', {text: String(step)});
    o.value = String(step);
    if (step === sd.step) o.selected = true;
    pick.appendChild(o);
  }
  pick.addEventListener('change', () => {
    app.state.densityStep = {run, step: Number(pick.value)};
    app.show('curvature');
  });
  main.appendChild(el('div', {class: 'gh-row'}, el('label', {}, 'Curvature step ', pick)));
  const peak = Math.max(0, ...sd.density.filter((v) => Number.isFinite(v)));
  const floor = peak > 0 ? DENSITY_FLOOR * peak : DENSITY_FLOOR;
  // [λ, drawn density, logged density]: the tooltip shows the logged value.
  const dens = sd.grid.map((x, i) => {
    const v = sd.density[i];
    return [x, Number.isFinite(v) ? Math.max(v, floor) : null, v];
  });
  const hist = sd.histogram;
  const shares = hist ? sd.grid.map((x, i) => [x, hist[i] > 0 ? hist[i] : null, hist[i]]) : [];
  const how = sd.method === 'exact' ? 'exact eigenvalues' : 'stochastic Lanczos quadrature';
  const chart = app.charts.get('curv_density', main, {height: 320,
    title: `Hessian spectral density at step ${sd.step} (${how}; Gaussian broadening σ = `
      + `${fmt(sd.broadening ?? NaN)}; log axis, floor ${fmt(floor)})`
      + `${hist ? ' and share of eigenvalues per bin' : ''} — ${run}`});
  const box = chart.getDom();
  box.dataset.step = String(sd.step);
  box.dataset.floor = String(floor);
  chart.setOption(baseOption({
    tooltip: {trigger: 'axis', renderMode: 'richText', confine: true, formatter: (params) => {
      const list = Array.isArray(params) ? params : [params];
      if (!list.length) return '';
      const lines = [`${run} · step ${sd.step}`, `λ ${exact(list[0].value[0])}`];
      for (const p of list) lines.push(`${p.seriesName}: ${exact(p.value[2])}`);
      return lines.join('\n');
    }},
    xAxis: {type: 'value', name: 'eigenvalue λ', nameLocation: 'middle', nameGap: 24,
      min: 'dataMin', max: 'dataMax', axisLabel: {formatter: (v) => fmt(v)}},
    yAxis: [valueAxis('density', true, {min: floor,
      axisLabel: {formatter: (v) => fmt(v), showMinLabel: false}}),
      valueAxis('share', true, {splitLine: {show: false}})],
    series: [
      {name: 'density', type: 'line', symbol: 'none', data: dens,
        lineStyle: {width: 1.5, color}, itemStyle: {color},
        markLine: {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
          label: {formatter: 'λ = 0', position: 'insideEndTop'}, data: [{xAxis: 0}]}},
      ...(hist ? [{name: 'histogram', type: 'scatter', yAxisIndex: 1, symbol: 'rect',
        symbolSize: [4, 4], itemStyle: {color, opacity: 0.6}, data: shares}] : []),
    ],
  }));
}

const curvature = {
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
    const s = app.state;
    const run = curv.run;
    const color = app.colorOf(run);
    const hs = curv.series;
    const hasHessian = Object.keys(hs).some((k) => k.startsWith('hessian/'));
    if (!hasHessian) {
      emptyState(main, 'Curvature', `No Hessian curvature in ${run}. Set hessian_freq=N in `
        + 'GradientHealthCallback to compute the minimal ratio and sharpness every N epochs.');
    } else {
      const pairs = curv.min_ratio_vs_loss;
      if (pairs.x.length) {
        const scatter = app.charts.get('curv_scatter', main, {height: 300,
          title: `Minimal ratio (share of positive Hessian eigenvalues) vs loss — ${run}`});
        scatter.setOption(baseOption({
          tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) =>
            `${run} · step ${p.value[2]}\nprobe loss ${p.value[0]}\nmin ratio ${p.value[1]}`},
          xAxis: valueAxis('probe loss', false),
          yAxis: valueAxis('min ratio', false, {min: 0, max: 1}),
          series: [{name: 'min ratio vs loss', type: 'scatter', symbolSize: 7, itemStyle: {color},
            data: pairs.x.map((x, i) => [x, pairs.y[i], pairs.steps[i]])}],
        }));
      }
      const out = [];
      const curve = (name, key, extra) => {
        const series = hs[key];
        if (series) {
          out.push(...lineWithMarkers(name, series.steps, series.values,
            seriesOptions(app, run, key, series, {smoothing: 0, color, ...extra})));
        }
      };
      out.push(...minRatioRange(app, run, hs, color));
      curve('min ratio', 'hessian/min_ratio', {symbol: 'circle'});
      curve('negative ratio', 'hessian/negative_ratio', {symbol: 'triangle', dashed: true});
      curve('band min ratio', 'hessian/band_min_ratio', {symbol: 'diamond'});
      curve('near-zero ratio', 'hessian/near_zero_ratio', {symbol: 'emptyCircle', dashed: true});
      curve('top eigenvalue (sharpness)', 'hessian/top_eigenvalue',
        {yAxisIndex: 1, symbol: 'rect', log: s.log, dashed: true});
      const overTime = app.charts.get('curv_time', main, {height: 300,
        title: `Curvature over training — ${run}`});
      overTime.setOption(baseOption({
        tooltip: stepTooltip(run),
        xAxis: stepAxis(),
        yAxis: [valueAxis('ratio', false, {min: 0, max: 1}),
          valueAxis('sharpness', s.log, {splitLine: {show: false}})],
        dataZoom: stepZoom(app, 'curv_time'),
        series: out,
      }));
      if (curv.spectral_density) spectralDensity(app, run, curv, main);
    }
    const noise = hs['window/noise_scale'];
    if (noise) {
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
    if (!traj || !traj.available) {
      const why = traj && traj.error ? ` (${traj.error})` : '';
      emptyState(main, 'Trajectory', `No parameter trajectory in the shown runs${why}. `
        + 'Set trajectory_freq=N in GradientHealthCallback to record one every N epochs.');
      return;
    }
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
  },
};

// -- flags ------------------------------------------------------------------

const flags = {
  title: 'Flags',
  singleRun: true,
  async load(app, fresh) {
    return app.flagsOf(app.state.run, fresh);
  },
  draw(app, report, main) {
    if (report.error) {
      emptyState(main, 'Flags', `Flags unavailable: ${report.error}`);
      return;
    }
    const list = el('ol', {class: 'gh-flags', id: 'gh-flags', 'data-run': report.run});
    if (!report.flags.length) {
      emptyState(main, 'Flags', 'No pathology flags for this run.');
    }
    report.flags.forEach((f, i) => {
      const item = el('li', {class: `gh-flag gh-${f.severity}`, 'data-kind': f.kind,
        'data-severity': f.severity, 'data-first-step': String(f.first_step),
        'data-last-step': String(f.last_step), 'data-layer': f.layer ?? '', 'data-flag-index': String(i)},
      el('div', {class: 'gh-flag-head'},
        el('span', {class: 'gh-badge', text: f.severity}),
        el('strong', {text: f.kind}),
        el('span', {class: 'gh-muted', text: ` steps ${f.first_step}–${f.last_step}`}),
        el('span', {class: 'gh-muted', text: f.layer ? ` · ${f.layer}` : ' · whole model'}),
        el('button', {class: 'gh-zoom', text: 'Show on chart', onclick: () => app.zoomToFlag(f)})),
      el('p', {class: 'gh-message', text: f.message}),
      el('p', {class: 'gh-advice', text: `Advice: ${f.advice}`}),
      f.evidence ? el('details', {}, el('summary', {text: 'Evidence'}),
        el('pre', {text: JSON.stringify(f.evidence, null, 2)})) : null);
      item.style.borderLeftColor = (SEVERITY_COLOR[f.severity] || '').replace(/0\.\d+\)/, '1)');
      list.appendChild(item);
    });
    main.appendChild(el('section', {class: 'gh-card'},
      el('h3', {text: `Flags of ${report.run} (last step ${report.last_step ?? '–'})`}), list));
  },
};

export const VIEWS = {
  health, overview, layers, slices, loss_components: lossComponents, curvature, flags,
};
