"""Data files shipped with ``pca_attack``.

``demo_vae/`` holds the small demo KL-VAE (diffusers ``AutoencoderKL`` layout) trained by
``scripts/train_demo_vae.py``; see ``demo_vae/MODEL_CARD.md``.  It is a DEMO model: protecting an
image against it does not protect against real diffusion models.
"""
