/*{
  "description": "Colour as design, at the output's full size: the frame's brightness becomes a level (black point, falloff, ceiling, so most of a dark room's wall stays dark) and a cosine palette's colour (its phase moved by the frame's own hue difference and a slow drift); a smooth B-spline upscale, optional contour lines one output pixel wide, film grain and a dither against banding.",
  "size": "output",
  "uniforms": {
    "amount": {"type": "float", "min": 0.0, "max": 1.0, "default": 1.0, "doc": "share of the palette's picture; 0 passes the frame through"},
    "a_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.55, "doc": "palette centre, red (colour = a + b cos 2pi (c phase + d))"},
    "a_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.45, "doc": "palette centre, green"},
    "a_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.38, "doc": "palette centre, blue"},
    "b_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.40, "doc": "palette swing, red"},
    "b_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.35, "doc": "palette swing, green"},
    "b_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.30, "doc": "palette swing, blue"},
    "c_r": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, red (cycles over the phase's 0..1)"},
    "c_g": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, green"},
    "c_b": {"type": "float", "min": 0.0, "max": 4.0, "default": 0.8, "doc": "palette frequency, blue"},
    "d_r": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.50, "doc": "palette offset, red (turns)"},
    "d_g": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.55, "doc": "palette offset, green"},
    "d_b": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.62, "doc": "palette offset, blue"},
    "spread": {"type": "float", "min": 0.0, "max": 2.0, "default": 0.35, "doc": "how far the frame's own red-blue difference moves the palette phase"},
    "drift": {"type": "float", "min": -2.0, "max": 2.0, "default": 0.0, "doc": "palette phase turns per minute"},
    "black": {"type": "float", "min": 0.0, "max": 0.9, "default": 0.2, "doc": "input level shown as black (the wall)"},
    "falloff": {"type": "float", "min": 0.3, "max": 4.0, "default": 1.6, "doc": "brightness curve; above 1 keeps most of the frame dark"},
    "ceiling": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.85, "doc": "brightest level sent to the projector"},
    "saturation": {"type": "float", "min": 0.0, "max": 2.0, "default": 1.0, "doc": "0 is greyscale"},
    "lines": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0, "doc": "contour lines of the brightness, one output pixel wide"},
    "density": {"type": "float", "min": 1.0, "max": 64.0, "default": 12.0, "doc": "contour levels over the brightness range"},
    "grain": {"type": "float", "min": 0.0, "max": 0.3, "default": 0.04, "doc": "film grain, relative to the level"},
    "vignette": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.3, "doc": "darkening toward the corners"},
    "dither": {"type": "bool", "default": 1, "doc": "add a +-1 step triangular noise so 8-bit gradients do not band"}
  },
  "identity": {"amount": 0.0}
}*/
#version 330
uniform sampler2D src;
uniform vec2 resolution;
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
uniform float lines;
uniform float density;
uniform float grain;
uniform float vignette;
uniform int dither;
in vec2 uv;
out vec4 fragColor;

// Cubic B-spline upscale from four bilinear taps (GPU Gems 2, ch. 20): smooth (C2) where bilinear is faceted,
// so a contour drawn on the upscaled field is a clean curve rather than a chain of texel-sized segments.
vec3 bspline(sampler2D tex, vec2 p) {
    vec2 size = vec2(textureSize(tex, 0));
    vec2 t = p * size - 0.5;
    vec2 f = fract(t);
    vec2 f2 = f * f, f3 = f2 * f;
    vec2 w0 = (1.0 - 3.0 * f + 3.0 * f2 - f3) / 6.0;
    vec2 w1 = (4.0 - 6.0 * f2 + 3.0 * f3) / 6.0;
    vec2 w2 = (1.0 + 3.0 * f + 3.0 * f2 - 3.0 * f3) / 6.0;
    vec2 w3 = f3 / 6.0;
    vec2 g0 = w0 + w1, g1 = w2 + w3;
    vec2 base = floor(t) + 0.5;
    vec2 p0 = (base - 1.0 + w1 / g0) / size;
    vec2 p1 = (base + 1.0 + w3 / g1) / size;
    return g0.y * (g0.x * texture(tex, vec2(p0.x, p0.y)).rgb + g1.x * texture(tex, vec2(p1.x, p0.y)).rgb)
         + g1.y * (g0.x * texture(tex, vec2(p0.x, p1.y)).rgb + g1.x * texture(tex, vec2(p1.x, p1.y)).rgb);
}

// Integer hash -> [0, 1): no sin() patterns, the same on every driver.
float hash(uvec3 v) {
    v = v * 1664525u + 1013904223u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    v ^= v >> 16u;
    v.x += v.y * v.z; v.y += v.z * v.x; v.z += v.x * v.y;
    return float(v.x & 0x00ffffffu) / 16777216.0;
}

void main() {
    vec3 raw = bspline(src, uv);
    float s = dot(raw, vec3(0.25, 0.5, 0.25));
    // Level: the black point is the wall, the falloff keeps most of the picture low, the ceiling spares the eyes.
    float level = clamp((s - black) / max(1.0 - black, 1e-3), 0.0, 1.0);
    float L = ceiling * pow(level, falloff);
    float phase = s + spread * (raw.r - raw.b) + drift * time / 60.0;
    vec3 pal = clamp(vec3(a_r, a_g, a_b) + vec3(b_r, b_g, b_b)
                     * cos(6.28318530718 * (vec3(c_r, c_g, c_b) * phase + vec3(d_r, d_g, d_b))), 0.0, 1.0);
    vec3 c = pal * L;
    if (lines > 0.0) {
        // Iso-lines of the smooth field, about one output pixel wide wherever the field is gentle enough to draw.
        float f = s * density;
        float w = max(fwidth(f), 1e-5);
        float d = abs(fract(f + 0.5) - 0.5) / w;
        float line = (1.0 - smoothstep(0.5, 1.5, d)) * (1.0 - smoothstep(0.2, 0.45, w));
        vec3 ink = pal * max(ceiling * pow(level, 0.5 * falloff), 0.12 * ceiling);
        c = mix(c, ink, lines * line);
    }
    float luma = dot(c, vec3(0.2126, 0.7152, 0.0722));
    c = max(mix(vec3(luma), c, saturation), 0.0);
    vec2 q = uv - 0.5;
    c *= 1.0 - vignette * smoothstep(0.2, 0.75, dot(q, q) * 2.0);
    uvec2 px = uvec2(gl_FragCoord.xy);
    uint frame = uint(int(floor(time * 60.0)) & 0xffff);
    if (grain > 0.0) c *= 1.0 + grain * 2.0 * (hash(uvec3(px, frame)) - 0.5);
    c = mix(raw, c, amount);
    if (dither != 0) c += (hash(uvec3(px, frame + 40503u)) + hash(uvec3(px.yx, frame + 7919u)) - 1.0) / 255.0;
    fragColor = vec4(clamp(c, 0.0, 1.0), 1.0);
}
