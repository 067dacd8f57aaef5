"""Serve a dogbreed-train model: raw image bytes in, top-k labels as JSON out."""
