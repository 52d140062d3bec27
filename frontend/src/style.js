// The tab's styles, injected as a <style> element (TensorBoard's CSP allows
// inline styles; scripts come only from this bundle).
export const STYLE = `
body { margin: 0; font: 13px/1.4 Roboto, Arial, sans-serif; color: #212121; background: #f5f5f5; }
.gh-app { padding: 8px 16px 24px; }
.gh-controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; }
.gh-controls select { max-width: 320px; }
.gh-compare-row { margin: 6px 0; }
.gh-compare { display: inline-flex; flex-wrap: wrap; gap: 4px 12px; }
.gh-run-label { white-space: nowrap; }
.gh-nav { display: flex; gap: 4px; margin: 8px 0; border-bottom: 1px solid #ccc; }
.gh-nav button { border: 0; background: none; padding: 8px 12px; cursor: pointer; font-size: 13px; }
.gh-nav button.active { border-bottom: 3px solid #f57c00; font-weight: 600; }
.gh-band { display: flex; align-items: center; gap: 12px; min-height: 24px; }
.gh-band-label { white-space: nowrap; color: #555; }
.gh-band-track { position: relative; flex: 1; height: 20px; background: #e0e0e0; border-radius: 3px; }
.gh-seg { position: absolute; height: 8px; border-radius: 2px; cursor: pointer; min-width: 4px; }
.gh-seg.gh-error { background: #d62728; }
.gh-seg.gh-warning { background: #ff7f0e; }
.gh-seg.gh-info { background: #1f77b4; }
.gh-status { display: none; margin: 6px 0; padding: 6px 10px; background: #fff3e0; border: 1px solid #ffb74d; }
.gh-card { background: #fff; margin: 10px 0; padding: 8px 12px; border-radius: 4px; box-shadow: 0 1px 2px rgba(0,0,0,.15); }
.gh-card h3 { margin: 4px 0 8px; font-size: 14px; font-weight: 500; }
.gh-chart { width: 100%; }
.gh-empty p { color: #555; }
.gh-muted { color: #777; }
.gh-warn { color: #b71c1c; }
.gh-export { margin: 8px 0; display: flex; flex-wrap: wrap; gap: 4px 12px; }
.gh-table { border-collapse: collapse; }
.gh-table td, .gh-table th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
.gh-table td:first-child, .gh-table th:first-child { text-align: left; }
.gh-flags { list-style: none; padding: 0; margin: 0; }
.gh-flag { border-left: 4px solid #999; padding: 6px 10px; margin: 6px 0; background: #fafafa; }
.gh-flag-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap; }
.gh-badge { text-transform: uppercase; font-size: 11px; padding: 1px 6px; border-radius: 3px; background: #eee; }
.gh-flag.gh-error .gh-badge { background: #d62728; color: #fff; }
.gh-flag.gh-warning .gh-badge { background: #ff7f0e; color: #fff; }
.gh-message, .gh-advice { margin: 4px 0; }
.gh-flag pre { white-space: pre-wrap; font-size: 12px; }
.gh-row { margin: 6px 0; }
`;
