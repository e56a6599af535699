#version 330
// Projector output pass (installation/render/projection.py): one tessellated grid per output, drawn every frame.
// in_src: where the vertex is in the output's share of the canvas, 0..1, y down.
// in_pos: where it lands on the output, homogeneous (x*w, y*w, w) in 0..1 of the output, y down, so the GPU's
// perspective-correct interpolation of `uv` and `zone` is exactly the corner-pin homography inside every triangle.
// in_zone: where the vertex lies across the horizontal and the vertical blend zone (0 at the edge, 1 inside);
// the grid is cut at the zones' edges, so it is linear in the source within every cell.
uniform vec4 region;      // x, y, w, h of the output's share, in canvas uv (y down)
in vec2 in_src;
in vec3 in_pos;
in vec2 in_zone;
out vec2 uv;
out vec2 zone;
void main() {
    vec2 c = region.xy + in_src * region.zw;
    uv = vec2(c.x, 1.0 - c.y);
    zone = in_zone;
    gl_Position = vec4(2.0 * in_pos.x - in_pos.z, in_pos.z - 2.0 * in_pos.y, 0.0, in_pos.z);
}
