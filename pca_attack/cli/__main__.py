"""``python -m pca_attack.cli`` runs the console script."""

from . import main

main()
