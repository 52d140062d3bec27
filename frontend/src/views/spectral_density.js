// The spectral density chart of the curvature view: one curvature step's density
// on a log axis, the exact eigenvalue histogram where exact, and a step chooser.
import {el, exact, fmt} from '../util.js';
import {baseOption, valueAxis} from '../charts.js';

// The density's Gaussian tails underflow float32 to exactly 0 far from every
// eigenvalue (http_api.md): a log axis draws them at this share of the peak.
const DENSITY_FLOOR = 1e-8;

/**
 * The spectral density of one curvature step on a log axis (zeros drawn at the
 * floor), the exact eigenvalue histogram where exact, and a step chooser.
 */
export function spectralDensity(app, run, curv, main) {
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
