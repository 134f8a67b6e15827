// server/status.h — the JSON documents of the dashboard's endpoints (schemas in docs/api.md):
//   GET /v1/trove/status   what runs, its sequences, prefix-cache totals by tier, the KV pool, the KV
//                          store's health, recent warnings, and the last hour's time series;
//   GET /v1/trove/events   the same without the full series, once per sample, with the new samples.
// GET /v1/trove/tree is kvstore/prefix_tree.h's document.
//
// Contract: pure builders over snapshots their callers take (Scheduler::stats() / sequences(),
// ActivitySeries::since(), Store::stats() / for_each_entry()); nothing here blocks on the engine.
// No prompt or output text ever appears in these documents, only counts, times and the labels the
// client sent (response id, API dialect, User-Agent, cache namespace).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log_problems.h"
#include "kvstore/store.h"
#include "server/activity_series.h"
#include "server/scheduler.h"

namespace trove::server {

using StatusJson = nlohmann::ordered_json;

// Queued, running and recently finished requests as the sequence table shows them; times relative
// to `now` (steady clock), rates per second.
StatusJson sequences_json(const std::vector<SequenceInfo>& sequences, std::chrono::steady_clock::time_point now);

// Samples as columns: {"t": [unix ms…], "prefill_tps": […], …} — a chart reads one array per line.
StatusJson series_json(const std::vector<ActivitySample>& samples);

// Store health: size against its budget, segments and their live share, compression, hits, inserts,
// evictions, compactions, corrupt blocks, failed and dropped writes. With `namespaces`, also one row
// per (namespace, model) like `trove kv ls` (a pass over the whole index: the caller decides how often).
StatusJson store_json(kv::Store& store, uint64_t budget_bytes, bool namespaces);

StatusJson problems_json(const std::vector<log::TimedRecord>& problems);

}  // namespace trove::server
