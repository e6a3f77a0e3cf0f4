// Minimisation of a kept input: the smallest change from the input it was made from that still
// does what made it worth keeping (`keeps(candidate)`: reaches the new features, breaks no rule).
// Images keep their layout, so their changed runs of bytes are reverted to the parent's one at a
// time; byte streams (NBD sessions, HTTP answers) lose chunks, halving the chunk size each pass.
// At most `budget` candidates are tried.

export async function minimise(child, parent, keeps, { stream = false, budget = 48 } = {}) {
  let best = child;
  if (stream) {
    for (let chunk = Math.max(1, best.length >> 1); chunk >= 1 && budget > 0; chunk >>= 1) {
      for (let at = 0; at + chunk <= best.length && budget > 0; ) {
        const candidate = new Uint8Array(best.length - chunk);
        candidate.set(best.subarray(0, at));
        candidate.set(best.subarray(at + chunk), at);
        budget--;
        if (await keeps(candidate)) best = candidate;
        else at += chunk;
      }
    }
    return best;
  }
  if (best.length > parent.length) {
    budget--;
    const cut = best.slice(0, parent.length);
    if (await keeps(cut)) best = cut;
  }
  const n = Math.min(best.length, parent.length);
  const runs = [];
  for (let i = 0; i < n && runs.length < 64; i++) {
    if (best[i] === parent[i]) continue;
    let j = i;
    while (j < n && j - i < 64 && best[j] !== parent[j]) j++;
    runs.push([i, j]);
    i = j;
  }
  for (const [i, j] of runs) {
    if (budget-- <= 0) break;
    const candidate = best.slice();
    candidate.set(parent.subarray(i, j), i);
    if (await keeps(candidate)) best = candidate;
  }
  return best;
}
