/*{
  "description": "Upscale the decoder's frames to the output, crossfading the last two by their age and fading in from the held frame after a cut.",
  "uniforms": {
    "zoom": {"type": "float", "min": 0.25, "max": 4.0, "default": 1.0, "doc": "scale about the centre; above 1 zooms in"},
    "sharpen": {"type": "float", "min": 0.0, "max": 2.0, "default": 0.3, "doc": "unsharp mask against the bilinear upscale's softness"}
  }
}*/
#version 330
uniform sampler2D tex_prev;
uniform sampler2D tex_cur;
uniform sampler2D tex_hold;
uniform float frame_mix;   // 0 shows the previous frame, 1 the newest
uniform float hold_mix;    // 1 shows the held frame (the look before a cut), 0 the live frames
uniform vec2 cur_scale;    // uv scale that fits each texture to the output aspect
uniform vec2 prev_scale;
uniform vec2 hold_scale;
uniform vec2 resolution;
uniform float zoom;
uniform float sharpen;
in vec2 uv;
out vec4 fragColor;

vec3 fetch(sampler2D tex, vec2 scale, vec2 p) {
    vec2 q = (p - 0.5) * scale / zoom + 0.5;
    q.y = 1.0 - q.y;  // decoder frames arrive top row first
    if (any(lessThan(q, vec2(0.0))) || any(greaterThan(q, vec2(1.0)))) return vec3(0.0);
    return texture(tex, q).rgb;
}

// A neighbour for the sharpening: clamped to the frame's edge, so the black outside it does not count as a dark
// neighbour (it lit a bright rim along every edge of the picture).
vec3 near(sampler2D tex, vec2 scale, vec2 p) {
    vec2 q = clamp((p - 0.5) * scale / zoom + 0.5, 0.0, 1.0);
    q.y = 1.0 - q.y;
    return texture(tex, q).rgb;
}

void main() {
    vec3 cur = fetch(tex_cur, cur_scale, uv);
    if (sharpen > 0.0) {
        vec2 px = 1.5 / vec2(textureSize(tex_cur, 0));
        vec3 blur = 0.25 * (near(tex_cur, cur_scale, uv + vec2(px.x, 0.0)) + near(tex_cur, cur_scale, uv - vec2(px.x, 0.0))
                          + near(tex_cur, cur_scale, uv + vec2(0.0, px.y)) + near(tex_cur, cur_scale, uv - vec2(0.0, px.y)));
        cur = cur + sharpen * (cur - blur);
    }
    vec3 c = mix(fetch(tex_prev, prev_scale, uv), cur, frame_mix);
    if (hold_mix > 0.0) c = mix(c, fetch(tex_hold, hold_scale, uv), hold_mix);
    fragColor = vec4(clamp(c, 0.0, 1.0), 1.0);
}
