// Render a markdown artifact through the installed Prefect UI's own bundled markdown pipeline (react-markdown +
// remark-gfm + rehype-raw + rehype-sanitize from prefect/server/ui-v2/assets, configured as its
// lazy-markdown-*.js does: the script refuses to run if that configuration is not found verbatim) and print the
// elements of the resulting React tree, with every <img>'s src. A control run without the UI's data:image
// exception shows what react-markdown alone would keep. No browser, no download: node + the installed assets.
// Usage: node render_markdown.mjs ASSETS_DIR API_URL ARTIFACT_KEY    (used by tests/test_ops.py)
import fs from 'node:fs';
const deep = () => { const f = function () { return deep(); }; return new Proxy(f, { get: (t, k) => k === Symbol.toPrimitive ? (() => '') : (k === 'then' ? undefined : deep()), apply: () => deep(), construct: () => deep(), set: () => true }); };
globalThis.window = globalThis;
const fake = deep();
globalThis.document = new Proxy({}, { get: (t, k) => k === 'createElement' ? (() => ({ style: {}, set innerHTML(v) { this._t = v; }, get textContent() { return this._t; }, setAttribute() {}, appendChild() {} })) : fake });
Object.defineProperty(globalThis, 'navigator', { value: { userAgent: 'node', platform: 'linux', vendor: '', maxTouchPoints: 0 }, configurable: true });
const [dirArg, api, key] = process.argv.slice(2);
const dir = dirArg.endsWith('/') ? dirArg : dirArg + '/';
const lazy = fs.readFileSync(dir + fs.readdirSync(dir).find(f => f.startsWith('lazy-markdown-')), 'utf8');
for (const snippet of ['var d=/^data:image\\//;function f(e){return(t,n,r)=>r.tagName===`img`&&n===`src`&&d.test(t)?t:e(t,n,r)}',
                       'urlTransform:f(e.defaultUrlTransform),remarkPlugins:[t.default],rehypePlugins:[n.default,[r.default,{...r.defaultSchema,clobberPrefix:``,protocols:{...r.defaultSchema.protocols,src:[...r.defaultSchema.protocols?.src??[],`data`]}}]]']) {
  if (!lazy.includes(snippet)) { console.error('the bundled UI configures markdown differently: ' + snippet.slice(0, 60)); process.exit(3); }
}
const find = (p) => fs.readdirSync(dir).find(f => f.startsWith(p));
const md = await import(dir + find('vendor-markdown-'));
const raw = await import(dir + find('rehype-raw-'));
const san = await import(dir + find('rehype-sanitize-'));
const e = md.n, gfm = md.t;
const d = /^data:image\//;
const f = (tr) => (t, n, r) => r.tagName === 'img' && n === 'src' && d.test(t) ? t : tr(t, n, r);
const opts = { urlTransform: f(e.defaultUrlTransform), remarkPlugins: [gfm.default],
  rehypePlugins: [raw.default, [san.default, { ...san.defaultSchema, clobberPrefix: '', protocols: { ...san.defaultSchema.protocols, src: [...(san.defaultSchema.protocols?.src ?? []), 'data'] } }]] };
const res = await fetch(api + '/artifacts/filter', { method: 'POST', headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ artifacts: { key: { any_: [key] } }, sort: 'CREATED_DESC', limit: 1 }) });
const art = (await res.json())[0];
const imgs = [], tags = {};
const walk = (node) => {
  if (node == null || typeof node !== 'object') return;
  if (Array.isArray(node)) { node.forEach(walk); return; }
  if (typeof node.type === 'string') { tags[node.type] = (tags[node.type] || 0) + 1; if (node.type === 'img') imgs.push(node.props); }
  if (node.props) walk(node.props.children);
};
walk(e.default({ ...opts, children: art.data }));
console.log(JSON.stringify({ key: art.key, type: art.type, elements: tags,
  images: imgs.map(p => ({ alt: p.alt, src_prefix: String(p.src).slice(0, 30), src_chars: String(p.src).length,
                           png_bytes: Buffer.from(String(p.src).split(',')[1] || '', 'base64').length })) }));
const plain = []; const walk2 = (node) => { if (node == null || typeof node !== 'object') return; if (Array.isArray(node)) { node.forEach(walk2); return; } if (node.type === 'img') plain.push(node.props.src); if (node.props) walk2(node.props.children); };
walk2(e.default({ ...opts, urlTransform: e.defaultUrlTransform, children: art.data }));
console.log(JSON.stringify({ control_img_src_chars: plain.map(s => String(s).length) }));
