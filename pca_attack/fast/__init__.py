"""Fast mode (issue 18): an amortised collapse generator, one forward pass per image, optionally refined by PGD.

``generator`` holds the network and how its output becomes a perturbation inside the budget; ``weights`` loads
and saves it with an id; ``modes`` turns an attack configuration's ``mode`` into the start image and the PGD
steps the engine runs; ``train`` (with ``photos``) is what ``scripts/train_generator.py`` runs.
"""
