// The tab's styles, injected as a <style> element (TensorBoard's CSP allows
// inline styles; scripts come only from this bundle). The colours follow
// TensorBoard's own light and dark themes; body.gh-dark switches them.
export const STYLE = `
:root {
  --gh-bg: #f5f5f5; --gh-surface: #fff; --gh-text: #212121; --gh-muted: #616161;
  --gh-border: #ddd; --gh-track: #e0e0e0; --gh-accent: #f57c00; --gh-hover: #fff3e0;
  --gh-status-bg: #fff3e0; --gh-status-border: #ffb74d; --gh-warn: #b71c1c;
  --gh-flag-bg: #fafafa; --gh-badge-bg: #eee; --gh-input-bg: #fff;
}
body.gh-dark {
  --gh-bg: #303030; --gh-surface: #424242; --gh-text: #fff; --gh-muted: #bdbdbd;
  --gh-border: #555; --gh-track: #555; --gh-accent: #ef6c00; --gh-hover: #4e4036;
  --gh-status-bg: #4e3b22; --gh-status-border: #ef6c00; --gh-warn: #ff8a80;
  --gh-flag-bg: #383838; --gh-badge-bg: #616161; --gh-input-bg: #303030;
}
body { margin: 0; font: 13px/1.4 Roboto, Arial, sans-serif; color: var(--gh-text); background: var(--gh-bg); }
a { color: var(--gh-accent); }
button, input, select { font: inherit; color: var(--gh-text); }
button { background: var(--gh-surface); border: 1px solid var(--gh-border); border-radius: 3px; padding: 2px 8px; cursor: pointer; }
select, input[type=search] { background: var(--gh-input-bg); border: 1px solid var(--gh-border); border-radius: 3px; }
.gh-layout { display: flex; align-items: flex-start; min-height: 100vh; }
.gh-sidebar { flex: 0 0 260px; min-height: 100vh; width: 260px; box-sizing: border-box; position: sticky; top: 0; max-height: 100vh; overflow-y: auto; background: var(--gh-surface); border-right: 1px solid var(--gh-border); padding: 8px 10px; }
.gh-sidebar-title { font-weight: 500; margin: 4px 0 8px; }
.gh-sidebar input[type=search] { width: 100%; box-sizing: border-box; padding: 4px 6px; }
.gh-sidebar input.gh-invalid { border-color: #d62728; outline-color: #d62728; }
.gh-run-actions { display: flex; gap: 6px; align-items: center; margin: 6px 0; }
.gh-runs { list-style: none; margin: 0; padding: 0; }
.gh-run { display: flex; align-items: center; gap: 6px; padding: 1px 2px; border-radius: 3px; }
.gh-run.gh-open { background: var(--gh-hover); }
.gh-run.gh-open .gh-run-name { font-weight: 600; }
.gh-run-name { border: 0; background: none; padding: 2px 0; text-align: left; cursor: pointer; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; }
.gh-swatch { display: inline-block; flex: 0 0 12px; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: middle; }
.gh-run .gh-swatch { margin-right: 0; }
.gh-app { flex: 1; min-width: 0; padding: 8px 16px 24px; }
.gh-controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; }
.gh-nav { display: flex; flex-wrap: wrap; gap: 4px; margin: 8px 0; border-bottom: 1px solid var(--gh-border); }
.gh-nav button { border: 0; border-radius: 0; background: none; padding: 8px 12px; }
.gh-nav button.active { border-bottom: 3px solid var(--gh-accent); font-weight: 600; }
.gh-open-run { margin: 4px 0; }
.gh-band { display: flex; align-items: center; gap: 12px; min-height: 24px; }
.gh-band:empty { min-height: 0; }
.gh-band-label { white-space: nowrap; color: var(--gh-muted); }
.gh-band-track { position: relative; flex: 1; height: 20px; background: var(--gh-track); border-radius: 3px; }
.gh-seg { position: absolute; height: 8px; border-radius: 2px; cursor: pointer; min-width: 4px; }
.gh-seg.gh-error { background: #d62728; }
.gh-seg.gh-warning { background: #ff7f0e; }
.gh-seg.gh-info { background: #1f77b4; }
.gh-status { display: none; margin: 6px 0; padding: 6px 10px; background: var(--gh-status-bg); border: 1px solid var(--gh-status-border); }
.gh-card { background: var(--gh-surface); margin: 10px 0; padding: 8px 12px; border-radius: 4px; box-shadow: 0 1px 2px rgba(0,0,0,.15); }
.gh-card h3 { margin: 4px 0 8px; font-size: 14px; font-weight: 500; }
.gh-chart { width: 100%; }
.gh-empty p { color: var(--gh-muted); }
.gh-muted { color: var(--gh-muted); }
.gh-warn { color: var(--gh-warn); }
.gh-hint { margin: 4px 0 8px; padding: 4px 8px; border-left: 3px solid var(--gh-accent); }
.gh-export { margin: 8px 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
.gh-table { border-collapse: collapse; }
.gh-table td, .gh-table th { border: 1px solid var(--gh-border); padding: 3px 8px; text-align: right; }
.gh-table td:first-child, .gh-table th:first-child { text-align: left; }
.gh-health { width: 100%; }
.gh-health td, .gh-health th { text-align: left; vertical-align: middle; }
.gh-health td.gh-num { text-align: right; font-variant-numeric: tabular-nums; }
.gh-health th.gh-sortable { cursor: pointer; user-select: none; }
.gh-health tbody tr { cursor: pointer; }
.gh-health tbody tr:hover, .gh-health tbody tr:focus { background: var(--gh-hover); outline: none; }
.gh-spark { display: block; }
.gh-spark-nonfinite { fill: #d62728; opacity: 0.6; }
.gh-flags { list-style: none; padding: 0; margin: 0; }
.gh-flag { border-left: 4px solid #999; padding: 6px 10px; margin: 6px 0; background: var(--gh-flag-bg); }
.gh-flag-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; }
.gh-badge { text-transform: uppercase; font-size: 11px; padding: 1px 6px; border-radius: 3px; background: var(--gh-badge-bg); }
.gh-flag.gh-error .gh-badge, .gh-badge.gh-sev-error { background: #d62728; color: #fff; }
.gh-flag.gh-warning .gh-badge, .gh-badge.gh-sev-warning { background: #ff7f0e; color: #fff; }
.gh-badge.gh-sev-info { background: #1f77b4; color: #fff; }
.gh-badge.gh-sev-ok { background: #2ca02c; color: #fff; }
.gh-message, .gh-advice { margin: 4px 0; }
.gh-flag pre { white-space: pre-wrap; font-size: 12px; }
.gh-row { margin: 6px 0; }
`;
