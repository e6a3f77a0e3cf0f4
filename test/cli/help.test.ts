// --help everywhere (issue 12: `vhdx SUBCOMMAND --help` failed with "Unknown option '--help'" for
// 8 of the 9 subcommands), and the README's command-line reference agreeing with what
// `vhdx --help` prints, line for line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../helpers/env.js';
import { vhdx, vhdxInProcess } from '../helpers/tools.js';
import { COMMANDS } from '../../src/cli/usage.js';

const names = Object.keys(COMMANDS);

test('every subcommand prints its usage on stdout and exits 0 for --help and -h, also beside arguments it would refuse', async () => {
  assert.deepEqual(names, ['info', 'map', 'create', 'io', 'check', 'convert', 'commit', 'rebase', 'resize', 'serve', 'compact', 'web']);
  await Promise.all(
    names.flatMap((name) =>
      [['--help'], ['-h'], ['--no-such-option', '--help'], ['extra', 'operands', '-h']].map(async (args, k) => {
        // One real process per command (stdout, exit status); the variants in this process.
        const r = k === 0 ? await vhdx([name, ...args]) : await vhdxInProcess([name, ...args]);
        assert.equal(r.code, 0, `vhdx ${name} ${args.join(' ')}: ${r.stderr}`);
        assert.equal(r.stderr, '');
        assert.ok(r.stdout.startsWith(`usage: ${COMMANDS[name]!.usage}\n`), r.stdout);
        assert.match(r.stdout, /^ {2}-h, --help +print this help and exit$/m);
      }),
    ),
  );
  const io = await vhdx(['io', '-h']);
  assert.match(io.stdout, /^ {2}read \[-P BYTE\] OFF LEN/m, 'io lists its -c commands');
  const viaHelp = await vhdx(['help', 'convert']);
  assert.equal(viaHelp.code, 0);
  assert.equal(viaHelp.stdout, (await vhdx(['convert', '--help'])).stdout, 'vhdx help CMD is vhdx CMD --help');
});

/** The fenced blocks of the README that follow `heading`, up to the next heading of any level. */
function blocksAfter(readme: string, heading: string): string[][] {
  const at = readme.indexOf(`\n${heading}\n`);
  assert.ok(at >= 0, `README has ${heading}`);
  const rest = readme.slice(at + heading.length + 2);
  const section = rest.slice(0, rest.search(/\n#{2,4} /) >>> 0);
  return [...section.matchAll(/```[a-z]*\n([\s\S]*?)```/g)].map((m) => m[1]!.trimEnd().split('\n'));
}

test('the README command-line synopsis is what vhdx --help prints, and each command section shows the same usage', async () => {
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const help = await vhdx(['--help']);
  assert.equal(help.code, 0);
  const helpLines = help.stdout
    .split('\n')
    .filter((l: string) => /^ {2}vhdx /.test(l))
    .map((l: string) => l.trim());
  const synopsis = blocksAfter(readme, '## Command line')[0];
  assert.deepEqual(synopsis, helpLines, 'the README block after "## Command line" lists the usage lines of vhdx --help, in order');
  for (const name of names) {
    for (const block of blocksAfter(readme, name === 'serve' ? '## Serving over NBD' : `### \`vhdx ${name}\``)) {
      for (const line of block.filter((l) => l.startsWith(`vhdx ${name} [`))) assert.equal(line, COMMANDS[name]!.usage, `README section vhdx ${name}`);
    }
  }
});
