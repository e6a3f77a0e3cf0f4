/**
 * The page: takes dropped files or a URL, hands them to the worker and shows what it reports.
 * Nothing is uploaded: dropped files are read where they are, URLs are fetched by this browser.
 */
import { CELL_DATA, CELL_UNALLOCATED, CELL_ZERO, MAX_DEPTH_SHOWN, type ChainLevel, type Reply, type Request } from './protocol.js';
import type { ContentsInfo, ImageInfo } from '../src/index.js';
import { humanSize as size } from '../src/human-size.js';

/** The worker's bundled source, put here by scripts/bundle-web.js: a worker from a Blob URL works from file:// too. */
declare const WORKER_SOURCE: string;

const worker = new Worker(URL.createObjectURL(new Blob([WORKER_SOURCE], { type: 'text/javascript' })));
const send = (m: Request): void => worker.postMessage(m);

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

function el(tag: string, text?: string, attrs: Record<string, string> = {}): HTMLElement {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function status(text: string, isError = false): void {
  const s = $('status');
  s.textContent = text;
  s.className = isError ? 'error' : '';
}

// --- opening -----------------------------------------------------------------------------------

function openFiles(files: File[]): void {
  if (files.length === 0) return;
  reset();
  status(`opening ${files.map((f) => f.name).join(', ')}…`);
  send({ op: 'open-files', files });
}

$('file-input').addEventListener('change', (ev) => openFiles([...((ev.target as HTMLInputElement).files ?? [])]));

const drop = $('drop');
for (const t of ['dragenter', 'dragover']) {
  document.addEventListener(t, (ev) => {
    ev.preventDefault();
    drop.classList.add('over');
  });
}
document.addEventListener('dragleave', () => drop.classList.remove('over'));
document.addEventListener('drop', (ev) => {
  ev.preventDefault();
  drop.classList.remove('over');
  openFiles([...(ev.dataTransfer?.files ?? [])]);
});

$('url-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const url = $<HTMLInputElement>('url').value.trim();
  if (!url) return;
  const authorization = $<HTMLInputElement>('authorization').value.trim();
  reset();
  status(`opening ${url.split('?')[0]}…`);
  send({ op: 'open-url', url, ...(authorization ? { authorization } : {}) });
});

function reset(): void {
  for (const id of ['summary', 'info-json', 'contents', 'chain']) $(id).replaceChildren();
  $('result').hidden = true;
  $('stats').textContent = '';
  map = null;
}

// --- what the worker says ----------------------------------------------------------------------

let opened: { name: string; info: ImageInfo } | null = null;

worker.onmessage = (ev: MessageEvent<Reply>) => {
  const m = ev.data;
  switch (m.type) {
    case 'opened':
      return showImage(m.name, m.chain, m.chainError);
    case 'contents':
      return showContents(m.contents, m.error);
    case 'map':
      return drawMap(m);
    case 'progress':
      $<HTMLProgressElement>('progress').value = m.total > 0 ? m.done / m.total : 0;
      return status(`${m.what}: ${size(m.done)} of ${size(m.total)}`);
    case 'saved':
      return saved(m.name, m.bytes, m.blob);
    case 'stats':
      $('stats').textContent = `${m.stats.requests} HTTP requests, ${size(m.stats.bytesReceived)} received${m.stats.retries ? `, ${m.stats.retries} retried` : ''}`;
      return;
    case 'error':
      return status(`${m.op}: ${m.message}`, true);
  }
};

function row(table: HTMLElement, key: string, value: string, id?: string): void {
  const tr = el('tr');
  tr.append(el('th', key), el('td', value, id ? { id } : {}));
  table.append(tr);
}

function showImage(name: string, chain: ChainLevel[], chainError: string | null): void {
  const info = chain[0]!.info;
  opened = { name, info };
  $('result').hidden = false;
  status(`${name} opened`);
  const t = $('summary');
  row(t, 'image', name, 'image-name');
  row(t, 'type', info.type, 'image-type');
  row(t, 'virtual size', `${size(info.virtualSize)} (${info.virtualSize} bytes)`, 'virtual-size');
  row(t, 'file size', `${size(info.fileSize)} (${info.fileSize} bytes)`);
  row(t, 'block size', size(info.blockSize));
  row(t, 'sector size', `${info.logicalSectorSize} logical, ${info.physicalSectorSize} physical`);
  row(t, 'disk id', info.diskId);
  row(t, 'creator', info.creator || '(none)');
  row(t, 'log', `${info.log.state}${info.log.replayedInMemory ? ' (replayed in memory)' : ''}`);
  if (info.allocation) {
    for (const [state, bytes] of Object.entries(info.allocation.bytesByState)) if (bytes > 0) row(t, state, size(bytes));
    if (info.fragmentationPercentage !== null) row(t, 'fragmentation', `${info.fragmentationPercentage}%`);
  }
  const c = $('chain');
  if (chain.length > 1 || chainError) {
    c.append(el('h3', 'Chain'));
    const ol = el('ol');
    for (const level of chain) ol.append(el('li', `${level.name}: ${level.info.type}, data write guid ${level.info.header.dataWriteGuid}`));
    c.append(ol);
    if (chainError) c.append(el('p', `parents not opened: ${chainError}`, { class: 'error' }));
  }
  $('info-json').textContent = JSON.stringify(chain.length > 1 ? chain.map((l) => l.info) : info, null, 2);
  requestMap(0, info.virtualSize);
}

function showContents(contents: ContentsInfo | null, error: string | null): void {
  const box = $('contents');
  box.replaceChildren();
  const saveDisk = el('button', 'Save raw disk', { id: 'save-disk', type: 'button' });
  saveDisk.addEventListener('click', () => void save(null));
  box.append(saveDisk);
  if (!contents) {
    box.append(el('p', `partitions not read: ${error}`, { class: 'error' }));
    return;
  }
  box.append(el('p', `partition table: ${contents.partitionScheme}, ${contents.partitionTable.sectorSize}-byte sectors`, { id: 'partition-scheme' }));
  for (const f of contents.partitionTable.findings) box.append(el('p', `${f.severity}: ${f.message}`, { class: 'finding' }));
  const table = el('table', undefined, { id: 'partitions' });
  const head = el('tr');
  for (const h of ['#', 'start', 'size', 'type', 'filesystem', 'label', 'used', 'free', '']) head.append(el('th', h));
  table.append(head);
  for (const p of contents.partitions) {
    const tr = el('tr', undefined, { class: 'partition' });
    const f = p.filesystem;
    tr.append(
      el('td', p.kind === 'disk' ? 'disk' : String(p.index)),
      el('td', String(p.start)),
      el('td', size(p.length)),
      el('td', p.typeName ?? p.type ?? p.kind),
      el('td', f ? f.type : '', { class: 'fs-type' }),
      el('td', f?.label ?? ''),
      el('td', f && f.usedBytes !== null ? size(f.usedBytes) : ''),
      el('td', f && f.freeBytes !== null ? size(f.freeBytes) : ''),
    );
    const cell = el('td');
    if (p.kind !== 'extended') {
      const b = el('button', 'Save', { type: 'button', class: 'save-partition' });
      b.addEventListener('click', () => void save(p.index));
      cell.append(b);
    }
    tr.append(cell);
    table.append(tr);
  }
  box.append(table);
  if (contents.reclaimableBytes !== null) box.append(el('p', `reclaimable: ${size(contents.reclaimableBytes)} (allocated blocks no filesystem uses)`, { id: 'reclaimable' }));
}

// --- saving ------------------------------------------------------------------------------------

interface SavePicker {
  showSaveFilePicker?: (opts: { suggestedName: string }) => Promise<FileSystemFileHandle>;
}

async function save(partition: number | null): Promise<void> {
  if (!opened) return;
  const suggestedName = `${opened.name.split(/[\\/?#]/).filter(Boolean).pop()?.replace(/\.a?vhdx$/i, '') ?? 'disk'}${partition === null ? '' : `-p${partition}`}.raw`;
  const picker = (window as unknown as SavePicker).showSaveFilePicker;
  let handle: FileSystemFileHandle | null = null;
  if (picker) {
    try {
      handle = await picker({ suggestedName });
    } catch (e) {
      if ((e as Error).name === 'AbortError') return; // the user closed the dialog
      throw e;
    }
  }
  $('cancel-save').hidden = false;
  send({ op: 'save', partition, handle });
}

$('cancel-save').addEventListener('click', () => send({ op: 'cancel-save' }));

function saved(name: string, bytes: number, blob: Blob | null): void {
  $('cancel-save').hidden = true;
  if (blob) {
    const a = el('a', undefined, { href: URL.createObjectURL(blob), download: name }) as HTMLAnchorElement;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  }
  status(`saved ${name} (${size(bytes)})`);
  $('saved').textContent = `${name} ${bytes}`;
}

// --- allocation map ----------------------------------------------------------------------------

const COLS = 256;
const ROWS = 64;
const COLORS = ['#f2f2f2', '#c9c9c9', '#1f6fd1', '#e07b00', '#2a9d3a', '#b03aa8', '#c0392b', '#6b4f2a'];
let map: { from: number; to: number; cellBytes: number; classes: Uint8Array } | null = null;

function requestMap(from: number, to: number): void {
  $('map-range').textContent = `${size(from)} – ${size(to)}`;
  send({ op: 'map', from, to, cells: COLS * ROWS });
}

function drawMap(m: Extract<Reply, { type: 'map' }>): void {
  map = m;
  const canvas = $<HTMLCanvasElement>('map');
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const cols = Math.min(COLS, m.classes.length);
  const rows = Math.ceil(m.classes.length / cols);
  const w = canvas.width / cols;
  const h = Math.min(canvas.height / rows, w * 4);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < m.classes.length; i++) {
    const k = m.classes[i]!;
    // Any data at all stays visible; fuller cells are darker.
    ctx.globalAlpha = k >= CELL_DATA ? 0.6 + (0.4 * m.fill[i]!) / 255 : 1;
    ctx.fillStyle = COLORS[Math.min(k, COLORS.length - 1)]!;
    // A gap between cells only where they are large enough to show one.
    const gap = w >= 6 ? 1 : 0;
    ctx.fillRect((i % cols) * w, Math.floor(i / cols) * h, w - gap, h - gap);
  }
  ctx.globalAlpha = 1;
  $('map-state').textContent = m.complete ? `${size(m.cellBytes)} per cell` : `reading block status: ${size(m.done)} of ${size(m.to - m.from)}`;
}

$<HTMLCanvasElement>('map').addEventListener('click', (ev) => {
  if (!map) return;
  const canvas = ev.currentTarget as HTMLCanvasElement;
  const r = canvas.getBoundingClientRect();
  const cols = Math.min(COLS, map.classes.length);
  const rows = Math.ceil(map.classes.length / cols);
  const cellH = Math.min(canvas.height / rows, (canvas.width / cols) * 4);
  const col = Math.floor(((ev.clientX - r.left) / r.width) * cols);
  const rowIdx = Math.floor(((ev.clientY - r.top) / r.height) * canvas.height / cellH);
  const cell = rowIdx * cols + col;
  if (cell < 0 || cell >= map.classes.length) return;
  // Zoom in 16x around the cell clicked.
  const span = Math.max(map.cellBytes * 4, Math.ceil((map.to - map.from) / 16));
  const centre = map.from + (cell + 0.5) * map.cellBytes;
  const from = Math.max(map.from, Math.floor(centre - span / 2));
  requestMap(from, Math.min(map.to, from + span));
});

$('map-whole').addEventListener('click', () => {
  if (opened) requestMap(0, opened.info.virtualSize);
});

const legend = $('map-legend');
const names: [number, string][] = [
  [CELL_UNALLOCATED, 'not allocated'],
  [CELL_ZERO, 'zeros'],
  ...Array.from({ length: MAX_DEPTH_SHOWN + 1 }, (_, d): [number, string] => [CELL_DATA + d, d === 0 ? 'data in this image' : `data in parent ${d}`]),
];
for (const [k, label] of names.slice(0, 5)) {
  const s = el('span', label);
  s.style.setProperty('--c', COLORS[k]!);
  legend.append(s);
}
