#version 330
// Projector output pass: the output's share of the canvas, soft-edge blend ramps with gamma and black-level lift,
// brightness and master level, then the mask's alpha. numpy reference: projection.reference_output().
uniform sampler2D canvas;
uniform vec4 region;      // x, y, w, h of the output's share, in canvas uv (y down)
uniform vec4 blend;       // ramp widths at the left, right, top and bottom, in fractions of the share
uniform float gamma;      // the projector's gamma: the ramp is in light, the value sent is ramp^(1/gamma)
uniform float curve;      // exponent of the S-shaped ramp (1 = linear)
uniform float black;      // black-level lift outside the blend zones (matches the overlap's doubled black)
uniform float gain;       // brightness x level x master fade
uniform sampler2D mask;
uniform int use_mask;
uniform vec4 viewport;    // the output's viewport in the framebuffer: x, y, w, h (GL pixels)
in vec2 src;
out vec4 fragColor;

float ramp(float t) {
    t = clamp(t, 0.0, 1.0);
    float f = t < 0.5 ? 0.5 * pow(2.0 * t, curve) : 1.0 - 0.5 * pow(2.0 * (1.0 - t), curve);
    return pow(f, 1.0 / gamma);
}

void main() {
    vec2 c = region.xy + clamp(src, 0.0, 1.0) * region.zw;
    vec3 col = texture(canvas, vec2(c.x, 1.0 - c.y)).rgb;
    vec4 d = vec4(src.x, 1.0 - src.x, src.y, 1.0 - src.y);  // distance to each edge
    float w = 1.0;
    float zone = 0.0;
    for (int i = 0; i < 4; i++) {
        if (blend[i] > 0.0) {
            w *= ramp(d[i] / blend[i]);
            zone = max(zone, d[i] < blend[i] ? 1.0 : 0.0);
        }
    }
    float lift = black * (1.0 - zone);
    col = (lift + (1.0 - lift) * col * w) * gain;
    if (use_mask == 1) {
        col *= texture(mask, (gl_FragCoord.xy - viewport.xy) / viewport.zw).r;  // the PNG's alpha, uploaded alone
    }
    fragColor = vec4(col, 1.0);
}
