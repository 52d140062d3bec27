// Chart plumbing: one ECharts instance per chart key, zoom kept across redraws,
// the light or dark theme, tooltips with run, step and exact value, and series
// builders that draw each stretch of NaN/Inf as one marker instead of gaps.
import {echarts} from './echarts.js';
import {el, smooth, maxFinite, nonFiniteLabel, nonFiniteStretches, exact, fmt} from './util.js';

export const SEVERITY_COLOR = {error: 'rgba(214,39,40,0.18)', warning: 'rgba(255,127,14,0.18)',
  info: 'rgba(31,119,180,0.12)'};
/** NaN/Inf findings: red, a colour no run gets. */
export const NONFINITE_COLOR = '#d62728';
/** Cells of a variable no optimizer updated: a neutral grey, apart from viridis and red. */
export const NOT_UPDATED_COLOR = '#9e9e9e';

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
      chart = echarts.init(box, app.state.dark ? 'dark' : null, {renderer: 'canvas'});
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

/**
 * The series colours of a chart's theme (ECharts' own palette, light or dark)
 * less its reds: red marks NaN/Inf findings. For charts whose series are
 * quantities of one run rather than runs.
 */
export function themePalette(chart) {
  // A chart holds its theme's palette once it has an option.
  if (!chart.getOption()) chart.setOption({});
  return chart.getOption().color.filter((c) => !isReddish(c));
}

/** Whether a '#rrggbb' colour's hue is within 15° of red. */
function isReddish(color) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  const max = Math.max(r, g, b);
  const spread = max - Math.min(r, g, b);
  if (max !== r || spread < 40) return false;
  const hue = (60 * (g - b)) / spread;
  return Math.abs(hue) < 15;
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

/**
 * The tooltip of a step chart: the run, the step, and each series' exact
 * logged value (with the smoothed one when smoothing is on).
 */
export function stepTooltip(run) {
  return {
    trigger: 'axis', renderMode: 'richText', confine: true,
    formatter: (params) => {
      const list = Array.isArray(params) ? params : [params];
      if (!list.length) return '';
      const value = list[0].value || list[0].data?.value || [];
      const lines = [`${run ? `${run} · ` : ''}step ${value[0]}`];
      for (const p of list) {
        const v = Array.isArray(p.value) ? p.value : p.data?.value;
        // A custom series is a shaded range whose ends are lines of their own.
        if (!v || p.seriesType === 'custom') continue;
        if (p.seriesType === 'scatter') {
          lines.push(`${p.seriesName}: ${p.name}`);
          continue;
        }
        const raw = v.length > 2 ? v[2] : v[1];
        const shown = raw === null || raw === undefined ? '–' : exact(raw);
        const smoothed = v.length > 2 && v[1] !== null && v[1] !== raw
          ? ` (smoothed ${fmt(v[1])})` : '';
        lines.push(`${p.seriesName}: ${shown}${smoothed}`);
      }
      return lines.join('\n');
    },
  };
}

export function baseOption(extra = {}) {
  return {
    animation: false,
    backgroundColor: 'transparent',
    // richText tooltips are drawn on the canvas: run names never become HTML.
    tooltip: {trigger: 'axis', renderMode: 'richText', confine: true},
    legend: {type: 'scroll', top: 0},
    grid: {left: 70, right: 70, top: 40, bottom: 64},
    ...extra,
  };
}

/** The text of a non-finite stretch's marker: its value, first step and count. */
export function stretchLabel(stretch, exactCount = true) {
  const count = `${exactCount ? '' : '≥'}${stretch.count}`;
  return `${nonFiniteLabel(stretch.value)} from step ${stretch.first_step} (×${count})`;
}

/**
 * Builds a line series and, when needed, a scatter series with one marker per
 * stretch of non-finite points (a shaded band spans the stretch's steps).
 * Each line point is [step, drawn (smoothed) value, logged value]. On a log
 * axis non-positive values cannot be drawn and become gaps.
 *
 * @param {Array<Object>=} stretches the series' stretches over every logged
 *     point (the `health` route's `nonfinite`); without them they are found
 *     in the drawn points, where a downsampled stretch counts at least that.
 * @return {Array<Object>} the series (line first).
 */
export function lineWithMarkers(name, steps, values, {
  yAxisIndex = 0, smoothing = 0, log = false, color, dashed = false, dash, symbol = 'none',
  markArea, stretches, downsampled = false,
} = {}) {
  const sm = smooth(values, smoothing);
  const data = new Array(steps.length);
  for (let i = 0; i < steps.length; i++) {
    const v = sm[i];
    if (!Number.isFinite(values[i]) || (log && v <= 0)) {
      data[i] = [steps[i], null, Number.isFinite(values[i]) ? values[i] : null];
    } else {
      data[i] = [steps[i], v, values[i]];
    }
  }
  const line = {
    name, type: 'line', yAxisIndex, data, showSymbol: symbol !== 'none', symbol,
    symbolSize: 5, connectNulls: false, sampling: undefined,
    lineStyle: {width: 1.5, type: dash || (dashed ? 'dashed' : 'solid'), color},
    itemStyle: {color},
  };
  if (markArea) line.markArea = markArea;
  const out = [line];
  const exactCount = !!stretches || !downsampled;
  const found = stretches || nonFiniteStretches(steps, values);
  if (found.length) {
    const top = maxFinite(values);
    out.push({
      name: `${name} (non-finite)`, type: 'scatter', yAxisIndex, symbol: 'triangle',
      symbolSize: 12, itemStyle: {color: NONFINITE_COLOR}, z: 10,
      data: found.map((s) => ({value: [s.first_step, top, s.last_step, s.count],
        name: stretchLabel(s, exactCount)})),
      // A second axis' marker often sits where the first one's does: label it below.
      label: {show: true, position: yAxisIndex ? 'bottom' : 'top', formatter: (p) => p.name,
        color: NONFINITE_COLOR},
      markArea: {silent: true, itemStyle: {color: 'rgba(214,39,40,0.07)'},
        data: found.filter((s) => s.last_step > s.first_step)
          .map((s) => [{xAxis: s.first_step}, {xAxis: s.last_step}])},
    });
  }
  return out;
}

/**
 * Flag ranges as a markArea on a step axis drawn from step `first` to `last`.
 * A flag over all of them (a vanishing gradient from the first step on) is
 * left out of the areas: shading every step says nothing of where and hides the
 * lines; the caller names it instead.
 *
 * @return {{markArea: (Object|undefined), whole: Array<Object>}} the areas and
 *     the flags over every drawn step.
 */
export function flagAreas(report, first, last) {
  if (!report || report.error || !report.flags || !report.flags.length) {
    return {markArea: undefined, whole: []};
  }
  const whole = report.flags.filter((f) => (f.first_step ?? 0) <= first
    && (f.last_step ?? f.first_step ?? 0) >= last);
  const local = report.flags.filter((f) => !whole.includes(f));
  const markArea = local.length ? {
    silent: true,
    data: local.map((f) => [
      {xAxis: f.first_step ?? 0, itemStyle: {color: SEVERITY_COLOR[f.severity] || SEVERITY_COLOR.info},
        name: f.kind},
      {xAxis: f.last_step ?? f.first_step ?? 0},
    ]),
    label: {show: false},
  } : undefined;
  return {markArea, whole};
}
