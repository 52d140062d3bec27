// The tab's views. Each has load(app, fresh) -> data and draw(app, data, main).
import {el, fmt} from './util.js';
import {
  PALETTE, SEVERITY_COLOR, baseOption, flagAreas, lineWithMarkers, stepAxis, stepZoom, valueAxis,
} from './charts.js';

const HEALTHY_UPDATE_RATIO = 1e-3; // cs231n: update/weight ratio near 1e-3 is healthy.

function selectedRuns(app) {
  const s = app.state;
  const runs = s.runs.filter((r) => s.compare.has(r));
  if (s.run && !runs.includes(s.run)) runs.unshift(s.run);
  return runs;
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

// -- overview ---------------------------------------------------------------

const overview = {
  title: 'Overview',
  async load(app, fresh) {
    const run = app.state.run;
    const [data, flags] = await Promise.all([
      app.fetch('overview', {run}, fresh), app.flagsOf(run, fresh)]);
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
    const chart = app.charts.get('overview', main, {height: 360,
      title: 'Loss and global gradient norm vs step'});
    const out = [];
    const areas = flagAreas(data.flags);
    if (loss) {
      out.push(...lineWithMarkers('loss', loss.steps, loss.values, {yAxisIndex: 0,
        smoothing: s.smoothing, log: s.log, color: PALETTE[0], markArea: areas}));
    }
    if (grad) {
      out.push(...lineWithMarkers('grad norm', grad.steps, grad.values, {yAxisIndex: 1,
        smoothing: s.smoothing, log: s.log, color: PALETTE[1], markArea: loss ? undefined : areas}));
    }
    chart.setOption(baseOption({
      xAxis: stepAxis(),
      yAxis: [valueAxis('loss', s.log), valueAxis('grad norm', s.log, {splitLine: {show: false}})],
      dataZoom: stepZoom(app, 'overview'),
      series: out,
    }));

    const norms = data.norms;
    if (norms && norms.x.length) {
      const c2 = app.charts.get('norms', main, {height: 320,
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
      c2.setOption(baseOption({
        tooltip: {trigger: 'item', renderMode: 'richText'},
        xAxis: valueAxis('parameter norm', s.log, {min: 'dataMin', max: 'dataMax',
          nameLocation: 'middle', nameGap: 24}),
        yAxis: valueAxis('grad norm', s.log, {min: 'dataMin', max: 'dataMax'}),
        series: [{
          name: 'grad norm vs param norm', type: 'scatter', symbolSize: 4, data: pts,
          itemStyle: {color: PALETTE[2]},
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
      const c3 = app.charts.get('update', main, {height: 240, title: 'Update / parameter ratio'});
      const sr = lineWithMarkers('update ratio', ratio.steps, ratio.values, {smoothing: s.smoothing,
        log: s.log, color: PALETTE[4]});
      sr[0].markLine = {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
        label: {formatter: '1e-3 (cs231n)'}, data: [{yAxis: HEALTHY_UPDATE_RATIO}]};
      c3.setOption(baseOption({
        xAxis: stepAxis(),
        yAxis: valueAxis('ratio', s.log),
        dataZoom: stepZoom(app, 'update'),
        series: sr,
      }));
    }
    main.appendChild(exportLinks(data.run, Object.keys(series)));
  },
};

// -- per-layer --------------------------------------------------------------

const layers = {
  title: 'Per-layer',
  async load(app, fresh) {
    return app.fetch('layers', {run: app.state.run, stat: app.state.layerStat}, fresh);
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
      title: `${data.stat} per variable × step (${s.log ? 'log₁₀ colour scale' : 'linear colour'})`});
    chart.setOption({
      animation: false,
      tooltip: {trigger: 'item', renderMode: 'richText', formatter: (p) => {
        const d = Array.isArray(p.data) ? p.data : p.data.value;
        return `${heat.variables[d[1]]}\nstep ${heat.steps[d[0]]}\n${fmt(d[3] ?? d[2])}`;
      }},
      grid: {left: 160, right: 90, top: 20, bottom: 60},
      xAxis: {type: 'category', data: heat.steps, name: 'step'},
      yAxis: {type: 'category', data: heat.variables, axisLabel: {width: 150, overflow: 'truncate'}},
      visualMap: {type: 'continuous', min: lo, max: hi === lo ? lo + 1 : hi, dimension: 2,
        seriesIndex: 0, calculable: true, orient: 'vertical', right: 0, top: 20,
        text: [s.log ? `10^${fmt(hi)}` : fmt(hi), s.log ? `10^${fmt(lo)}` : fmt(lo)],
        inRange: {color: ['#313695', '#4575b4', '#abd9e9', '#fee090', '#f46d43', '#a50026']}},
      dataZoom: [{type: 'slider', xAxisIndex: 0, height: 18, bottom: 6},
        {type: 'inside', xAxisIndex: 0}],
      series: [
        // Plain arrays and ECharts' progressive drawing keep 40,000 cells responsive.
        {name: data.stat, type: 'heatmap', data: cells, progressive: 4000, progressiveThreshold: 8000},
        {name: 'non-finite', type: 'scatter', symbol: 'diamond', symbolSize: 10,
          itemStyle: {color: '#ff00ff'}, data: bad.map((b) => ({value: [b[0], b[1], null, b[2]]}))},
      ],
    });
    const ur = data.update_ratio;
    if (ur && ur.variables.length) {
      const c2 = app.charts.get('update_ratio', main, {height: Math.max(220, 30 + 16 * ur.variables.length),
        title: `Update / parameter ratio per variable at step ${ur.step} (dashed: 1e-3, cs231n)`});
      c2.setOption({
        animation: false,
        tooltip: {trigger: 'axis', renderMode: 'richText'},
        grid: {left: 160, right: 40, top: 10, bottom: 30},
        yAxis: {type: 'category', data: ur.variables, axisLabel: {width: 150, overflow: 'truncate'}},
        xAxis: {type: 'log', name: 'ratio', axisLabel: {formatter: (v) => fmt(v)}},
        series: [{name: 'update ratio', type: 'bar', itemStyle: {color: PALETTE[4]},
          data: ur.values.map((v) => (Number.isFinite(v) && v > 0 ? v : null)),
          markLine: {silent: true, symbol: 'none', lineStyle: {type: 'dashed'},
            data: [{xAxis: HEALTHY_UPDATE_RATIO}]}}],
      });
    }
    main.appendChild(exportLinks(data.run, [`layer/${data.stat}`]));
  },
};

// -- slices -----------------------------------------------------------------

const slices = {
  title: 'Slices',
  multiRun: true,
  async load(app, fresh) {
    return app.fetch('slices', {run: selectedRuns(app)}, fresh);
  },
  draw(app, data, main) {
    const s = app.state;
    const out = [];
    let i = 0;
    for (const [run, d] of Object.entries(data.runs)) {
      for (const [name, sl] of Object.entries(d.slices)) {
        const color = PALETTE[i++ % PALETTE.length];
        if (sl.grad_mean_abs) {
          out.push(...lineWithMarkers(`${run} · ${name} average |g|`, sl.grad_mean_abs.steps,
            sl.grad_mean_abs.values, {smoothing: s.smoothing, log: s.log, color}));
        }
        if (sl.grad_variance) {
          out.push(...lineWithMarkers(`${run} · ${name} variance`, sl.grad_variance.steps,
            sl.grad_variance.values, {yAxisIndex: 1, smoothing: s.smoothing, log: s.log, color,
              dashed: true, symbol: 'circle'}));
        }
      }
      const wv = d.window.grad_variance;
      if (wv) {
        out.push(...lineWithMarkers(`${run} · gradient variance (all)`, wv.steps, wv.values,
          {yAxisIndex: 1, smoothing: s.smoothing, log: s.log, color: PALETTE[i++ % PALETTE.length],
            dashed: true, symbol: 'rect'}));
      }
    }
    if (!out.length) {
      emptyState(main, 'Slices', 'No slice or window statistics in the selected runs. '
        + 'Pass slices={...} to GradientHealthCallback to record parameter slices.');
      return;
    }
    const chart = app.charts.get('slices', main, {height: 420,
      title: 'Average gradient per slice (left) and gradient variance (right, dashed)'});
    chart.setOption(baseOption({
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
    return app.fetch('loss_components', {run: selectedRuns(app)}, fresh);
  },
  draw(app, data, main) {
    const s = app.state;
    const names = [];
    for (const comps of Object.values(data.runs)) {
      for (const n of Object.keys(comps)) if (!names.includes(n)) names.push(n);
    }
    if (!names.length) {
      emptyState(main, 'Loss components', 'No loss components in the selected runs. '
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
      runs.forEach((run, i) => {
        const c = data.runs[run][name];
        if (!c) return;
        if (c.values.some((v) => Number.isFinite(v) && v <= 0)) nonPositive = true;
        out.push(...lineWithMarkers(run, c.steps, c.values, {smoothing: s.smoothing,
          log: s.log && !nonPositive, color: PALETTE[i % PALETTE.length]}));
      });
      const log = s.log && !nonPositive;
      const chart = app.charts.get(`loss_${name}`, main, {height: 300,
        title: `${name}${s.log && !log ? ' (linear: has values ≤ 0)' : ''}`});
      chart.setOption(baseOption({
        xAxis: stepAxis(),
        yAxis: valueAxis(name, log),
        dataZoom: stepZoom(app, `loss_${name}`),
        series: out,
      }));
    }
  },
};

// -- curvature & trajectory -------------------------------------------------

const curvature = {
  title: 'Curvature & trajectory',
  multiRun: true,
  async load(app, fresh) {
    const curv = await app.fetch('curvature', {run: app.state.run}, fresh);
    let traj;
    try {
      traj = await app.fetch('trajectory', {run: selectedRuns(app)}, fresh);
    } catch (e) {
      traj = {available: false, error: e.message};
    }
    return {curv, traj};
  },
  draw(app, {curv, traj}, main) {
    const s = app.state;
    const hs = curv.series;
    const hasHessian = Object.keys(hs).some((k) => k.startsWith('hessian/'));
    if (!hasHessian) {
      emptyState(main, 'Curvature', 'No Hessian curvature in this run. Set hessian_freq=N in '
        + 'GradientHealthCallback to compute the minimal ratio and sharpness every N epochs.');
    } else {
      const pairs = curv.min_ratio_vs_loss;
      if (pairs.x.length) {
        const c = app.charts.get('curv_scatter', main, {height: 300,
          title: 'Minimal ratio (share of positive Hessian eigenvalues) vs loss'});
        c.setOption(baseOption({
          tooltip: {trigger: 'item', renderMode: 'richText'},
          xAxis: valueAxis('probe loss', false),
          yAxis: valueAxis('min ratio', false, {min: 0, max: 1}),
          series: [{name: 'min ratio vs loss', type: 'scatter', symbolSize: 7,
            data: pairs.x.map((x, i) => [x, pairs.y[i], pairs.steps[i]])}],
        }));
      }
      const out = [];
      const mr = hs['hessian/min_ratio'];
      const te = hs['hessian/top_eigenvalue'];
      const nr = hs['hessian/negative_ratio'];
      if (mr) out.push(...lineWithMarkers('min ratio', mr.steps, mr.values, {symbol: 'circle', color: PALETTE[0]}));
      if (nr) out.push(...lineWithMarkers('negative ratio', nr.steps, nr.values, {symbol: 'circle', color: PALETTE[3]}));
      if (te) out.push(...lineWithMarkers('top eigenvalue (sharpness)', te.steps, te.values,
        {yAxisIndex: 1, symbol: 'rect', log: s.log, color: PALETTE[1]}));
      const c2 = app.charts.get('curv_time', main, {height: 300, title: 'Curvature over training'});
      c2.setOption(baseOption({
        xAxis: stepAxis(),
        yAxis: [valueAxis('ratio', false, {min: 0, max: 1}),
          valueAxis('sharpness', s.log, {splitLine: {show: false}})],
        dataZoom: stepZoom(app, 'curv_time'),
        series: out,
      }));
    }
    const ns = hs['window/noise_scale'];
    if (ns) {
      const c3 = app.charts.get('noise_scale', main, {height: 260,
        title: 'Gradient noise scale B_simple'});
      c3.setOption(baseOption({
        xAxis: stepAxis(),
        yAxis: valueAxis('B_simple', s.log),
        dataZoom: stepZoom(app, 'noise_scale'),
        series: lineWithMarkers('noise scale', ns.steps, ns.values, {smoothing: s.smoothing,
          log: s.log, color: PALETTE[2]}),
      }));
    }
    if (!traj || !traj.available) {
      const why = traj && traj.error ? ` (${traj.error})` : '';
      emptyState(main, 'Trajectory', `No parameter trajectory in the selected runs${why}. `
        + 'Set trajectory_freq=N in GradientHealthCallback to record one every N epochs.');
      return;
    }
    const ev = traj.explained_variance_ratio || [];
    const out = Object.entries(traj.runs).map(([run, t], i) => ({
      name: run, type: 'line', symbol: 'circle', symbolSize: 5,
      itemStyle: {color: PALETTE[i % PALETTE.length]},
      data: t.xy.map((p, j) => [p[0], p[1], t.steps[j]]),
    }));
    const c4 = app.charts.get('trajectory', main, {height: 380,
      title: 'Parameter trajectories, one PCA over all runs'});
    c4.setOption(baseOption({
      tooltip: {trigger: 'item', renderMode: 'richText'},
      xAxis: valueAxis(`PC1 (${fmt(100 * (ev[0] ?? NaN))}%)`, false),
      yAxis: valueAxis(`PC2 (${fmt(100 * (ev[1] ?? NaN))}%)`, false),
      series: out,
    }));
  },
};

// -- flags ------------------------------------------------------------------

const flags = {
  title: 'Flags',
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
  overview, layers, slices, loss_components: lossComponents, curvature, flags,
};
