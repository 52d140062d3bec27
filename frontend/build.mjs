// Bundles src/index.js and its dependencies into one ES module for TensorBoard.
// Deterministic: same sources + same lock file => byte-identical output.
import * as esbuild from 'esbuild';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf('--outfile');
const outfile = flag >= 0 && process.argv[flag + 1]
  ? path.resolve(process.argv[flag + 1])
  : path.join(here, '..', 'tb_gradplugin', 'static', 'index.js');

await esbuild.build({
  absWorkingDir: here,
  entryPoints: ['src/index.js'],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2020'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  charset: 'utf8',
  define: {'process.env.NODE_ENV': '"production"'},
  outfile,
  logLevel: 'warning',
});
console.log(`built ${outfile}`);
