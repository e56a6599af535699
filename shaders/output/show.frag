#version 330
// Projector output, per frame: the canvas through the output's warp map (warp.frag), faded by gain.
uniform sampler2D canvas;
uniform sampler2D warp_map;
uniform vec4 region;      // x, y, w, h of the output's share, in canvas uv (y down)
uniform float gain;       // brightness x level x master fade
uniform vec2 origin;      // the output's viewport origin in the framebuffer (GL pixels)
out vec4 fragColor;
void main() {
    vec4 m = texelFetch(warp_map, ivec2(gl_FragCoord.xy - origin), 0);
    vec2 c = region.xy + m.xy * region.zw;
    vec3 col = texture(canvas, vec2(c.x, 1.0 - c.y)).rgb;
    fragColor = vec4((m.w + m.z * col) * gain, 1.0);
}
