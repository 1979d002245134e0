"""
Global load balancing: each client network's viewers sent to the nearest
PoP that has room, decided on each PoP's load predicted a few seconds
ahead (the ``glb`` role).
"""
