// Faults while serving (issue 21, item 3): `trove serve` runs under fault_shim.c (LD_PRELOAD, tests
// only), whose control file injects errors into the store's file calls while requests are served:
//  - ENOSPC on every store write: requests still succeed (their blocks are misses later), the failures
//    are counted in /metrics and logged once, and writing resumes when "space returns";
//  - ENOSPC on the index (RocksDB) only: the store's index write fails; once space returns the writer
//    reopens the index and writing resumes (trove_store_index_reopens_total);
//  - EROFS (a read-only store directory): the same soft failure;
//  - EIO on reads (after a restart, so prefixes come from the store): a miss, counted, logged once,
//    the answer equals the cold one; reads work again when the fault goes;
//  - bit flips in every segment record while serving: misses (counted as corrupt), answers equal the
//    cold ones — never wrong KV;
//  - the store directory deleted, then replaced by a damaged copy, while serving: requests keep
//    succeeding with cold-equal answers, and a restart opens what is there (its blocks miss).
// One server at a time, 3 starts.
import assert from "node:assert/strict";
import { closeSync, cpSync, fstatSync, openSync, readdirSync, readSync, renameSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ask, cacheable, faultShim, makeModel, metrics, serve, workDir } from "./chaos_harness.mjs";

const work = workDir("chaos-faults");
const store = join(work, "store");
const ctl = join(work, "faults.ctl");
after(() => { if (!process.env.TROVE_CHAOS_KEEP) rmSync(work, { recursive: true, force: true }); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (n) => `Ticket ${n}: the nightly build of service ${n} failed because the disk filled up again. ` +
  "Summarise the incident report and list the follow-up actions for the on-call engineer. ".repeat(3);
const fault = (line) => writeFileSync(ctl, line ? `${line}\n` : "");

// Waits until the store's writer has finished every queued block; returns /metrics.
async function settled(url) {
  for (let i = 0; i < 200; ++i) {
    const m = await metrics(url);
    if (m.trove_store_write_processed_total >= m.trove_store_write_enqueued_total) return m;
    await sleep(50);
  }
  throw new Error("the store's writer did not finish its queue in 10 s");
}
const q = (url, n, extra = {}) => ask(url, { kind: "openai", namespace: `ns-${n}`, content: text(n), maxTokens: 1, ...extra });
const count = (hay, re) => (hay.match(re) ?? []).length;

// Flips one payload byte (at `at` in the record) of every record (4 KiB aligned "TRVKVBLK" headers) in
// every segment file.
function flipSegments(dir, at = 2000) {
  let flipped = 0;
  for (const f of readdirSync(join(dir, "segments"))) {
    const fd = openSync(join(dir, "segments", f), "r+");
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(8), b = Buffer.alloc(1);
    for (let off = 0; off + 4096 <= size; off += 4096) {
      readSync(fd, head, 0, 8, off);
      if (head.toString() !== "TRVKVBLK") continue;
      readSync(fd, b, 0, 1, off + at);
      b[0] ^= 0x5a;
      writeSync(fd, b, 0, 1, off + at);
      flipped += 1;
    }
    closeSync(fd);
  }
  return flipped;
}

describe("faults while serving", () => {
  it("ENOSPC, EIO, EROFS, bit flips, a deleted and a replaced store directory", { timeout: 600000 }, async () => {
    const model = makeModel(work);
    fault("");
    const env = { LD_PRELOAD: faultShim(), TROVE_SHIM_DIR: store, TROVE_SHIM_CTL: ctl };
    const args = ["--parallel", "4"];
    let s = await serve({ model, store, args, env });
    try {
      // A healthy start: blocks become durable.
      const cold1 = await q(s.url, 1);
      let m = await settled(s.url);
      assert.ok(m.trove_store_blocks_durable_total >= 1, JSON.stringify(m));
      const durable0 = m.trove_store_blocks_durable_total;

      // ENOSPC on every store write: answers still come; failures counted; one log line for the run.
      fault("write ENOSPC");
      await Promise.all([q(s.url, 2), q(s.url, 3)]);
      m = await settled(s.url);
      assert.ok(m.trove_store_write_failures_total >= 2, `failures ${m.trove_store_write_failures_total}`);
      assert.equal(m.trove_store_blocks_durable_total, durable0);
      assert.equal(count(s.stderr(), /kvstore: .*not stored/g), 1, s.stderr());
      fault("");
      await q(s.url, 4);
      m = await settled(s.url);
      assert.ok(m.trove_store_blocks_durable_total > durable0, "writing did not resume after ENOSPC");
      assert.match(s.stderr(), /kvstore: writing to .* resumed/);

      // ENOSPC on the index alone: the index write fails; once space returns the index reopens.
      fault("write ENOSPC /index/");
      const failed = m.trove_store_write_failures_total;
      await q(s.url, 5);
      m = await settled(s.url);
      assert.ok(m.trove_store_write_failures_total > failed, "the index write did not fail");
      fault("");
      const before = m.trove_store_blocks_durable_total;
      for (let n = 6; n < 10 && m.trove_store_blocks_durable_total === before; ++n) {
        await sleep(1100);  // the writer retries the index at most once a second
        await q(s.url, n);
        m = await settled(s.url);
      }
      assert.ok(m.trove_store_blocks_durable_total > before, "writing did not resume after the index failed");
      assert.ok(m.trove_store_index_reopens_total >= 1);

      // A read-only store directory (EROFS on writes): a soft failure like a full disk.
      fault("write EROFS");
      const f2 = m.trove_store_write_failures_total;
      await q(s.url, 10);
      m = await settled(s.url);
      assert.ok(m.trove_store_write_failures_total > f2);
      fault("");
      await Promise.all([11, 15, 16].map((n) => q(s.url, n)));
      m = await settled(s.url);

      // EIO on reads: restart (nothing on the GPU), so ns-1's prefix would come from the store.
      await s.kill("SIGKILL");
      fault("read EIO /segments/");
      s = await serve({ model, store, args, env });
      const r1 = await q(s.url, 1);
      m = await metrics(s.url);
      assert.equal(r1.cached, 0, "a block was attached though every read failed");
      assert.equal(r1.text, cold1.text);
      assert.ok(m.trove_store_read_failures_total >= 1);
      await q(s.url, 4);
      assert.equal(count(s.stderr(), /engine: KV store block .* unreadable/g), 1, s.stderr());
      fault("");
      const r11 = await q(s.url, 11);
      assert.equal(r11.cached, cacheable(r11.prompt), "reads did not recover after EIO");

      // Bit flips in every stored record while serving: ns-15 and ns-16 (stored, not on the GPU) miss.
      assert.ok(flipSegments(store) > 0, "no record found to flip");
      const corrupt0 = (await metrics(s.url)).trove_store_corrupt_blocks_total;
      await Promise.all([15, 16].map(async (n) => {
        const got = await q(s.url, n), cold = await q(s.url, n, { cache: false });
        assert.equal(got.cached, 0, `ns-${n}: a corrupt block was attached`);
        assert.equal(got.text, cold.text);
      }));
      m = await metrics(s.url);
      assert.ok(m.trove_store_corrupt_blocks_total >= corrupt0 + 2, JSON.stringify(m));

      // The store directory deleted while serving: answers go on (the writer still holds its files).
      const copy = join(work, "copy");
      cpSync(store, copy, { recursive: true });
      assert.ok(flipSegments(copy, 3000) > 0);
      rmSync(store, { recursive: true, force: true });
      const same = async (n) => assert.equal((await q(s.url, n)).text, (await q(s.url, n, { cache: false })).text);
      await Promise.all([1, 12].map(same));
      await settled(s.url);
      // Then replaced by a damaged copy of itself: reads through new descriptors see other bytes.
      renameSync(copy, store);
      await Promise.all([11, 13].map(same));
      await settled(s.url);
      await s.kill("SIGKILL");
      // A restart opens what is there; its damaged blocks (ns-11 was stored before the copy) miss.
      s = await serve({ model, store, args, env });
      const r11b = await q(s.url, 11);
      assert.equal(r11b.cached, 0, "a block of the damaged replacement was attached");
      assert.equal(r11b.text, r11.text);
      m = await metrics(s.url);
      assert.ok(m.trove_store_corrupt_blocks_total >= 1, "the damaged replacement's block was not detected");
    } finally {
      await s.kill("SIGKILL");
    }
  });
});
