"""Engine construction shared by actors and command-line tools (no Ray import)."""
