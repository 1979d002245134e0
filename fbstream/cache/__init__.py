"""The caches of the viewers' path: the origin (DC cache) and the PoP's two layers."""
