// The flags view: the open run's pathology flags, worst first, each with its
// message, advice, evidence and a button that zooms the charts to its steps.
import {el} from '../util.js';
import {SEVERITY_COLOR} from '../charts.js';
import {emptyState} from './common.js';

export const flags = {
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
    // One card either way: a run without flags says so under its own heading.
    const none = report.flags.length ? null
      : el('p', {class: 'gh-none', 'data-empty': 'Flags', text: 'No pathology flags for this run.'});
    main.appendChild(el('section', {class: 'gh-card'},
      el('h3', {text: `Flags of ${report.run} (last step ${report.last_step ?? '–'})`}), none, list));
  },
};
