"""The posterior q(z|x): what the encoder computed from an image, turned into latents."""
