"""Reconstructor service: consumes series from the frame stream with StreamingReconstruction, sends results and
the refined defocus to the controller (one process role). Never imports drivers.
"""
