#version 330
// Projector output pass, per fragment: one canvas sample, plus the black-level lift, faded by gain; as cheap as
// the plain window's blit. Defines switch on the rest, so that an output pays only for what it uses:
// ZONE_X, ZONE_Y (the draws of the cells in a horizontal, a vertical blend zone, or both): times the soft-edge
// ramp, looked up in the output's ramp table at the position across the zone (the ramp's two powers per fragment
// cost a CPU rasteriser twice the lookup). MASK (an output with a mask PNG): times the mask's alpha at this output pixel.
// numpy reference: projection.reference_output().
uniform sampler2D canvas;
uniform float lift;       // black-level lift outside the blend zones (0 in them)
uniform float gain;       // brightness x level x master fade
#if defined(ZONE_X) || defined(ZONE_Y)
uniform float table[129];  // projection.ramp at (i/128)^2, i = 0..128 (knots close together near the edge)
float ramp(float t) {      // linear between knots: within a level for usual gammas and curves
    int i = min(int(sqrt(t) * 128.0), 127);
    float k0 = float(i) / 128.0, k1 = float(i + 1) / 128.0;
    k0 *= k0;
    k1 *= k1;
    return mix(table[i], table[i + 1], clamp((t - k0) / (k1 - k0), 0.0, 1.0));
}
#endif
#ifdef MASK
uniform sampler2D mask;   // the mask PNG's alpha (uploaded alone, so in .r), bottom row first
uniform vec4 viewport;    // the output's viewport in the framebuffer (GL pixels)
#endif
in vec2 uv;
in vec2 zone;
out vec4 fragColor;
void main() {
    vec3 col = texture(canvas, uv).rgb;
#ifdef ZONE_X
    col *= ramp(clamp(zone.x, 0.0, 1.0));
#endif
#ifdef ZONE_Y
    col *= ramp(clamp(zone.y, 0.0, 1.0));
#endif
    col = (lift + (1.0 - lift) * col) * gain;
#ifdef MASK
    col *= texture(mask, (gl_FragCoord.xy - viewport.xy) / viewport.zw).r;
#endif
    fragColor = vec4(col, 1.0);
}
