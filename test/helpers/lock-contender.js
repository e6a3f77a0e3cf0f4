// A process that opens files when told, for the lock tests. Commands on stdin, one per line:
//   open AT MODE PATH  at time AT (Date.now() milliseconds, so that all contenders start together)
//                    opens PATH; MODE: read | write (the file, NodeFileSource) or image-read |
//                    image-write (a VHDX and its chain, openFile); prints "ok" or "refused REASON MESSAGE"
//   close            closes everything it opened; prints "closed"
// It exits when stdin ends. Without the argument `serve` it does nothing (`node --test test/`
// runs every file under test/, this one included, and must not wait for it).
import { createInterface } from 'node:readline';
import { NodeFileSource, openFile } from '../../dist/node.js';

const held = [];
const say = (line) => process.stdout.write(`${line}\n`);

for await (const line of process.argv[2] === 'serve' ? createInterface({ input: process.stdin }) : []) {
  const [cmd, at, mode, ...rest] = line.split(' ');
  const path = rest.join(' ');
  if (cmd === 'open') {
    // Sleep until just before AT, then spin: the start is as close to AT as the scheduler allows.
    const wait = Number(at) - Date.now() - 2;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    while (Date.now() < Number(at));
    try {
      held.push(
        mode.startsWith('image-') ? await openFile(path, { readOnly: mode === 'image-read' }) : await NodeFileSource.open(path, { readOnly: mode === 'read' }),
      );
      say('ok');
    } catch (e) {
      say(`refused ${e.reason ?? e.code} ${String(e.message).replace(/\n/g, ' ')}`);
    }
  } else if (cmd === 'close') {
    for (const h of held.splice(0)) await h.close();
    say('closed');
  }
}
