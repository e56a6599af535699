/*{
  "description": "Colour grade: exposure, contrast, saturation, hue rotation, gamma and a vignette.",
  "uniforms": {
    "exposure": {"type": "float", "min": -4.0, "max": 4.0, "default": 0.0, "doc": "stops of gain"},
    "contrast": {"type": "float", "min": 0.0, "max": 3.0, "default": 1.0, "doc": "about mid grey"},
    "saturation": {"type": "float", "min": 0.0, "max": 3.0, "default": 1.0, "doc": "0 is greyscale"},
    "hue": {"type": "float", "min": -0.5, "max": 0.5, "default": 0.0, "doc": "hue rotation in turns"},
    "gamma": {"type": "float", "min": 0.2, "max": 5.0, "default": 1.0, "doc": "above 1 lifts the shadows"},
    "vignette": {"type": "float", "min": 0.0, "max": 1.0, "default": 0.25, "doc": "darkening toward the corners"}
  },
  "identity": {"exposure": 0.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "gamma": 1.0, "vignette": 0.0}
}*/
#version 330
uniform sampler2D src;
uniform float exposure;
uniform float contrast;
uniform float saturation;
uniform float hue;
uniform float gamma;
uniform float vignette;
in vec2 uv;
out vec4 fragColor;

vec3 hue_rotate(vec3 c, float turns) {
    // Rotation about the grey axis (Rodrigues), cheap and exact enough for grading.
    float a = turns * 6.28318530718;
    vec3 k = vec3(0.57735026919);
    float ca = cos(a);
    return c * ca + cross(k, c) * sin(a) + k * dot(k, c) * (1.0 - ca);
}

void main() {
    vec3 c = texture(src, uv).rgb * exp2(exposure);
    c = (c - 0.5) * contrast + 0.5;
    float luma = dot(c, vec3(0.2126, 0.7152, 0.0722));
    c = mix(vec3(luma), c, saturation);
    if (hue != 0.0) c = hue_rotate(c, hue);
    c = pow(clamp(c, 0.0, 1.0), vec3(1.0 / gamma));
    vec2 d = uv - 0.5;
    c *= 1.0 - vignette * smoothstep(0.2, 0.75, dot(d, d) * 2.0);
    fragColor = vec4(c, 1.0);
}
