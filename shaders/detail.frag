/*{
  "description": "Detail at the output's full size, where the chain before ran smaller: a cubic B-spline upscale, contour lines of the palette's level one output pixel wide, film grain, and a dither against banding in 8-bit gradients.",
  "size": "output",
  "uniforms": {
    "lines": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0, "doc": "contour lines of the brightness, one output pixel wide"},
    "density": {"type": "float", "min": 1.0, "max": 64.0, "default": 12.0, "doc": "contour levels over the brightness range"},
    "grain": {"type": "float", "min": 0.0, "max": 0.3, "default": 0.04, "doc": "film grain, relative to the level"},
    "dither": {"type": "bool", "default": 1, "doc": "add a +-1 step triangular noise so 8-bit gradients do not band"},
    "cubic": {"type": "bool", "default": 1, "doc": "cubic B-spline upscale of the frame (four taps); 0 is one bilinear tap, cheaper"}
  },
  "identity": {"lines": 0.0, "grain": 0.0, "dither": 0}
}*/
#version 330
uniform sampler2D src;
uniform float time;
uniform float lines;
uniform float density;
uniform float grain;
uniform int dither;
uniform int cubic;
in vec2 uv;
out vec4 fragColor;

// Cubic B-spline upscale from four bilinear taps (GPU Gems 2, ch. 20): smooth (C2) where bilinear is faceted, so a
// contour drawn on the upscaled field is a clean curve rather than a chain of texel-sized segments.
vec4 bspline(sampler2D tex, vec2 p) {
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
    return g0.y * (g0.x * texture(tex, vec2(p0.x, p0.y)) + g1.x * texture(tex, vec2(p1.x, p0.y)))
         + g1.y * (g0.x * texture(tex, vec2(p0.x, p1.y)) + g1.x * texture(tex, vec2(p1.x, p1.y)));
}

// Interleaved gradient noise (Jimenez 2014): a few multiplies a pixel, well spread, the same on every driver.
float ign(vec2 p) {
    return fract(52.9829189 * fract(dot(p, vec2(0.06711056, 0.00583715))));
}

void main() {
    vec4 v;
    if (cubic != 0) v = bspline(src, uv); else v = texture(src, uv);  // not ?: (both sides would run)
    vec3 c = v.rgb;
    if (lines > 0.0) {
        // Iso-lines of the smooth level, about one output pixel wide wherever the field is gentle enough to draw.
        float f = v.a * density;
        float w = max(fwidth(f), 1e-5);
        float d = abs(fract(f + 0.5) - 0.5) / w;
        float line = (1.0 - smoothstep(0.5, 1.5, d)) * (1.0 - smoothstep(0.2, 0.45, w));
        c = mix(c, sqrt(c) * 0.85, lines * line);  // the ink: the same colour, lifted, faint in the shadows
    }
    float frame = mod(floor(time * 60.0), 64.0);
    vec2 px = gl_FragCoord.xy;
    if (grain > 0.0) c *= 1.0 + grain * 2.0 * (ign(px + 5.588238 * frame) - 0.5);
    if (dither != 0) c += (ign(px + 5.588238 * frame + 17.0) + ign(px.yx + 3.1 * frame + 41.0) - 1.0) / 255.0;
    fragColor = vec4(clamp(c, 0.0, 1.0), 1.0);
}
