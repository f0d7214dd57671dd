"""``python -m pca_cli`` runs the console script."""

from pca_cli import main

main()
