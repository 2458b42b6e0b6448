"""Package test vectors and the helpers the package tests share."""
