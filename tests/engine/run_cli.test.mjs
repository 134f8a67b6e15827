// `trove run` driven the way a user drives it, on a tiny synthetic model (lavapipe, ~40 s):
//   --raw --json greedy: the continuation's ids are llama.cpp's greedy choices too (oracle), and the
//     text printed is those ids detokenized;
//   sampling with a seed is reproducible;
//   chat with -p: streams a reply and ends with the prefill/decode tok/s line and the synthetic banner;
//   interactive chat on stdin: the second turn reuses the first turn's KV ("N reused");
//   a missing model file is a clear error and exit status 1;
//   `trove version --device` prints the Vulkan device on one line (--matrix: and its matrix-unit
//     shapes), and a TROVE_VK_DEVICE that matches none is an error listing the devices (what
//     scripts/device-run.sh relies on).
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openModel } from "../oracle/llama.mjs";

const trove = process.env.TROVE_EXE ?? "build/trove";
const work = mkdtempSync(join(process.env.TROVE_BINARY_DIR ?? tmpdir(), "run-cli-"));
const model = join(work, "tiny-f32.gguf");
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? "ok  " : "FAIL"} ${what}`);
  if (!cond) failures++;
}
const run = (args, input) => spawnSync(trove, ["run", "-m", model, ...args], { input, encoding: "utf8" });

try {
  execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "F32", "--out", model, "--seed", "3"], { stdio: "ignore" });

  const raw = run(["--raw", "-p", "def main():", "-n", "8", "--temp", "0", "--json"]);
  check(raw.status === 0, `--raw --json exits 0 (${raw.stderr.split("\n").filter((l) => /error/.test(l)).join(" ")})`);
  const j = JSON.parse(raw.stdout);
  check(j.tokens.length === 8 && j.finish === "length", `8 tokens generated, finish=length (${j.tokens.length}, ${j.finish})`);
  const o = await openModel(model, { contextSize: 64 });
  const ids = o.tokenize("def main():");
  check(JSON.stringify(ids) === JSON.stringify(j.prompt_tokens), "the prompt's ids equal llama.cpp's tokenization");
  const all = ids.concat(j.tokens);
  const ref = await o.nextTokenProbs(all, { positions: j.tokens.map((_, i) => ids.length - 1 + i), top: 1 });
  const same = ref.filter((r, i) => r.top[0][0] === j.tokens[i]).length;
  check(same === j.tokens.length, `llama.cpp's greedy choice equals trove run's for ${same} of ${j.tokens.length} tokens`);
  check(o.detokenize(j.tokens, { special: true }) === j.text, "the printed text is the generated ids detokenized");
  await o.close();

  const s1 = run(["--raw", "-p", "hello", "-n", "6", "--temp", "0.9", "--seed", "42", "--json"]);
  const s2 = run(["--raw", "-p", "hello", "-n", "6", "--temp", "0.9", "--seed", "42", "--json"]);
  check(s1.status === 0 && s1.stdout === s2.stdout, "the same seed samples the same continuation");

  const chat = run(["-p", "Say hi", "-n", "4", "--no-think"]);
  check(chat.status === 0, "chat with -p exits 0");
  check(/SYNTHETIC MODEL/.test(chat.stdout + chat.stderr), "the synthetic banner is shown");
  check(/prefill \d+ tokens .* tok\/s \| decode \d+ tokens .* tok\/s/.test(chat.stdout + chat.stderr),
        "the reply ends with prefill and decode tok/s");

  const inter = run(["-n", "3", "--no-think"], "first question\nsecond question\n");
  const lines = (inter.stdout + inter.stderr).split("\n").filter((l) => /prefill \d+ tokens/.test(l));
  const reused = lines.map((l) => Number((l.match(/\((\d+) reused\)/) ?? [])[1]));
  check(inter.status === 0 && lines.length === 2, `interactive chat answers two turns (${lines.length})`);
  check(reused[0] === 0 && reused[1] > 0, `the second turn reuses the first turn's KV (${reused.join(", ")} reused)`);

  const missing = spawnSync(trove, ["run", "-m", join(work, "nope.gguf"), "-p", "x"], { encoding: "utf8" });
  check(missing.status === 1 && /cannot open model file .*nope\.gguf/.test(missing.stderr), "a missing model is a clear error");

  const version = spawnSync(trove, ["version", "--device"], { encoding: "utf8" });
  check(version.status === 0 && /^vulkan: .+; driver .+; API 1\.\d+\.\d+; .*KHR cooperative matrix: /m.test(version.stdout),
        `version --device prints the device line (${version.stdout.trim().split("\n").pop()})`);
  // --matrix: one line per matrix-unit shape, as many as the device line counts ("N shapes"), or
  // "no usable shapes" (lavapipe).
  const matrix = spawnSync(trove, ["version", "--device", "--matrix"], { encoding: "utf8" });
  const mlines = matrix.stdout.trim().split("\n").slice(2);
  const khr = mlines.filter((l) => /^KHR cooperative matrix: \d+x\d+x\d+  A \S+  B \S+  C \S+  result \S+  \(\w+\)$/.test(l));
  const counted = Number((matrix.stdout.match(/KHR cooperative matrix: (\d+) shapes/) ?? [0, 0])[1]);
  check(matrix.status === 0 && mlines.length > 0 &&
        mlines.every((l) => /^(KHR cooperative matrix: |NV cooperative matrix 2: )/.test(l)) &&
        (counted ? khr.length === counted : mlines[0] === "KHR cooperative matrix: no usable shapes"),
        `version --device --matrix lists the matrix shapes (${mlines.length} lines, ${khr.length} KHR shapes, device line says ${counted})`);
  const nodev = spawnSync(trove, ["version", "--device"], {
    encoding: "utf8", env: { ...process.env, TROVE_VK_DEVICE: "no-such-device" } });
  check(nodev.status === 1 && /TROVE_VK_DEVICE='no-such-device' matches no Vulkan device/.test(nodev.stderr),
        "version --device with an unknown TROVE_VK_DEVICE is a clear error");
} finally {
  rmSync(work, { recursive: true, force: true });
}
process.exit(failures ? 1 : 0);
