"""The attack: its configuration, the collapse loss, the update rules, EoT transformations and the PGD loop."""
