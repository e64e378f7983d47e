"""The agent loop: Agent, steps, actions, options, the request gate, telemetry."""
