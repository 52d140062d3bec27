// Only the ECharts parts the tab draws with, to keep the bundle small.
import * as echarts from 'echarts/core';
import {LineChart, ScatterChart, HeatmapChart, BarChart, CustomChart} from 'echarts/charts';
import {
  GridComponent, TooltipComponent, LegendComponent, DataZoomComponent,
  VisualMapComponent, MarkAreaComponent, MarkLineComponent, TitleComponent,
} from 'echarts/components';
import {CanvasRenderer} from 'echarts/renderers';

echarts.use([
  LineChart, ScatterChart, HeatmapChart, BarChart, CustomChart, GridComponent, TooltipComponent,
  LegendComponent, DataZoomComponent, VisualMapComponent, MarkAreaComponent,
  MarkLineComponent, TitleComponent, CanvasRenderer,
]);

export {echarts};
