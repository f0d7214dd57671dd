"""Torch-free client side: the HTTP client of the service and the resumable folder runner it drives."""
