"""``kiln model``: model packages optimised, quantised, fused and compared for a target."""
