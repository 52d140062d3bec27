// The health view: one row per shown run (src/health.js draws the table).
import {healthTable} from '../health.js';
import {selectedRuns} from '../runs.js';
import {emptyState} from './common.js';

export const health = {
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
