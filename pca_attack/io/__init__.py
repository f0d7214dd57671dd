"""Image files in and out: the format table (formats.py), decode/encode with EXIF, ICC, alpha and 16-bit fidelity
(images.py), and the one atomic file write (files.py)."""
