// Chart plumbing: one ECharts instance per chart key, zoom kept across redraws,
// and series builders that draw NaN/Inf as markers instead of gaps.
import {echarts} from './echarts.js';
import {el, smooth, maxFinite, nonFiniteLabel, fmt} from './util.js';

export const PALETTE = [
  '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
  '#7f7f7f', '#bcbd22', '#17becf',
];
export const SEVERITY_COLOR = {error: 'rgba(214,39,40,0.18)', warning: 'rgba(255,127,14,0.18)',
  info: 'rgba(31,119,180,0.12)'};

export function createCharts(app) {
  const instances = {};
  return {
    instances,
    /** Returns the chart of `key`, creating its box inside `parent` if needed. */
    get(key, parent, {height = 320, title = ''} = {}) {
      let chart = instances[key];
      if (chart && !chart.isDisposed() && parent.contains(chart.getDom())) return chart;
      const box = el('div', {class: 'gh-chart', 'data-chart': key});
      box.style.height = `${height}px`;
      const wrap = el('section', {class: 'gh-card'});
      if (title) wrap.appendChild(el('h3', {text: title}));
      wrap.appendChild(box);
      parent.appendChild(wrap);
      chart = echarts.init(box, null, {renderer: 'canvas'});
      instances[key] = chart;
      chart.on('datazoom', () => {
        const dz = chart.getOption().dataZoom;
        if (!dz || !dz.length) return;
        const {startValue, endValue, start, end} = dz[0];
        if (start === 0 && end === 100) delete app.state.zoom[key];
        else app.state.zoom[key] = [startValue, endValue];
      });
      return chart;
    },
    disposeAll() {
      for (const k of Object.keys(instances)) {
        if (!instances[k].isDisposed()) instances[k].dispose();
        delete instances[k];
      }
    },
    resizeAll() {
      for (const c of Object.values(instances)) if (!c.isDisposed()) c.resize();
    },
  };
}

/** A step axis zoom (slider + wheel) starting at the remembered range. */
export function stepZoom(app, key, xAxisIndex = 0) {
  const z = app.state.zoom[key];
  const base = {xAxisIndex, filterMode: 'none'};
  const range = z ? {startValue: z[0], endValue: z[1]} : {start: 0, end: 100};
  return [
    {type: 'slider', height: 16, bottom: 4, ...base, ...range},
    {type: 'inside', ...base, ...range},
  ];
}

/** The step x axis, named under the axis. */
export function stepAxis() {
  return {type: 'value', name: 'step', nameLocation: 'middle', nameGap: 24,
    min: 'dataMin', max: 'dataMax'};
}

export function valueAxis(name, log, extra = {}) {
  return {
    type: log ? 'log' : 'value', name, nameGap: 12, scale: !log,
    axisLabel: {formatter: (v) => fmt(v)}, splitLine: {show: true}, ...extra,
  };
}

export function baseOption(extra = {}) {
  return {
    animation: false,
    // richText tooltips are drawn on the canvas: run names never become HTML.
    tooltip: {trigger: 'axis', renderMode: 'richText', confine: true},
    legend: {type: 'scroll', top: 0},
    grid: {left: 70, right: 70, top: 40, bottom: 64},
    ...extra,
  };
}

/**
 * Builds a line series and, when needed, a scatter series of its non-finite points.
 * On a log axis non-positive values cannot be drawn and become gaps.
 *
 * @return {Array<Object>} the series (line first).
 */
export function lineWithMarkers(name, steps, values, {
  yAxisIndex = 0, smoothing = 0, log = false, color, dashed = false, symbol = 'none',
  markArea,
} = {}) {
  const sm = smooth(values, smoothing);
  const data = new Array(steps.length);
  const bad = [];
  const top = maxFinite(values);
  for (let i = 0; i < steps.length; i++) {
    const v = sm[i];
    if (!Number.isFinite(values[i])) {
      data[i] = [steps[i], null];
      bad.push({value: [steps[i], top], raw: nonFiniteLabel(values[i])});
    } else if (log && v <= 0) {
      data[i] = [steps[i], null];
    } else {
      data[i] = [steps[i], v];
    }
  }
  const line = {
    name, type: 'line', yAxisIndex, data, showSymbol: symbol !== 'none', symbol,
    symbolSize: 5, connectNulls: false, sampling: undefined,
    lineStyle: {width: 1.5, type: dashed ? 'dashed' : 'solid', color},
    itemStyle: {color},
  };
  if (markArea) line.markArea = markArea;
  const out = [line];
  if (bad.length) {
    out.push({
      name: `${name} (non-finite)`, type: 'scatter', yAxisIndex, symbol: 'triangle',
      symbolSize: 12, itemStyle: {color: '#d62728'}, z: 10,
      data: bad.map((b) => ({value: b.value, name: b.raw})),
      label: {show: true, position: 'top', formatter: (p) => p.name, color: '#d62728'},
    });
  }
  return out;
}

/** Flag ranges as a markArea on a step axis. */
export function flagAreas(report) {
  if (!report || report.error || !report.flags || !report.flags.length) return undefined;
  return {
    silent: true,
    data: report.flags.map((f) => [
      {xAxis: f.first_step ?? 0, itemStyle: {color: SEVERITY_COLOR[f.severity] || SEVERITY_COLOR.info},
        name: f.kind},
      {xAxis: f.last_step ?? f.first_step ?? 0},
    ]),
    label: {show: false},
  };
}
