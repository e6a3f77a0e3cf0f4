#!/usr/bin/env node
// libuv's default of 4 I/O threads oversubscribes small machines (on 2 cores, 2 threads serve
// 4 KiB reads ~60% faster); size it to the CPU count unless the user chose. The pool starts on
// first use, so setting it here, before any file I/O, takes effect.
import { availableParallelism } from 'node:os';

process.env.UV_THREADPOOL_SIZE ??= String(Math.max(2, availableParallelism()));
// The CLI is one bundled file (built by `npm run build` from src/cli/main.ts): loading ~40 ES
// modules one by one cost ~40 ms of every command's start, one file ~10 ms.
const { main } = await import('../dist/vhdx-cli.js');
process.exitCode = await main(process.argv.slice(2));
