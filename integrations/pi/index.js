// Pi extension: trove as a provider. On load it lists the models trove has pulled; with one, it finds
// or starts the shared trove server (`trove launch --server-only`), holds a lease while this Pi runs
// (the server stops some minutes after the last session), and registers the provider "trove" with the
// served model's real context window. Commands: /trove (status, metrics, log tail) and
// /trove-pull [NAME] (download a model when there is none). See integrations/pi/README.md.
import { ensureServer, holdLease, listModels, providerConfig, pull, status } from "./trove.js";

export default async function (pi) {
  let server = null;
  let release = null;

  async function connect(ctx) {
    server = await ensureServer();
    release ??= holdLease(server.leases);
    pi.registerProvider("trove", providerConfig(server));
    ctx?.ui?.notify?.(`trove: ${server.model} at ${server.url} (context ${server.context_window} tokens)`, "info");
  }

  pi.registerCommand("trove", {
    description: "trove server status: model, health, token counters, log tail",
    handler: async (_args, ctx) => {
      if (!server) return ctx.ui.notify("trove: no server yet; /trove-pull to get a model", "warning");
      const s = await status(server);
      const m = s.metrics;
      ctx.ui.notify([
        `trove ${s.healthy ? "up" : "NOT ANSWERING"} at ${s.url}, model ${s.model}`,
        `prompt tokens ${m.trove_prompt_tokens_total ?? 0} (cached ${m.trove_cached_tokens_total ?? 0}), ` +
          `generated ${m.trove_generated_tokens_total ?? 0}, active ${m.trove_active_sequences ?? 0}`,
        s.log,
      ].join("\n"), s.healthy ? "info" : "error");
    },
  });

  pi.registerCommand("trove-pull", {
    description: "Download a model with trove pull (default qwen3-coder; trove pull --list shows names)",
    handler: async (args, ctx) => {
      await pull(String(args ?? "").trim(), (line) => ctx.ui.setStatus?.("trove", line));
      ctx.ui.setStatus?.("trove", undefined);
      await connect(ctx);
    },
  });

  pi.on("session_shutdown", () => release?.());

  let models = [];
  try {
    models = await listModels();
  } catch (e) {
    console.error(`trove: cannot run the trove binary (${e.message}); install trove or set TROVE_EXE`);
    return;
  }
  if (models.length === 0) {
    pi.on("session_start", (_e, ctx) =>
      ctx?.ui?.notify?.("trove: no model yet — run /trove-pull (or `trove pull qwen3-coder`)", "warning"));
    return;
  }
  try {
    await connect(null);
  } catch (e) {
    console.error(`trove: could not start the server: ${e.message}`);
  }
}
