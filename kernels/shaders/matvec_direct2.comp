#version 460
#extension GL_GOOGLE_include_directive : require
// The direct decode matvec (matvec_direct.comp) with two parts in flight per lane for Q4_K/Q5_K rows:
// a lane issues the loads of its next part before it decodes the current one (MV_ITEMS_IN_FLIGHT in
// matvec_core.glsl). Selected by TROVE_MATVEC=direct2 while it is measured against the direct form.
#define MV_DIRECT 1
#define MV_ITEMS_IN_FLIGHT 2
#include "matvec_body.glsl"
