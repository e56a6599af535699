/*{
  "description": "Colour as design: the frame's brightness becomes a level (optionally read against the frame's own brightness quantiles, so the light stays put wherever the walk goes; black point, falloff, ceiling, so most of a dark room's wall stays dark) and a cosine palette's colour (its phase moved by the frame's own red-blue difference and a slow drift); saturation and a vignette. Runs at the work size into a 16-bit float target; alpha carries the level, smooth, for the detail pass's contour lines.",
  "precision": "half",
  "uniforms": {
    "amount": {"type": "float", "min": 0.0, "max": 1.0, "default": 1.0, "doc": "share of the palette's picture; 0 passes the frame through"},
    "a_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.55, "doc": "palette centre, red (colour = a + b cos 2pi (c phase + d))"},
    "a_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.45, "doc": "palette centre, green"},
    "a_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.38, "doc": "palette centre, blue"},
    "b_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.4, "doc": "palette swing, red"},
    "b_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.35, "doc": "palette swing, green"},
    "b_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.3, "doc": "palette swing, blue"},
    "c_r": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, red (cycles over the phase's 0..1)"},
    "c_g": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, green"},
    "c_b": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, blue"},
    "d_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.5, "doc": "palette offset, red (turns)"},
    "d_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.55, "doc": "palette offset, green"},
    "d_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.62, "doc": "palette offset, blue"},
    "spread": {"type": "float", "min": 0.0, "max": 2.0, "default": 0.35, "doc": "how far the frame's own red-blue difference moves the palette phase"},
    "drift": {"type": "float", "min": -2.0, "max": 2.0, "default": 0.0, "doc": "palette phase turns per minute"},
    "auto": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0, "doc": "how far the level follows the frame's own brightness quantiles (measured as each frame arrives, eased over half a second): at 1 its darkest pixels (2nd percentile) are level 0, its median pixel level `median`, its 90th percentile `bright` and its brightest (99.5th) level 1, in straight lines between, whatever the walk reaches; at 0 the brightness is read as it is"},
    "median": {"type": "float", "min": 0.0, "max": 0.9, "default": 0.12, "doc": "with auto: the level of the frame's median pixel (most of a dark room's wall lies under it)"},
    "bright": {"type": "float", "min": 0.05, "max": 0.95, "default": 0.45, "doc": "with auto: the level of the frame's 90th-percentile pixel"},
    "glow": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0, "doc": "share of the glow colour in the top of the level (above knee): the brightest places take a warm, bright hue a projector shows"},
    "glow_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 1.0, "doc": "glow colour, red"},
    "glow_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.8, "doc": "glow colour, green"},
    "glow_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.5, "doc": "glow colour, blue"},
    "knee": {"type": "float", "min": 0.0, "max": 0.95, "default": 0.6, "doc": "level where the glow starts (it is whole at the top)"},
    "black": {"type": "float", "min": 0.0, "max": 0.9, "default": 0.2, "doc": "input level shown as black (the wall)"},
    "falloff": {"type": "float", "min": 0.3, "max": 4.0, "default": 1.6, "doc": "brightness curve; above 1 keeps most of the frame dark"},
    "ceiling": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.85, "doc": "brightest level sent to the projector"},
    "saturation": {"type": "float", "min": 0.0, "max": 2.0, "default": 1.0, "doc": "0 is greyscale"},
    "vignette": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.3, "doc": "darkening toward the corners"}
  },
  "identity": {"amount": 0.0}
}*/
#version 330
uniform sampler2D src;
uniform float time;
uniform vec4 level_quantiles;  // built-in: the frame's brightness at its 2nd, 50th, 90th, 99.5th percentiles, eased
uniform float amount;
uniform float auto;
uniform float median;
uniform float bright;
uniform float glow;
uniform float glow_r;
uniform float glow_g;
uniform float glow_b;
uniform float knee;
uniform float a_r;
uniform float a_g;
uniform float a_b;
uniform float b_r;
uniform float b_g;
uniform float b_b;
uniform float c_r;
uniform float c_g;
uniform float c_b;
uniform float d_r;
uniform float d_g;
uniform float d_b;
uniform float spread;
uniform float drift;
uniform float black;
uniform float falloff;
uniform float ceiling;
uniform float saturation;
uniform float vignette;
in vec2 uv;
out vec4 fragColor;

void main() {
    vec3 raw = texture(src, uv).rgb;
    float s = dot(raw, vec3(0.25, 0.5, 0.25));
    // Level: the black point is the wall, the falloff keeps most of the picture low, the ceiling spares the eyes.
    // With auto, the brightness is first read against the frame's own quantiles: darkest 0, median `median`,
    // 90th percentile `bright`, brightest 1; the gaps floored, so a flat frame is not blown up into noise (the top
    // one less: a lattice's bright threads lie within 0.01 of each other, and a floor of 0.02 kept them at 3/4).
    vec4 k = level_quantiles;
    float rel = s < k.y ? median * (s - k.x) / max(k.y - k.x, 0.02)
              : s < k.z ? median + (bright - median) * (s - k.y) / max(k.z - k.y, 0.02)
              : bright + (1.0 - bright) * (s - k.z) / max(k.w - k.z, 0.006);
    float level = clamp((mix(s, rel, auto) - black) / max(1.0 - black, 1e-3), 0.0, 1.0);
    float phase = s + spread * (raw.r - raw.b) + drift * time / 60.0;
    vec3 pal = clamp(vec3(a_r, a_g, a_b) + vec3(b_r, b_g, b_b)
                     * cos(6.28318530718 * (vec3(c_r, c_g, c_b) * phase + vec3(d_r, d_g, d_b))), 0.0, 1.0);
    pal = mix(pal, vec3(glow_r, glow_g, glow_b), glow * smoothstep(knee, 1.0, level));  // the brightest glow
    vec3 c = pal * (ceiling * pow(level, falloff));
    float luma = dot(c, vec3(0.2126, 0.7152, 0.0722));
    c = max(mix(vec3(luma), c, saturation), 0.0);
    vec2 q = uv - 0.5;
    c *= 1.0 - vignette * smoothstep(0.2, 0.75, dot(q, q) * 2.0);
    fragColor = vec4(mix(raw, c, amount), s);  // alpha: the level the contour lines follow (detail.frag)
}
