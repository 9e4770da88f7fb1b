"""Images in: decoding (io), folders and CSV sets (folders), augmentation presets (transforms)."""
