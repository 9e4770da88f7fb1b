"""Code shared by two or more task applications."""
