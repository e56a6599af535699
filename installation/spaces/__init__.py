"""Your own latent space: a folder of images encoded into a space file (``space build``), or a small GAN trained
on it (``train``). Both end in something a scene walks: the ``images`` trajectory over a space file with the
diffusion decoder, or the exported generator with the GAN decoder."""
