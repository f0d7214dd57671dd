"""Red team: publishing channels and purifiers applied to protected images, and how much protection survives."""
