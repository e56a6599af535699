/*{
  "description": "Trails: mix in the previous output, slightly zoomed and rotated, so motion leaves a slow wake.",
  "uniforms": {
    "amount": {"type": "float", "min": 0.0, "max": 0.98, "default": 0.0, "doc": "share of the previous output kept each frame"},
    "zoom": {"type": "float", "min": 0.9, "max": 1.1, "default": 1.01, "doc": "scale of the trail per frame; above 1 flows outward"},
    "rotate": {"type": "float", "min": -0.1, "max": 0.1, "default": 0.0, "doc": "rotation of the trail per frame, radians"}
  },
  "identity": {"amount": 0.0}
}*/
#version 330
uniform sampler2D src;
uniform sampler2D feedback;
uniform vec2 resolution;
uniform float amount;
uniform float zoom;
uniform float rotate;
in vec2 uv;
out vec4 fragColor;

void main() {
    vec2 p = uv - 0.5;
    p.x *= resolution.x / resolution.y;
    float c = cos(rotate), s = sin(rotate);
    p = mat2(c, -s, s, c) * p / zoom;
    p.x *= resolution.y / resolution.x;
    vec3 trail = texture(feedback, p + 0.5).rgb;
    vec3 now = texture(src, uv).rgb;
    fragColor = vec4(max(now, mix(now, trail, amount)), 1.0);
}
