"""The servers users would pick instead, serving the same model for comparison."""
