"""Acquisition controller: plans, the state machine, defocus feedback, the run file writer, the frame stream and
control sockets (one process role). Uses the driver layer and the wire; never torch.
"""
