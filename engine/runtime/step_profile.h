// engine/runtime/step_profile.h — what TROVE_PROFILE measures of the engine's steps (docs/engine.md,
// "Profiling"), summed over the engine's life and logged as tables when it closes:
//
//   TROVE_PROFILE=ops    GPU time per op kind (a timestamp after each, OpKind), one table per decode
//                        step size (1..Matvec::kMaxBatch tokens: what a verification of k tokens or k
//                        streams cost) and one per power-of-two class of longer steps ("prefill steps
//                        of 257-512 tokens": pp512's step apart from the 2048-token ones); steps that
//                        compiled pipelines are counted apart (the GPU waited for the host there).
//   TROVE_PROFILE=routing  MoE models: how the router spread the slots (tokens × k) of each prefill step
//                        over the experts, every layer's expert offsets copied back after the step —
//                        experts and slots by slots an expert, per power-of-two class of step sizes
//                        (what the grouped GEMMs' tiles meet; docs/kernels.md).
//   any value            per decode and per prefill step: what the stream recorded (vk::StreamCounters,
//                        means) and the host's times (medians); with =steps or =ops also the GPU time
//                        from the step's first to its last timestamp.
//   any other value      (=1) the GPU time of each step's phases, logged per step (phases()).
#pragma once

#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

#include "kernels/ops/matvec.h"
#include "kernels/vk/runtime.h"

namespace trove::engine {

// The op kinds of TROVE_PROFILE=ops, in step order; step() puts a timestamp after each.
enum OpKind : uint8_t {
  kOpEmbed,
  kOpQkv,
  kOpQkNorm,
  kOpRope,
  kOpKvWrite,
  kOpAttention,
  kOpO,
  kOpFfnNorm,
  kOpFfnGateUp,
  kOpFfn,
  kOpMoeRouter,
  kOpMoeRoute,
  kOpMoeGateUp,
  kOpMoeSwiglu,
  kOpMoeDown,
  kOpMoe,
  kOpHead,
  kOpSample,
  kOpKinds
};

class StepProfile {
 public:
  StepProfile();  // reads TROVE_PROFILE

  bool phases() const { return phases_; }  // TROVE_PROFILE=1: the step's phases, logged per step
  bool ops() const { return ops_; }        // =ops: a timestamp after every op kind
  bool steps() const { return steps_; }    // =steps: a timestamp at the step's start and end only
  bool host() const { return host_; }      // any value: the host's counters and times
  bool routing() const { return routing_; }  // =routing: the slots per expert of MoE prefill steps

  // After a step of T tokens has run: its stream counters since `before`, and its timestamps — with
  // ops(), `marks` holds the op kind that ends at each; `compiled`: the host created pipelines during
  // the step (left out of the op times).
  void add_step(const vk::CommandStream& s, const vk::StreamCounters& before, uint32_t T, bool compiled,
                const std::vector<uint8_t>& marks);
  // The wall time of step() from entry to return.
  void add_step_time(uint32_t T, double ns);
  // After a step of T tokens (> Matvec::kMaxBatch): `layers` layers' expert offsets, n_expert + 1 words
  // each (MoeLayer::record_offsets_copy).
  void add_routing(uint32_t T, const uint32_t* offsets, uint32_t layers, uint32_t n_expert);

  // The tables, into the log (when the engine closes). descriptors and pieces name the runtime's
  // settings in the host table.
  void log(std::string_view descriptors, const vk::StreamOptions& pieces) const;

 private:
  struct Ops {
    double ns[kOpKinds] = {};
    uint64_t steps = 0, tokens = 0;
    uint64_t compile_steps = 0;  // steps that created pipelines: left out of ns
  };
  struct Host {
    uint64_t steps = 0, tokens = 0;
    vk::StreamCounters sum;  // differences of the stream's counters across each step, summed
    // Per step (medians are logged: the first steps compile pipelines and write descriptor sets).
    std::vector<double> step_ns, record_ns, lead_ns, wait_ns;  // step(): entry → return; the rest as in sum
    std::vector<double> gpu_ns;                                // steps whose timestamps came back
  };
  // Experts by their slots in a step's layer: 0, 1-16, 17-32, 33-64, 65-128, 129-256, 257+.
  static constexpr int kRoutingBuckets = 7;
  struct Routing {
    uint64_t steps = 0, tokens = 0, layers = 0;  // layers: the step-layers counted
    uint64_t slots = 0, experts = 0;             // summed over the step-layers
    uint64_t experts_in[kRoutingBuckets] = {}, slots_in[kRoutingBuckets] = {};
    uint64_t max_sum = 0;  // the largest expert's slots, summed over the step-layers
  };
  void log_ops() const;
  void log_routing() const;
  void log_host(std::string_view descriptors, const vk::StreamOptions& pieces) const;

  bool phases_ = false, ops_ = false, steps_ = false, host_ = false, routing_ = false;
  std::map<uint32_t, Routing> routing_by_size_;  // by the power of two at or above T
  Ops ops_by_size_[ops::Matvec::kMaxBatch + 1];  // [T] decode steps of T tokens ([0] unused)
  std::map<uint32_t, Ops> ops_prefill_;           // longer steps by the power of two at or above T
  Host host_by_kind_[2];                         // [0] decode steps (<= kMaxBatch tokens), [1] longer
};

}  // namespace trove::engine
