// chain.glsl — kernels that run one after another WITHOUT a barrier between them (kernels/ops/chain.h,
// ChainLink): chain_wait() holds the workgroup until the kernel before it has published this step's
// epoch in slot pc.chain_wait; chain_signal() counts the workgroup done in slot pc.chain_signal, and
// the last workgroup resets the count and publishes the epoch. Slot n is words 2n (count) and 2n + 1
// (epoch) of the coherent uint buffer `chain` the includer declares; word 1 is the give-up flag.
// The includer's push block `pc` has chain_wait, chain_signal and chain_epoch (kChainNone: no wait /
// no signal). Every read of data a chained predecessor wrote must be coherent (no stale L1 lines).
const uint kChainNone = 0xffffffffu;

// One invocation polls; the others wait at the barrier. Bounded: after 2^20 polls (~0.5 s on the H200)
// it gives up and sets word 1 (the engine reads it back, reports the step and runs it again with
// barriers) rather than hang the GPU — a GPU that started a workgroup of this dispatch before every
// workgroup of the one before had started could otherwise wait forever.
void chain_wait() {
  if (pc.chain_wait == kChainNone) return;
  if (gl_LocalInvocationIndex == 0u) {
    // Atomic reads: on the H200 they paid over plain volatile loads (8B, 3754–3759 against 3768–3773
    // µs a decode step, docs/performance.md 2026-12-04 19:39).
    const uint at = 2u * pc.chain_wait + 1u;
    for (uint n = 0u; n < (1u << 20) && atomicOr(chain[at], 0u) != pc.chain_epoch; ++n) {
    }
    // Left without the epoch (the bound, or a compiler's own loop limit: llvmpipe stops loops after
    // 65535 rounds): flag it.
    if (atomicOr(chain[at], 0u) != pc.chain_epoch) atomicOr(chain[1], 1u);
  }
  barrier();
}

// Every invocation's writes made visible, then one invocation counts the workgroup done. Called by
// every invocation of every workgroup (after its last write), outside divergent control flow.
void chain_signal() {
  if (pc.chain_signal == kChainNone) return;
  memoryBarrierBuffer();
  barrier();
  if (gl_LocalInvocationIndex == 0u) {
    const uint total = gl_NumWorkGroups.x * gl_NumWorkGroups.y * gl_NumWorkGroups.z;
    if (atomicAdd(chain[2u * pc.chain_signal], 1u) == total - 1u) {
      chain[2u * pc.chain_signal] = 0u;
      memoryBarrierBuffer();
      atomicExchange(chain[2u * pc.chain_signal + 1u], pc.chain_epoch);
    }
  }
}
