"""A session: its configuration (config/default.yaml) and the launcher of `ltemlive run` / `ltemlive serve`."""
