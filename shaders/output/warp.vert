#version 330
// Projector output pass (installation/render/projection.py): one tessellated grid per output.
// in_src: where the vertex is in the output's share of the canvas, 0..1, y down.
// in_pos: where it lands on the output, homogeneous (x*w, y*w, w) in 0..1 of the output, y down, so the GPU's
// perspective-correct interpolation of `src` is exactly the corner-pin homography inside every triangle.
in vec2 in_src;
in vec3 in_pos;
out vec2 src;
void main() {
    src = in_src;
    gl_Position = vec4(2.0 * in_pos.x - in_pos.z, in_pos.z - 2.0 * in_pos.y, 0.0, in_pos.z);
}
