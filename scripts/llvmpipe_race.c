/* What the presenter does to Mesa each frame, in C, for valgrind's thread checkers (issue 23).
 *
 * A headless EGL context (as HeadlessTarget makes it), then per frame: re-allocate the frame texture at another
 * size every few frames (a scene change), upload a frame (glTexSubImage2D, RGB, alignment 1), draw a full-screen
 * triangle sampling it into an RGB framebuffer, read the framebuffer back (a sink's read-back), glFinish (swap).
 * No Python, so what helgrind or DRD report is Mesa's own threads against the calling thread.
 *
 * A second argument N > 0 adds N small draws per frame, each followed by glFlush (every flush hands llvmpipe a
 * scene, and recycling scenes is where its threads meet), plus malloc/free churn on the calling thread, so a heap
 * damaged by another thread is noticed soon: a stress loop, run under glibc's checking.
 *
 *   gcc -O1 -g -o /tmp/llvmpipe_race scripts/llvmpipe_race.c -lEGL -lOpenGL
 *   LP_NUM_THREADS=1 valgrind --tool=helgrind /tmp/llvmpipe_race 60     # llvmpipe's rasteriser thread
 *   LP_NUM_THREADS=0 valgrind --tool=helgrind /tmp/llvmpipe_race 60     # rasterised on the calling thread
 *   LP_NUM_THREADS=4 LD_PRELOAD=/lib/x86_64-linux-gnu/libc_malloc_debug.so.0 GLIBC_TUNABLES=glibc.malloc.check=3 \
 *       /tmp/llvmpipe_race 100000 20                                    # stress: 100,000 frames, 20 flushes each
 */
#define GL_GLEXT_PROTOTYPES 1
#include <EGL/egl.h>
#include <EGL/eglext.h>
#include <GL/gl.h>
#include <GL/glext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *VS = "#version 330\nout vec2 uv;\nvoid main(){vec2 p=vec2(float((gl_VertexID<<1)&2),"
                        "float(gl_VertexID&2));uv=p;gl_Position=vec4(p*2.0-1.0,0.0,1.0);}\n";
static const char *FS = "#version 330\nin vec2 uv;uniform sampler2D src;out vec4 c;\n"
                        "void main(){c=vec4(texture(src,uv).rgb,1.0);}\n";

static GLuint shader(GLenum kind, const char *src) {
    GLuint s = glCreateShader(kind);
    glShaderSource(s, 1, &src, NULL);
    glCompileShader(s);
    GLint ok = 0;
    glGetShaderiv(s, GL_COMPILE_STATUS, &ok);
    if (!ok) { fprintf(stderr, "shader does not compile\n"); exit(2); }
    return s;
}

int main(int argc, char **argv) {
    int frames = argc > 1 ? atoi(argv[1]) : 60;
    int flushes = argc > 2 ? atoi(argv[2]) : 0;
    void *churn[64] = {0};
    static const int sizes[][2] = {{161, 97}, {256, 256}, {97, 61}, {320, 180}, {333, 7}};
    const int W = 161, H = 97;  /* the output: 3 * 161 is not a multiple of 4 */
    EGLDisplay dpy = eglGetDisplay(EGL_DEFAULT_DISPLAY);
    PFNEGLGETPLATFORMDISPLAYEXTPROC get_platform =
        (PFNEGLGETPLATFORMDISPLAYEXTPROC)eglGetProcAddress("eglGetPlatformDisplayEXT");
    if (get_platform) dpy = get_platform(EGL_PLATFORM_SURFACELESS_MESA, EGL_DEFAULT_DISPLAY, NULL);
    if (!eglInitialize(dpy, NULL, NULL)) { fprintf(stderr, "no EGL\n"); return 2; }
    eglBindAPI(EGL_OPENGL_API);
    EGLint cfg_attr[] = {EGL_SURFACE_TYPE, EGL_PBUFFER_BIT, EGL_RENDERABLE_TYPE, EGL_OPENGL_BIT, EGL_NONE};
    EGLConfig cfg; EGLint n = 0;
    eglChooseConfig(dpy, cfg_attr, &cfg, 1, &n);
    EGLint ctx_attr[] = {EGL_CONTEXT_MAJOR_VERSION, 3, EGL_CONTEXT_MINOR_VERSION, 3,
                         EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT, EGL_NONE};
    EGLContext ctx = eglCreateContext(dpy, n ? cfg : NULL, EGL_NO_CONTEXT, ctx_attr);
    if (ctx == EGL_NO_CONTEXT || !eglMakeCurrent(dpy, EGL_NO_SURFACE, EGL_NO_SURFACE, ctx)) {
        fprintf(stderr, "no context\n"); return 2;
    }
    fprintf(stderr, "%s\n", (const char *)glGetString(GL_RENDERER));
    GLuint prog = glCreateProgram();
    glAttachShader(prog, shader(GL_VERTEX_SHADER, VS));
    glAttachShader(prog, shader(GL_FRAGMENT_SHADER, FS));
    glLinkProgram(prog);
    GLuint vao; glGenVertexArrays(1, &vao);
    GLuint out_tex, fbo, tex;
    glGenTextures(1, &out_tex);
    glBindTexture(GL_TEXTURE_2D, out_tex);
    glTexImage2D(GL_TEXTURE_2D, 0, GL_RGB8, W, H, 0, GL_RGB, GL_UNSIGNED_BYTE, NULL);
    glGenFramebuffers(1, &fbo);
    glBindFramebuffer(GL_FRAMEBUFFER, fbo);
    glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, out_tex, 0);
    glGenTextures(1, &tex);
    glPixelStorei(GL_UNPACK_ALIGNMENT, 1);
    glPixelStorei(GL_PACK_ALIGNMENT, 1);
    unsigned char *frame = malloc(333 * 333 * 3), *back = malloc(W * H * 3);
    long sum = 0;
    for (int f = 0; f < frames; f++) {
        const int *s = sizes[(f / 4) % 5];
        glActiveTexture(GL_TEXTURE0);
        glBindTexture(GL_TEXTURE_2D, tex);
        if (f % 4 == 0) {  /* a scene change: the frame texture re-allocated at the new decoder size */
            glTexImage2D(GL_TEXTURE_2D, 0, GL_RGB8, s[0], s[1], 0, GL_RGB, GL_UNSIGNED_BYTE, NULL);
            glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_LINEAR);
            glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_LINEAR);
        }
        memset(frame, f * 7, (size_t)s[0] * s[1] * 3);
        glTexSubImage2D(GL_TEXTURE_2D, 0, 0, 0, s[0], s[1], GL_RGB, GL_UNSIGNED_BYTE, frame);
        glBindFramebuffer(GL_FRAMEBUFFER, fbo);
        glViewport(0, 0, W, H);
        glUseProgram(prog);
        glUniform1i(glGetUniformLocation(prog, "src"), 0);
        glBindVertexArray(vao);
        glDrawArrays(GL_TRIANGLES, 0, 3);
        for (int k = 0; k < flushes; k++) {  /* small draws, each its own scene */
            glViewport(k % 8, k % 5, 8 + k % 7, 4 + k % 3);
            glDrawArrays(GL_TRIANGLES, 0, 3);
            glFlush();
            int slot = (f * 7 + k) % 64;
            free(churn[slot]);
            churn[slot] = malloc(16 + (size_t)((f * 131 + k * 17) % 2000));
            memset(churn[slot], k, 16);
        }
        glViewport(0, 0, W, H);
        glReadPixels(0, 0, W, H, GL_RGB, GL_UNSIGNED_BYTE, back);  /* a sink's read-back */
        sum += back[(f * 31) % (W * H * 3)];
        glFinish();  /* the headless target's swap */
    }
    printf("frames %d checksum %ld\n", frames, sum);
    eglMakeCurrent(dpy, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT);
    eglDestroyContext(dpy, ctx);
    eglTerminate(dpy);
    free(frame);
    free(back);
    for (int i = 0; i < 64; i++) free(churn[i]);
    return 0;
}
