// trove's dashboard: plain DOM and SVG, no library (a chart library would be larger than this file,
// and every picture here is a few rectangles and lines). It reads three documented endpoints
// (docs/api.md): GET /v1/trove/status once (with the last hour's series), then GET /v1/trove/events
// (one `status` event per sample, with the new samples), and GET /v1/trove/tree for the selected
// namespace when its block count changes.
//
// Nothing from the server is ever inserted as HTML: text goes through textContent, so a namespace or a
// User-Agent cannot inject markup. The page sets document.body.dataset.ready = "1" after its first
// complete render (the UI test waits for it and times the load).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const DIALECT = { "chat.completions": "chat", messages: "messages", responses: "responses" };
  const MAX_BINS = 240;           // chart columns: an hour of 1 s samples is drawn as 15 s bins
  const TREE_REFRESH_MS = 2000;   // at most one tree request per this interval

  const state = {
    status: null,
    series: null,        // columns, as GET /v1/trove/status `series`
    tree: null,
    treeNs: null,        // selected namespace
    treeZoom: null,      // `first` key of the zoomed node, or null for the whole tree
    treeColour: "age",
    treeThisModel: false,
    treeBlocksSeen: null,
    treeFetchedAt: 0,
    treeTimer: null,
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers.
  const $ = (sel) => document.querySelector(sel);
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function svg(tag, attrs = {}, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const int = (v) => Math.round(v).toLocaleString("en-US");
  function num(v, digits = 1) {
    if (!isFinite(v)) return "–";
    if (Math.abs(v) >= 1000) return int(v);
    return v.toFixed(Math.abs(v) >= 100 ? 0 : digits);
  }
  function bytes(b) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return i === 0 ? `${b} B` : `${b.toFixed(1)} ${u[i]}`;
  }
  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 90) return `${s.toFixed(1)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 2 * 86400) return `${(s / 3600).toFixed(1)} h`;
    return `${Math.round(s / 86400)} d`;
  }
  const ago = (unixSeconds, nowSeconds) => (unixSeconds > 0 ? `${duration(Math.max(0, nowSeconds - unixSeconds))} ago` : "never");
  const pct = (part, whole) => (whole > 0 ? (100 * part) / whole : 0);
  function clock(ms) {
    const d = new Date(ms);
    return d.toTimeString().slice(0, 8);
  }
  // The smallest "round" maximum ≥ v whose quarters (the grid lines) are round too.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  const tick = (v) => String(Number(v.toFixed(2)));
  const tooltip = () => $("#tooltip");
  function showTip(ev, text) {
    const t = tooltip();
    t.textContent = text;
    t.hidden = false;
    const pad = 14, w = t.offsetWidth, h = t.offsetHeight;
    let x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth - 4) x = ev.clientX - w - pad;
    if (y + h > window.innerHeight - 4) y = ev.clientY - h - pad;
    t.style.left = `${Math.max(4, x)}px`;
    t.style.top = `${Math.max(4, y)}px`;
  }
  const hideTip = () => { tooltip().hidden = true; };

  // The page's first two requests match its <link rel="preload"> (same URL, mode and credentials), so
  // they use the responses already on their way; the server sends them with Cache-Control: no-store.
  async function getJson(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/ui"; throw new Error("unauthorized"); }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  // ---------------------------------------------------------------------------------------------
  // The series: columns appended from events, trimmed to the window.
  const SERIES_KEYS = ["t", "seconds", "prefill_tokens", "decode_tokens", "prefill_tps", "decode_tps", "ttft_count",
    "ttft_mean", "ttft_max", "gpu_hit_tokens", "store_hit_tokens", "store_block_reads", "store_blocks_written",
    "pool_used_blocks", "pool_cached_blocks", "pool_total_blocks", "active", "queued"];
  function appendSamples(samples) {
    if (!samples || !samples.t || samples.t.length === 0) return;
    const s = state.series;
    const last = s.t.length ? s.t[s.t.length - 1] : 0;
    for (let i = 0; i < samples.t.length; i++) {
      if (samples.t[i] <= last) continue;
      for (const k of SERIES_KEYS) s[k].push(samples[k][i]);
    }
    const windowMs = state.status.server.window_seconds * 1000;
    const cut = s.t[s.t.length - 1] - windowMs;
    let drop = 0;
    while (drop < s.t.length && s.t[drop] <= cut) drop++;
    if (drop) for (const k of SERIES_KEYS) s[k].splice(0, drop);
  }

  // Bins of consecutive samples (at most MAX_BINS): sums for amounts, weighted means for TTFT, the
  // last value for gauges. A bin spans [end - seconds, end].
  function bins() {
    const s = state.series, n = s.t.length;
    const size = Math.max(1, Math.ceil(n / MAX_BINS));
    const out = [];
    for (let end = n; end > 0; end -= size) {
      const start = Math.max(0, end - size);
      const b = { end: s.t[end - 1], seconds: 0, prefill: 0, decode: 0, gpu: 0, store: 0, reads: 0, writes: 0,
        ttftCount: 0, ttftSum: 0, ttftMax: 0, used: s.pool_used_blocks[end - 1], cached: s.pool_cached_blocks[end - 1],
        total: s.pool_total_blocks[end - 1], active: 0, queued: 0 };
      for (let i = start; i < end; i++) {
        b.seconds += s.seconds[i];
        b.prefill += s.prefill_tokens[i];
        b.decode += s.decode_tokens[i];
        b.gpu += s.gpu_hit_tokens[i];
        b.store += s.store_hit_tokens[i];
        b.reads += s.store_block_reads[i];
        b.writes += s.store_blocks_written[i];
        b.ttftCount += s.ttft_count[i];
        b.ttftSum += s.ttft_mean[i] * s.ttft_count[i];
        b.ttftMax = Math.max(b.ttftMax, s.ttft_max[i]);
        b.active = Math.max(b.active, s.active[i]);
        b.queued = Math.max(b.queued, s.queued[i]);
      }
      b.start = b.end - b.seconds * 1000;
      out.push(b);
    }
    return out.reverse();
  }

  // ---------------------------------------------------------------------------------------------
  // A time chart: an SVG with a time axis over the shown span, a y axis from 0, and a hover cursor
  // that names the values of the bin under it.
  const W = 560, H = 170, ML = 46, MR = 10, MT = 8, MB = 22;
  function timeChart(panel, { bins: bs, yMax, yFormat, draw, hover, empty }) {
    const plot = panel.querySelector(".plot");
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const now = state.status.server.now;
    const spanMs = Math.min(state.status.server.window_seconds * 1000,
      Math.max(60000, now - state.status.server.started));
    const t0 = now - spanMs;
    const x = (t) => ML + ((t - t0) / spanMs) * (W - ML - MR);
    const y = (v) => H - MB - (v / yMax) * (H - MT - MB);
    for (let k = 0; k <= 4; k++) {
      const v = (yMax * k) / 4;
      root.append(svg("line", { class: "grid", x1: ML, x2: W - MR, y1: y(v), y2: y(v) }));
      root.append(svg("text", { x: ML - 4, y: y(v) + 3, "text-anchor": "end" }, yFormat(v)));
    }
    for (let k = 0; k <= 4; k++) {
      const t = t0 + (spanMs * k) / 4;
      root.append(svg("text", { x: x(t), y: H - 6, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" }, clock(t)));
    }
    root.append(svg("line", { class: "axis", x1: ML, x2: W - MR, y1: H - MB, y2: H - MB }));
    const visible = bs.filter((b) => b.end >= t0);
    if (empty && empty(visible)) {
      root.append(svg("text", { class: "nodata", x: (ML + W - MR) / 2, y: (MT + H - MB) / 2, "text-anchor": "middle" }, empty(visible)));
    }
    draw(root, visible, x, y);
    const cursor = svg("line", { class: "cursor", y1: MT, y2: H - MB, visibility: "hidden" });
    root.append(cursor);
    const overlay = svg("rect", { x: ML, y: MT, width: W - ML - MR, height: H - MT - MB, fill: "transparent" });
    overlay.addEventListener("mousemove", (ev) => {
      if (!visible.length) return;
      const box = root.getBoundingClientRect();
      const px = ((ev.clientX - box.left) / box.width) * W;
      let best = visible[0];
      for (const b of visible) if (Math.abs(x(b.end) - px) < Math.abs(x(best.end) - px)) best = b;
      cursor.setAttribute("x1", x(best.end));
      cursor.setAttribute("x2", x(best.end));
      cursor.setAttribute("visibility", "visible");
      showTip(ev, `${clock(best.start)}–${clock(best.end)}\n${hover(best)}`);
    });
    overlay.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); hideTip(); });
    root.append(overlay);
    plot.replaceChildren(root);
  }

  function linePath(points) {
    let d = "";
    for (const [px, py] of points) d += `${d ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
    return d;
  }

  function legend(panel, items) {
    panel.querySelector(".legend").replaceChildren(...items.map(([cls, label, value]) =>
      el("span", { class: `item ${cls}` }, label, value !== undefined ? " " : null, value !== undefined ? el("b", { text: value }) : null)));
  }

  function renderCharts() {
    const bs = bins();
    const recent = (n) => bs.slice(-n);
    const rate = (list, key) => {
      const secs = list.reduce((a, b) => a + b.seconds, 0);
      return secs > 0 ? list.reduce((a, b) => a + b[key], 0) / secs : 0;
    };

    // Throughput.
    {
      const panel = $("#chart-throughput");
      const yMax = niceMax(Math.max(1, ...bs.map((b) => Math.max(b.prefill, b.decode) / Math.max(b.seconds, 1e-9))));
      timeChart(panel, {
        bins: bs, yMax, yFormat: tick,
        draw: (root, vis, x, y) => {
          for (const [key, cls] of [["prefill", "s-prefill"], ["decode", "s-decode"]]) {
            root.append(svg("path", { class: `line ${cls}`, d: linePath(vis.map((b) => [x(b.end), y(b.seconds ? b[key] / b.seconds : 0)])) }));
          }
        },
        hover: (b) => `prefill ${num(b.prefill / b.seconds)} tok/s (${int(b.prefill)} tokens)\ndecode ${num(b.decode / b.seconds)} tok/s (${int(b.decode)} tokens)`,
      });
      const last = recent(Math.max(1, Math.ceil(10 / Math.max(1, bs.length ? bs[bs.length - 1].seconds : 1))));
      legend(panel, [["prefill", "prefill", `${num(rate(last, "prefill"))} tok/s`], ["decode", "decode", `${num(rate(last, "decode"))} tok/s`]]);
    }

    // Prompt tokens by tier: stacked shares per bin, and the totals of the window.
    {
      const panel = $("#chart-hits");
      timeChart(panel, {
        bins: bs, yMax: 100, yFormat: (v) => `${v}%`,
        empty: (vis) => (vis.some((b) => b.gpu + b.store + b.prefill > 0) ? null : "no prompt tokens yet"),
        draw: (root, vis, x, y) => {
          for (const b of vis) {
            const total = b.gpu + b.store + b.prefill;
            if (!total) continue;
            const x0 = x(b.start), w = Math.max(1, x(b.end) - x0 - 0.5);
            let acc = 0;
            for (const [key, cls] of [["gpu", "f-gpu"], ["store", "f-store"], ["prefill", "f-computed"]]) {
              const share = pct(b[key], total);
              if (share > 0) root.append(svg("rect", { class: cls, x: x0, width: w, y: y(acc + share), height: y(acc) - y(acc + share) }));
              acc += share;
            }
          }
        },
        hover: (b) => {
          const total = b.gpu + b.store + b.prefill;
          return `GPU ${int(b.gpu)} (${num(pct(b.gpu, total))}%)\nstore ${int(b.store)} (${num(pct(b.store, total))}%)\ncomputed ${int(b.prefill)} (${num(pct(b.prefill, total))}%)`;
        },
      });
      const sum = (k) => bs.reduce((a, b) => a + b[k], 0);
      const gpu = sum("gpu"), store = sum("store"), computed = sum("prefill"), total = gpu + store + computed;
      const summary = $("#hit-summary");
      summary.dataset.totalTokens = total;
      summary.replaceChildren(
        ...[["gpu", "GPU", gpu], ["store", "store", store], ["computed", "computed", computed]].map(([tier, label, v]) =>
          el("span", { class: `item ${tier}`, "data-tier": tier, "data-tokens": v, "data-percent": pct(v, total).toFixed(1) },
            `${label} `, el("b", { text: `${num(pct(v, total))}%` }), ` (${int(v)} tok)`)),
        el("span", { text: "over the chart's span" }));
    }

    // TTFT.
    {
      const panel = $("#chart-ttft");
      const withData = bs.filter((b) => b.ttftCount > 0);
      const yMax = niceMax(Math.max(0.1, ...withData.map((b) => b.ttftMax)));
      timeChart(panel, {
        bins: bs, yMax, yFormat: (v) => duration(v),
        empty: (vis) => (vis.some((b) => b.ttftCount) ? null : "no first tokens yet"),
        draw: (root, vis, x, y) => {
          for (const b of vis) {
            if (!b.ttftCount) continue;
            root.append(svg("line", { class: "line s-ttft", x1: x(b.end), x2: x(b.end), y1: y(b.ttftSum / b.ttftCount), y2: y(b.ttftMax) }));
            root.append(svg("circle", { class: "dot-ttft", cx: x(b.end), cy: y(b.ttftSum / b.ttftCount), r: 2.6 }));
          }
        },
        hover: (b) => (b.ttftCount ? `${b.ttftCount} requests: mean ${duration(b.ttftSum / b.ttftCount)}, max ${duration(b.ttftMax)}` : "no first token"),
      });
      const n = withData.reduce((a, b) => a + b.ttftCount, 0);
      const mean = n ? withData.reduce((a, b) => a + b.ttftSum, 0) / n : null;
      legend(panel, [["ttft", "mean (dot) and max (line) per interval"], ["", "span mean", mean === null ? "–" : duration(mean)]]);
    }

    // KV store traffic.
    {
      const panel = $("#chart-store");
      const yMax = niceMax(Math.max(1, ...bs.map((b) => Math.max(b.reads, b.writes) / Math.max(b.seconds, 1e-9))));
      timeChart(panel, {
        bins: bs, yMax, yFormat: tick,
        empty: () => (state.status.server.store ? null : "the server runs without a KV store (--no-store)"),
        draw: (root, vis, x, y) => {
          for (const [key, cls] of [["reads", "s-reads"], ["writes", "s-writes"]]) {
            root.append(svg("path", { class: `line ${cls}`, d: linePath(vis.map((b) => [x(b.end), y(b.seconds ? b[key] / b.seconds : 0)])) }));
          }
        },
        hover: (b) => `${int(b.reads)} blocks read (restores)\n${int(b.writes)} blocks written`,
      });
      const sum = (k) => bs.reduce((a, b) => a + b[k], 0);
      legend(panel, [["reads", "reads", int(sum("reads"))], ["writes", "writes", int(sum("writes"))]]);
    }

    // GPU KV pool occupancy.
    {
      const panel = $("#chart-pool");
      timeChart(panel, {
        bins: bs, yMax: 100, yFormat: (v) => `${v}%`,
        draw: (root, vis, x, y) => {
          if (!vis.length) return;
          const area = (f) => {
            const top = vis.map((b) => [x(b.end), y(f(b))]);
            return `${linePath(top)}L${x(vis[vis.length - 1].end).toFixed(1)},${y(0)}L${x(vis[0].end).toFixed(1)},${y(0)}Z`;
          };
          root.append(svg("path", { class: "f-cached", d: area((b) => pct(b.used + b.cached, b.total)) }));
          root.append(svg("path", { class: "f-used", d: area((b) => pct(b.used, b.total)) }));
        },
        hover: (b) => `${int(b.used)} blocks held by sequences\n${int(b.cached)} blocks of cached prefixes\n${int(b.total)} blocks in all`,
      });
      const p = state.status.pool;
      legend(panel, [["used", "held by sequences", `${num(pct(p.used_blocks, p.total_blocks))}%`],
        ["cached", "cached prefixes", `${num(pct(p.cached_blocks, p.total_blocks))}%`],
        ["", "blocks", `${int(p.total_blocks)} × ${p.block_tokens} tokens`]]);
    }

    // Running and queued sequences.
    {
      const panel = $("#chart-load");
      // Whole sequences: a maximum of 4, 8, 12, … keeps every grid line on an integer.
      const yMax = 4 * Math.ceil(Math.max(state.status.server.parallel, ...bs.map((b) => Math.max(b.active, b.queued))) / 4);
      timeChart(panel, {
        bins: bs, yMax, yFormat: tick,
        draw: (root, vis, x, y) => {
          for (const [key, cls] of [["active", "s-active"], ["queued", "s-queued"]]) {
            root.append(svg("path", { class: `line ${cls}`, d: linePath(vis.map((b) => [x(b.end), y(b[key])])) }));
          }
        },
        hover: (b) => `${b.active} running, ${b.queued} queued (most in the interval)`,
      });
      legend(panel, [["active", "running", String(state.status.queue.active)], ["queued", "queued", String(state.status.queue.queued)],
        ["", "slots", String(state.status.server.parallel)]]);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Header, summary cards, sequences.
  function renderHeader() {
    const s = state.status.server;
    const parts = [el("b", { text: s.model }), ` on ${s.device} · context ${int(s.context)} · ${s.parallel} slots · up ${duration(s.uptime_seconds)}`];
    if (s.synthetic) parts.push(" ", el("span", { class: "badge synthetic", text: "synthetic model: random weights" }));
    if (!s.store) parts.push(" ", el("span", { class: "badge", text: "no KV store" }));
    $("#server-line").replaceChildren(...parts);
  }

  function renderSummary() {
    const st = state.status, t = st.totals;
    const served = t.gpu_hit_tokens + t.store_hit_tokens + t.prefill_tokens;
    const card = (k, v, s, id) => el("div", { class: "card", id }, el("div", { class: "k", text: k }), el("div", { class: "v", text: v }), el("div", { class: "s", text: s }));
    $("#summary").replaceChildren(
      card("requests", int(t.completed + t.cancelled), `${int(t.cancelled)} cancelled · ${st.queue.active} running · ${st.queue.queued} queued`, "card-requests"),
      card("prompt tokens from cache", `${num(pct(t.gpu_hit_tokens + t.store_hit_tokens, served))}%`,
        `${int(t.gpu_hit_tokens)} GPU · ${int(t.store_hit_tokens)} store · ${int(t.prefill_tokens)} computed`, "card-cache"),
      card("tokens generated", int(t.generated_tokens), `${int(t.steps)} engine steps`, "card-generated"),
      card("GPU KV pool", `${num(pct(st.pool.used_blocks + st.pool.cached_blocks, st.pool.total_blocks))}%`,
        `${int(st.pool.used_blocks)} held · ${int(st.pool.cached_blocks)} cached · ${int(st.pool.total_blocks)} blocks`, "card-pool"),
      card("KV store", st.store ? bytes(st.store.stored_bytes) : "off",
        st.store ? `${int(st.store.blocks)} blocks · ${num(pct(st.store.stored_bytes, st.store.budget_bytes))}% of ${bytes(st.store.budget_bytes)}` : "--no-store", "card-store"),
      specCard(st.speculative, card));
  }

  // Speculative decoding: drafts accepted by method, and what auto does with the draft model.
  function specCard(sp, card) {
    const rate = (m) => (m.drafted ? `${num(pct(m.accepted, m.drafted))}% of ${int(m.drafted)}` : "none");
    const auto = !sp.draft_model ? "no draft model"
      : sp.auto_draft_tokens < 0 ? "auto: measuring the draft model"
      : sp.auto_draft_tokens === 0 ? "auto: lookup only (the draft model does not pay)"
      : `auto: ${sp.auto_draft_tokens} draft-model drafts a round`;
    const c = card("drafts accepted", int(sp.lookup.accepted + sp.draft.accepted),
      `lookup ${rate(sp.lookup)} · draft model ${rate(sp.draft)} · ${auto}`, "card-spec");
    c.dataset.accepted = String(sp.lookup.accepted + sp.draft.accepted);
    c.dataset.drafted = String(sp.lookup.drafted + sp.draft.drafted);
    return c;
  }

  function renderSequences() {
    const seqs = state.status.sequences;
    const body = $("#sequences tbody");
    const running = seqs.filter((s) => s.state !== "finished").length;
    $("#sequences-note").textContent = `${running} running or queued · the last ${seqs.length - running} finished`;
    if (!seqs.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: 13, text: "no requests yet" })));
      return;
    }
    body.replaceChildren(...seqs.map((s) => {
      const mix = el("div", { class: "mix", title: `${int(s.gpu_cached_tokens)} from the GPU, ${int(s.store_cached_tokens)} from the store, ${int(s.computed_tokens)} computed of ${int(s.prompt_tokens)}` });
      for (const [cls, v] of [["gpu", s.gpu_cached_tokens], ["store", s.store_cached_tokens], ["computed", s.computed_tokens]]) {
        const span = el("span", { class: cls });
        span.style.width = `${pct(v, s.prompt_tokens)}%`;
        mix.append(span);
      }
      const ua = s.user_agent || "–";
      const numCell = (col, v, text) => el("td", { class: "num", "data-col": col, "data-value": v }, text ?? int(v));
      return el("tr", { class: s.state === "finished" ? "finished" : "", "data-id": s.id, "data-state": s.state },
        el("td", { "data-col": "id", title: s.id, text: s.id.length > 15 ? s.id.slice(0, 14) + "…" : s.id }),
        el("td", { "data-col": "client", title: `${s.dialect} · ${ua}` },
          el("span", { class: "muted", text: `${DIALECT[s.dialect] ?? s.dialect} · ` }), ua.length > 20 ? ua.slice(0, 19) + "…" : ua),
        el("td", { "data-col": "namespace", text: s.namespace }),
        el("td", { "data-col": "state" }, el("span", { class: `state state-${s.state}`, text: s.state === "finished" ? s.finish : s.state })),
        numCell("prompt", s.prompt_tokens),
        el("td", { class: "bar-col" }, mix),
        numCell("gpu", s.gpu_cached_tokens),
        numCell("store", s.store_cached_tokens),
        numCell("computed", s.computed_tokens),
        numCell("generated", s.generated_tokens),
        numCell("tps", s.tokens_per_second, s.tokens_per_second > 0 ? num(s.tokens_per_second) : "–"),
        numCell("ttft", s.ttft_seconds ?? "", duration(s.ttft_seconds)),
        numCell("age", s.age_seconds, duration(s.state === "finished" ? s.ended_seconds_ago : s.age_seconds) + (s.state === "finished" ? " ago" : "")),
      );
    }));
  }

  // ---------------------------------------------------------------------------------------------
  // KV store health, namespaces, problems.
  function renderStore() {
    const st = state.status.store;
    const health = $("#store-health");
    if (!st) {
      $("#store-meter").hidden = true;
      health.replaceChildren(el("div", {}, el("span", { text: "the server runs without a KV store (--no-store): prefixes live on the GPU only" })));
      return;
    }
    const row = (k, v, bad) => el("div", { "data-key": k }, el("span", { text: k }), el("span", { class: bad ? "bad" : "", text: v }));
    const meter = $("#store-meter");
    meter.firstChild.style.width = `${Math.min(100, pct(st.stored_bytes, st.budget_bytes))}%`;
    meter.title = `${bytes(st.stored_bytes)} stored of the ${bytes(st.budget_bytes)} budget (--store-size)`;
    $("#store-dir").textContent = st.dir;
    health.replaceChildren(
      row("size", `${bytes(st.stored_bytes)} of ${bytes(st.budget_bytes)}`),
      row("blocks", `${int(st.blocks)} (${int(st.blocks * st.block_tokens)} tokens)`),
      row("KV held", `${bytes(st.logical_bytes)} (compression ${num(st.compression_ratio, 2)}×)`),
      row("segment files", `${int(st.segments)} · ${bytes(st.segment_bytes)} · ${num(100 * st.live_share)}% live`),
      row("compactions", int(st.compactions)),
      row("evictions", int(st.evictions)),
      row("reads", `${int(st.page_cache_reads)} page cache · ${int(st.direct_reads)} disk${st.io_uring ? " (io_uring)" : ""}`),
      row("hits / misses", `${int(st.hits)} / ${int(st.misses)}`),
      row("blocks written", `${int(st.inserts)} (${int(st.duplicate_inserts)} already there)`),
      row("dropped writes", int(st.dropped_inserts), st.dropped_inserts > 0),
      row("failed writes", int(st.failed_inserts), st.failed_inserts > 0),
      row("corrupt blocks", int(st.corrupt_blocks), st.corrupt_blocks > 0),
    );
    if (st.namespaces) {
      const now = state.status.server.now / 1000, fp = state.status.server.fingerprint;
      const rows = st.namespaces.map((n) => el("tr", { "data-namespace": n.namespace },
        el("td", {}, el("a", { class: "ns", text: n.namespace, onclick: () => selectNamespace(n.namespace) })),
        el("td", { title: n.model, text: `${n.model.slice(0, 12)}…${n.model === fp ? " (this model)" : ""}` }),
        el("td", { class: "num", text: int(n.blocks) }), el("td", { class: "num", text: int(n.tokens) }),
        el("td", { class: "num", text: bytes(n.stored_bytes) }), el("td", { class: "num", text: int(n.hits) }),
        el("td", { class: "num", text: ago(n.last_access, now) })));
      $("#store-namespaces tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: 7, text: "the store is empty" }))]));
      updateNamespaceChoices(st.namespaces);
    }
  }

  function renderProblems() {
    const list = state.status.problems;
    $("#problems").replaceChildren(...(list.length ? list.slice().reverse().map((p) => el("li", {},
      el("time", { text: new Date(p.time).toLocaleString() }), el("span", { class: `lvl-${p.level}`, text: p.level }),
      ` ${p.component}: `, el("span", { text: p.message }))) : [el("li", { class: "muted", text: "none since the server started" })]));
  }

  // ---------------------------------------------------------------------------------------------
  // The prefix tree: an icicle (kvstore/prefix_tree.h describes the layout; `trove kv tree --format
  // svg` draws the same). x: token position; each node's height is split among its children by their
  // leaves (prompt ends below). Click a node to zoom into it, the crumbs to zoom out.
  function updateNamespaceChoices(namespaces) {
    const names = [...new Set(namespaces.map((n) => n.namespace))].sort();
    if (state.treeNs === null) state.treeNs = names.includes("default") || !names.length ? "default" : names[0];
    if (!names.includes(state.treeNs)) names.push(state.treeNs);
    const sel = $("#tree-namespace");
    const current = [...sel.options].map((o) => o.value).join("\n");
    if (current !== names.join("\n")) sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    sel.value = state.treeNs;
    // Refetch when the selected namespace's blocks changed.
    const blocks = namespaces.filter((n) => n.namespace === state.treeNs).reduce((a, n) => a + n.blocks, 0);
    if (blocks !== state.treeBlocksSeen) {
      state.treeBlocksSeen = blocks;
      scheduleTree();
    }
  }

  function selectNamespace(ns) {
    state.treeNs = ns;
    state.treeZoom = null;
    $("#tree-namespace").value = ns;
    scheduleTree(true);
  }

  function scheduleTree(now = false) {
    if (state.treeTimer) return;
    const wait = now ? 0 : Math.max(0, state.treeFetchedAt + TREE_REFRESH_MS - Date.now());
    state.treeTimer = setTimeout(async () => {
      state.treeTimer = null;
      state.treeFetchedAt = Date.now();
      await loadTree();
    }, wait);
  }

  async function loadTree() {
    if (!state.status.server.store) {
      $("#tree-summary").textContent = "the server runs without a KV store (--no-store): there is no prefix tree to show";
      return;
    }
    const ns = state.treeNs ?? "default";
    let url = `/v1/trove/tree?namespace=${encodeURIComponent(ns)}&max_nodes=1500`;
    if (state.treeThisModel) url += "&model=current";
    try {
      state.tree = await getJson(url);
      renderTree();
    } catch (e) {
      $("#tree-summary").textContent = `the tree could not be read: ${e.message}`;
    }
  }

  function colourOf(n, maxHits, nowS) {
    if (state.treeColour === "hits") {
      if (!n.hits) return "hsl(215,15%,80%)";
      const t = Math.log10(n.hits + 1) / Math.log10(maxHits + 1);
      return `hsl(${140 - t * 10},${45 + t * 40}%,${72 - t * 32}%)`;
    }
    // Same ramp as kvstore/prefix_tree.cpp (age_colour): amber just now → slate blue after a week.
    const when = state.treeColour === "created" ? n.created : n.last_access;
    const age = when > 0 ? Math.max(0, nowS - when) : 7 * 86400;
    const t = Math.min(1, Math.max(0, Math.log10(age + 1) / Math.log10(7 * 86400 + 1)));
    return `hsl(${(35 + t * 180).toFixed(0)},${(90 - t * 60).toFixed(0)}%,${(55 + t * 5).toFixed(0)}%)`;
  }

  function renderTree() {
    const tree = state.tree;
    if (!tree) return;
    const nowS = tree.now, fp = state.status.server.fingerprint;
    const index = new Map();
    const parentOf = new Map();
    let maxHits = 0;
    const walk = (n, parent) => {
      index.set(n.first, n);
      if (parent) parentOf.set(n.first, parent);
      maxHits = Math.max(maxHits, n.hits);
      for (const c of n.children) walk(c, n);
    };
    for (const r of tree.roots) walk(r, null);
    if (state.treeZoom && !index.has(state.treeZoom)) state.treeZoom = null;
    const zoom = state.treeZoom ? index.get(state.treeZoom) : null;

    const totalLeaves = tree.roots.reduce((a, r) => a + r.leaves, 0) + tree.omitted.leaves;
    $("#tree-summary").textContent = tree.blocks
      ? `namespace "${tree.namespace}": ${int(tree.blocks)} blocks (${bytes(tree.stored_bytes)}) in ${int(tree.nodes)} nodes` +
        `${tree.shown_nodes < tree.nodes ? ` (${int(tree.shown_nodes)} shown)` : ""} · ${int(totalLeaves)} prompt ends · deepest ${int(tree.depth_tokens)} tokens`
      : `no blocks stored in namespace "${tree.namespace}" yet`;

    // Crumbs: the path to the zoomed node.
    const crumbs = [el("a", { text: "all", onclick: () => { state.treeZoom = null; renderTree(); } })];
    if (zoom) {
      const path = [];
      for (let n = zoom; n; n = parentOf.get(n.first)) path.unshift(n);
      for (const n of path) crumbs.push(" › ", el("a", { text: `${int(n.start_tokens)}–${int(n.start_tokens + n.tokens)}`, onclick: () => { state.treeZoom = n.first; renderTree(); } }));
    }
    $("#tree-crumbs").replaceChildren(...crumbs);

    const width = 1160;
    const leaves = zoom ? zoom.leaves : totalLeaves;
    const height = Math.min(560, Math.max(140, 22 * leaves));
    const x0 = zoom ? zoom.start_tokens : 0;
    const x1 = Math.max(x0 + 1, zoom ? zoom.depth_tokens : tree.depth_tokens);
    const sx = (width - 2) / (x1 - x0);
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, id: "tree-svg", role: "img" });
    const more = (x, y, h, o) => {
      if (h < 0.5) return;
      const r = svg("rect", { class: "more", x, y, width: Math.max(4, width - x - 1), height: h });
      r.addEventListener("mousemove", (ev) => showTip(ev, `${int(o.nodes)} more nodes not shown: ${int(o.blocks)} blocks, ${int(o.tokens)} tokens, ${int(o.leaves)} prompt ends`));
      r.addEventListener("mouseleave", hideTip);
      root.append(r);
    };
    const draw = (n, y, h) => {
      const x = 1 + (n.start_tokens - x0) * sx;
      const w = Math.max(1, n.tokens * sx);
      const g = svg("g", { class: "node", "data-first": n.first, "data-level": String(depthOf(n)), "data-blocks": n.blocks,
        "data-tokens": n.tokens, "data-start": n.start_tokens, "data-branches": n.branches, "data-leaves": n.leaves, "data-hits": n.hits });
      const rect = svg("rect", { x: Math.max(0, x), y, width: w - Math.max(0, -x), height: Math.max(0.5, h - 1), fill: colourOf(n, maxHits, nowS) });
      g.append(rect);
      if (w > 70 && h >= 14) {
        const label = `${int(n.tokens)} tok · ${n.blocks} blk${n.branches > 1 ? ` · ${n.branches} branches` : ""}`;
        const fit = Math.floor((w - 8) / 6.4);
        g.append(svg("text", { x: Math.max(0, x) + 4, y: y + Math.min(h, 22) / 2 + 4 }, label.length > fit ? label.slice(0, Math.max(0, fit - 1)) + "…" : label));
      }
      g.addEventListener("mousemove", (ev) => showTip(ev,
        `${n.first}\n${n.blocks} block${n.blocks === 1 ? "" : "s"}, tokens ${int(n.start_tokens)}–${int(n.start_tokens + n.tokens)}\n` +
        `${bytes(n.stored_bytes)} on disk, ${bytes(n.raw_bytes)} of KV\n` +
        `${n.branches} branch${n.branches === 1 ? "" : "es"} · ${int(n.leaves)} prompt end${n.leaves === 1 ? "" : "s"} below · ${int(n.subtree_blocks)} blocks in the subtree\n` +
        `${int(n.hits)} store hits (${int(n.first_hits)} through its first block)\n` +
        `created ${ago(n.created, nowS)}, last used ${ago(n.last_access, nowS)}\n` +
        `model ${n.model.slice(0, 16)}…${n.model === fp ? " (this model)" : ""}\nclick to zoom in`));
      g.addEventListener("mouseleave", hideTip);
      g.addEventListener("click", () => { state.treeZoom = n.first; hideTip(); renderTree(); });
      root.append(g);
      let cy = y;
      const total = Math.max(1, n.leaves);
      for (const c of n.children) {
        const ch = (h * c.leaves) / total;
        draw(c, cy, ch);
        cy += ch;
      }
      if (n.omitted) more(x + w, cy, (h * n.omitted.leaves) / total, n.omitted);
    };
    const depthCache = new Map();
    function depthOf(n) {
      if (depthCache.has(n.first)) return depthCache.get(n.first);
      const p = parentOf.get(n.first);
      const d = p ? depthOf(p) + 1 : 0;
      depthCache.set(n.first, d);
      return d;
    }
    if (zoom) {
      draw(zoom, 0, height);
    } else {
      let y = 0;
      const all = Math.max(1, totalLeaves);
      for (const r of tree.roots) {
        const h = (height * r.leaves) / all;
        draw(r, y, h);
        y += h;
      }
      if (tree.omitted.nodes) more(1, y, (height * tree.omitted.leaves) / all, tree.omitted);
    }
    const axis = svg("svg", { viewBox: `0 0 ${width} 16` });
    for (let k = 0; k <= 4; k++) {
      const tok = x0 + ((x1 - x0) * k) / 4;
      axis.append(svg("text", { x: 1 + (tok - x0) * sx, y: 12, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" }, `${int(tok)}`));
    }
    $("#tree-plot").replaceChildren(root, axis);
    $("#tree-legend").textContent = "x: token position in the prompt · height: share of the prompt ends below · colour: " +
      (state.treeColour === "hits" ? "store hits (grey: none, green: most)" : `${state.treeColour === "created" ? "creation" : "last use"} (amber: now, blue: a week or more)`) +
      " · hits count blocks restored from the SSD; a prefix served from the GPU pool does not read the store";
  }

  // ---------------------------------------------------------------------------------------------
  function renderAll() {
    renderHeader();
    renderSummary();
    renderSequences();
    renderCharts();
    renderStore();
    renderProblems();
  }

  let frame = 0;
  function renderSoon() {
    if (frame) return;
    frame = requestAnimationFrame(() => { frame = 0; renderAll(); });
  }

  function connect() {
    const last = state.series.t.length ? state.series.t[state.series.t.length - 1] : state.status.server.now;
    const es = new EventSource(`/v1/trove/events?since=${last}`);
    const live = $("#live");
    es.onopen = () => { live.className = "live on"; live.textContent = "live"; };
    es.onerror = () => {
      live.className = "live off";
      live.textContent = "reconnecting…";
      // EventSource retries by itself; a server restart needs a fresh status (its samples started over).
      es.close();
      setTimeout(restart, 2000);
    };
    es.addEventListener("status", (ev) => {
      const doc = JSON.parse(ev.data);
      const namespaces = doc.store && !doc.store.namespaces && state.status.store ? state.status.store.namespaces : undefined;
      if (doc.server.started !== state.status.server.started) { es.close(); restart(); return; }
      appendSamples(doc.samples);
      delete doc.samples;
      if (namespaces) doc.store.namespaces = namespaces;
      state.status = doc;
      renderSoon();
    });
  }

  async function restart() {
    try {
      state.status = await getJson("/v1/trove/status");
      state.series = state.status.series;
      renderAll();
      connect();
    } catch (e) {
      setTimeout(restart, 3000);
    }
  }

  async function start() {
    $("#tree-namespace").addEventListener("change", (ev) => selectNamespace(ev.target.value));
    $("#tree-colour").addEventListener("change", (ev) => { state.treeColour = ev.target.value; renderTree(); });
    $("#tree-this-model").addEventListener("change", (ev) => { state.treeThisModel = ev.target.checked; state.treeZoom = null; scheduleTree(true); });
    // The status and the default namespace's tree at once: the first picture needs both.
    state.treeNs = "default";
    state.treeFetchedAt = Date.now();
    let [status, tree] = await Promise.all([getJson("/v1/trove/status"),
      getJson(`/v1/trove/tree?namespace=default&max_nodes=1500`).catch(() => null)]);
    // No block in "default" but some elsewhere (clients that name their namespace): show the largest.
    const spaces = status.store?.namespaces ?? [];
    if (tree && tree.blocks === 0 && spaces.length) {
      const largest = spaces.reduce((a, n) => (n.blocks > a.blocks ? n : a));
      state.treeNs = largest.namespace;
      tree = null;
    }
    state.status = status;
    state.series = status.series;
    state.tree = tree;
    renderAll();
    if (state.treeTimer) { clearTimeout(state.treeTimer); state.treeTimer = null; }
    if (tree) renderTree(); else await loadTree();
    document.body.dataset.readyMs = Math.round(performance.now());
    document.body.dataset.ready = "1";
    connect();
  }

  start().catch((e) => {
    $("#server-line").textContent = `could not reach the server: ${e.message}`;
  });
})();
