// Light or dark, as TensorBoard shows itself: TensorBoard marks its dark mode
// with the class "dark-mode" on its page's <body> (its toggle: browser default,
// light, dark); the tab's iframe has the same origin and watches that class.
// Outside TensorBoard the system's prefers-color-scheme decides.

const SYSTEM_DARK = '(prefers-color-scheme: dark)';

/** TensorBoard's <body>, or null when the tab is not inside a TensorBoard page. */
function tensorBoardBody() {
  try {
    if (window.parent === window) return null;
    const body = window.parent.document.body;
    // TensorBoard's page holds its Angular root; another host page decides nothing.
    return body && body.querySelector('tb-webapp') ? body : null;
  } catch (e) {
    return null; // a parent of another origin
  }
}

/** Whether the tab should be dark now. */
export function isDark() {
  const body = tensorBoardBody();
  if (body) return body.classList.contains('dark-mode');
  return !!(window.matchMedia && window.matchMedia(SYSTEM_DARK).matches);
}

/** Calls `onChange(dark)` whenever TensorBoard's or the system's mode changes. */
export function watchTheme(onChange) {
  let dark = isDark();
  const check = () => {
    const now = isDark();
    if (now !== dark) {
      dark = now;
      onChange(dark);
    }
  };
  const body = tensorBoardBody();
  if (body) {
    new window.parent.MutationObserver(check).observe(body, {attributes: true,
      attributeFilter: ['class']});
  }
  if (window.matchMedia) {
    const query = window.matchMedia(SYSTEM_DARK);
    if (query.addEventListener) query.addEventListener('change', check);
  }
  return dark;
}
