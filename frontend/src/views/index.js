// The tab's views. Each has load(app, fresh, progress) -> data and
// draw(app, data, main). Single-run views show the run opened in the run list;
// views that compare runs draw the shown runs that hold their data.
import {health} from './health.js';
import {overview} from './overview.js';
import {layers} from './layers.js';
import {slices} from './slices.js';
import {lossComponents} from './loss_components.js';
import {curvature} from './curvature.js';
import {flags} from './flags.js';

export const VIEWS = {
  health, overview, layers, slices, loss_components: lossComponents, curvature, flags,
};
