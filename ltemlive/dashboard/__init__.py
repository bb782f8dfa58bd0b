"""Web dashboard of a running session (``ltemlive dashboard``): a gateway that subscribes to the update stream, renders pictures and serves them to browsers."""
