"""Wiring: plain data and training steps connected to Ray (Data, Train, Serve). No logic of its own."""
