"""Image files in and out: decode/encode with EXIF, ICC, alpha and 16-bit fidelity; atomic file writes."""
