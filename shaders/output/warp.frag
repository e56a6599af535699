#version 330
// Projector output, the warp map (drawn only when the warp changes): for each output pixel, where it reads the
// output's share of the canvas (src) and what multiplies and lifts it there (blend ramps, black-level lift, mask),
// so that the per-frame pass (show.frag) is one fetch and one sample. numpy reference: projection.reference_output().
uniform vec4 blend;       // ramp widths at the left, right, top and bottom, in fractions of the share
uniform float gamma;      // the projector's gamma: the ramp is in light, the value sent is ramp^(1/gamma)
uniform float curve;      // exponent of the S-shaped ramp (1 = linear)
uniform float black;      // black-level lift outside the blend zones (matches the overlap's doubled black)
uniform sampler2D mask;   // the mask PNG's alpha (uploaded alone, so in .r)
uniform int use_mask;
uniform vec2 size;        // the output's size in pixels
in vec2 src;
out vec4 fragColor;       // src.x, src.y, weight of the picture, lift (outside the quad all 0: black)

float ramp(float t) {
    t = clamp(t, 0.0, 1.0);
    float f = t < 0.5 ? 0.5 * pow(2.0 * t, curve) : 1.0 - 0.5 * pow(2.0 * (1.0 - t), curve);
    return pow(f, 1.0 / gamma);
}

void main() {
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
    float m = use_mask == 1 ? texture(mask, gl_FragCoord.xy / size).r : 1.0;
    fragColor = vec4(clamp(src, 0.0, 1.0), (1.0 - lift) * w * m, lift * m);
}
