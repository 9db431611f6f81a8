"""Estimating unknown parameters: roles, the ML/REML objective, its derivatives and optimizers."""
