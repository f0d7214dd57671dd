"""Encoders (and optional decoders) of latent-diffusion VAEs: registry, weights, devices, one loader per family."""
