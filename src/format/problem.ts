/**
 * What a parser finds wrong with a structure, as data. Every parser in format/ takes bytes and
 * returns its value with a list of problems instead of throwing: the open throws the first fatal
 * one (`orThrow`), `check` reports them all. One list, so the two can never disagree on a rule.
 */
import { VhdxError, type ErrorCode, type ErrorReason } from '../errors.js';

/**
 * - `fatal`: the structure cannot be used; an open stops here (and throws it).
 * - `corruption`: damage the readers work around (a spare copy that is bad); `check` reports it.
 * - `warning`, `info`: what `check` reports beside corruption (reserved bits set, and the like).
 */
export type ProblemSeverity = 'fatal' | 'corruption' | 'warning' | 'info';

export interface Problem {
  severity: ProblemSeverity;
  reason: ErrorReason;
  /** The on-disk structure concerned ("header 1", "region table 2 entry 0", ...). */
  structure?: string;
  /** File offset of that structure or field. */
  fileOffset?: number;
  /** What is wrong, with the numbers involved (without the place, which the fields above give). */
  message: string;
  /** The errno-like code an open throws it with (EINVAL when not given). */
  code?: ErrorCode;
  cause?: unknown;
}

/** A parser's answer: the value (null when a fatal problem makes it unusable) and what is wrong. */
export interface Parsed<T> {
  value: T | null;
  problems: Problem[];
}

/** The error an open throws for a problem. */
export function problemError(p: Problem): VhdxError {
  const details: { structure?: string; offset?: number; cause?: unknown } = {};
  if (p.structure !== undefined) details.structure = p.structure;
  if (p.fileOffset !== undefined) details.offset = p.fileOffset;
  if (p.cause !== undefined) details.cause = p.cause;
  return new VhdxError(p.code ?? 'EINVAL', p.reason, p.message, details);
}

/** A problem from an error a decoder threw, with its place, code and summary. */
export function problemFromError(e: VhdxError, severity: ProblemSeverity, message = e.summary): Problem {
  const p: Problem = { severity, reason: e.reason, message };
  if (e.structure !== undefined) p.structure = e.structure;
  if (e.offset !== undefined) p.fileOffset = e.offset;
  if (e.code !== 'EINVAL') p.code = e.code;
  return p;
}

/** A fatal problem, the usual kind. */
export function fatal(reason: ErrorReason, message: string, structure?: string, fileOffset?: number): Problem {
  const p: Problem = { severity: 'fatal', reason, message };
  if (structure !== undefined) p.structure = structure;
  if (fileOffset !== undefined) p.fileOffset = fileOffset;
  return p;
}

/** The first fatal problem of a list, if any. */
export function firstFatal(problems: readonly Problem[]): Problem | undefined {
  return problems.find((p) => p.severity === 'fatal');
}

/** The value of a parse, or its first fatal problem thrown as a VhdxError. */
export function orThrow<T>(parsed: Parsed<T>): T {
  const f = firstFatal(parsed.problems);
  if (f || parsed.value === null) throw problemError(f ?? fatal('BAD_ARGUMENT', 'parse failed without a reason'));
  return parsed.value;
}

/** Run a decode; the VhdxError it throws (signature, checksum, a number beyond 2^53) becomes a problem of `severity`. */
export function tryDecode<T>(decode: () => T, severity: ProblemSeverity): { value: T } | { problem: Problem } {
  try {
    return { value: decode() };
  } catch (e) {
    if (e instanceof VhdxError) return { problem: problemFromError(e, severity) };
    throw e;
  }
}
