"""The lcs-serve daemon: HTTP API, metrics and start-up wiring of models/ and controller/."""
