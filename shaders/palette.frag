/*{
  "description": "Colour as design: the frame's brightness becomes a level (black point, falloff, ceiling, so most of a dark room's wall stays dark) and a cosine palette's colour (its phase moved by the frame's own red-blue difference and a slow drift); saturation and a vignette. Runs at the work size into a 16-bit float target; alpha carries the level, smooth, for the detail pass's contour lines.",
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
uniform float amount;
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
    float level = clamp((s - black) / max(1.0 - black, 1e-3), 0.0, 1.0);
    float phase = s + spread * (raw.r - raw.b) + drift * time / 60.0;
    vec3 pal = clamp(vec3(a_r, a_g, a_b) + vec3(b_r, b_g, b_b)
                     * cos(6.28318530718 * (vec3(c_r, c_g, c_b) * phase + vec3(d_r, d_g, d_b))), 0.0, 1.0);
    vec3 c = pal * (ceiling * pow(level, falloff));
    float luma = dot(c, vec3(0.2126, 0.7152, 0.0722));
    c = max(mix(vec3(luma), c, saturation), 0.0);
    vec2 q = uv - 0.5;
    c *= 1.0 - vignette * smoothstep(0.2, 0.75, dot(q, q) * 2.0);
    fragColor = vec4(mix(raw, c, amount), s);  // alpha: the level the contour lines follow (detail.frag)
}
