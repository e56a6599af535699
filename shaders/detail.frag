/*{
  "description": "Detail at the output's full size, where the chain before ran smaller: contour lines of the palette's level one output pixel wide, film grain, and a dither against banding in 8-bit gradients. One bilinear tap and a few multiplies a pixel: on a software rasteriser a pass at the output size costs about as much as the output's own blit, and branches on uniforms are not skipped, so anything here is paid whether it is on or not (a cubic B-spline upscale cost about 9 ms more CPU a frame at 1280x720 under llvmpipe and was taken out).",
  "size": "output",
  "uniforms": {
    "lines": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.0, "doc": "contour lines of the brightness, one output pixel wide"},
    "density": {"type": "float", "min": 1.0, "max": 64.0, "default": 12.0, "doc": "contour levels over the brightness range"},
    "grain": {"type": "float", "min": 0.0, "max": 0.3, "default": 0.04, "doc": "film grain, relative to the level"},
    "dither": {"type": "bool", "default": 1, "doc": "add a +-1 step triangular noise so 8-bit gradients do not band"}
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
in vec2 uv;
out vec4 fragColor;

// Interleaved gradient noise (Jimenez 2014): a few multiplies a pixel, well spread, the same on every driver.
float ign(vec2 p) {
    return fract(52.9829189 * fract(dot(p, vec2(0.06711056, 0.00583715))));
}

void main() {
    vec4 v = texture(src, uv);
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
