"""The push channel: an upstream pushes manifests and segments to the caches in front of it over HTTP/2."""
