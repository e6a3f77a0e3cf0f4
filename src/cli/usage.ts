/**
 * Each subcommand's usage line and help, apart from its code so that --help loads no command.
 * The README's command-line synopsis is checked against these lines (test/cli/help.test.ts).
 */
export const CHECK_USAGE = 'vhdx check [-p] [-U] [-v] [-f vhdx|vpc|raw] [--output=human|json] [-r leaks|all] [--parents=relative|any|none] [--azure] FILE';
export const CONVERT_USAGE =
  'vhdx convert [-p] [-U] [-v] [-f raw|vhdx|vpc] [-O raw|vhdx|vpc] [-o OPTIONS] [-t CACHE] [-T CACHE] [--parents=relative|any|none] SRC DST';
export const CREATE_USAGE = 'vhdx create [-q] [-p] [-f vhdx|vpc] [-o OPTIONS] [-b PARENT [-F vhdx] [--parents=relative|any|none]] FILE [SIZE]';
export const INFO_USAGE =
  'vhdx info [-U] [-v] [-f vhdx|vpc|raw] [--output=human|json] [--backing-chain] [--allocation=auto|always|never] [--parents=relative|any|none] FILE';
export const IO_USAGE = 'vhdx io [-r [-U]] [-q] [-f vhdx|vpc|raw] [--parents=relative|any|none] -c COMMAND [-c COMMAND]... FILE';
export const MAP_USAGE = 'vhdx map [-U] [-v] [-f vhdx|vpc|raw] [--output=human|json] [--parents=relative|any|none] FILE';
export const SERVE_USAGE =
  'vhdx serve [-r [-U]] [-v] [-f raw|vhdx|vpc] [--bind ADDR] [--port N | --socket PATH] [--export-name NAME] [-e N] [--handshake-limit S] [--idle-timeout S] [--io-timeout S] [--parents=relative|any|none] FILE';
export const COMMIT_USAGE = 'vhdx commit [-q] [-p] [-f vhdx] [-d | --remove] [--parents=relative|any] CHILD';
export const COMPACT_USAGE = 'vhdx compact [-p] [--dry-run] [--mode=full|zeroes|filesystem] [--output=human|json] FILE';
export const WEB_USAGE = 'vhdx web [--bind ADDR] [--port N] [--open]';
export const RESIZE_USAGE = 'vhdx resize [-q] [-p] [-f vhdx] [--shrink] [--to-minimum] [--force] [--no-gpt-fix] [--parents=relative|any|none] FILE [+|-]SIZE';
export const REBASE_USAGE = 'vhdx rebase [-f vhdx] -u -b NEWPARENT [-F vhdx] [--parents=relative|any|none] CHILD';

/** `vhdx io`'s -c commands. */
export const IO_COMMANDS_HELP = `commands (OFF and LEN in bytes, 0x hex, or with K, M, G, T suffixes):
  read [-P BYTE] OFF LEN               read; -P: every byte must equal BYTE (else exit 1, naming the offset)
  write [-P BYTE] [-z [-u]] [-f] OFF LEN
                                       write BYTE (default 0xcd); -z: write zeroes instead
                                       (-u: blocks may be deallocated); -f: forced unit access
  discard OFF LEN                      deallocate; the range reads as zeros after
  flush                                make every earlier write durable
`;

/** The `-o` options of create and convert -O vhdx, as `qemu-img create -f vhdx` spells them where it has them. */
export const CREATE_OPTIONS_HELP = `create options (-o key=value,key=value; sizes take K, M, G, T suffixes):
  subformat=dynamic|fixed     dynamic (default): blocks allocated on first write;
                              fixed: every block allocated and zeroed now
  block_size=SIZE             payload block size, a power of two from 1M to 256M
                              (default 32M; 2M for a differencing disk, as Hyper-V)
  log_size=SIZE               log size, a multiple of 1M (default 1M)
  logical_sector_size=512|4096   sector size the disk shows (default 512; QEMU opens only 512)
  physical_sector_size=512|4096  reported physical sector size (default 4096, not below the logical)
`;

/** The `-o` options of create -f vpc and convert -O vpc (vhd is another name for vpc). */
export const VPC_OPTIONS_HELP = `vpc (VHD) options (-o key=value,key=value; sizes take K, M, G, T suffixes):
  subformat=dynamic|fixed     dynamic (default): blocks allocated on first write;
                              fixed: the disk's bytes, then the footer (a sparse file)
  block_size=SIZE             block size of a dynamic disk, a power of two from 512 to 2G (default 2M)
  azure=on|round|off          convert -O vpc only: a fixed VHD Azure accepts; the size must be a
                              whole number of MiB (on) or is padded up to one (round)
`;

const PARENTS = ['--parents=relative|any|none', "which parent paths of a differencing image are followed (default relative: relative_path only; any: absolute paths too; none: no parent)"];
const PROGRESS = ['-p', 'show a progress bar on stderr'];
const FORCE_SHARE = ['-U, --force-share', 'take and check no lock (read-only opens): unsafe while another process writes the image'];
const QUIET = ['-q', 'print nothing but errors'];
const OUTPUT = ['--output=human|json', 'output format (default human)'];
const ONLY_VHDX = ['-f vhdx', 'the image format (only vhdx)'];
const PROBED =
  'without -f the format is probed: a VHDX by its identifier, a VHD by its footer; anything else is taken as raw, with a warning; an empty file, or one that looks like a damaged VHDX, is refused';
const VERBOSE = ['-v, --verbose', 'for an image read over HTTP: print the requests made and bytes received on stderr'];
const URLS = 'FILE may be an http:// or https:// URL (read-only; parents are found relative to it)\n';

interface CommandHelp {
  usage: string;
  /** One line for `vhdx --help`. */
  summary: string;
  options: string[][];
  more?: string;
}

export const COMMANDS: Record<string, CommandHelp> = {
  info: {
    usage: INFO_USAGE,
    summary: 'describe the image: geometry, headers, log, regions, metadata, allocation, disk usage',
    options: [
      FORCE_SHARE,
      ['-f vhdx|vpc|raw', `the image format (vpc or vhd: VHD); -f raw describes the file as a raw disk (${PROBED})`],
      OUTPUT,
      VERBOSE,
      ['--backing-chain', "describe every image of a differencing image's chain in turn (JSON: an array)"],
      ['--allocation=auto|always|never', 'scan the BAT for the allocation summary and reclaimable space: auto when the BAT is at most 64 MiB; always also reads every filesystem allocation map (ext block bitmaps)'],
      PARENTS,
    ],
    more: URLS,
  },
  map: {
    usage: MAP_USAGE,
    summary: "list the virtual disk's extents (as qemu-img map)",
    options: [FORCE_SHARE, ['-f vhdx|vpc|raw', `the image format (${PROBED}); a raw file is one data extent`], OUTPUT, VERBOSE, PARENTS],
    more: URLS,
  },
  create: {
    usage: CREATE_USAGE,
    summary: 'make a new VHDX or VHD image (-o help lists the options; an existing FILE is not overwritten)',
    options: [
      QUIET,
      ['-p', 'show a progress bar on stderr (a fixed image is written whole)'],
      ['-f vhdx|vpc', 'the image format: vhdx (default) or vpc (VHD; vhd is the same name)'],
      ['-o OPTIONS', 'comma-separated key=value create options; -o help (with -f vpc: -f vpc -o help) lists them'],
      ['-b PARENT', 'make a differencing image over PARENT (size and sector sizes are the parent\'s)'],
      ['-F vhdx', "the parent's format (only vhdx)"],
      PARENTS,
    ],
  },
  io: {
    usage: IO_USAGE,
    summary: 'run read/write/discard/flush commands on an image (vhdx io -h lists them)',
    options: [
      ['-r', 'open read-only'],
      ['-U, --force-share', 'with -r: take and check no lock (unsafe while another process writes the image)'],
      QUIET,
      ['-f vhdx|vpc|raw', 'the image format (default: a VHD when its footer says so, else vhdx; raw: the file is the disk)'],
      PARENTS,
      ['-c COMMAND', 'a command to run; repeat for more, they run in order'],
    ],
    more: IO_COMMANDS_HELP,
  },
  check: {
    usage: CHECK_USAGE,
    summary: 'check the image for corruption and leaked space (-r: repair; exit 0 clean, 2 corrupt, 3 leaks)',
    options: [
      PROGRESS,
      ['-U, --force-share', 'without -r: take and check no lock (unsafe while another process writes the image)'],
      ['-f vhdx|vpc|raw', 'the image format (default: a VHD when its footer says so, else vhdx; raw images cannot be checked: exit 63, as qemu-img)'],
      OUTPUT,
      VERBOSE,
      ['-r leaks|all', 'repair leaked space, or everything that can be repaired safely'],
      PARENTS,
      ['--azure', 'instead: list every rule of Azure\'s the VHD breaks (fixed, whole MiB, size limit, footer); exit 2 when any'],
    ],
    more: URLS,
  },
  convert: {
    usage: CONVERT_USAGE,
    summary: 'copy a disk (a differencing chain flattened) into a new sparse raw file, VHDX or VHD image',
    options: [
      PROGRESS,
      ['-U, --force-share', "take and check no lock on SRC (unsafe while another process writes it)"],
      ['-f raw|vhdx|vpc', `the source format (${PROBED}); SRC may be an http(s) URL`],
      VERBOSE,
      ['-O raw|vhdx|vpc', 'the output format (default raw; vpc: VHD, vhd is the same name)'],
      ['-o OPTIONS', 'create options for -O vhdx or -O vpc (vhdx create [-f vpc] -o help lists them); -O vpc -o azure=on|round: a fixed VHD Azure accepts'],
      ['-t CACHE', "DST's cache mode: unsafe (default, as qemu-img: no flush), writeback (one flush at the end), writethrough, directsync, none"],
      ['-T CACHE', "SRC's cache mode: writeback (default), none or directsync (O_DIRECT: bypass the page cache), writethrough, unsafe"],
      PARENTS,
    ],
  },
  commit: {
    usage: COMMIT_USAGE,
    summary: 'merge a differencing image into its parent, then empty it (-d: keep it as it is; --remove: delete it)',
    options: [
      QUIET,
      PROGRESS,
      ONLY_VHDX,
      ['-d', 'keep CHILD unchanged after the merge (as qemu-img commit -d) instead of emptying it'],
      ['--remove', 'delete CHILD after the merge'],
      ['--parents=relative|any', 'which parent paths are followed (default relative)'],
    ],
  },
  rebase: {
    usage: REBASE_USAGE,
    summary: "rewrite a differencing image's parent paths after its parent moved",
    options: [
      ONLY_VHDX,
      ['-u', 'unsafe mode: rewrite the paths only (the only mode supported); NEWPARENT must be the same disk'],
      ['-b NEWPARENT', "the parent's new path"],
      ['-F vhdx', "the parent's format (only vhdx)"],
      PARENTS,
    ],
  },
  resize: {
    usage: RESIZE_USAGE,
    summary: 'grow or shrink the virtual disk in place, crash-safe; the GPT backup moves to the new end',
    options: [
      QUIET,
      PROGRESS,
      ONLY_VHDX,
      ['--shrink', 'allow a smaller size (as qemu-img): refused if it cuts a partition, a filesystem or data'],
      ['--to-minimum', 'shrink to the end of the last partition (GPT backup included), rounded up to 1 MiB; no SIZE'],
      ['--force', 'shrink even through partitions, filesystems and data'],
      ['--no-gpt-fix', 'leave the GPT as it is (by default its backup moves to the new end, as sgdisk -e)'],
      PARENTS,
    ],
    more: 'SIZE: bytes or K, M, G, T; +SIZE and -SIZE are relative to the current size. Partitions and filesystems are not resized: use growpart, resize2fs or ntfsresize.\n',
  },
  serve: {
    usage: SERVE_USAGE,
    summary: 'export the disk over NBD (default 127.0.0.1:10809) until SIGINT/SIGTERM',
    options: [
      ['-r', 'export read-only'],
      ['-U, --force-share', 'with -r: take and check no lock (unsafe while another process writes the image)'],
      ['-f raw|vhdx|vpc', `the image format (${PROBED}); with -r, FILE may be an http(s) URL`],
      VERBOSE,
      ['--bind ADDR', 'address to listen on (default 127.0.0.1)'],
      ['--port N', 'TCP port (default 10809; 0: any free port)'],
      ['--socket PATH', 'listen on a Unix socket instead'],
      ['--export-name NAME', 'the export\'s name (default "")'],
      ['-e, --shared N', 'serve at most N clients at once (default 16; as qemu-nbd)'],
      ['--handshake-limit S', 'drop a client that has not finished the handshake within S seconds (default 10; 0: no limit; as qemu-nbd)'],
      ['--idle-timeout S', 'when the server is full, let go of the client idle longest if idle for S seconds (default 60; 0: never)'],
      ['--io-timeout S', 'drop a client whose request or unread replies make no progress for S seconds (default 30; 0: never)'],
      PARENTS,
    ],
  },
  compact: {
    usage: COMPACT_USAGE,
    summary: "give a dynamic or differencing image's unneeded space back, in place (offline)",
    options: [
      PROGRESS,
      ['--dry-run', 'print what would be released, by reason, and the resulting file size; write nothing'],
      ['--mode=full|zeroes|filesystem', 'what releases a block: zeroes: all its bytes are zero; filesystem: no filesystem uses it (untrusted or unknown ones count as used); full (default): either'],
      OUTPUT,
    ],
    more: 'The image must not be in use (shut the VM or WSL down first). An interrupted compact leaves a\nconsistent image; running it again finishes the job.\n',
  },
  web: {
    usage: WEB_USAGE,
    summary: 'serve the web page that inspects images in the browser (default http://127.0.0.1:8080/) until SIGINT/SIGTERM',
    options: [
      ['--bind ADDR', 'address to listen on (default 127.0.0.1)'],
      ['--port N', 'TCP port (default 8080; 0: any free port)'],
      ['--open', "open the page in the desktop's browser"],
    ],
  },
};

const HELP_OPTION = ['-h, --help', 'print this help and exit'];

/** What `vhdx COMMAND --help` prints. */
export function commandHelp(name: string): string {
  const c = COMMANDS[name];
  if (!c) throw new Error(`no help for ${name}`);
  const rows = [...c.options, HELP_OPTION];
  const width = Math.min(34, Math.max(...rows.map((r) => r[0]!.length)) + 2);
  const indent = ' '.repeat(width + 2);
  const lines = rows.map(([flag, text]) => {
    const body = wrap(text!, 100 - indent.length).join(`\n${indent}`);
    return flag!.length + 2 > width ? `  ${flag}\n${indent}${body}` : `  ${flag!.padEnd(width)}${body}`;
  });
  return `usage: ${c.usage}\n\n${c.summary[0]!.toUpperCase()}${c.summary.slice(1)}.\n\noptions:\n${lines.join('\n')}\n${c.more ? `\n${c.more}` : ''}`;
}

/** `text` in lines of at most `width` characters, broken at spaces. */
function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else line = line === '' ? word : `${line} ${word}`;
  }
  out.push(line);
  return out;
}

/** What `vhdx --help` prints. */
export function mainHelp(): string {
  const commands = Object.values(COMMANDS).map((c) => `  ${c.usage}\n      ${c.summary}`);
  return `vhdx: create, read and write Microsoft VHDX virtual disks

usage:
${commands.join('\n')}
  vhdx --version
  vhdx COMMAND --help

Errors print one line and exit 1; set VHDX_DEBUG=1 for a stack trace.
`;
}
