#version 460
#extension GL_GOOGLE_include_directive : require
// Decode matvec, batch 1..8, the "direct" form for GPUs whose subgroups are 32 lanes wide: a row group
// is one subgroup, x is read through the caches instead of being staged in shared memory, and the
// row sums are reduced with subgroupAdd alone — no shared memory, no barriers, one row block per
// workgroup. See matvec_body.glsl and kernels/ops/matvec.h.
#define MV_DIRECT 1
#include "matvec_body.glsl"
