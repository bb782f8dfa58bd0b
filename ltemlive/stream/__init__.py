"""The frame stream: the acquisition side binds a ROUTER, reconstructors connect DEALERs; credit flow control,
replay from the run file.
"""
