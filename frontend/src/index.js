// The "Gradient Health" tab: TensorBoard loads this module in an iframe and
// calls render(). Everything the tab draws comes from the plugin's routes.
import {getJson} from './api.js';
import {el, clear} from './util.js';
import {STYLE} from './style.js';
import {createCharts} from './charts.js';
import {VIEWS} from './views/index.js';
import {RunList, readHashState, writeHashState, runColor, selectedRuns} from './runs.js';
import {isDark, watchTheme} from './theme.js';

const RELOAD_MS = 30000; // TensorBoard's own default reload period (30 s).
// Runs per `health` request: a cold row costs a full diagnosis of its run, so the
// first request is small (rows show soon) and later ones double; when an answer
// comes fast (rows cached by the server) the rest is asked for at once.
const HEALTH_FIRST_CHUNK = 5;
const HEALTH_MAX_CHUNK = 40;
const HEALTH_FAST_MS = 300;
const MAX_RUNS_PER_REQUEST = 200; // the routes' limit (http_api.md)

/** Entry point called by TensorBoard's plugin_entry.html. */
export async function render() {
  const app = new App(document.body);
  window.__gradHealth = app.debug;
  await app.start();
}

class App {
  constructor(root) {
    this.root = root;
    const saved = readHashState();
    this.state = {
      runs: [],
      run: saved.run,
      filter: saved.filter,
      off: new Set(saved.off),
      view: saved.view in VIEWS ? saved.view : 'health',
      smoothing: 0,
      log: true,
      autoReload: true,
      zoom: {},
      layerStat: 'grad_norm',
      densityStep: null, // {run, step}: the curvature step whose density is drawn
      sort: {key: 'worst', descending: true},
      dark: isDark(),
    };
    this.cache = new Map();
    this.flags = new Map();
    this.health = new Map();
    this.charts = createCharts(this);
    this.debug = {
      state: this.state,
      charts: this.charts.instances,
      data: {},
      flags: {},
      health: this.health,
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
    this.state.dark = watchTheme((dark) => this.setDark(dark));
    document.body.classList.toggle('gh-dark', this.state.dark);
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
    this.runList = new RunList(s, (kind) => this.onRunsChanged(kind));
    const smoothing = el('input', {type: 'range', id: 'gh-smoothing', min: '0', max: '0.99',
      step: '0.01', value: '0', title: "TensorBoard's smoothing: a debiased exponential moving average"});
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
    this.openRunLabel = el('div', {class: 'gh-open-run', id: 'gh-open-run'});
    this.band = el('div', {class: 'gh-band', id: 'gh-band'});
    this.main = el('main', {id: 'gh-main'});
    this.root.appendChild(el('div', {class: 'gh-layout'},
      this.runList.root,
      el('div', {class: 'gh-app'},
        el('header', {class: 'gh-controls'},
          el('label', {}, 'Smoothing ', smoothing, smoothingValue),
          el('label', {}, logBox, ' log scale'),
          el('label', {}, autoBox, ' auto-reload'),
          reloadBtn, resetZoom),
        this.nav, this.openRunLabel, this.band, this.status, this.main)));
  }

  async loadRuns() {
    const s = this.state;
    s.runs = await getJson('runs');
    for (const run of [...s.off]) if (!s.runs.includes(run)) s.off.delete(run);
    this.ensureOpenRun();
    this.runList.update();
    if (!s.runs.length) {
      this.setStatus('No run with gradient-health data yet. Train with GradientHealthCallback(log_dir=...) under this logdir.');
    }
    this.saveHash();
  }

  /** Keeps the open run among the shown runs (the first shown one otherwise). */
  ensureOpenRun() {
    const s = this.state;
    const shown = selectedRuns(s);
    if (!s.run || !shown.includes(s.run)) s.run = shown[0] || null;
  }

  onRunsChanged(kind) {
    if (kind === 'selection') this.ensureOpenRun();
    this.runList.update();
    this.saveHash();
    const view = VIEWS[this.state.view];
    if (kind === 'open' && this.state.view === 'health') {
      this.show('overview');
    } else if (view.multiRun || kind === 'open' || view.singleRun) {
      this.show(this.state.view);
    }
  }

  /** Opens a run in a single-run view. */
  openRun(run, viewKey) {
    this.state.run = run;
    this.state.off.delete(run);
    this.runList.update();
    this.show(viewKey);
  }

  saveHash() {
    try {
      writeHashState(this.state);
    } catch (e) {
      // A URL the browser will not rewrite: the state just does not persist.
    }
  }

  colorOf(run) {
    return runColor(this.state, run);
  }

  setDark(dark) {
    this.state.dark = dark;
    document.body.classList.toggle('gh-dark', dark);
    this.debug.themeChanges = (this.debug.themeChanges || 0) + 1;
    // ECharts takes its theme at creation: redraw the view with new instances.
    this.charts.disposeAll();
    this.show(this.state.view);
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

  /**
   * Loads the `health` rows of runs not loaded yet (all of them when `fresh`),
   * a growing chunk at a time, calling `onChunk` after each answer but the last.
   */
  async healthOf(runs, fresh = false, onChunk = null) {
    const missing = runs.filter((run) => fresh || !this.health.has(run));
    let size = HEALTH_FIRST_CHUNK;
    for (let i = 0; i < missing.length;) {
      const chunk = missing.slice(i, i + size);
      const started = performance.now();
      try {
        const table = await getJson('health', {run: chunk});
        for (const row of table.runs) this.health.set(row.run, row);
      } catch (e) {
        if (e.status !== 404) throw e; // a vanished run: the next reload drops it
      }
      i += chunk.length;
      size = performance.now() - started < HEALTH_FAST_MS
        ? MAX_RUNS_PER_REQUEST : Math.min(2 * size, HEALTH_MAX_CHUNK);
      if (onChunk && i < missing.length) onChunk();
    }
  }

  /** The non-finite stretches of a run's series over every point, if known. */
  stretchesOf(run, key) {
    const row = this.health.get(run);
    if (!row) return undefined;
    return (row.nonfinite && row.nonfinite[key]) || [];
  }

  async reload() {
    this.cache.clear();
    this.flags.clear();
    this.health.clear();
    await this.loadRuns();
    await this.show(this.state.view, true);
  }

  // -- views ----------------------------------------------------------------

  async show(viewKey, fresh = false) {
    const seq = ++this.renderSeq;
    const s = this.state;
    s.view = viewKey;
    this.saveHash();
    for (const b of this.nav.querySelectorAll('button')) {
      b.classList.toggle('active', b.dataset.view === viewKey);
    }
    const view = VIEWS[viewKey];
    this.showOpenRun(view);
    const t0 = performance.now();
    const draw = (data) => {
      // Redraw from scratch; the zoom lives in state.zoom, so it survives.
      this.charts.disposeAll();
      clear(this.main);
      this.main.dataset.view = viewKey;
      view.draw(this, data, this.main);
    };
    try {
      if (!s.run && viewKey !== 'health') {
        this.charts.disposeAll();
        clear(this.main);
        this.debug.lastRender = {view: viewKey, ms: 0, empty: true};
        return;
      }
      const data = await view.load(this, fresh, (partial) => {
        if (seq === this.renderSeq) draw(partial);
      });
      if (seq !== this.renderSeq) return; // a newer click won
      this.debug.data[viewKey] = data;
      draw(data);
      this.setStatus(this.pendingNote || '');
      this.pendingNote = null;
    } catch (e) {
      this.error(e);
    } finally {
      if (seq === this.renderSeq) {
        this.debug.renders++;
        this.debug.lastRender = {view: viewKey, ms: performance.now() - t0, run: s.run};
      }
    }
  }

  /** Names the open run above a single-run view, and shows its flag band. */
  showOpenRun(view) {
    clear(this.openRunLabel);
    clear(this.band);
    const run = this.state.run;
    if (!view.singleRun || !run) return;
    const swatch = el('span', {class: 'gh-swatch'});
    swatch.style.background = this.colorOf(run);
    this.openRunLabel.appendChild(el('span', {class: 'gh-muted', text: 'Run '}));
    this.openRunLabel.appendChild(swatch);
    this.openRunLabel.appendChild(el('strong', {class: 'gh-open-run-name', text: run}));
    this.openRunLabel.appendChild(el('span', {class: 'gh-muted',
      text: ' — click another run in the run list to open it'}));
    this.refreshBand().catch((e) => this.error(e));
  }

  async refreshBand(fresh = false) {
    const run = this.state.run;
    if (!run) return;
    const report = await this.flagsOf(run, fresh);
    if (run !== this.state.run || !VIEWS[this.state.view].singleRun) return;
    clear(this.band);
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

  /** Shows a short note under the views until the next render. */
  note(text) {
    this.pendingNote = text;
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
