"""
The encoder role: a published stream transcoded in real time to an ABR ladder,
cut into 1-second CMAF segments, described by live DASH and HLS manifests,
archived, and served over HTTP to the origin.
"""
