"""What was done to an image, measured: the certificate and posterior diagnostics."""
