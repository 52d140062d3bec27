// The "Gradient Health" tab: TensorBoard loads this module in an iframe and
// calls render(). Everything the tab draws comes from the plugin's routes.
import {getJson} from './api.js';
import {el, clear} from './util.js';
import {STYLE} from './style.js';
import {createCharts} from './charts.js';
import {VIEWS} from './views.js';

const RELOAD_MS = 30000; // TensorBoard's own default reload period (30 s).

/** Entry point called by TensorBoard's plugin_entry.html. */
export async function render() {
  const app = new App(document.body);
  window.__gradHealth = app.debug;
  await app.start();
}

class App {
  constructor(root) {
    this.root = root;
    this.state = {
      runs: [],
      run: null,
      compare: new Set(),
      view: 'overview',
      smoothing: 0,
      log: true,
      autoReload: true,
      zoom: {},
      layerStat: 'grad_norm',
    };
    this.cache = new Map();
    this.flags = new Map();
    this.charts = createCharts(this);
    this.debug = {
      state: this.state,
      charts: this.charts.instances,
      data: {},
      flags: {},
      renders: 0,
      lastRender: null,
      errors: [],
      app: this,
    };
    this.renderSeq = 0;
  }

  async start() {
    const style = document.createElement('style');
    style.textContent = STYLE;
    document.head.appendChild(style);
    this.buildShell();
    await this.loadRuns();
    await this.show(this.state.view);
    this.timer = setInterval(() => {
      if (this.state.autoReload) this.reload().catch((e) => this.error(e));
    }, RELOAD_MS);
    window.addEventListener('resize', () => this.charts.resizeAll());
  }

  // -- shell --------------------------------------------------------------

  buildShell() {
    const s = this.state;
    this.runSelect = el('select', {id: 'gh-run', title: 'Run shown by single-run views',
      onchange: () => { s.run = this.runSelect.value; this.refreshBand(); this.show(s.view); }});
    this.compareBox = el('div', {class: 'gh-compare', id: 'gh-compare'});
    const smoothing = el('input', {type: 'range', id: 'gh-smoothing', min: '0', max: '0.99',
      step: '0.01', value: '0'});
    const smoothingValue = el('span', {class: 'gh-muted', text: '0'});
    smoothing.addEventListener('input', () => {
      s.smoothing = Number(smoothing.value);
      smoothingValue.textContent = smoothing.value;
      this.show(s.view);
    });
    const logBox = el('input', {type: 'checkbox', id: 'gh-log', checked: true,
      onchange: () => { s.log = logBox.checked; this.show(s.view); }});
    const autoBox = el('input', {type: 'checkbox', id: 'gh-autoreload', checked: true,
      onchange: () => { s.autoReload = autoBox.checked; }});
    const reloadBtn = el('button', {id: 'gh-reload', text: 'Reload',
      onclick: () => this.reload()});
    const resetZoom = el('button', {id: 'gh-reset-zoom', text: 'Reset zoom',
      onclick: () => { s.zoom = {}; this.show(s.view); }});
    this.nav = el('nav', {class: 'gh-nav'});
    for (const [key, view] of Object.entries(VIEWS)) {
      this.nav.appendChild(el('button', {'data-view': key, text: view.title,
        onclick: () => this.show(key)}));
    }
    this.status = el('div', {class: 'gh-status', id: 'gh-status', role: 'status'});
    this.band = el('div', {class: 'gh-band', id: 'gh-band'});
    this.main = el('main', {id: 'gh-main'});
    this.root.appendChild(el('div', {class: 'gh-app'},
      el('header', {class: 'gh-controls'},
        el('label', {}, 'Run ', this.runSelect),
        el('label', {}, 'Smoothing ', smoothing, smoothingValue),
        el('label', {}, logBox, ' log scale'),
        el('label', {}, autoBox, ' auto-reload'),
        reloadBtn, resetZoom),
      el('div', {class: 'gh-compare-row'}, el('span', {class: 'gh-muted', text: 'Compare runs: '}),
        this.compareBox),
      this.nav, this.band, this.status, this.main));
  }

  async loadRuns() {
    const runs = await getJson('runs');
    const s = this.state;
    s.runs = runs;
    if (!s.run || !runs.includes(s.run)) s.run = runs[0] || null;
    if (s.compare.size === 0) runs.slice(0, 8).forEach((r) => s.compare.add(r));
    for (const r of [...s.compare]) if (!runs.includes(r)) s.compare.delete(r);
    clear(this.runSelect);
    for (const r of runs) {
      const opt = el('option', {text: r});
      opt.value = r;
      if (r === s.run) opt.selected = true;
      this.runSelect.appendChild(opt);
    }
    clear(this.compareBox);
    for (const r of runs) {
      const box = el('input', {type: 'checkbox', checked: s.compare.has(r)});
      box.addEventListener('change', () => {
        if (box.checked) s.compare.add(r); else s.compare.delete(r);
        if (VIEWS[s.view].multiRun) this.show(s.view);
      });
      this.compareBox.appendChild(el('label', {class: 'gh-run-label'}, box, el('span', {text: r})));
    }
    if (!runs.length) {
      this.setStatus('No run with gradient-health data yet. Train with GradientHealthCallback(log_dir=...) under this logdir.');
    }
    await this.refreshBand();
  }

  // -- data -----------------------------------------------------------------

  /** Fetches a route, reusing the last answer unless `fresh`. */
  async fetch(route, params, fresh = false) {
    const key = route + JSON.stringify(params || {});
    if (!fresh && this.cache.has(key)) return this.cache.get(key);
    const data = await getJson(route, params);
    this.cache.set(key, data);
    return data;
  }

  /** The flags report of a run, or {error} when the route cannot give one. */
  async flagsOf(run, fresh = false) {
    if (!run) return {error: 'no run'};
    if (!fresh && this.flags.has(run)) return this.flags.get(run);
    let report;
    try {
      report = await getJson('flags', {run});
    } catch (e) {
      report = {error: e.message, status: e.status};
    }
    this.flags.set(run, report);
    this.debug.flags[run] = report;
    return report;
  }

  async reload() {
    this.cache.clear();
    this.flags.clear();
    await this.loadRuns();
    await this.show(this.state.view, true);
  }

  // -- views ----------------------------------------------------------------

  async show(viewKey, fresh = false) {
    const seq = ++this.renderSeq;
    this.state.view = viewKey;
    for (const b of this.nav.querySelectorAll('button')) {
      b.classList.toggle('active', b.dataset.view === viewKey);
    }
    const view = VIEWS[viewKey];
    const t0 = performance.now();
    try {
      if (!this.state.run) {
        this.charts.disposeAll();
        clear(this.main);
        this.debug.lastRender = {view: viewKey, ms: 0, empty: true};
        return;
      }
      const data = await view.load(this, fresh);
      if (seq !== this.renderSeq) return; // a newer click won
      this.debug.data[viewKey] = data;
      // Redraw from scratch; the zoom lives in state.zoom, so it survives.
      this.charts.disposeAll();
      clear(this.main);
      this.main.dataset.view = viewKey;
      view.draw(this, data, this.main);
      this.setStatus('');
    } catch (e) {
      this.error(e);
    } finally {
      if (seq === this.renderSeq) {
        this.debug.renders++;
        this.debug.lastRender = {view: viewKey, ms: performance.now() - t0, run: this.state.run};
      }
    }
  }

  async refreshBand(fresh = false) {
    const run = this.state.run;
    clear(this.band);
    if (!run) return;
    const report = await this.flagsOf(run, fresh);
    if (run !== this.state.run) return;
    if (report.error) {
      this.band.appendChild(el('span', {class: 'gh-muted', text: `Flags unavailable: ${report.error}`}));
      return;
    }
    const last = Math.max(report.last_step || 1, 1);
    const track = el('div', {class: 'gh-band-track', title: 'Flags over the run (click to zoom)'});
    for (const [i, f] of report.flags.entries()) {
      const left = (100 * (f.first_step || 0)) / last;
      const width = Math.max(0.6, (100 * ((f.last_step ?? last) - (f.first_step || 0))) / last);
      const seg = el('div', {class: `gh-seg gh-${f.severity}`, 'data-flag-index': String(i),
        title: `${f.kind} (${f.severity}) steps ${f.first_step}–${f.last_step}`,
        onclick: () => this.zoomToFlag(f)});
      seg.style.left = `${Math.min(left, 99.4)}%`;
      seg.style.width = `${Math.min(width, 100 - left)}%`;
      seg.style.top = `${(i % 3) * 6}px`;
      track.appendChild(seg);
    }
    const label = report.flags.length
      ? `${report.flags.length} flag(s) — click one to zoom to its steps`
      : 'No flags for this run';
    this.band.appendChild(el('span', {class: 'gh-band-label', text: label}));
    this.band.appendChild(track);
  }

  zoomToFlag(flag) {
    const first = flag.first_step ?? 0;
    const last = flag.last_step ?? first;
    const pad = Math.max(1, Math.round((last - first) * 0.1));
    this.state.zoom.overview = [Math.max(0, first - pad), last + pad];
    this.debug.zoomedTo = [first, last];
    this.show('overview');
  }

  setStatus(text) {
    this.status.textContent = text;
    this.status.style.display = text ? 'block' : 'none';
  }

  error(e) {
    const msg = e && e.message ? e.message : String(e);
    this.debug.errors.push(msg);
    this.setStatus(`Error: ${msg}`);
  }
}
