// k4_scales.glsl — the 6-bit scale and min of a Q4_K/Q5_K sub-block pair, shared by the f32 matvec
// (matvec_core.glsl) and the int8 one (matvec_q8.glsl): two bytes each (low = sub-block 2j), the same
// unpacking as quant::unpack_scale_min_k4. Included once per shader.
void k4_scales(uvec4 hd, uint j, out uint sc, out uint mn) {
  const uint sh = 16u * (j & 1u);
  const uint y16 = (hd.y >> sh) & 0xFFFFu, z16 = (hd.z >> sh) & 0xFFFFu, w16 = (hd.w >> sh) & 0xFFFFu;
  if (j < 2u) {
    sc = y16 & 0x3F3Fu;
    mn = z16 & 0x3F3Fu;
  } else {
    sc = (w16 & 0x0F0Fu) | ((y16 >> 2u) & 0x3030u);
    mn = ((w16 >> 4u) & 0x0F0Fu) | ((z16 >> 2u) & 0x3030u);
  }
}
