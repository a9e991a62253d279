"""Learn-to-optimize: learned optimizers, parametric solvers and constraint learning."""
